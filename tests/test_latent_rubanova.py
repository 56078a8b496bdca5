"""The latent ODE's encoders and ELBO pieces against Rubanova et al.'s reference implementation
(github.com/YuliaRubanova/latent_ode, lib/), with the same weights on the same irregular batch with masks.

The reference's modules are read from its repository at test time (set LATENT_ODE_REPO; skipped when it is
absent). Where the two models are built differently (the reference's GRU_unit carries a std next to the
hidden state, its read-outs are MLPs giving |std|, its likelihoods are averages), the differences are
documented in docs/models.md and pinned here as the relation between the two numbers.
"""

from __future__ import annotations

import math
import sys
import types
from pathlib import Path

import pytest
import torch
from _reference_code import import_package, read_source, repository
from torch import nn

from hybrid_node.irregular import IrregularBatch
from hybrid_node.nn.latent_ode import LatentODE, RecognitionRNN, gaussian_log_likelihood, normal_kl

pytestmark = pytest.mark.usefixtures("one_thread", "float64_default")

#: the reference repository (a checkout or a bare git directory)
LATENT_ODE_REPO = repository("LATENT_ODE_REPO", "/work/.mirror/YuliaRubanova+latent_ode/repo")
WHAT = "the latent_ode reference repository"
MODULES = ("utils", "encoder_decoder", "likelihood_eval", "diffeq_solver", "ode_func", "base_models")
SOLVER = dict(rtol=1e-11, atol=1e-12)


@pytest.fixture
def ref(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """The reference's lib modules, imported as the package ``lib`` from copies in ``tmp_path``."""
    pytest.importorskip("torchdiffeq")  # lib/diffeq_solver.py solves with it
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "__init__.py").write_text("")
    for name in MODULES:
        rel = f"lib/{name}.py"
        (tmp_path / rel).write_text(read_source(LATENT_ODE_REPO, rel, "LATENT_ODE_REPO", WHAT))
    # lib/utils.py imports pandas and sklearn for data loading and metrics, which are not used here
    for stub in ("pandas", "sklearn"):
        if stub not in sys.modules:
            monkeypatch.setitem(sys.modules, stub, types.ModuleType(stub))
    return types.SimpleNamespace(**dict(zip(MODULES, import_package(tmp_path, "lib", MODULES, monkeypatch))))


def _shared_grid_batch(bsz: int = 3, length: int = 7, dim: int = 2) -> IrregularBatch:
    """Series on one shared grid with missing channels, a time at which series 1 sees nothing and a
    series 2 observed once; every series has an observation at the last time (see the ODE-RNN test)."""
    g = torch.Generator().manual_seed(1)
    times = torch.linspace(0.0, 1.2, length)
    mask = (torch.rand(bsz, length, dim, generator=g) > 0.3).double()
    mask[:, -1, 0] = 1.0
    mask[1, 3] = 0.0
    mask[2] = 0.0
    mask[2, -1, 1] = 1.0
    values = torch.where(mask > 0, torch.randn(bsz, length, dim, generator=g), torch.zeros(()))
    return IrregularBatch(times=times.expand(bsz, length).clone(), values=values, mask=mask)


class _IgnoreStd(nn.Module):
    """A gate of the reference's GRU_unit that reads (hidden, data) and not the std channel, so that the
    std stays 0 and the unit is a function of the hidden state and the data alone."""

    def __init__(self, hidden: int, n_in: int, out: int, act):
        super().__init__()
        self.hidden, self.lin, self.act = hidden, nn.Linear(hidden + n_in, out), act

    def forward(self, y_std_x):
        h = self.hidden
        return self.act(self.lin(torch.cat([y_std_x[..., :h], y_std_x[..., 2 * h :]], -1)))


class _NewState(nn.Module):
    """GRU_unit's candidate state from (reset hidden, data), with a zero std next to it."""

    def __init__(self, hidden: int, n_in: int):
        super().__init__()
        self.net = _IgnoreStd(hidden, n_in, hidden, torch.tanh)

    def forward(self, y_std_x):
        new = self.net(y_std_x)
        return torch.cat([new, torch.zeros_like(new)], -1)


class _UnitAsCell(nn.Module):
    """The reference's GRU_unit as our ODE-RNN's cell(x, h) -> h, its own mask left out (ours masks)."""

    def __init__(self, unit: nn.Module):
        super().__init__()
        self.unit = unit

    def forward(self, x, h):
        return self.unit(h[None], torch.zeros_like(h)[None], x[None], masked_update=False)[0][0]


