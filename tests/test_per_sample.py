"""Per-sample adaptive stepping (options={"per_sample": True})."""

import math

import numpy as np
import pytest
import torch

import hybrid_node as hn

LAM = torch.tensor([0.1, 1.0, 10.0, 50.0], dtype=torch.float64)
T = torch.linspace(0.0, 2.0, 11, dtype=torch.float64)


def field(t, y):
    # decoupled y' = -lam_b y + cos(t): t is each element's own time (shape (batch,)) when per_sample
    tt = t.reshape(-1, 1) if t.dim() else t
    return -LAM[: y.shape[0], None] * y + torch.cos(tt)


def exact(t: float, lam: torch.Tensor) -> torch.Tensor:
    lm = lam[:, None]
    return (1 - lm / (lm**2 + 1)) * torch.exp(-lm * t) + (lm * math.cos(t) + math.sin(t)) / (lm**2 + 1)


def test_matches_exact_solution_per_element():
    y0 = torch.ones(4, 2, dtype=torch.float64)
    ys = hn.odeint(field, y0, T, rtol=1e-8, atol=1e-10, options={"per_sample": True})
    ref = torch.stack([exact(float(t), LAM).expand(4, 2) for t in T])
    # each element meets its own local tolerance; the global error stays within ~100x rtol
    assert float((ys - ref).abs().max()) < 1e-6


def test_each_element_is_independent_of_the_rest_of_the_batch():
    """With per-sample control an element's steps do not depend on the others: solving it alone gives
    the same numbers (the shared-step solver differs, as the stiff element drives its steps)."""
    y0 = torch.ones(4, 2, dtype=torch.float64)
    opts = {"per_sample": True}
    batch = hn.odeint(field, y0, T, rtol=1e-6, atol=1e-8, options=opts)
    alone = hn.odeint(field, y0[:1], T, rtol=1e-6, atol=1e-8, options=opts)
    assert torch.allclose(batch[:, :1], alone, rtol=0, atol=1e-14)
    shared = hn.odeint(field, y0, T, rtol=1e-6, atol=1e-8)
    assert float((shared[:, :1] - alone).abs().max()) > 1e-12


def test_fewer_evaluations_for_the_easy_elements_reverse_time_and_stats():
    y0 = torch.ones(4, 2, dtype=torch.float64)
    sol = hn.solve(field, y0, T.flip(0), controller=hn.PIDController(rtol=1e-6, atol=1e-8, per_sample=True))
    ref = hn.odeint(field, y0, T.flip(0), rtol=1e-10, atol=1e-12)
    assert float(((sol.ys - ref) / ref).abs().max()) < 1e-4
    assert sol.stats.nfe > 0 and sol.stats.n_accepted > 0


def test_gradient_matches_analytic():
    w = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    y0 = torch.ones(3, 2, dtype=torch.float64)
    ys = hn.odeint(lambda t, y: -w * y, y0, T, rtol=1e-9, atol=1e-11, options={"per_sample": True})
    ys[-1].sum().backward()
    # d/dw sum(e^{-2w}) over 6 elements = -2 * 6 e^{-2w}
    assert float(w.grad) == pytest.approx(-12 * math.exp(-1.0), rel=1e-6)


def test_unsupported_combinations_raise():
    y0 = torch.ones(2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="single tensor state"):
        hn.odeint(lambda t, s: (s[1], -s[0]), (y0, y0), T, options={"per_sample": True})
    with pytest.raises(ValueError, match="custom norm"):
        hn.odeint(field, y0, T, options={"per_sample": True, "norm": lambda x: x.abs().max()})
    with pytest.raises(ValueError, match="events"):
        hn.odeint(field, y0, T[:2], event_fn=lambda t, y: y.sum() - 10.0, options={"per_sample": True})


