"""Per-sample step control against torchode, whose per-instance step-size control it follows.

With the same pair, tolerances and I controller (torchode's ``IntegralController``; our default
``PIDController`` gains), both take the same steps for every sample: the same batched evaluations,
and outputs and gradients equal up to the order of floating-point operations.
"""

import pytest
import torch

import hybrid_node as hn

to = pytest.importorskip("torchode")

B = 6
SCALE = torch.logspace(-1.0, 1.5, B, dtype=torch.float64)  # time scales 0.1 to 30: different steps per sample


def _net() -> torch.nn.Module:
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).double()


def _problem(decreasing: bool = False):
    """B samples of an MLP field on (y, t), each on its own time scale ``SCALE``, and their states.

    Args:
        decreasing: the output times from 1.5 down to 0 instead of up.

    Returns:
        ``(f, net, y0, t)``: the field, its network, y0 of shape (B, 3) (drawn after the network's seed)
        and 7 output times over [0, 1.5].
    """
    net = _net()

    def f(t, y):
        return SCALE[:, None] * net(torch.cat([y, t[:, None]], 1))

    y0 = torch.randn(B, 3, dtype=torch.float64)
    t = torch.linspace(0.0, 1.5, 7, dtype=torch.float64)
    return f, net, y0, t.flip(0) if decreasing else t


def _torchode(f, y0, t, pair, rtol, atol, *, dt_max=None, dt0=None, through_steps=False, gains=None):
    term = to.ODETerm(f)
    if gains is None:
        ctrl = to.IntegralController(atol=atol, rtol=rtol, term=term, dt_max=dt_max)
    else:  # (pcoeff, icoeff, dcoeff), divided by the order as ours are
        ctrl = to.PIDController(atol, rtol, *gains, term=term, dt_max=dt_max)
    # its tolerance buffers are made in the default dtype, float32: rtol=1e-4 became 1.00000005e-4
    ctrl.atol, ctrl.rtol = torch.tensor(atol, dtype=torch.float64), torch.tensor(rtol, dtype=torch.float64)
    solver = to.AutoDiffAdjoint(pair(term=term), ctrl, backprop_through_step_size_control=through_steps)
    # dt0: one number for every sample or a tensor of one per sample (signed: negative backwards in time)
    dt = dt0 if dt0 is None or isinstance(dt0, torch.Tensor) else torch.full((y0.shape[0],), dt0, dtype=torch.float64)
    return solver.solve(to.InitialValueProblem(y0=y0, t_eval=t.expand(y0.shape[0], -1)), dt0=dt)


@pytest.mark.parametrize("pair", ["dopri5", "tsit5"])
@pytest.mark.parametrize("decreasing", [False, True])
def test_same_steps_and_outputs_as_torchode(pair, decreasing):
    f, _, y0, t = _problem(decreasing)
    solver = {"dopri5": hn.Dopri5(), "tsit5": hn.Tsit5()}[pair]
    with torch.no_grad():
        for rtol, atol in ((1e-4, 1e-6), (1e-8, 1e-10)):
            ref = _torchode(f, y0, t, {"dopri5": to.Dopri5, "tsit5": to.Tsit5}[pair], rtol, atol)
            sol = hn.solve(f, y0, t, solver=solver, controller=hn.PIDController(rtol=rtol, atol=atol, per_sample=True))
            assert (ref.status == 0).all()
            # both count one evaluation per batched call of the field: equal only if every sample's steps are
            assert sol.stats.nfe == int(ref.stats["n_f_evals"][0]), rtol
            # the same steps and dense output: rounding only (1.4e-12 measured, |y| up to 21)
            assert float((sol.ys.transpose(0, 1) - ref.ys).abs().max()) < 1e-11, rtol


def test_first_and_max_step_as_torchodes_dt0_and_dt_max():
    f, _, y0, t = _problem()
    with torch.no_grad():
        ref = _torchode(f, y0, t, to.Dopri5, 1e-6, 1e-8, dt_max=0.05, dt0=0.01)
        ctrl = hn.PIDController(rtol=1e-6, atol=1e-8, first_step=0.01, max_step=0.05, per_sample=True)
        sol = hn.solve(f, y0, t, controller=ctrl)
    assert sol.stats.nfe == int(ref.stats["n_f_evals"][0])
    assert float((sol.ys.transpose(0, 1) - ref.ys).abs().max()) < 1e-11  # the same steps: rounding only


