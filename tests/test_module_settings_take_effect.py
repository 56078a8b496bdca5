"""Every argument of the nn modules either changes what the module computes or is refused.

tests/test_settings_take_effect.py does this for the solvers, controllers, ``odeint`` and ``sdeint``;
this file does it for the models, layers and fields of :mod:`hybrid_node.nn`. The arguments are
enumerated from the signatures of their constructors and of their methods (``to_base``, ``predict``,
``sample_prior``, ...) and from the fields of the settings dataclasses they take (``SolveSettings``,
``CNFSolver``, ``HutchinsonTrace``, ``RNODERegularization``), so a new argument fails here until it has
a probe value below or an entry in ``_INERT`` / ``_CALL_INERT`` saying why it may change nothing.

A setting *acts* when the module built with it gives other outputs, other parameter gradients (or
gradients of other parameters) or other evaluation counts than the module built without it, on the
same inputs and random numbers (each module is built after ``torch.manual_seed(0)`` and run after
``torch.manual_seed(1)``; SDE paths use a fixed Brownian motion). Outputs are compared exactly: a
setting that only moved them by rounding still acted. It is *refused* when building or running the
module raises a ValueError, TypeError or NotImplementedError whose message names the setting.

Some settings only matter together with another one (``ode_rnn_kwargs`` with the ODE-RNN encoder,
``regularizers_in_error_norm`` with a regularised solve); their probes carry that context, applied to
both the reference and the probed module. Other probes check a combination that used to be accepted
and ignored: the tolerances of a fixed-step method, a Hamiltonian network's MLP sizes when a
``hamiltonian`` module replaces that MLP, and a refinement learning rate without refinement steps.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import hybrid_node as hn
from hybrid_node.irregular import IrregularBatch
from hybrid_node.nn.cnf_fields import PlanarCNFField, TimeMLPField
from hybrid_node.nn.ode_rnn import ODERNN
from hybrid_node.nn.planar_flow import PlanarFlow

F64 = torch.float64
FIXED = {"method": "rk4", "options": {"step_size": 0.25}}  # a fixed-step solve: the tolerances have nothing to do


# ---- what a module computed, and the comparison ----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Outcome:
    """The outputs, the gradients by parameter name and the counts of one run, or the error it raised."""

    tensors: tuple[torch.Tensor, ...] = ()
    grads: tuple[tuple[str, torch.Tensor | None], ...] = ()
    counts: tuple[int, ...] = ()
    error: BaseException | None = None


def _flat(out: Any) -> list[torch.Tensor]:
    """The tensors of a run's outputs (nested tuples, lists and dataclasses flattened in order)."""
    if torch.is_tensor(out):
        return [out.detach()]
    if dataclasses.is_dataclass(out) and not isinstance(out, type):
        return [t for f in dataclasses.fields(out) for t in _flat(getattr(out, f.name))]
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in _flat(item)]
    return []


def _outcome(build: Callable[[], nn.Module], run: Callable[[nn.Module], tuple[torch.Tensor, Any, tuple]]) -> Outcome:
    """Build a module, run it (``run`` returns a scalar loss, outputs and counts), backpropagate the loss."""
    try:
        torch.manual_seed(0)
        module = build()
        torch.manual_seed(1)
        loss, outputs, counts = run(module)
        if loss.requires_grad:
            loss.backward()
    except (ValueError, TypeError, NotImplementedError) as error:
        return Outcome(error=error)
    grads = tuple((name, None if p.grad is None else p.grad.clone()) for name, p in module.named_parameters())
    counts = (*counts, *(getattr(module, n) for n in ("nfe_backward",) if hasattr(module, n)))
    return Outcome(tuple(_flat((loss, outputs))), grads, tuple(counts))


def _same(a: Outcome, b: Outcome) -> bool:
    def same_tensors(x, y):
        return len(x) == len(y) and all(u.shape == v.shape and torch.equal(u, v) for u, v in zip(x, y))

    same_grads = [n for n, _ in a.grads] == [n for n, _ in b.grads] and all(
        (g is None) == (h is None) and (g is None or (g.shape == h.shape and torch.equal(g, h)))
        for (_, g), (_, h) in zip(a.grads, b.grads)
    )
    return same_tensors(a.tensors, b.tensors) and same_grads and a.counts == b.counts


def _check_acts_or_refused(name: str, base: Outcome, changed: Outcome) -> None:
    assert base.error is None, f"the reference run failed: {base.error!r}"
    if changed.error is not None:
        assert name in str(changed.error), f"{name} was refused, but the message does not name it: {changed.error}"
        return
    assert not _same(base, changed), f"{name} was accepted and changed nothing (outputs, gradients, counts)"


# ---- small problems, one per module ------------------------------------------------------------------------


class _Field(nn.Module):
    """f(t, y) = tanh(W y + b) + t c: a time-dependent field on (..., dim)."""

    def __init__(self, dim: int = 2):
        super().__init__()
        self.lin = nn.Linear(dim, dim)
        self.c = nn.Parameter(torch.randn(dim))

    def forward(self, t, y):
        return torch.tanh(self.lin(y)) + t * self.c