@pytest.mark.parametrize("method", ["bosh3", "fehlberg2", "adaptive_heun", "dopri8"])
def test_pairs_without_a_polynomial_extension_match_the_shared_solver_per_element(method):
    """The outputs between steps of a pair without the tableau's continuous extension: cubic Hermite
    (bosh3, fehlberg2, adaptive_heun) or the method's own (DOP853's, with its error estimate), as the
    shared-step loop. They were linear between the step ends: at rtol 1e-6 dopri8's interior outputs
    were 1.4e-2 off (the shared solver's 8.8e-7), bosh3's 1.4e-4 (8.6e-7), on y' = -k (y - cos t)."""
    y0 = torch.ones(4, 2, dtype=torch.float64)
    batch = hn.odeint(field, y0, T, method=method, rtol=1e-5, atol=1e-8, options={"per_sample": True})
    ref = torch.stack([exact(float(t), LAM).expand(4, 2) for t in T])
    for i in range(4):
        alone = hn.odeint(
            lambda t, y, i=i: field(t, torch.cat([torch.zeros(i, 2, dtype=y.dtype), y]))[i:],
            y0[i : i + 1],
            T,
            method=method,
            rtol=1e-5,
            atol=1e-8,
        )
        # one element's per-sample steps are the shared solver's steps for it alone, so the outputs
        # inside the interval agree up to rounding: 1e-9, as a last-bit difference of an error ratio
        # may move a step (fehlberg2's lam = 50 element: 1e-10), where linear interpolation was 3.6e-6
        # (adaptive_heun) to 0.14 (dopri8) off; the end is left out, because the shared solver
        # stretches its last step by up to 1% to land there and the per-sample one does not
        assert float((batch[1:-1, i : i + 1] - alone[1:-1]).abs().max()) < 1e-9, i
    # and both are within the tolerance's global error of the exact solution (~100x rtol)
    assert float((batch - ref).abs().max()) < 1e-3


def test_a_failing_element_is_named_and_the_others_keep_their_results():
    """Element 1's field turns NaN at t > 1: the error names it (it said "step size underflow" for
    any failure, without the element); with throw=False the others, which reach the end while
    element 1's rejected steps shrink to nothing, are what they are solved without it."""

    def broken(t, y):
        tt = t.reshape(-1, 1) if t.dim() else t
        out = -LAM[: y.shape[0], None] * y + torch.cos(tt)
        return torch.where((torch.arange(y.shape[0]) == 1)[:, None] & (tt > 1.0), math.nan, out)

    y0 = torch.ones(3, 2, dtype=torch.float64)
    ctrl = hn.PIDController(rtol=1e-6, atol=1e-8, per_sample=True)
    with pytest.raises(hn.SolverError, match=r"non-finite state in sample\(s\) \[1\] of 3"):
        hn.solve(broken, y0, T, controller=ctrl)
    sol = hn.solve(broken, y0, T, controller=ctrl, throw=False)
    assert sol.status is hn.Status.NONFINITE
    assert torch.isnan(sol.ys[T > 1.0 + 1e-9, 1]).all()
    for i in (0, 2):
        alone = hn.solve(field, y0[: i + 1], T, controller=ctrl).ys[:, i]
        # the same per-sample steps for the element, alone or beside the failing one: bit for bit
        assert torch.equal(sol.ys[:, i], alone), i


def test_an_element_failing_early_does_not_cut_the_others_short():
    """Element 1 turns infinite at t > 0.01 and fails within a few dozen batched steps, before the
    stiff lam = 50 element reaches t = 2: with throw=False the others still run to the end and
    equal their solves alone (they stopped with the failure, and the lam = 50 element's last
    output was NaN)."""

    def early(t, y):
        out = field(t, y)
        return torch.where((torch.arange(y.shape[0]) == 1)[:, None] & (t.reshape(-1, 1) > 0.01), math.inf, out)

    y0 = torch.ones(4, 2, dtype=torch.float64)
    ctrl = hn.PIDController(rtol=1e-6, atol=1e-8, per_sample=True)
    with pytest.raises(hn.SolverError, match=r"non-finite state in sample\(s\) \[1\] of 4"):
        hn.solve(early, y0, T, controller=ctrl)
    sol = hn.solve(early, y0, T, controller=ctrl, throw=False)
    assert sol.status is hn.Status.NONFINITE
    assert torch.isnan(sol.ys[1:, 1]).all()
    for i in (0, 2, 3):
        alone = hn.solve(field, y0[: i + 1], T, controller=ctrl).ys[:, i]
        # the element's own per-sample steps, with or without the failing one beside it: bit for bit
        assert torch.equal(sol.ys[:, i], alone), i


