"""Run one of torchdiffeq's or torchsde's example scripts with the peer itself or with hybrid_node in its place.

Used by ``tests/test_peer_examples.py``, which runs this file in a subprocess (the examples parse ``sys.argv``, add
handlers to the root logger and set matplotlib's backend, none of which should reach the test process):

    python _peer_example_runner.py CONFIG.json

CONFIG holds ``script`` (the example, extracted from the peer's repository), ``argv`` (its command line), ``peer``
(``"torchdiffeq"`` or ``"torchsde"``), ``library`` (``"peer"`` or ``"hybrid_node"``), ``noise`` (``"own"``, or
``"peer"``: hybrid_node's solvers are handed the peer's Brownian motions, so that both runs see the same noise),
``fire`` (keyword arguments for the examples' ``fire.Fire(main)``), ``float64`` (the default dtype),
``mnist`` (a synthetic MNIST stand-in for ``torchvision``) and ``out`` (where the record goes, as JSON).

The record: every scalar that ``.backward()`` is called on (the training losses, in order), every solve
(function, keyword names, a summary of the output) and, at the end, a summary of every parameter of every optimiser
the script built. The peer's module is replaced by a proxy that forwards every name to the library and records the
solves; nothing of the scripts is changed.
"""

from __future__ import annotations

import json
import random
import runpy
import sys
import types
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

#: the entry points of each peer whose calls are recorded
#: the real peers, imported before the proxies take their names in ``sys.modules``
_REAL: dict[str, types.ModuleType] = {}

SOLVES = {
    "torchdiffeq": ("odeint", "odeint_adjoint", "odeint_event"),
    "torchsde": ("sdeint", "sdeint_adjoint"),
}


def summary(x: Any) -> Any:
    """A JSON summary of a solve's output: shape, sum and sum of squares per tensor (float64), nested as given."""
    if isinstance(x, torch.Tensor):
        v = x.detach().double()
        return {"shape": list(x.shape), "sum": float(v.sum()), "sumsq": float((v * v).sum())}
    if isinstance(x, (tuple, list)):
        return [summary(item) for item in x]
    return repr(type(x).__name__)


class _FirstChannels:
    """A torchsde Brownian motion of (batch, d + 1) channels seen through its first d.

    torchsde integrates logqp's KL term as an extra state with an (unused) noise channel of its own, so its default
    Brownian motion has one channel more than the SDE; the SDE itself is driven by the first d.
    """

    def __init__(self, bm: Any, d: int):
        self._bm, self._d = bm, d
        self.shape = torch.Size((bm.shape[0], d))
        self.dtype, self.device, self.levy_area_approximation = bm.dtype, bm.device, bm.levy_area_approximation

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        out = self._bm(ta, tb, return_U=return_U, return_A=return_A)
        if isinstance(out, tuple):
            return tuple(o[:, : self._d] if o.dim() == 2 else o[:, : self._d, : self._d] for o in out)
        return out[:, : self._d]


def _peer_brownian(sde: Any, y0: torch.Tensor, ts: Any, method: str | None, logqp: bool, names: Any) -> Any:
    """The Brownian motion torchsde's ``sdeint`` would make for this call (``bm=None``), from the real torchsde."""
    real = _REAL["torchsde"]
    t = torch.as_tensor(ts)
    noise_type = sde.noise_type
    if noise_type == "diagonal":
        channels = y0.shape[1]
    elif noise_type == "scalar":
        channels = 1
    else:  # general and additive: the diffusion's last dimension
        g_name = (names or {}).get("diffusion", "g")
        if hasattr(sde, g_name):
            g = getattr(sde, g_name)(t[0], y0)
        else:
            g = sde.f_and_g(t[0], y0)[1]
        channels = g.shape[-1]
    if method is None:
        method = "srk" if sde.sde_type == "ito" and noise_type != "general" else "euler"
        method = "midpoint" if sde.sde_type == "stratonovich" else method
    levy = {"srk": "space-time", "log_ode": "foster"}.get(method, "none")
    extra = 1 if logqp and noise_type == "diagonal" else 0
    bm = real.BrownianInterval(
        t0=t[0],
        t1=t[-1],
        size=(y0.shape[0], channels + extra),
        dtype=y0.dtype,
        device=y0.device,
        levy_area_approximation=levy,
    )
    return _FirstChannels(bm, channels) if extra else bm


def recorded(fn: Callable, name: str, record: dict, peer_noise: bool) -> Callable:
    """``fn`` that appends each call's keyword names and output summary to ``record["solves"]``."""

    def wrapper(*args, **kwargs):
        if peer_noise and kwargs.get("bm") is None and len(args) < 4:
            sde = kwargs.get("sde", args[0] if args else None)
            y0 = kwargs.get("y0", args[1] if len(args) > 1 else None)
            ts = kwargs.get("ts", args[2] if len(args) > 2 else None)
            kwargs["bm"] = _peer_brownian(
                sde, y0, ts, kwargs.get("method"), kwargs.get("logqp", False), kwargs.get("names")
            )
        out = fn(*args, **kwargs)
        record["solves"].append({"fn": name, "kwargs": sorted(kwargs), "out": summary(out)})
        return out

    return wrapper