class _Acceleration(nn.Module):
    """a(t, x, v): a linear map of all of each sample's entries of x and v (so the axis that splits them matters)."""

    def __init__(self, size: int = 8):
        super().__init__()
        self.w = nn.Parameter(0.3 * torch.randn(size, size // 2))

    def forward(self, t, x, v):
        z = torch.cat([x.flatten(1), v.flatten(1)], dim=1)
        return torch.tanh(z @ self.w).reshape(x.shape)


def _block_run(block):
    x = torch.linspace(-1, 1, 6, dtype=F64).reshape(3, 2)
    block.train()
    train = block(x)
    train_nfe = block.nfe_forward
    block.eval()
    evaluated = block(x)
    block.train()
    return train.square().sum() + evaluated.square().sum(), (train, evaluated), (train_nfe, block.nfe_forward)


def _augmented(**kw):
    dim = 2 + (kw.get("augment_dim", 1) if kw.get("dim", 1) in (1, -1) else 0)
    return hn.nn.AugmentedNeuralODE(_Field(dim), **{"augment_dim": 1, **kw}).double()


def _second_order_run(model):
    x0 = torch.linspace(-1, 1, 12, dtype=F64).reshape(3, 2, 2)
    train = model(x0)
    train_nfe = model.nfe_forward
    model.eval()
    evaluated = model(x0)
    model.train()
    return sum(o.square().sum() for o in _flat((train, evaluated))), (train, evaluated), (train_nfe, model.nfe_forward)


def _cnf_run(flow):
    x = torch.tensor([[0.5, -0.3], [0.1, 0.8]], dtype=F64)
    loss, res = flow.loss(x, generator=torch.Generator().manual_seed(2))
    back = flow.from_base(x, generator=torch.Generator().manual_seed(3))
    return loss, (res, back), (res.nfe, back.nfe)


def _cnf(**kw):
    return hn.nn.CNF([TimeMLPField(2, hidden=(8,))], 2, **kw).double()


def _planar_run(flow):
    x = torch.linspace(-0.5, 0.8, 2 * flow.dim, dtype=F64).reshape(2, flow.dim)
    logp = flow.log_prob(x)
    back = flow.from_base(x)
    return logp.sum() + back.sum(), (logp, back), ()


def _hamiltonian_run(model):
    y = torch.linspace(-1, 1, 4 * model.dim, dtype=F64).reshape(2, 2 * model.dim)
    ys = hn.odeint(model, y, torch.tensor([0.0, 0.5], dtype=F64), method="rk4", options={"step_size": 0.25})
    return ys.square().sum(), ys, ()


class _Drift(nn.Module):
    def __init__(self, dim: int = 2):
        super().__init__()
        self.lin = nn.Linear(dim, dim)

    def forward(self, t, y):
        return torch.tanh(self.lin(y))


class _Diffusion(nn.Module):
    """0.2 sigmoid(W y): (batch, d) for diagonal noise, (batch, d, m) for the other noise types."""

    def __init__(self, dim: int = 2, noise: int | None = None):
        super().__init__()
        self.noise = noise
        self.lin = nn.Linear(dim, dim * (noise or 1))

    def forward(self, t, y):
        g = 0.2 * torch.sigmoid(self.lin(y))
        return g if self.noise is None else g.reshape(y.shape[0], y.shape[1], self.noise)


_NOISE = {"diagonal": None, "scalar": 1, "general": 3, "additive": 3}


def _neural_sde(**kw):
    noise = _NOISE[kw.get("noise_type", "diagonal")]
    return hn.nn.NeuralSDE(_Drift(), _Diffusion(noise=noise), **kw).double()


def _sde_run(model):
    m = model.diffusion.noise or 2
    # the space-time Levy area: the default method of diagonal Ito noise (SRK) needs it
    bm = hn.BrownianInterval(0.0, 1.0, size=(3, m), dtype=F64, entropy=5, levy_area_approximation="space-time")
    y0 = torch.linspace(-1, 1, 6, dtype=F64).reshape(3, 2)
    ys = model(y0, torch.tensor([0.0, 0.5, 1.0], dtype=F64), bm=bm)
    return ys.square().sum(), ys, ()


def _latent_sde_run(model):
    ts = torch.tensor([0.0, 0.3, 0.6], dtype=F64)
    xs = torch.linspace(-1, 1, 3 * 2 * model.decoder.out_features, dtype=F64).reshape(3, 2, -1)
    latent = model.p0_mean.shape[0]
    bm = hn.BrownianInterval(0.0, 0.6, size=(2, latent), dtype=F64, entropy=6)
    terms = model(xs, ts, bm=bm)
    prior = model.sample_prior(ts, 2, bm=hn.BrownianInterval(0.0, 0.6, size=(2, latent), dtype=F64, entropy=7))
    return terms.loss, (terms, prior), ()


def _series(obs_dim: int) -> IrregularBatch:
    times = torch.tensor([[0.1, 0.4, 0.9], [0.2, 0.5, 0.5]], dtype=F64)
    values = torch.sin(torch.arange(2 * 3 * obs_dim, dtype=F64)).reshape(2, 3, obs_dim)
    mask = torch.ones_like(values)
    mask[1, 2] = 0.0  # padding: the second series has two points
    return IrregularBatch(times, values, mask)


def _targets() -> IrregularBatch:
    """Other series of the same batch size and channels as ``_series(2)``, to score a forecast on."""
    batch = _series(2)
    return IrregularBatch(batch.times + 0.3, torch.cos(batch.values), batch.mask)


def _latent_ode_run(model):
    batch = _series(model.obs_dim)
    loss = model(batch)
    pred = model.predict(batch, torch.tensor([1.0, 1.5], dtype=F64))
    return loss, pred, ()


def _ode_rnn_run(model):
    batch = _series(model.obs_dim)
    predictions = model(batch)  # not model.loss: it needs out_dim == obs_dim (refused otherwise)
    ahead = model.extrapolate(batch, torch.tensor([1.0, 1.5], dtype=F64))
    return predictions.square().sum() + ahead.square().sum(), (predictions, ahead), ()


class _Energy(nn.Module):
    """H(x) = sum tanh(W x) on x = cat(q, p): a hamiltonian module replacing the default MLP."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 3)

    def forward(self, x):
        return torch.tanh(self.lin(x)).sum(-1, keepdim=True)


def _field_run(width_of: Callable[[nn.Module], tuple[int, ...]]) -> Callable[[nn.Module], tuple]:
    """The run of a vector field or layer called as ``module(t, y)`` at t = 0.3, ``y`` of the shape it takes."""

    def run(module):
        shape = width_of(module)
        y = torch.sin(torch.arange(2 * int(torch.tensor(shape).prod()), dtype=F64)).reshape(2, *shape)
        out = module(torch.tensor(0.3, dtype=F64), y)
        return out.square().sum(), out, ()

    return run


@dataclasses.dataclass(frozen=True)
class Spec:
    """A module: how it is built from keyword arguments, how it is run, and its constructor."""

    build: Callable[..., nn.Module]
    run: Callable[[nn.Module], tuple]
    cls: Any


_SPECS: dict[str, Spec] = {
    "ODEBlock": Spec(lambda **kw: hn.nn.ODEBlock(_Field(), **kw).double(), _block_run, hn.nn.ODEBlock),
    "AugmentedNeuralODE": Spec(_augmented, _block_run, hn.nn.AugmentedNeuralODE),
    "SecondOrderNeuralODE": Spec(
        lambda **kw: hn.nn.SecondOrderNeuralODE(_Acceleration(), **kw).double(),
        _second_order_run,
        hn.nn.SecondOrderNeuralODE,
    ),
    "CNF": Spec(_cnf, _cnf_run, hn.nn.CNF),
    "PlanarFlow": Spec(lambda **kw: PlanarFlow(**{"dim": 2, "n_layers": 2, **kw}).double(), _planar_run, PlanarFlow),
    "HamiltonianNN": Spec(
        # a small MLP, unless a hamiltonian module replaces it (then the MLP's settings are refused)
        lambda **kw: hn.nn.HamiltonianNN(**{"dim": 1, **({} if "hamiltonian" in kw else {"hidden": 8}), **kw}).double(),
        _hamiltonian_run,
        hn.nn.HamiltonianNN,
    ),
    "BaselineODE": Spec(
        lambda **kw: hn.nn.BaselineODE(**{"dim": 1, "hidden": 8, **kw}).double(), _hamiltonian_run, hn.nn.BaselineODE
    ),
    "NeuralSDE": Spec(_neural_sde, _sde_run, hn.nn.NeuralSDE),
    "LatentSDE": Spec(
        lambda **kw: hn.nn.LatentSDE(**{"hidden": 6, "context_dim": 3, **kw}).double(),
        _latent_sde_run,
        hn.nn.LatentSDE,
    ),
    "LatentODE": Spec(
        lambda **kw: hn.nn.LatentODE(**{"rec_hidden": 5, "dyn_hidden": 5, "dec_hidden": 5, **kw}).double(),
        _latent_ode_run,
        hn.nn.LatentODE,
    ),
    "ODERNN": Spec(
        lambda **kw: ODERNN(**{"obs_dim": 2, "hidden": 4, "ode_hidden": 5, **kw}).double(), _ode_rnn_run, ODERNN
    ),
    "MLPDynamics": Spec(
        lambda **kw: hn.nn.MLPDynamics(**{"dim": 2, "hidden": 4, **kw}).double(),
        _field_run(lambda m: (m.dim,)),
        hn.nn.MLPDynamics,
    ),
    "TimeLinear": Spec(
        lambda **kw: hn.nn.TimeLinear(**{"in_features": 2, "out_features": 2, **kw}).double(),
        _field_run(lambda m: (m.in_features,)),
        hn.nn.TimeLinear,
    ),
    "TimeConv2d": Spec(
        lambda **kw: hn.nn.TimeConv2d(**{"in_channels": 2, "out_channels": 2, **kw}).double(),
        _field_run(lambda m: (m.conv.in_channels - 1, 5, 5)),
        hn.nn.TimeConv2d,
    ),
    "ConvDynamics": Spec(
        lambda **kw: hn.nn.ConvDynamics(**{"channels": 4, **kw}).double(),
        _field_run(lambda m: (m.channels, 3, 3)),
        hn.nn.ConvDynamics,
    ),
    "DiagonalDiffusion": Spec(
        lambda **kw: hn.nn.DiagonalDiffusion(**{"dim": 2, "hidden": 4, **kw}).double(),
        _field_run(lambda m: (m.b2.shape[0],)),
        hn.nn.DiagonalDiffusion,
    ),
    "TimeMLPField": Spec(
        lambda **kw: TimeMLPField(**{"dim": 2, "hidden": (4,), **kw}).double(),
        _field_run(lambda m: (m.dim,)),
        TimeMLPField,
    ),
    "PlanarCNFField": Spec(
        lambda **kw: PlanarCNFField(**{"dim": 2, "width": 3, "hyper_hidden": 4, **kw}).double(),
        _field_run(lambda m: (m.dim,)),
        PlanarCNFField,
    ),
}


@dataclasses.dataclass(frozen=True)
class _Make:
    """A module given as a setting, built at the time of the run (after the seed: both runs draw its weights)."""

    cls: type


_STEPS = hn.nn.SolveSettings(**FIXED)

#: probes: (module, argument) -> [(value, context)], the context set on both the reference and the probe
_PROBES: dict[tuple[str, str], list[tuple[Any, dict]]] = {
    ("ODEBlock", "t"): [((0.0, 0.5), {})],
    ("ODEBlock", "train_settings"): [(_STEPS, {})],
    ("ODEBlock", "eval_settings"): [(_STEPS, {})],
    ("ODEBlock", "return_trajectory"): [(True, {})],
    ("AugmentedNeuralODE", "augment_dim"): [(2, {})],
    ("AugmentedNeuralODE", "dim"): [(0, {})],  # the batch axis: another shape
    ("AugmentedNeuralODE", "t"): [((0.0, 0.5), {})],
    ("AugmentedNeuralODE", "train_settings"): [(_STEPS, {})],
    ("AugmentedNeuralODE", "eval_settings"): [(_STEPS, {})],
    ("AugmentedNeuralODE", "return_trajectory"): [(True, {})],
    ("SecondOrderNeuralODE", "initial_velocity"): [(nn.Flatten(0, 0), {})],  # v0 = x0 instead of 0
    ("SecondOrderNeuralODE", "t"): [((0.0, 0.5), {})],
    ("SecondOrderNeuralODE", "train_settings"): [(_STEPS, {})],
    ("SecondOrderNeuralODE", "eval_settings"): [(_STEPS, {})],
    ("SecondOrderNeuralODE", "return_trajectory"): [(True, {})],
    ("SecondOrderNeuralODE", "return_velocity"): [(True, {})],
    ("CNF", "dim"): [(2, {})],  # the data's size: another one is refused against the field's
    ("CNF", "end_time"): [(0.5, {})],
    ("CNF", "learn_end_time"): [(False, {})],
    ("CNF", "trace"): [(hn.nn.HutchinsonTrace(), {})],
    ("CNF", "solver"): [(hn.nn.CNFSolver(rtol=1e-3), {})],
    ("CNF", "regularization"): [(hn.nn.RNODERegularization(kinetic=0.1), {})],
    ("CNF", "base_std"): [(2.0, {})],
    ("PlanarFlow", "dim"): [(3, {})],
    ("PlanarFlow", "n_layers"): [(3, {})],
    ("PlanarFlow", "base_std"): [(2.0, {})],
    ("PlanarFlow", "init_scale"): [(0.5, {})],
    ("HamiltonianNN", "dim"): [(2, {})],
    # the MLP's settings act on the MLP, and are refused beside a hamiltonian module that replaces it
    ("HamiltonianNN", "hidden"): [(6, {}), (6, {"hamiltonian": _Make(_Energy)})],
    ("HamiltonianNN", "layers"): [(1, {}), (1, {"hamiltonian": _Make(_Energy)})],
    ("HamiltonianNN", "activation"): [(nn.Softplus, {}), (nn.Softplus, {"hamiltonian": _Make(_Energy)})],
    ("HamiltonianNN", "hamiltonian"): [(_Make(_Energy), {})],
    ("BaselineODE", "dim"): [(2, {})],
    ("BaselineODE", "hidden"): [(6, {})],
    ("BaselineODE", "layers"): [(1, {})],
    ("BaselineODE", "activation"): [(nn.Softplus, {})],
    ("NeuralSDE", "noise_type"): [("general", {})],
    ("NeuralSDE", "sde_type"): [("stratonovich", {})],
    ("NeuralSDE", "method"): [("milstein", {})],
    ("NeuralSDE", "dt"): [(0.05, {})],
    ("NeuralSDE", "adjoint"): [(True, {})],
    ("LatentSDE", "data_dim"): [(2, {})],
    ("LatentSDE", "latent_dim"): [(3, {})],
    ("LatentSDE", "context_dim"): [(4, {})],
    ("LatentSDE", "hidden"): [(7, {})],
    ("LatentSDE", "obs_std"): [(0.5, {})],
    ("LatentSDE", "method"): [("milstein", {})],
    ("LatentSDE", "dt"): [(0.05, {})],
    ("LatentSDE", "adjoint"): [(True, {})],
    ("LatentODE", "obs_dim"): [(3, {})],
    ("LatentODE", "latent_dim"): [(3, {})],
    ("LatentODE", "rec_hidden"): [(6, {})],
    ("LatentODE", "dyn_hidden"): [(6, {})],
    ("LatentODE", "dec_hidden"): [(6, {})],
    ("LatentODE", "encoder"): [("gru", {}), ("ode-rnn", {})],
    ("LatentODE", "obs_std"): [(0.5, {})],
    ("LatentODE", "poisson"): [(True, {})],
    ("LatentODE", "method"): [("bosh3", {})],
    # the tolerances act on an adaptive method, and are refused beside a fixed-step one
    ("LatentODE", "rtol"): [(1e-3, {}), (1e-3, FIXED)],
    ("LatentODE", "atol"): [(1e-3, {}), (1e-3, FIXED)],
    ("LatentODE", "options"): [({"max_step": 0.05}, {})],
    ("LatentODE", "ode_rnn_kwargs"): [(FIXED, {"encoder": "ode-rnn"}), ({"rtol": 1e-2}, {})],
    ("ODERNN", "obs_dim"): [(3, {})],
    ("ODERNN", "hidden"): [(5, {})],
    ("ODERNN", "ode_hidden"): [(6, {})],
    ("ODERNN", "out_dim"): [(3, {})],
    ("ODERNN", "method"): [("bosh3", {})],
    ("ODERNN", "rtol"): [(1e-6, {}), (1e-2, FIXED)],
    ("ODERNN", "atol"): [(1e-6, {}), (1e-2, FIXED)],
    ("ODERNN", "options"): [({"max_step": 0.05}, {})],
    ("MLPDynamics", "dim"): [(3, {})],
    ("MLPDynamics", "hidden"): [(5, {})],
    ("MLPDynamics", "layers"): [(2, {})],
    ("MLPDynamics", "activation"): [(nn.Softplus(), {})],
    ("MLPDynamics", "time_dependent"): [(False, {})],
    ("TimeLinear", "in_features"): [(3, {})],
    ("TimeLinear", "out_features"): [(3, {})],
    ("TimeLinear", "bias"): [(False, {})],
    ("TimeConv2d", "in_channels"): [(3, {})],
    ("TimeConv2d", "out_channels"): [(3, {})],
    ("TimeConv2d", "kernel_size"): [(1, {"padding": 0})],
    ("TimeConv2d", "stride"): [(2, {})],
    ("TimeConv2d", "padding"): [(0, {})],
    ("TimeConv2d", "dilation"): [(2, {})],
    ("TimeConv2d", "groups"): [(3, {"in_channels": 2, "out_channels": 3})],  # groups divide in_channels + 1
    ("TimeConv2d", "bias"): [(False, {})],
    ("ConvDynamics", "channels"): [(2, {})],
    ("ConvDynamics", "groups"): [(2, {})],
    ("DiagonalDiffusion", "dim"): [(3, {})],
    ("DiagonalDiffusion", "hidden"): [(5, {})],
    ("DiagonalDiffusion", "scale"): [(0.5, {})],
    ("TimeMLPField", "dim"): [(3, {})],
    ("TimeMLPField", "hidden"): [((5,), {})],
    ("TimeMLPField", "activation"): [("softplus", {})],
    ("TimeMLPField", "time_every_layer"): [(False, {})],
    ("PlanarCNFField", "dim"): [(3, {})],
    ("PlanarCNFField", "width"): [(4, {})],
    ("PlanarCNFField", "hyper_hidden"): [(5, {})],
    ("PlanarCNFField", "gated"): [(False, {})],
}

#: arguments that say what the module is made of (the field, the networks): another value is another model
_STRUCTURAL = {
    ("ODEBlock", "func"),
    ("AugmentedNeuralODE", "func"),
    ("SecondOrderNeuralODE", "acceleration"),
    ("CNF", "fields"),
    ("NeuralSDE", "drift"),
    ("NeuralSDE", "diffusion"),
}


def _value(value):
    return value.cls() if isinstance(value, _Make) else value


#: (module, argument) pairs that legitimately change nothing on these problems, and why
_INERT: dict[tuple[str, str], str] = {
    # the axis along which the solver's state stacks x and v: the acceleration gets the same x and v and the
    # error norm the same numbers whichever axis it is (it must only exist in the inputs, e.g. -1 unbatched)
    ("SecondOrderNeuralODE", "dim"): "a layout of the solver's state: the same solution on any valid axis",
}


def _module_cases() -> list:
    cases = []
    for module, spec in _SPECS.items():
        for arg in inspect.signature(spec.cls.__init__).parameters:
            if arg == "self" or (module, arg) in _STRUCTURAL or (module, arg) in _INERT:
                continue
            probes = _PROBES.get((module, arg), [(None, None)])
            for i, (_, context) in enumerate(probes):
                suffix = f"-with-{'-'.join(context)}" if context else ""
                cases.append(pytest.param(module, arg, i, id=f"{module}.{arg}{suffix}"))
    return cases


def _kwargs(context: dict) -> dict:
    return {k: _value(v) for k, v in context.items()}


@pytest.mark.parametrize(("module", "arg", "index"), _module_cases())
def test_every_module_argument_acts_or_is_refused(module, arg, index):
    assert (module, arg) in _PROBES, f"no probe value for {module}({arg}=...): add one to _PROBES (or _INERT)"
    value, context = _PROBES[module, arg][index]
    spec = _SPECS[module]
    base = _outcome(lambda: spec.build(**_kwargs(context)), spec.run)
    changed = _outcome(lambda: spec.build(**_kwargs(context), **{arg: _value(value)}), spec.run)
    _check_acts_or_refused(arg, base, changed)


# ---- the fields of the settings the modules take --------------------------------------------------------

#: a non-default value of each SolveSettings field (tried on an ODEBlock's training settings)
_SOLVE_SETTINGS_VALUES: dict[str, tuple[Any, dict]] = {
    "method": ("bosh3", {}),
    "rtol": (1e-6, {}),
    "atol": (1e-6, {}),
    "options": ({"max_step": 0.05}, {}),
    "sensitivity": (hn.BacksolveAdjoint(), {}),
    "backend": ("julia", {}),  # Julia is not installed here: refused, naming the backend
}

#: non-default values of each CNFSolver field: (value, the other CNFSolver settings, the CNF's settings),
#: the settings applied to the reference flow too
_CNF_SOLVER_VALUES: dict[str, list[tuple[Any, dict, dict]]] = {
    "method": [("bosh3", {}, {})],
    # the tolerances act on an adaptive method, and are refused beside a fixed-step one
    "rtol": [(1e-3, {}, {}), (1e-3, FIXED, {})],
    "atol": [(1e-3, {}, {}), (1e-3, FIXED, {})],
    "options": [({"max_step": 0.05}, {}, {})],
    "adjoint": [(True, {}, {})],
    # whether the regularisers' integrals count in the error norm: they must be integrated, and large enough
    # to decide steps (with T = 3 they take 32 evaluations in the norm, 20 without; with T = 1 both take 20)
    "regularizers_in_error_norm": [
        (False, {}, {"regularization": hn.nn.RNODERegularization(kinetic=0.1), "end_time": 3.0})
    ],
}


def _cnf_solver_cases() -> list:
    return [
        pytest.param(f.name, i, id=f"{f.name}{'-fixed-step' if values[1] else ''}")
        for f in dataclasses.fields(hn.nn.CNFSolver)
        for i, values in enumerate(_CNF_SOLVER_VALUES.get(f.name, [(None, {}, {})]))
    ]


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(hn.nn.SolveSettings)])
def test_every_solve_settings_field_acts_or_is_refused(field):
    assert field in _SOLVE_SETTINGS_VALUES, f"no probe value for SolveSettings.{field}: add one"
    value, _ = _SOLVE_SETTINGS_VALUES[field]
    spec = _SPECS["ODEBlock"]
    base = _outcome(lambda: spec.build(), spec.run)

    def build():
        return spec.build(train_settings=hn.nn.SolveSettings(**{field: value}))

    changed = _outcome(build, spec.run)
    if field == "backend" and changed.error is not None:
        assert "julia" in str(changed.error).lower(), changed.error
        return
    _check_acts_or_refused(field, base, changed)


@pytest.mark.parametrize(("field", "index"), _cnf_solver_cases())
def test_every_cnf_solver_field_acts_or_is_refused(field, index):
    assert field in _CNF_SOLVER_VALUES, f"no probe value for CNFSolver.{field}: add one"
    value, solver_context, context = _CNF_SOLVER_VALUES[field][index]
    base = _outcome(lambda: _cnf(solver=hn.nn.CNFSolver(**solver_context), **context), _cnf_run)
    changed = _outcome(lambda: _cnf(solver=hn.nn.CNFSolver(**solver_context, **{field: value}), **context), _cnf_run)
    _check_acts_or_refused(field, base, changed)


#: the CNF's other settings objects: (class, the CNF argument it is passed as) -> a non-default value per field
_CNF_PARTS: dict[tuple[type, str], dict[str, Any]] = {
    (hn.nn.HutchinsonTrace, "trace"): {"noise": "gaussian"},
    (hn.nn.RNODERegularization, "regularization"): {"kinetic": 0.1, "jacobian": 0.1},
}


@pytest.mark.parametrize(
    ("part", "field"),
    [(key, f.name) for key in _CNF_PARTS for f in dataclasses.fields(key[0])],
    ids=lambda v: v[0].__name__ if isinstance(v, tuple) else v,
)
def test_every_field_of_the_cnf_settings_acts_or_is_refused(part, field):
    cls, argument = part
    assert field in _CNF_PARTS[part], f"no probe value for {cls.__name__}.{field}: add one to _CNF_PARTS"
    base = _outcome(lambda: _cnf(**{argument: cls()}), _cnf_run)
    changed = _outcome(lambda: _cnf(**{argument: cls(**{field: _CNF_PARTS[part][field]})}), _cnf_run)
    _check_acts_or_refused(field, base, changed)


@pytest.mark.parametrize("name", ["rtol", "atol"])
def test_solve_settings_refuse_tolerances_of_a_fixed_step_method(name):
    # the probes of ODERNN, LatentODE and CNFSolver above, for an ODEBlock's settings (they were accepted, same solve)
    spec = _SPECS["ODEBlock"]
    base = _outcome(lambda: spec.build(train_settings=hn.nn.SolveSettings(**FIXED)), spec.run)
    changed = _outcome(lambda: spec.build(train_settings=hn.nn.SolveSettings(**FIXED, **{name: 1e-6})), spec.run)
    _check_acts_or_refused(name, base, changed)


# ---- the arguments of the modules' methods ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Call:
    """A method of a module: the module, how the method is called with the probed keyword arguments (it
    returns a scalar loss, the outputs and the counts), and the arguments the call passes itself."""

    build: Callable[[], nn.Module]
    call: Callable[..., tuple]
    data: frozenset[str]


_X = torch.tensor([[0.5, -0.3], [0.1, 0.8]], dtype=F64)


def _hutchinson_cnf():
    return _cnf(trace=hn.nn.HutchinsonTrace())


def _flow_result(res):
    return res.log_prob.sum() + res.z.square().sum(), res, (res.nfe,)


def _latent_ode():
    return hn.nn.LatentODE(rec_hidden=5, dyn_hidden=5, dec_hidden=5, rtol=1e-5, atol=1e-7).double()


def _latent_sde():
    return hn.nn.LatentSDE(hidden=6, context_dim=3).double()


_TS = torch.tensor([0.0, 0.3, 0.6], dtype=F64)
_XS = torch.linspace(-1, 1, 6, dtype=F64).reshape(3, 2, 1)


def _bm(batch: int, seed: int):
    return hn.BrownianInterval(0.0, 0.6, size=(batch, 4), dtype=F64, entropy=seed)


def _sums(out) -> torch.Tensor:
    return sum((t.square().sum() for t in _flat(out) if t.is_floating_point()), torch.zeros((), dtype=F64))


_CALLS: dict[str, Call] = {
    "CNF.to_base": Call(_cnf, lambda m, **kw: _flow_result(m.to_base(_X, **kw)), frozenset({"x"})),
    "CNF.from_base": Call(_cnf, lambda m, **kw: _flow_result(m.from_base(_X, **kw)), frozenset({"z"})),
    "CNF.log_prob": Call(_cnf, lambda m, **kw: (m.log_prob(_X, **kw).sum(), (), ()), frozenset({"x"})),
    "CNF.sample": Call(_cnf, lambda m, **kw: (_sums(m.sample(2, **kw)), m.sample(2, **kw), ()), frozenset({"n"})),
    "CNF.loss": Call(_hutchinson_cnf, lambda m, **kw: (m.loss(_X, **kw)[0], (), ()), frozenset({"x"})),
    "PlanarFlow.from_base": Call(
        lambda: PlanarFlow(2, 3).double(), lambda m, **kw: (m.from_base(_X, **kw).sum(), (), ()), frozenset({"z"})
    ),
    "PlanarFlow.sample": Call(
        lambda: PlanarFlow(2, 3).double(), lambda m, **kw: (m.sample(2, **kw).sum(), (), ()), frozenset({"n"})
    ),
    "LatentODE.forward": Call(_latent_ode, lambda m, **kw: (m(_series(2), **kw), (), ()), frozenset({"batch"})),
    "LatentODE.elbo": Call(_latent_ode, lambda m, **kw: (m.elbo(_series(2), **kw).loss, (), ()), frozenset({"batch"})),
    "LatentODE.predict": Call(
        _latent_ode,
        lambda m, **kw: (_sums(m.predict(_series(2), torch.tensor([1.0, 1.5], dtype=F64), **kw)), (), ()),
        frozenset({"batch", "times"}),
    ),
    "ODERNN.run": Call(
        lambda: ODERNN(2, hidden=4, ode_hidden=5).double(),
        lambda m, **kw: (_sums(m.run(_series(2), **kw)), (), ()),
        frozenset({"batch"}),
    ),
    "ODERNN.extrapolate": Call(
        lambda: ODERNN(2, hidden=4, ode_hidden=5).double(),
        lambda m, **kw: (_sums(m.extrapolate(_series(2), torch.tensor([1.0, 1.5], dtype=F64), **kw)), (), ()),
        frozenset({"batch", "times"}),
    ),
    "LatentSDE.forward": Call(
        _latent_sde, lambda m, **kw: (m(_XS, _TS, **{"bm": _bm(2, 1), **kw}).loss, (), ()), frozenset({"xs", "ts"})
    ),
    "LatentSDE.sample_posterior": Call(
        _latent_sde,
        lambda m, **kw: (_sums(m.sample_posterior(_XS, _TS, **{"bm": _bm(2 * kw.get("n", 1), 1), **kw})), (), ()),
        frozenset({"xs", "ts"}),
    ),
    "LatentSDE.sample_prior": Call(
        _latent_sde,
        lambda m, **kw: (_sums(m.sample_prior(_TS, **{"n": 2, "bm": _bm(kw.get("n", 2), 1), **kw})), (), ()),
        frozenset({"ts"}),
    ),
    "SecondOrderNeuralODE.forward": Call(
        lambda: hn.nn.SecondOrderNeuralODE(_Acceleration()).double(),
        lambda m, **kw: (_sums(m(torch.linspace(-1, 1, 12, dtype=F64).reshape(3, 2, 2), **kw)), (), ()),
        frozenset({"x0"}),
    ),
    "EmpiricalPrior.from_series": Call(
        _latent_ode,
        lambda m, **kw: (hn.nn.EmpiricalPrior.from_series(m, _series(2), **kw).anchors.sum(), (), ()),
        frozenset({"cls", "model", "batch"}),
    ),
    "EmpiricalPrior.log_likelihoods": Call(
        _latent_ode,
        lambda m, **kw: (
            hn.nn.EmpiricalPrior(torch.eye(2, 4, dtype=F64)).log_likelihoods(m, _series(2), **kw).sum(),
            (),
            (),
        ),
        frozenset({"self", "model", "batch"}),
    ),
}

_GEN = _Make(lambda: torch.Generator().manual_seed(11))

#: probes of the methods' arguments: "Class.method.argument" -> [(value, context)]
_CALL_PROBES: dict[str, list[tuple[Any, dict]]] = {
    "CNF.to_base.trace": [(hn.nn.HutchinsonTrace(), {})],
    "CNF.to_base.regularize": [(True, {})],
    # nothing is drawn for the exact trace: the generator of the Hutchinson noise is probed with that noise
    "CNF.to_base.generator": [(_GEN, {"trace": hn.nn.HutchinsonTrace()})],
    "CNF.from_base.trace": [(hn.nn.HutchinsonTrace(), {})],
    "CNF.from_base.n_times": [(3, {})],
    "CNF.from_base.generator": [(_GEN, {"trace": hn.nn.HutchinsonTrace()})],
    "CNF.log_prob.trace": [(hn.nn.HutchinsonTrace(), {})],
    "CNF.sample.trace": [(hn.nn.HutchinsonTrace(), {})],
    "CNF.sample.generator": [(_GEN, {})],
    "CNF.loss.generator": [(_GEN, {})],
    "PlanarFlow.from_base.n_bisection": [(5, {})],
    "PlanarFlow.sample.generator": [(_GEN, {})],
    "LatentODE.forward.t0": [(-0.5, {})],
    "LatentODE.forward.targets": [(_Make(_targets), {})],
    "LatentODE.elbo.t0": [(-0.5, {})],
    "LatentODE.elbo.generator": [(_GEN, {})],
    "LatentODE.elbo.targets": [(_Make(_targets), {})],
    "LatentODE.predict.t0": [(-0.5, {})],
    "LatentODE.predict.sample": [(True, {})],
    "LatentODE.predict.refine_steps": [(2, {})],
    # the learning rate acts on refinement steps, and is refused without any
    "LatentODE.predict.refine_lr": [(0.2, {"refine_steps": 2}), (0.2, {})],
    "ODERNN.run.t_start": [(0.0, {})],
    "ODERNN.run.backwards": [(True, {})],
    "ODERNN.extrapolate.t_start": [(0.0, {})],
    "LatentSDE.forward.kl_weight": [(0.5, {})],
    "LatentSDE.forward.bm": [(_Make(lambda: _bm(2, 2)), {})],
    "LatentSDE.sample_posterior.n": [(2, {})],
    "LatentSDE.sample_posterior.bm": [(_Make(lambda: _bm(2, 2)), {})],
    "LatentSDE.sample_prior.n": [(3, {})],
    "LatentSDE.sample_prior.bm": [(_Make(lambda: _bm(2, 2)), {})],
    "SecondOrderNeuralODE.forward.v0": [(_Make(lambda: torch.ones(3, 2, 2, dtype=F64)), {})],
    "SecondOrderNeuralODE.forward.t": [(torch.tensor([0.0, 0.5], dtype=F64), {})],
    "EmpiricalPrior.from_series.t0": [(-0.5, {})],
    "EmpiricalPrior.from_series.refine_steps": [(2, {})],
    "EmpiricalPrior.from_series.refine_lr": [(0.2, {"refine_steps": 2}), (0.2, {})],
    "EmpiricalPrior.log_likelihoods.t0": [(-0.5, {})],
}

#: method arguments that legitimately change nothing, and why
_CALL_INERT = {
    # how many series are scored at once: memory, not the numbers (one solve of the anchors either way)
    "EmpiricalPrior.log_likelihoods.chunk": "how many series are scored at once: memory, not the result",
}


def _method(name: str):
    cls_name, method = name.split(".")
    cls = {"PlanarFlow": PlanarFlow, "ODERNN": ODERNN}.get(cls_name) or getattr(hn.nn, cls_name)
    return getattr(cls, method)


def _call_cases() -> list:
    cases = []
    for name, call in _CALLS.items():
        for arg in inspect.signature(_method(name)).parameters:
            if arg in call.data or arg == "self" or _CALL_INERT.get(f"{name}.{arg}"):
                continue
            for i, (_, context) in enumerate(_CALL_PROBES.get(f"{name}.{arg}", [(None, {})])):
                suffix = f"-with-{'-'.join(context)}" if context else ""
                cases.append(pytest.param(name, arg, i, id=f"{name}.{arg}{suffix}"))
    return cases


@pytest.mark.parametrize(("name", "arg", "index"), _call_cases())
def test_every_method_argument_acts_or_is_refused(name, arg, index):
    key = f"{name}.{arg}"
    assert key in _CALL_PROBES, f"no probe value for {key}: add one to _CALL_PROBES (or _CALL_INERT)"
    value, context = _CALL_PROBES[key][index]
    call = _CALLS[name]
    base = _outcome(call.build, lambda m: call.call(m, **_kwargs(context)))
    changed = _outcome(call.build, lambda m: call.call(m, **_kwargs(context), **{arg: _value(value)}))
    _check_acts_or_refused(arg, base, changed)


# ---- the fixes these probes found, each with its own check ---------------------------------------------


@pytest.mark.parametrize("model", [ODERNN, hn.nn.LatentODE], ids=lambda m: m.__name__)
def test_tolerances_of_a_fixed_step_method_are_refused(model):
    # rk4 with rtol=1e-2 ran the steps it runs with the default tolerances: accepted, changed nothing
    with pytest.raises(ValueError, match=r"rtol=0\.01 have no effect, because method 'rk4' takes fixed steps"):
        model(obs_dim=2, rtol=1e-2, **FIXED)
    model(obs_dim=2, **FIXED)  # the defaults are no request: accepted
    model(obs_dim=2, rtol=1e-2)  # an adaptive method uses them
    # the implicit Adams corrector iterates to the tolerances on fixed steps: they act there
    model(obs_dim=2, rtol=1e-2, method="implicit_adams", options={"step_size": 0.25})


def test_ode_rnn_fixed_step_tolerances_change_nothing():
    # why they are refused: the same numbers with rtol 1e-2 and 1e-9 (built here past the check)
    outs = []
    for rtol in (1e-2, 1e-9):
        torch.manual_seed(0)
        model = ODERNN(obs_dim=2, hidden=4, ode_hidden=5, **FIXED).double()
        model.rtol = rtol
        outs.append(model(_series(2)))
    assert torch.equal(*outs)


def test_hamiltonian_nn_refuses_mlp_settings_beside_a_hamiltonian_module():
    # the hamiltonian module replaces the default MLP, which hidden, layers and activation shape
    with pytest.raises(ValueError, match=r"\['hidden', 'layers'\], which shape the default MLP"):
        hn.nn.HamiltonianNN(1, hidden=64, layers=3, hamiltonian=_Energy())
    with pytest.raises(ValueError, match=r"\['activation'\]"):
        hn.nn.HamiltonianNN(1, activation=nn.Softplus, hamiltonian=_Energy())
    hn.nn.HamiltonianNN(1, hamiltonian=_Energy())
    hn.nn.HamiltonianNN(1, hidden=64, layers=3, activation=nn.Softplus)


def test_ode_rnn_loss_with_another_out_dim_is_refused():
    # it failed in a broadcast of (B, L, 3) against (B, L, 2) that named neither size
    model = ODERNN(obs_dim=2, hidden=4, out_dim=3).double()
    with pytest.raises(ValueError, match=r"out_dim=3 differs from obs_dim=2"):
        model.loss(_series(2))
    assert model(_series(2)).shape == (2, 3, 3)  # the read-outs themselves are fine


def _frozen_flow_gradient(adjoint: bool) -> torch.Tensor:
    torch.manual_seed(0)
    flow = _cnf(solver=hn.nn.CNFSolver(adjoint=adjoint))
    flow.requires_grad_(False)  # a trained flow whose density is differentiated in its points
    x = _X.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(flow.log_prob(x).sum(), x)
    return grad


def test_cnf_adjoint_acts_for_a_frozen_flow_differentiated_in_its_points():
    # without trainable parameters the solve backpropagated through the solver: adjoint=True changed nothing
    direct, adjoint = _frozen_flow_gradient(False), _frozen_flow_gradient(True)
    assert not torch.equal(direct, adjoint), "the adjoint's backward solve did not run"
    # both approximate d log p / dx to the solver tolerance (rtol = atol = 1e-5 forward and backward);
    # they differ by 3e-8 here, far below the 1e-5 allowed
    torch.testing.assert_close(adjoint, direct, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "build",
    [
        lambda: ODERNN(2, 4, method="dp5", rtol=1e-5),
        lambda: hn.nn.LatentODE(2, 2, method="dp5", rtol=1e-5),
        lambda: hn.nn.SolveSettings(method="dp5", rtol=1e-5),
    ],
    ids=["ODERNN", "LatentODE", "SolveSettings"],
)
def test_tolerances_of_a_julia_only_method_are_not_checked_against_the_torch_backend(build):
    # the fixed-step check builds the torch solver; a method only the Julia backend has (its tolerances act
    # there) raised "available on the Julia backend only" when its rtol was not the default, and not otherwise
    build()
