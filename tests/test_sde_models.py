"""Neural SDE layers, the latent SDE and the ``hybrid-node sde`` subcommand."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import hybrid_node as hn
from hybrid_node import cli
from hybrid_node.experiments import latent_sde

pytestmark = pytest.mark.usefixtures("one_thread")


class _Drift(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(2, 2)

    def forward(self, t, y):
        return self.net(y)


@pytest.mark.parametrize("adjoint", [False, True])
def test_neural_sde_layer_trains(adjoint):
    torch.manual_seed(0)
    layer = hn.nn.NeuralSDE(
        _Drift(), hn.nn.DiagonalDiffusion(2), method="euler" if not adjoint else "milstein", dt=0.05, adjoint=adjoint
    )
    y0, ts, target = torch.randn(16, 2), torch.linspace(0, 1, 5), torch.zeros(5, 16, 2)
    opt = torch.optim.Adam(layer.parameters(), lr=0.05)
    losses = []
    for _ in range(15):
        loss = (layer(y0, ts) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert layer(y0, ts).shape == (5, 16, 2)
    assert sum(losses[-3:]) < sum(losses[:3])


def test_latent_sde_elbo_goes_down_and_samples_have_the_layout():
    torch.manual_seed(0)
    s = latent_sde.LatentSDESettings(n_paths=16, n_obs=10)
    ts, clean, noisy = latent_sde.make_data(s)
    assert ts.shape == (10,) and clean.shape == noisy.shape == (10, 16, 1)
    model = hn.nn.LatentSDE(1, 3, hidden=16, obs_std=s.obs_noise, dt=0.05)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        out = model(noisy, ts)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert float(out.kl_path.detach()) >= 0 and float(out.kl_z0.detach()) >= 0
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])
    assert model.sample_posterior(noisy, ts, n=2).shape == (10, 32, 1)
    assert model.sample_prior(ts, 7).shape == (10, 7, 1)


def test_sde_subcommand_writes_plots_and_results(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["sde", "--iters", "3", "--n-paths", "8", "--out", str(out)]) == 0
    for name in ("posterior_samples.png", "prior_samples.png", "loss.png", "results.md", "results.json"):
        assert (out / name).stat().st_size > 0, name
    printed = capsys.readouterr()
    # no progress bar: output is captured, not a terminal; the run folder is printed
    assert "latent sde" not in printed.err and str(out) in printed.out
    assert json.loads((out / "results.json").read_text())["rows"][0]["iterations"] == 3


def test_sde_subcommand_rejects_bad_settings(capsys):
    with pytest.raises(SystemExit) as stop:  # out of range on its own: argparse's usage error
        cli.main(["sde", "--iters", "0", "--no-progress"])
    assert stop.value.code == 2
    assert "argument --iters: must be >= 1" in capsys.readouterr().err


def test_neural_sde_refuses_plain_callables_under_the_adjoint():
    # sdeint_adjoint differentiates the layer's parameters; a lambda's closure tensor got no gradient
    # (k.grad stayed None) without a word, while sdeint's direct backpropagation gives one
    k = torch.tensor(0.5, requires_grad=True)

    def drift(t, y):
        return -k * y

    def diffusion(t, y):
        return 0.1 * torch.ones_like(y)

    with pytest.raises(ValueError, match="drift is a plain callable.*adjoint=False"):
        hn.nn.NeuralSDE(drift, diffusion, method="euler", adjoint=True)
    layer = hn.nn.NeuralSDE(drift, hn.nn.DiagonalDiffusion(2), method="euler", dt=0.1)
    layer.adjoint = True  # switched after construction: refused at the forward pass
    with pytest.raises(ValueError, match="drift is a plain callable"):
        layer(torch.ones(2, 2, requires_grad=True), torch.linspace(0, 1, 3))
    layer.adjoint = False
    layer(torch.ones(2, 2, requires_grad=True), torch.linspace(0, 1, 3)).sum().backward()
    assert k.grad is not None and float(k.grad) != 0.0


def test_latent_sde_checks_the_series_and_takes_times_as_a_list():
    # a mismatch failed inside the GRU or torch.distributions with a message naming neither xs nor ts,
    # and a list of times (accepted by sdeint) raised AttributeError: 'list' object has no attribute 'detach'
    torch.manual_seed(0)
    model = hn.nn.LatentSDE(1, 2, context_dim=3, hidden=4, dt=0.1)
    xs, ts = torch.randn(4, 3, 1), torch.linspace(0, 1, 4)
    with pytest.raises(ValueError, match=r"xs must be a tensor of shape \(T, batch, 1\)"):
        model(xs[..., 0], ts)
    with pytest.raises(ValueError, match=r"ts must hold one time per observation of xs, shape \(4,\)"):
        model(xs, ts[:3])
    with pytest.raises(ValueError, match="ts must hold one time"):
        model.sample_posterior(xs, ts[:3])
    # the same loss from a list of times as from the tensor (the same z0 noise and Brownian draws)
    torch.manual_seed(1)
    want = model(xs, ts).loss
    torch.manual_seed(1)
    got = model(xs, ts.tolist()).loss
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.usefixtures("float64_default")
def test_diagonal_diffusion_starts_at_its_scale_for_large_scales():
    # at z = 0 the hidden layer is tanh(0) = 0, so g = softplus(b2) = scale; b2 was log(expm1(scale)),
    # whose expm1 overflowed (OverflowError: math range error) for any scale above about 709
    for scale in (1e-6, 0.1, 50.0, 800.0):
        g = hn.nn.DiagonalDiffusion(2, scale=scale)(torch.tensor(0.0), torch.zeros(3, 2))
        # float64 rounding of log/expm1/softplus: a few ulps of the scale
        torch.testing.assert_close(g, torch.full((3, 2), scale), rtol=1e-12, atol=0)


def test_latent_sde_refuses_non_finite_observations_and_weights_that_diverged():
    # a NaN observation reached the solver as a NaN z0, refused as "y0 has NaN ...; check the initial
    # state"; an infinite one gave an infinite loss without a word; an empty batch and a NaN kl_weight a
    # NaN loss; a huge q(z0) log-std (the weights after a too large learning rate) overflowed exp into
    # the same "y0" message
    torch.manual_seed(0)
    model = hn.nn.LatentSDE(1, 2, context_dim=3, hidden=4, dt=0.1)
    xs, ts = torch.randn(4, 3, 1), torch.linspace(0, 1, 4)
    for bad in (float("nan"), float("inf")):
        ys = xs.clone()
        ys[2, 1, 0] = bad
        with pytest.raises(ValueError, match=r"xs has 1 NaN or infinite entries \(the first at time index 2, series 1"):
            model(ys, ts)
        with pytest.raises(ValueError, match="xs has 1 NaN or infinite"):
            model.sample_posterior(ys, ts)
    with pytest.raises(ValueError, match=r"at least one time and one series, got shape \(4, 0, 1\)"):
        model(xs[:, :0], ts)
    for weight in (float("nan"), -1.0):
        with pytest.raises(ValueError, match="kl_weight must be a finite number >= 0"):
            model(xs, ts, kl_weight=weight)
    with pytest.raises(TypeError, match="kl_weight must be a number, got str"):
        model(xs, ts, kl_weight="1")
    # a tensor weight, as a schedule may give, is the same weight as the float
    torch.manual_seed(1)
    want = model(xs, ts, kl_weight=0.5).loss
    torch.manual_seed(1)
    torch.testing.assert_close(model(xs, ts, kl_weight=torch.tensor(0.5)).loss, want, rtol=0, atol=0)
    with torch.no_grad():
        model.to_q0.bias[2:] = 1000.0  # log std of q(z0): exp overflows
    for run in (lambda: model(xs, ts), lambda: model.sample_posterior(xs, ts)):
        with pytest.raises(FloatingPointError, match=r"q\(z0 \| x\) is not finite.*lower the learning rate"):
            run()


def test_sde_subcommand_stops_a_diverged_run_with_a_message_naming_lr(tmp_path, capsys):
    # with --lr 1000 the first Adam step overflows q(z0 | x); the run ended in a solver traceback about a
    # NaN "y0" and "the initial state"
    out = tmp_path / "run"
    assert cli.main(["sde", "--iters", "5", "--n-paths", "4", "--lr", "1000", "--no-progress", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "training diverged at iteration 2 (q(z0 | x) overflowed); lower --lr (now 1000)" in err
    assert "Traceback" not in err