def proxy(peer: str, target: types.ModuleType, record: dict, peer_noise: bool) -> types.ModuleType:
    """A module named ``peer`` that forwards every name to ``target`` and records the solves."""
    module = types.ModuleType(peer)
    module.__getattr__ = lambda attr: getattr(target, attr)  # type: ignore[method-assign]
    for name in SOLVES[peer]:
        setattr(module, name, recorded(getattr(target, name), name, record, peer_noise))
    if peer_noise:
        module.BrownianInterval = _REAL["torchsde"].BrownianInterval
    return module


def fake_torchvision(n_train: int = 32, n_test: int = 16) -> types.ModuleType:
    """A stand-in for ``torchvision`` with an MNIST of random 28x28 uint8 images and labels (nothing downloaded)."""

    class MNIST(torch.utils.data.Dataset):
        def __init__(self, root, train=True, download=False, transform=None):
            gen = torch.Generator().manual_seed(1 if train else 2)
            n = n_train if train else n_test
            self.data = (torch.rand(n, 28, 28, generator=gen) * 255).to(torch.uint8)
            self.targets = torch.randint(0, 10, (n,), generator=gen)
            self.transform = transform

        def __len__(self):
            return len(self.data)

        def __getitem__(self, i):
            img = self.data[i]
            return (self.transform(img) if self.transform else img), int(self.targets[i])

    class Compose:
        def __init__(self, ts):
            self.ts = ts

        def __call__(self, x):
            for t in self.ts:
                x = t(x)
            return x

    class ToTensor:
        def __call__(self, img):
            return img.unsqueeze(0).float() / 255 if img.dtype == torch.uint8 else img

    class RandomCrop:
        def __init__(self, size, padding=0):
            self.size, self.padding = size, padding

        def __call__(self, img):
            p = self.padding
            padded = torch.nn.functional.pad(img, (p, p, p, p))
            i, j = (int(torch.randint(0, padded.shape[-1] - self.size + 1, ())) for _ in range(2))
            return padded[..., i : i + self.size, j : j + self.size]

    vision = types.ModuleType("torchvision")
    vision.datasets = types.ModuleType("torchvision.datasets")
    vision.transforms = types.ModuleType("torchvision.transforms")
    vision.datasets.MNIST = MNIST
    vision.transforms.Compose, vision.transforms.ToTensor = Compose, ToTensor
    vision.transforms.RandomCrop = RandomCrop
    return vision


def main(config_path: str) -> None:
    config = json.loads(open(config_path).read())
    record: dict[str, Any] = {"losses": [], "solves": [], "params": []}
    torch.set_num_threads(1)
    if config.get("float64"):  # the examples make their tensors in the default dtype
        torch.set_default_dtype(torch.float64)
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    import matplotlib

    matplotlib.use("Agg")

    peer = config["peer"]
    if config["library"] == "peer":
        target = __import__(peer)
    elif peer == "torchsde":
        import hybrid_node.sde as target  # the documented switch: `import hybrid_node.sde as torchsde`
    else:
        import hybrid_node as target  # the documented switch: `from hybrid_node import odeint, ...`
    peer_noise = config["library"] != "peer" and config.get("noise") == "peer"
    if peer_noise:
        _REAL[peer] = __import__(peer)
    sys.modules[peer] = proxy(peer, target, record, peer_noise)

    if "fire" in config:
        fire = types.ModuleType("fire")
        fire.Fire = lambda fn: fn(**config["fire"])
        sys.modules["fire"] = fire
    if config.get("mnist"):
        vision = fake_torchvision()
        sys.modules.update(
            {
                "torchvision": vision,
                "torchvision.datasets": vision.datasets,
                "torchvision.transforms": vision.transforms,
            }
        )

    backward = torch.Tensor.backward

    def recording_backward(self, *args, **kwargs):
        if self.numel() == 1:
            record["losses"].append(float(self.detach()))
        return backward(self, *args, **kwargs)

    torch.Tensor.backward = recording_backward  # type: ignore[method-assign]
    optimisers: list[torch.optim.Optimizer] = []
    init = torch.optim.Optimizer.__init__

    def recording_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        optimisers.append(self)

    torch.optim.Optimizer.__init__ = recording_init  # type: ignore[method-assign]

    sys.argv = [config["script"], *config.get("argv", [])]
    try:
        runpy.run_path(config["script"], run_name="__main__")
    finally:
        for opt in optimisers:
            for group in opt.param_groups:
                record["params"].extend(summary(p) for p in group["params"])
        with open(config["out"], "w") as f:
            json.dump(record, f)


if __name__ == "__main__":
    main(sys.argv[1])