def test_a_field_written_for_a_scalar_time_is_told_what_t_is():
    """``-y + sin(t)`` broadcasts a (batch,) t along the state's last dimension: a torch shape error
    (a (4, 3) state) or a (4, 4) result for a (4, 1) state, which said nothing of the per-sample t."""
    t = torch.linspace(0.0, 1.0, 3, dtype=torch.float64)
    for n, error in ((3, RuntimeError), (1, ValueError)):
        with pytest.raises(error, match=r"t of shape \(batch,\)"):
            hn.odeint(
                lambda t, y: -y + torch.sin(t), torch.ones(4, n, dtype=torch.float64), t, options={"per_sample": True}
            )
    # the same field is fine where t broadcasts as written: a state of shape (batch,)
    ys = hn.odeint(lambda t, y: -y + torch.sin(t), torch.ones(4, dtype=torch.float64), t, options={"per_sample": True})
    ref = hn.odeint(lambda t, y: -y + torch.sin(t), torch.ones(4, dtype=torch.float64), t, rtol=1e-10, atol=1e-12)
    assert float((ys - ref).abs().max()) < 1e-5  # the default rtol 1e-7, errors ~100x rtol at most


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_takes_the_cpu_steps_and_keeps_the_others_past_a_failure():
    """On CUDA the per-sample times stay float64, so the steps are the CPU's, beside an element that
    turns infinite at t > 0.5 (throw=False): the others reach the end there too."""

    def early(t, y):
        out = -LAM.to(y.device)[: y.shape[0], None] * y + torch.cos(t.reshape(-1, 1))
        bad = (torch.arange(y.shape[0], device=y.device) == 1)[:, None] & (t[:, None] > 0.5)
        return torch.where(bad, math.inf, out)

    y0 = torch.ones(4, 2, dtype=torch.float64)
    ctrl = hn.PIDController(rtol=1e-8, atol=1e-10, per_sample=True)
    cpu = hn.solve(early, y0, T, controller=ctrl, throw=False)
    gpu = hn.solve(early, y0.cuda(), T.cuda(), controller=ctrl, throw=False)
    assert gpu.status is cpu.status is hn.Status.NONFINITE
    assert torch.equal(torch.isnan(gpu.ys).cpu(), torch.isnan(cpu.ys))
    assert not torch.isnan(gpu.ys[:, [0, 2, 3]]).any()
    ref = torch.stack([exact(float(t), LAM).expand(4, 2) for t in T])
    # each element meets its own local tolerance; the global error stays within ~100x rtol
    assert float((gpu.ys[:, [0, 2, 3]].cpu() - ref[:, [0, 2, 3]]).abs().max()) < 1e-6
    # the CPU's steps: CUDA's cos and reductions differ in the last bits, which could move a step at
    # most (then the outputs differ by about a local error, rtol |y| / 10)
    assert torch.allclose(gpu.ys.cpu(), cpu.ys, rtol=0, atol=1e-9, equal_nan=True)