@pytest.mark.parametrize("decreasing", [False, True])
def test_a_first_step_per_sample_as_torchodes_dt0_tensor(decreasing):
    """torchode's ``dt0`` may be a tensor of one first step per sample; ours takes the same tensor."""
    f, _, y0, t = _problem(decreasing)
    dt0 = torch.logspace(-4.0, -1.5, B, dtype=torch.float64)  # first steps 1e-4 to 0.03
    with torch.no_grad():
        ref = _torchode(f, y0, t, to.Dopri5, 1e-6, 1e-8, dt0=-dt0 if decreasing else dt0)
        sol = hn.solve(f, y0, t, controller=hn.PIDController(rtol=1e-6, atol=1e-8, first_step=dt0, per_sample=True))
        # the smallest first step alone, for all: a solve that ignored the others' would take other steps
        one = hn.solve(f, y0, t, controller=hn.PIDController(rtol=1e-6, atol=1e-8, first_step=1e-4, per_sample=True))
    assert (ref.status == 0).all()
    assert sol.stats.nfe == int(ref.stats["n_f_evals"][0])
    assert float((sol.ys.transpose(0, 1) - ref.ys).abs().max()) < 1e-11  # the same steps: rounding only
    assert float((one.ys.transpose(0, 1) - ref.ys).abs().max()) > 1e-9  # other steps: the tolerance's error


def test_a_first_step_above_max_step_is_clamped_to_it():
    """first_step is clamped to max_step as every step is: the solve is the one from first_step =
    max_step (torchode takes a dt0 above dt_max as its first step; 8.6e-7 apart here, docs/solvers.md)."""
    f, _, y0, t = _problem()
    with torch.no_grad():
        sols = [
            hn.solve(
                f,
                y0,
                t,
                controller=hn.PIDController(rtol=1e-6, atol=1e-8, first_step=h, max_step=0.05, per_sample=True),
            )
            for h in (0.1, 0.05)
        ]
    assert sols[0].stats.nfe == sols[1].stats.nfe
    assert torch.equal(sols[0].ys, sols[1].ys)  # the same steps from the same first step: bit for bit


def test_gradients_are_torchodes_with_the_steps_held_fixed():
    """Our step sizes are constants of the graph, torchode's ``backprop_through_step_size_control=False``;
    its default also differentiates the step-size formula (here up to 2e-6 relative apart)."""
    f, net, y0, _ = _problem()
    t = torch.linspace(0.0, 1.0, 5, dtype=torch.float64)
    ya, yb = y0.clone().requires_grad_(), y0.clone().requires_grad_()
    ref = _torchode(f, ya, t, to.Tsit5, 1e-6, 1e-8)
    g_ref = torch.autograd.grad(ref.ys.pow(2).sum(), [ya, *net.parameters()])
    ys = hn.solve(f, yb, t, solver=hn.Tsit5(), controller=hn.PIDController(rtol=1e-6, atol=1e-8, per_sample=True)).ys
    g = torch.autograd.grad(ys.pow(2).sum(), [yb, *net.parameters()])
    for a, b in zip(g, g_ref, strict=True):
        # the same steps and the same graph up to operation order: rounding only (8e-14 relative measured)
        assert float((a - b).abs().max() / b.abs().max()) < 1e-11


@pytest.mark.parametrize("icoeff", [1.0, 0.3])
def test_steps_from_rest_as_torchodes(icoeff):
    """Every sample rests at y = 0, where its field and so every error estimate is exactly 0, until its
    forcing (t - t_on)^3 starts (t_on 0.5 to 3): at rest its steps grow by the controller's factor at
    the floored error ratio. For the I controller that is ifactor (10) at either floor. With icoeff 0.3
    (gains summing below 0.52) it is 0.9 floor^(-0.06): 10 at torchode's 1e-38, the per-sample loop's
    floor, but 3.6 at the shared-step loops' 1e-10, which took 427 batched evaluations against
    torchode's 445, outputs 2.8e-6 apart (445 and 3e-13 at 1e-38)."""
    scale = torch.logspace(-1.0, 1.0, B, dtype=torch.float64)
    t_on = torch.linspace(0.5, 3.0, B, dtype=torch.float64)
    forcing = torch.tensor([1.0, -2.0], dtype=torch.float64)

    def f(t, y):
        return -scale[:, None] * y + torch.relu(t - t_on)[:, None] ** 3 * forcing

    y0 = torch.zeros(B, 2, dtype=torch.float64)
    t = torch.linspace(0.0, 5.0, 6, dtype=torch.float64)
    with torch.no_grad():
        ref = _torchode(f, y0, t, to.Dopri5, 1e-6, 1e-8, dt0=1e-3, gains=(0.0, icoeff, 0.0))
        ctrl = hn.PIDController(rtol=1e-6, atol=1e-8, icoeff=icoeff, first_step=1e-3, per_sample=True)
        sol = hn.solve(f, y0, t, controller=ctrl)
    assert (ref.status == 0).all()
    assert sol.stats.nfe == int(ref.stats["n_f_evals"][0])
    assert float((sol.ys.transpose(0, 1) - ref.ys).abs().max()) < 1e-11  # the same steps: rounding only
