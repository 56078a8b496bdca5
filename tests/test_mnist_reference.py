"""The Table-1 models of ``hybrid-node mnist`` against torchdiffeq's ``examples/odenet_mnist.py``.

The example's classes (``ResBlock``, ``ODEfunc``, ``ODEBlock``, ``norm``, ``Flatten``) are read from
torchdiffeq's repository at test time and assembled as its ``__main__`` block does (the ``conv``
downsampling); ours get the same weights and must give the same logits. The training recipe's random
crop is checked against the per-image crop of torchvision's ``RandomCrop(28, padding=4)`` that the
example trains with.
"""

import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch
from _reference_code import load_module, read_source, repository
from torch import nn

from hybrid_node.experiments import mnist
from hybrid_node.experiments.mnist import build_model, count_parameters
from hybrid_node.nn.ode_block import SolveSettings

#: torchdiffeq's repository (a checkout or a bare git directory), for its examples/odenet_mnist.py
TORCHDIFFEQ_REPO = repository("TORCHDIFFEQ_REPO", "/work/.mirror/rtqichen+torchdiffeq/repo")
EXAMPLE = "examples/odenet_mnist.py"


@pytest.fixture
def odenet_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """torchdiffeq's ODE-Net example as a module, read from the repository into ``tmp_path`` (skip if absent)."""
    pytest.importorskip("torchdiffeq")
    source = read_source(TORCHDIFFEQ_REPO, EXAMPLE, "TORCHDIFFEQ_REPO", "torchdiffeq's repository")
    # The example imports torchvision for its data loaders only (not used here) and parses sys.argv.
    if importlib.util.find_spec("torchvision") is None:
        vision = types.ModuleType("torchvision")
        vision.datasets, vision.transforms = types.ModuleType("datasets"), types.ModuleType("transforms")
        for name, module in (("", vision), (".datasets", vision.datasets), (".transforms", vision.transforms)):
            monkeypatch.setitem(sys.modules, "torchvision" + name, module)
    monkeypatch.setattr(sys, "argv", ["odenet_mnist.py"])
    path = tmp_path / "odenet_mnist.py"
    path.write_text(source)
    return load_module(path, "torchdiffeq_odenet_mnist")


def _reference_model(ex: types.ModuleType, kind: str, c: int = 64) -> nn.Sequential:
    """The example's model as its ``__main__`` block assembles it (``--downsampling-method conv``)."""
    down = [
        nn.Conv2d(1, c, 3, 1),
        ex.norm(c),
        nn.ReLU(inplace=True),
        nn.Conv2d(c, c, 4, 2, 1),
        ex.norm(c),
        nn.ReLU(inplace=True),
        nn.Conv2d(c, c, 4, 2, 1),
    ]
    features = [ex.ODEBlock(ex.ODEfunc(c))] if kind == "odenet" else [ex.ResBlock(c, c) for _ in range(6)]
    head = [ex.norm(c), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d((1, 1)), ex.Flatten(), nn.Linear(c, 10)]
    return nn.Sequential(*down, *features, *head)


def _ours_from(ref: nn.Sequential, kind: str) -> nn.Sequential:
    """Our model of ``kind`` with the reference's weights (the ODE block's names mapped to ours)."""
    ours = build_model(kind, 64)
    names = {"odefunc.": "func.", "._layer.": ".conv."}  # ODEBlock.odefunc -> .func, ConcatConv2d._layer -> .conv
    state = {}
    for key, value in ref.state_dict().items():
        for theirs, mine in names.items():
            key = key.replace(theirs, mine)
        state[key] = value
    ours.load_state_dict(state)  # strict: every parameter has its counterpart, of the same shape
    return ours


def test_resnet_equals_the_example_with_the_same_weights(odenet_mnist):
    torch.manual_seed(0)
    ref = _reference_model(odenet_mnist, "resnet")
    ours = _ours_from(ref, "resnet")
    # Table 1 lists 0.60 M for the ResNet: the example's count, and ours.
    assert count_parameters(ours) == count_parameters(ref) == 576_778
    x = torch.rand(8, 1, 28, 28)
    with torch.no_grad():
        # the same layers in the same order: equal up to rounding
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-6)


def test_odenet_equals_the_example_with_the_same_weights(odenet_mnist):
    torch.manual_seed(0)
    ref = _reference_model(odenet_mnist, "odenet")
    ours = _ours_from(ref, "odenet")
    # Table 1 lists 0.22 M for ODE-Net and RK-Net: the example's count, and ours.
    assert count_parameters(ours) == count_parameters(ref) == 208_266
    assert count_parameters(build_model("rknet", 64)) == 208_266
    h = torch.randn(4, 64, 6, 6)
    for t in (0.0, 0.37):
        # the field: time channel first, three GroupNorms, the same convolutions
        torch.testing.assert_close(ours[7].func(t, h), ref[7].odefunc(torch.tensor(t), h), rtol=1e-5, atol=1e-6)
    x = torch.rand(2, 1, 28, 28)
    # At tol 1e-3 the solves differ by up to the tolerance (the example's dopri5 steps past t = 1 and
    # interpolates back, ours ends its last step at t = 1); solved tightly, the logits agree.
    odenet_mnist.args.tol = 1e-6
    ours[7].train_settings = SolveSettings("dopri5", 1e-6, 1e-6)
    with torch.no_grad():
        # float32 round-off in the 1e-6 solves is about 1.5e-5 (each against a 1e-9 solve); the two logits
        # differed by 1e-5 at most over five draws (6e-5 at tol 1e-3), a wrong layer by 1e-1
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=5e-5)


def test_random_crop_draws_an_offset_per_image():
    # RandomCrop(28, padding=4) crops every image at its own offset, uniform in 0..8 along each axis; the
    # recipe shifted a whole batch by one offset.
    x = torch.randn(2000, 1, 28, 28)
    out = mnist._random_shift(x, 4, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    padded = nn.functional.pad(x, (4, 4, 4, 4), value=float(x.min()))
    offsets = []
    for i in range(len(x)):
        # the only window of the padded image that holds out[i] (Gaussian images: no two windows agree)
        found = [
            (dy, dx)
            for dy in range(9)
            for dx in range(9)
            if torch.equal(out[i], padded[i, :, dy : dy + 28, dx : dx + 28])
        ]
        assert len(found) == 1
        offsets.append(found[0])
    counts = torch.zeros(9, 9)
    for dy, dx in offsets:
        counts[dy, dx] += 1
    # 2000 draws over 81 offsets, 24.7 expected each: every offset occurs (P(some offset missing) ~ 1e-9),
    # and each axis's marginal is within 5 standard deviations of uniform (sd = sqrt(2000 * 1/9 * 8/9) = 14)
    assert (counts > 0).all()
    for marginal in (counts.sum(1), counts.sum(0)):
        assert ((marginal - 2000 / 9).abs() < 5 * 14.1).all()