def _net_field(rows: list[int], bad: int, t_bad: float):
    """A small network's field for the samples ``rows`` of a batch, infinite for sample ``bad`` after ``t_bad``."""
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).double()
    sample = torch.tensor(rows)

    def f(t, y):
        out = net(torch.cat([y, t[:, None]], 1))
        return torch.where((sample == bad)[:, None] & (t[:, None] > t_bad), math.inf, out)

    return net, f


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3", "dopri8"])
def test_a_failing_sample_leaves_the_others_gradients_those_of_their_solve_alone(method):
    """Sample 1's field turns infinite at t > 0.5 (throw=False): the parameter and initial-state
    gradients of a loss over the other samples are those of solving them without it, and a loss over
    every reached output (nansum) adds sample 1's own. They were NaN for the whole batch: sample 1's
    rejected attempts fed infinite stages to later calls of the network, whose weight gradient
    multiplies the zero cotangent of that row by its input (0 * inf)."""
    solver = {"dopri5": hn.Dopri5, "tsit5": hn.Tsit5, "bosh3": hn.solvers.Bosh3, "dopri8": hn.solvers.Dopri8}[method]()
    ctrl = hn.PIDController(rtol=1e-6, atol=1e-8, per_sample=True)
    y0 = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    good = [0, 2, 3]

    def grads(rows, loss_of):
        net, f = _net_field(rows, 1, 0.5)
        y = y0[rows].clone().requires_grad_()
        ys = hn.solve(f, y, T, solver=solver, controller=ctrl, throw=False).ys
        return ys, torch.autograd.grad(loss_of(ys), [y, *net.parameters()])

    ys, g = grads([0, 1, 2, 3], lambda ys: ys[:, good].pow(2).sum())
    assert torch.isnan(ys[T > 0.5, 1]).all() and torch.isfinite(ys[T <= 0.5]).all()
    _, g_alone = grads(good, lambda ys: ys.pow(2).sum())
    # the same steps for each sample; the network's products round differently for another batch size
    # (outputs 1.3e-13 apart measured), so the gradients agree to rounding, not bit for bit
    assert float((g[0][good] - g_alone[0]).abs().max() / g_alone[0].abs().max()) < 1e-10
    assert float(g[0][1].abs().max()) == 0.0  # sample 1 is not in the loss
    for a, b in zip(g[1:], g_alone[1:], strict=True):
        assert float((a - b).abs().max() / b.abs().max()) < 1e-10
    # a loss over every reached output: the others' gradients plus sample 1's solved alone
    _, g_all = grads([0, 1, 2, 3], lambda ys: ys.pow(2).nansum())
    _, g_one = grads([1], lambda ys: ys.pow(2).nansum())
    for a, b, c in zip(g_all[1:], g_alone[1:], g_one[1:], strict=True):
        assert float((a - b - c).abs().max() / (b + c).abs().max()) < 1e-10  # rounding, as above


def test_a_step_rejected_for_a_non_finite_stage_leaves_the_gradient_that_of_the_shared_solver():
    """y' = -50 w y, infinite for |y| > 5 (a field with a domain), from a first step of 0.5: the first
    attempts' stages leave the domain and are rejected, and the solve succeeds. The gradient was NaN
    with per-sample control (the rejected rows' infinite stages fed the next calls of the field, and
    d(-50 w y)/dw is y: 0 * inf), where the shared-step solver, which drops a rejected attempt, gives
    the analytic -150 T e^(-50 T) to the method's accuracy."""
    t = torch.tensor([0.0, 0.3], dtype=torch.float64)
    grads = []
    for per_sample in (True, False):
        w = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
        y0 = torch.ones(3, 1, dtype=torch.float64)
        ctrl = hn.PIDController(rtol=1e-6, atol=1e-9, first_step=0.5, per_sample=per_sample)
        sol = hn.solve(lambda t, y, w=w: torch.where(y.abs() > 5, math.inf, -50 * w * y), y0, t, controller=ctrl)
        assert sol.status is hn.Status.SUCCESS and sol.stats.n_rejected > 0
        grads.append(torch.autograd.grad(sol.ys[-1].sum(), [w])[0])
    # the same steps (one sample's per-sample steps are the shared solver's): rounding only
    assert float((grads[0] - grads[1]).abs()) < 1e-12 * float(grads[1].abs())
    # and d/dw of 3 e^(-50 w T) = -150 T e^(-15) to the global error of an rtol 1e-6 solve through 15
    # time constants (2.7e-4 relative measured)
    assert float(grads[0]) == pytest.approx(-3 * 50 * 0.3 * math.exp(-15.0), rel=1e-3)


def test_a_stage_with_zero_weights_that_turns_infinite_still_rejects_the_attempt():
    """dopri5's second stage has zero weight in both the solution and the error estimate, so only the
    later stages that it feeds could see it turn infinite; those are given a finite stand-in (for the
    gradients' sake), and the attempt must still be rejected: the steps of the shared-step solver,
    which sees the infinite later stages. Here the field is infinite in a short time window that the
    first attempt's second stage (t = 0.1) alone falls into."""

    def f(t, y):
        tt = t.reshape(-1, 1) if t.dim() else t
        return torch.where((tt > 0.0999) & (tt < 0.1001), math.inf, -y + torch.cos(tt))

    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    y0 = torch.ones(1, 1, dtype=torch.float64)
    sols = [
        hn.solve(f, y0, t, controller=hn.PIDController(rtol=1e-6, atol=1e-9, first_step=0.5, per_sample=per_sample))
        for per_sample in (True, False)
    ]
    assert sols[0].stats.n_rejected == sols[1].stats.n_rejected > 0
    assert sols[0].stats.nfe == sols[1].stats.nfe
    assert float((sols[0].ys - sols[1].ys).abs().max()) < 1e-15  # the same steps: rounding only