def _wire_ode_rnn(ref, model: LatentODE) -> nn.Module:
    """The reference's ODE-RNN encoder sharing our encoder's hidden dynamics and GRU unit."""
    enc = model.encoder.ode_rnn
    hidden, n_in = enc.hidden, 2 * model.obs_dim
    with torch.no_grad():  # the reference's init_network_weights zeroes every bias: f(0) = 0
        for layer in enc.field:
            if isinstance(layer, nn.Linear):
                layer.bias.zero_()
    unit = ref.encoder_decoder.GRU_unit(
        hidden,
        n_in,
        update_gate=_IgnoreStd(hidden, n_in, hidden, torch.sigmoid),
        reset_gate=_IgnoreStd(hidden, n_in, hidden, torch.sigmoid),
        new_state_net=_NewState(hidden, n_in),
    )
    enc.cell = _UnitAsCell(unit)
    func = ref.ode_func.ODEFunc(n_in, hidden, enc.field)
    solver = ref.diffeq_solver.DiffeqSolver(n_in, func, "dopri5", hidden, odeint_rtol=1e-11, odeint_atol=1e-12)
    return ref.encoder_decoder.Encoder_z0_ODE_RNN(hidden, n_in, solver, z0_dim=model.latent_dim, GRU_update=unit)


def test_ode_rnn_encoder_reads_the_batch_as_the_reference_run_odernn(ref):
    # Backwards from the last time to the first, evolving through every gap and updating only where some
    # channel is observed (GRU_unit's masked update): the hidden states agree to the solves' tolerance.
    torch.manual_seed(0)
    model = LatentODE(
        obs_dim=2, latent_dim=2, rec_hidden=5, encoder="ode-rnn", ode_rnn_kwargs=dict(ode_hidden=6, **SOLVER)
    )
    reference = _wire_ode_rnn(ref, model)
    batch = _shared_grid_batch()
    data = torch.cat([batch.values, batch.mask], -1)
    times = batch.times[0]
    ours, _ = model.encoder.ode_rnn.run(batch, t_start=times[0], backwards=True)
    theirs, theirs_std, _, _ = reference.run_odernn(data, times, run_backwards=True)
    assert torch.equal(theirs_std, torch.zeros_like(theirs_std))  # the wiring keeps the std channel out
    # both solve every gap with dopri5 at rtol 1e-11, atol 1e-12 on O(1) states
    torch.testing.assert_close(ours, theirs[0], rtol=1e-9, atol=1e-10)
    # one time point: the reference's GRU update from zero, with no solve
    one = IrregularBatch(batch.times[:, :1], batch.values[:, -1:], batch.mask[:, -1:])
    ours, _ = model.encoder.ode_rnn.run(one, t_start=one.times[0, 0], backwards=True)
    mean, std = reference(torch.cat([one.values, one.mask], -1), one.times[0])
    mean_from_ours, std_from_ours = reference.transform_z0(torch.cat([ours, torch.zeros_like(ours)], -1)).chunk(2, -1)
    torch.testing.assert_close(mean[0], mean_from_ours, rtol=1e-12, atol=1e-14)  # the same operations
    torch.testing.assert_close(std[0], std_from_ours.abs(), rtol=1e-12, atol=1e-14)


def test_ode_rnn_encoder_skips_the_references_first_step_from_beyond_the_last_time(ref):
    # The reference starts h = 0 at 0.01 after the last time and takes an Euler step to it: with a field
    # whose f(0) is not 0 this moves h before the first update. Ours starts at the last observation.
    torch.manual_seed(0)
    model = LatentODE(
        obs_dim=2, latent_dim=2, rec_hidden=5, encoder="ode-rnn", ode_rnn_kwargs=dict(ode_hidden=6, **SOLVER)
    )
    reference = _wire_ode_rnn(ref, model)
    with torch.no_grad():
        model.encoder.ode_rnn.field[-1].bias.fill_(0.5)
    batch = _shared_grid_batch()
    times = batch.times[0]
    ours, _ = model.encoder.ode_rnn.run(batch, t_start=times[0], backwards=True)
    theirs = reference.run_odernn(torch.cat([batch.values, batch.mask], -1), times, run_backwards=True)[0][0]
    assert float((ours - theirs).abs().max().detach()) > 1e-4  # the 0.01 step of 0.5 per unit time, propagated