def test_a_first_step_per_sample_is_each_samples_own():
    """A tensor ``first_step`` gives every sample its own first step: each sample's solve is then the
    one it gets alone from its first step as one number."""
    y0 = torch.ones(4, 2, dtype=torch.float64)
    steps = torch.tensor([1e-4, 1e-3, 1e-2, 0.1], dtype=torch.float64)
    ctrl = hn.PIDController(rtol=1e-6, atol=1e-8, first_step=steps, per_sample=True)
    batch = hn.solve(field, y0, T, controller=ctrl).ys
    for i in range(4):
        lam = LAM[i : i + 1]

        def alone(t, y, lam=lam):
            return -lam[:, None] * y + torch.cos(t.reshape(-1, 1))

        ctrl_i = hn.PIDController(rtol=1e-6, atol=1e-8, first_step=float(steps[i]), per_sample=True)
        ys = hn.solve(alone, y0[i : i + 1], T, controller=ctrl_i).ys
        # the same steps: the end, reached by a step, to 1e-15; the interpolated outputs to 1.6e-13 (the
        # batched dense-output product rounds otherwise for one sample), where another first step moves
        # them by about the tolerance (1e-6)
        assert float((batch[:, i] - ys[:, 0]).abs().max()) < 1e-12, i
    # one number for all is the same as that number per sample, bit for bit
    same = hn.PIDController(
        rtol=1e-6, atol=1e-8, first_step=torch.full((4,), 1e-3, dtype=torch.float64), per_sample=True
    )
    one = hn.PIDController(rtol=1e-6, atol=1e-8, first_step=1e-3, per_sample=True)
    assert torch.equal(hn.solve(field, y0, T, controller=same).ys, hn.solve(field, y0, T, controller=one).ys)


@pytest.mark.parametrize(
    "steps, match",
    [
        (torch.tensor([1e-3, 0.0, 1e-3, 1e-3]), "positive and finite"),
        (torch.tensor([1e-3, math.inf, 1e-3, 1e-3]), "positive and finite"),
        (torch.tensor([1e-3, math.nan, 1e-3, 1e-3]), "positive and finite"),
        (torch.tensor([1e-3, 1e-3j, 1e-3, 1e-3]), "real tensor or array"),
        (torch.tensor([True, True, True, True]), "real tensor or array"),
    ],
)
def test_a_first_step_per_sample_that_is_not_positive_and_finite_is_refused(steps, match):
    with pytest.raises(ValueError, match=match):
        hn.PIDController(first_step=steps, per_sample=True)


def test_a_first_step_per_sample_needs_one_per_sample_and_per_sample_control():
    y0 = torch.ones(4, 2, dtype=torch.float64)
    ctrl = hn.PIDController(first_step=torch.full((3,), 1e-3), per_sample=True)
    calls = []

    def counted(t, y):
        calls.append(t)
        return field(t, y)

    with pytest.raises(ValueError, match="first_step has 3 values but the batch has 4 samples"):
        hn.solve(counted, y0, T, controller=ctrl)
    assert not calls  # refused before the field is called
    # the other loops take one first step (they read it as a float)
    with pytest.raises(ValueError, match=r"a first step per sample needs PIDController\(per_sample=True\)"):
        hn.PIDController(first_step=torch.full((4,), 1e-3))
    with pytest.raises(ValueError, match="a first step per sample needs"):
        hn.odeint(field, y0, T, options={"first_step": np.full(4, 1e-3)})
    # numpy arrays of one step per sample are taken as tensors are
    ys = hn.odeint(field, y0, T, options={"first_step": np.full(4, 1e-3), "per_sample": True})
    ref = hn.odeint(field, y0, T, options={"first_step": 1e-3, "per_sample": True})
    assert torch.equal(ys, ref)


def test_every_sample_reports_its_own_status():
    """``Solution.sample_status`` (as torchode's per-sample status): the batch status said only that some
    sample failed, and the failed samples were found by their NaN outputs."""
    ctrl = hn.PIDController(rtol=1e-6, atol=1e-8, per_sample=True)
    y0 = torch.ones(3, 2, dtype=torch.float64)
    assert hn.solve(field, y0, T, controller=ctrl).sample_status == (hn.Status.SUCCESS,) * 3

    def early(t, y):  # sample 1 turns infinite at t > 0.01
        return torch.where((torch.arange(y.shape[0]) == 1)[:, None] & (t.reshape(-1, 1) > 0.01), math.inf, field(t, y))

    sol = hn.solve(early, y0, T, controller=ctrl, throw=False)
    assert sol.sample_status == (hn.Status.SUCCESS, hn.Status.NONFINITE, hn.Status.SUCCESS)

    # a sample at rest (its steps grow tenfold) ends within max_num_steps, a fast oscillation does not
    w = torch.tensor([0.0, 50.0], dtype=torch.float64)
    spin = lambda t, y: torch.stack([w * y[:, 1], -w * y[:, 0]], 1)  # noqa: E731
    few = hn.PIDController(rtol=1e-8, atol=1e-10, per_sample=True, max_num_steps=30)
    sol = hn.solve(spin, torch.ones(2, 2, dtype=torch.float64), T, controller=few, throw=False)
    assert sol.status is hn.Status.MAX_STEPS
    assert sol.sample_status == (hn.Status.SUCCESS, hn.Status.MAX_STEPS)
    assert torch.equal(sol.ys[-1, 0], y0[0]) and torch.isnan(sol.ys[-1, 1]).all()

    shared = hn.PIDController(rtol=1e-6, atol=1e-8)
    assert hn.solve(field, y0, T, controller=shared).sample_status is None  # shared steps: no per-sample status


def test_a_single_output_time_and_an_empty_batch_report_every_sample():
    """One output time (nothing to integrate) and a batch of no samples returned ``sample_status=None``,
    as a shared-step solve does, though the caller asked for one status per sample."""
    ctrl = hn.PIDController(rtol=1e-6, atol=1e-8, per_sample=True)
    y0 = torch.ones(3, 2, dtype=torch.float64)
    sol = hn.solve(field, y0, T[:1], controller=ctrl)
    assert sol.sample_status == (hn.Status.SUCCESS,) * 3 and torch.equal(sol.ys[0], y0)
    assert hn.solve(field, y0[:0], T, controller=ctrl).sample_status == ()
    # what per-sample control refuses over a span it refuses at one output time too
    with pytest.raises(ValueError, match="single tensor state"):
        hn.solve(lambda t, y: y, (y0, y0), T[:1], controller=ctrl)


def test_a_failure_before_the_step_cap_is_the_status_with_or_without_throw():
    """Sample 2 turns infinite at t > 0.001 and fails within the first 100 batched steps; sample 1
    (a fast oscillation) then runs into max_num_steps=100. throw=True raises the failure where it
    happens (NONFINITE); throw=False reported MAX_STEPS for the batch, though it has the same samples'
    statuses and Integration's status is documented as NONFINITE where any failed for a non-finite state."""
    w = torch.tensor([0.0, 5000.0, 1.0], dtype=torch.float64)

    def spin(t, y):
        ww = w[: y.shape[0]]
        out = torch.stack([ww * y[:, 1], -ww * y[:, 0]], 1)
        return torch.where((torch.arange(y.shape[0]) == 2)[:, None] & (t[:, None] > 0.001), math.inf, out)

    y0 = torch.ones(3, 2, dtype=torch.float64)
    ctrl = hn.PIDController(rtol=1e-8, atol=1e-10, per_sample=True, max_num_steps=100)
    with pytest.raises(hn.SolverError, match=r"non-finite state in sample\(s\) \[2\] of 3") as info:
        hn.solve(spin, y0, T, controller=ctrl)
    sol = hn.solve(spin, y0, T, controller=ctrl, throw=False)
    assert sol.sample_status == (hn.Status.SUCCESS, hn.Status.MAX_STEPS, hn.Status.NONFINITE)
    assert sol.status is info.value.status is hn.Status.NONFINITE
    # without the failing sample the cap is the status, as before
    alone = hn.solve(spin, y0[:2], T, controller=ctrl, throw=False)
    assert alone.status is hn.Status.MAX_STEPS
    assert alone.sample_status == (hn.Status.SUCCESS, hn.Status.MAX_STEPS)