def test_recognition_gru_equals_the_reference_rnn_encoder(ref):
    # Encoder_z0_RNN: a GRU over (time gap, values, mask) read backwards; the gap read with point k is
    # t_k - t_{k-1} and 0 with the first point, ours with t0 = the first time. Every time has an
    # observed channel (the reference's GRU reads all-masked times too; ours skips them, see docs).
    torch.manual_seed(0)
    bsz, length, dim, hidden = 3, 7, 2, 6
    g = torch.Generator().manual_seed(2)
    times = torch.rand(length, generator=g).sort().values
    mask = (torch.rand(bsz, length, dim, generator=g) > 0.3).double()
    mask[:, :, 0] = 1.0
    values = torch.randn(bsz, length, dim, generator=g) * mask
    batch = IrregularBatch(times=times.expand(bsz, length).clone(), values=values, mask=mask)
    ours = RecognitionRNN(dim, hidden=hidden, latent_dim=hidden // 2, cell="gru")
    theirs = ref.encoder_decoder.Encoder_z0_RNN(hidden // 2, 2 * dim, lstm_output_size=hidden)
    with torch.no_grad():
        gru = theirs.gru_rnn
        gru.weight_ih_l0.copy_(ours.gru.weight_ih[:, [2 * dim, *range(2 * dim)]])  # gap first in theirs
        gru.weight_hh_l0.copy_(ours.gru.weight_hh)
        gru.bias_ih_l0.copy_(ours.gru.bias_ih)
        gru.bias_hh_l0.copy_(ours.gru.bias_hh)
        ours.h2o.weight.copy_(torch.eye(hidden))  # read the hidden state itself out
        ours.h2o.bias.zero_()
    mean, logvar = ours(batch, times[0])
    theirs(torch.cat([values, mask], -1), times, run_backwards=True)
    hidden_state = theirs.extra_info["rnn_outputs"][-1]
    torch.testing.assert_close(torch.cat([mean, logvar], -1), hidden_state, rtol=1e-12, atol=1e-14)  # same ops


def test_gaussian_likelihood_is_the_references_per_channel_mean_times_the_counts(ref):
    # The reference's masked_gaussian_log_density averages log N over the observed points of each
    # (series, channel), then over channels; ours sums over the observed entries (Chen et al. 2018's ELBO).
    batch = _shared_grid_batch()
    g = torch.Generator().manual_seed(3)
    mean = torch.randn(batch.values.shape, generator=g)
    std = 0.3
    ours = gaussian_log_likelihood(batch.values, mean, std, batch.mask)
    theirs = ref.likelihood_eval.masked_gaussian_log_density(
        mean[None], batch.values[None], obsrv_std=torch.tensor([std]), mask=batch.mask[None]
    )[:, 0]
    counts = batch.mask.sum(1)  # (B, D) observed points per series and channel
    per_channel = torch.stack(
        [gaussian_log_likelihood(batch.values, mean, std, batch.mask * (torch.arange(2) == d)) for d in range(2)], -1
    )
    from_ours = torch.where(counts > 0, per_channel / counts.clamp(min=1), torch.zeros(())).mean(-1)
    torch.testing.assert_close(from_ours, theirs, rtol=1e-12, atol=1e-12)  # the same sums, regrouped
    torch.testing.assert_close(per_channel.sum(-1), ours, rtol=1e-12, atol=1e-12)


def test_kl_is_the_references_mean_times_the_latent_size(ref):
    # The reference's q(z0 | x) = Normal(mean, |std|) and KL to N(0, I) averaged over series and latent
    # dimensions; ours is KL per series summed over dimensions, std = exp(logvar / 2).
    g = torch.Generator().manual_seed(4)
    mean, logvar = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    prior = torch.distributions.Normal(torch.tensor([0.0]), torch.tensor([1.0]))
    theirs = torch.distributions.kl_divergence(q, prior)[None].mean((1, 2))  # base_models.VAE_Baseline
    torch.testing.assert_close(normal_kl(mean, logvar).mean() / 3, theirs[0], rtol=1e-12, atol=1e-14)


def test_poisson_term_against_the_references_compute_poisson_proc_likelihood(ref):
    # Same intensities and integrals: the reference averages (sum of log rates at events - integral) over
    # channels, ours sums; a channel without events contributes 0 there and -integral here (the
    # probability of no event in the window), which is where the two differ beyond the factor D.
    torch.manual_seed(0)
    model = LatentODE(obs_dim=2, poisson=True, **SOLVER)
    batch = _shared_grid_batch()  # every series observed at the last time: both windows end there
    z0 = torch.randn(3, model.latent_dim, generator=torch.Generator().manual_seed(5))
    states = model.latent_trajectory(z0, batch.times[0]).transpose(0, 1)  # (B, L, state)
    _, ours = model.log_likelihood_of_states(states, batch.values, batch.mask)
    info = {
        "log_lambda_y": model.log_intensity(states[..., : model.latent_dim])[None],
        "int_lambda": states[None, :, -1, model.latent_dim :],
    }
    theirs = ref.likelihood_eval.compute_poisson_proc_likelihood(
        batch.values, batch.values[None], info, mask=batch.mask
    )[0]
    no_event = (batch.mask.sum(1) == 0).double()  # (B, D): series 2 has no event in channel 0
    assert bool(no_event.any())
    torch.testing.assert_close(ours, 2 * theirs - (no_event * info["int_lambda"][0]).sum(-1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("encoder", ["gru", "ode-rnn"])
def test_elbo_gradient_matches_finite_differences(encoder):
    # Fixed-step rk4 everywhere, so the loss is a smooth function of the weights; a batch with a series
    # observed once and a time at which a series sees nothing.
    torch.manual_seed(0)
    rk4 = dict(method="rk4", options={"step_size": 0.1})
    model = LatentODE(
        obs_dim=2,
        latent_dim=2,
        rec_hidden=3,
        dyn_hidden=4,
        dec_hidden=4,
        encoder=encoder,
        poisson=True,
        **rk4,
        ode_rnn_kwargs=dict(ode_hidden=3, **rk4) if encoder == "ode-rnn" else None,
    )
    batch = _shared_grid_batch()
    params = list(model.parameters())

    def loss() -> torch.Tensor:
        return model.elbo(batch, t0=-0.1, generator=torch.Generator().manual_seed(6)).loss

    grads = torch.autograd.grad(loss(), params)
    g = torch.Generator().manual_seed(7)
    for _ in range(3):
        direction = [torch.randn(p.shape, generator=g) for p in params]
        eps = 1e-5
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.add_(eps * d)
            up = loss()
            for p, d in zip(params, direction):
                p.sub_(2 * eps * d)
            down = loss()
            for p, d in zip(params, direction):
                p.add_(eps * d)
        fd = (up - down) / (2 * eps)
        exact = sum((gr * d).sum() for gr, d in zip(grads, direction))
        # central differences: O(eps^2) truncation and O(1e-16 / eps) rounding on an O(10) loss
        assert math.isclose(float(fd), float(exact), rel_tol=1e-7, abs_tol=1e-8)


def test_forward_ode_rnn_steps_forward_where_the_references_forward_run_steps_back(ref):
    # run_odernn(run_backwards=False) keeps the backward pass's bookkeeping: one Euler step from t_0 to
    # the last time before x_1, then from t_{i-1} back to t_{i-2} before x_i. Emulated with our field
    # and cell it is reproduced; ours evolves by t_i - t_{i-1} and differs.
    torch.manual_seed(0)
    model = LatentODE(
        obs_dim=2, latent_dim=2, rec_hidden=5, encoder="ode-rnn", ode_rnn_kwargs=dict(ode_hidden=6, **SOLVER)
    )
    reference = _wire_ode_rnn(ref, model)
    enc = model.encoder.ode_rnn
    batch = _shared_grid_batch()
    times, data = batch.times[0], torch.cat([batch.values, batch.mask], -1)
    theirs = reference.run_odernn(data, times, run_backwards=False)[0][0]
    h = torch.zeros_like(theirs)
    observed = batch.time_mask.unsqueeze(-1)
    for i in range(len(times)):
        start, end = (times[-1] + 0.01, times[-1]) if i == 0 else (times[i - 1], times[i - 2])
        if start - end < (times[-1] - times[0]) / 50:  # the reference's Euler step for short (or negative) gaps
            h = h + enc.field(h) * (end - start)
        else:
            h = enc.evolve(h, (end - start).expand(len(h)))
        h = observed[:, i] * enc.cell(data[:, i], h) + (1 - observed[:, i]) * h
    torch.testing.assert_close(h, theirs, rtol=1e-9, atol=1e-10)  # dopri5 at rtol 1e-11 on both sides
    ours, _ = enc.run(batch)
    assert float((ours - theirs).abs().max().detach()) > 1e-3
