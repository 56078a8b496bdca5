"""The dense output contract (``hn.odeint_dense`` / ``DenseSolution``), probed over every method.

What a user of diffrax's ``SaveAt(dense=True)`` / ``sol.evaluate``, scipy's ``dense_output=True`` or
DifferentialEquations.jl's ``sol(t)`` relies on, each against an outside yardstick: ``hn.odeint`` at
the same times, the matrix exponential of a linear problem, scipy's DOP853 at rtol 1e-13 on a
nonlinear one, scipy's own dense output, and central finite differences. The methods are enumerated
from ``hn.METHODS``; nothing here lists them by hand.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.integrate
import scipy.linalg
import torch

import hybrid_node as hn
from hybrid_node.solvers.base import ExternalSolver

A = np.array([[-0.1, 1.0], [-1.0, -0.1]])  # a damped rotation: y(t) = expm(A t) y0
Y0 = np.array([1.0, 0.5])


def _torch_methods() -> list[str]:
    """Every method with a torch solver of its own (the ones that can have dense output here)."""
    return [
        name
        for name, spec in hn.METHODS.items()
        if "torch" in spec.backends and not isinstance(spec.solver(), ExternalSolver)
    ]


METHODS = _torch_methods()
ADAPTIVE = [m for m in METHODS if hn.METHODS[m].solver().adaptive]
FIXED = [m for m in METHODS if not hn.METHODS[m].solver().adaptive]


def _separable(method: str) -> bool:
    """Whether the method steps a separable (q, p) pair (the symplectic ones take a tuple state)."""
    return type(hn.METHODS[method].solver()).__module__.endswith("symplectic")


def _problem(method: str):
    """(func, y0, exact) for the method: y' = A y, or as (q, p) the oscillator q' = p, p' = -q."""
    if _separable(method):

        def exact(t: float) -> np.ndarray:
            c, s = math.cos(t), math.sin(t)
            return np.array([Y0[0] * c + Y0[1] * s, -Y0[0] * s + Y0[1] * c])

        return (lambda t, y: (y[1], -y[0])), (torch.tensor(Y0[0]), torch.tensor(Y0[1])), exact
    a = torch.tensor(A)
    return (lambda t, y: y @ a.T), torch.tensor(Y0), (lambda t: scipy.linalg.expm(A * t) @ Y0)


def _flat(y) -> torch.Tensor:
    """A (q, p) tuple read as one tensor with the pair in its last dimension."""
    return torch.stack(y, -1) if isinstance(y, tuple) else y


def _options(method: str) -> dict:
    return {} if method in ADAPTIVE else {"step_size": 0.1}


def _tols(method: str) -> dict:
    """rtol 1e-6, or 1e-4 for the low-order pairs (some hundred steps either way, to keep the probe fast)."""
    rtol = 1e-6 if hn.METHODS[method].solver().order >= 3 else 1e-4
    return {"rtol": rtol, "atol": rtol * 1e-2}


def _dense(method: str, t0: float = 0.0, t1: float = 2.0, **kw):
    func, y0, _ = _problem(method)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the stiff solvers' "non-stiff problem" advice
        return hn.odeint_dense(func, y0, t0, t1, method=method, options=_options(method), **_tols(method), **kw)


def _step_times(sol, backward: bool) -> torch.Tensor:
    """The solver's own step times (caller's time), from the first step's start to the last one's end."""
    times = [s.t0 for s in sol.segments] + [sol.segments[-1].t1]
    return torch.tensor([-x for x in times] if backward else times, dtype=torch.float64)


# --- 1. reads at the solver's own step times -------------------------------------------------------


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
@pytest.mark.parametrize("method", METHODS)
def test_read_at_step_times_is_odeints_state(method, backward):
    """At its own step times the dense read is the state odeint returns there, bit for bit.

    odeint with those output times takes the same steps (outputs do not cut steps) and returns each
    step's state, so equality is exact. kencarp4, kvaerno3/5 missed by ~1e-8 (their Newton test ran at
    default tolerances under odeint_dense), dopri5/tsit5/auto at the end time and adams/bdf/lsoda at
    every step time by an ulp (the interpolant's sum in place of the state).
    """
    func, y0, _ = _problem(method)
    t0, t1 = (2.0, 0.0) if backward else (0.0, 2.0)
    sol = _dense(method, t0, t1)
    times = _step_times(sol, backward)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = hn.odeint(func, y0, times, method=method, options=_options(method), **_tols(method))
    assert torch.equal(_flat(sol(times)), _flat(ref))
    # one at a time (the scalar path) as in a batch
    assert torch.equal(_flat(sol(times[-1])), _flat(ref)[-1])
    assert torch.equal(_flat(sol(float(times[len(times) // 2]))), _flat(ref)[len(times) // 2])


# --- 5. gradients through dense reads (direct backprop, the one path odeint_dense offers) -----------


def _central(fn, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Central differences of the scalar ``fn`` at ``x``, one coordinate at a time."""
    x = x.detach()
    cols = [(fn(x + eps * e) - fn(x - eps * e)) / (2 * eps) for e in torch.eye(x.numel(), dtype=x.dtype)]
    return torch.stack(cols).reshape(x.shape)


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
@pytest.mark.parametrize("method", METHODS)
def test_gradient_in_query_times_is_the_interpolants_slope(method, backward):
    """d read / d t against central differences of the reads (float64).

    The times keep off the step grid, where the interpolant is smooth (a fixed-step linear one has kinks
    at the nodes). The error of a central difference of a polynomial of degree <= 8 with steps of
    ~0.1 is ~eps^2 |y'''| <= 1e-12, and its rounding ~1e-16 / eps = 1e-10, so 1e-8 leaves margin.
    Before the fix the times got no gradient at all (torch: "appears to not have been used in the graph").
    """
    sol = _dense(method, *((2.0, 0.0) if backward else (0.0, 2.0)))
    w = torch.tensor([0.3, -1.2], dtype=torch.float64)

    def loss(t: torch.Tensor) -> torch.Tensor:
        return (_flat(sol(t)) * w).sum()

    t = torch.tensor([0.33, 1.67, 0.94], dtype=torch.float64, requires_grad=True)  # unsorted on purpose
    (g,) = torch.autograd.grad(loss(t), t)
    torch.testing.assert_close(g, _central(loss, t, 1e-6), rtol=0, atol=1e-8)


def test_second_derivative_through_query_times_is_refused():
    """A graph through the gradient in the times would hold the slope as a constant: refused, with the fix."""
    sol = _dense("dopri5")
    t = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match="first-order only"):
        torch.autograd.grad(sol(t).sum(), t, create_graph=True)
    # with the times detached, the gradient in y0 can be differentiated again
    y0 = torch.tensor(Y0, requires_grad=True)
    a = torch.tensor(A)
    dense = hn.odeint_dense(lambda t, y: y @ a.T + 0.1 * y**2, y0, 0.0, 1.0)
    (g,) = torch.autograd.grad(dense(t.detach()).sum(), y0, create_graph=True)
    assert g.requires_grad


# --- 2. continuity, interpolation order, and scipy's dense output as a yardstick ---------------------


@pytest.mark.parametrize("method", METHODS)
def test_continuous_across_step_boundaries(method):
    """Left and right limits at every step time agree to rounding.

    One ulp of time moves y by |y'| * 2.2e-16 (|y'| <= 1.2 here), and the interpolants' sums round at
    ~10 ulp of |y| ~ 1: 1e-13 is far below any real jump (an interpolant off by its local error,
    >= 1e-10 at these tolerances).
    """
    sol = _dense(method)
    inner = _step_times(sol, False)[1:-1]
    here = _flat(sol(inner))
    for side in (-math.inf, math.inf):
        near = _flat(sol(torch.nextafter(inner, torch.tensor(side, dtype=torch.float64))))
        torch.testing.assert_close(near, here, rtol=0, atol=1e-13)


#: the interpolant orders q (local error O(h^(q+1))) that docs/solvers.md states, for the methods
#: with a dense output of their own; every other method uses the cubic Hermite of its end slopes
#: (q = 3) or, with fixed steps, torchdiffeq's linear interpolation (q = 1, "cubic": Hermite).
#: rodas4/rodas5p: Hairer-Wanner II, Section IV.7 and Steinebach 2023; rosenbrock23: Shampine and
#: Reichelt 1997 (a second-order interpolant).
OWN_DENSE_ORDER = {
    "dopri5": 4,
    "tsit5": 4,
    "auto": 4,  # tsit5's while the problem is not stiff
    "dopri8": 7,
    "kencarp4": 4,
    "kvaerno5": 4,
    "rodas5p": 4,
    "rodas4": 3,
    "rosenbrock23": 2,
}
#: variable-order methods: their interpolant is the Nordsieck polynomial of the order in use, not a
#: fixed order under a fixed step (checked against scipy's BDF and LSODA below instead)
NORDSIECK = {"adams", "bdf", "lsoda"}


def _pinned(method: str, h: float, interp: str | None):
    """A dense solve of y' = A y on [0, 2] with every step of length h (a power of two: no short last step).

    Adaptive methods keep the step with first_step = max_step = h and tolerances loose enough that no
    step is rejected; fixed-step ones take step_size, and ``interp``.
    """
    func, y0, _ = _problem(method)
    if method in ADAPTIVE:
        opts: dict = {"first_step": h, "max_step": h}
        tols = {"rtol": 1e2, "atol": 1e2}
    else:
        opts = {"step_size": h} if interp is None else {"step_size": h, "interp": interp}
        tols = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sol = hn.odeint_dense(func, y0, 0.0, 2.0, method=method, options=opts, **tols)
    assert len(sol.segments) == round(2.0 / h)  # the steps really were pinned
    return sol


ORDER_CASES = [(m, None) for m in ADAPTIVE if m not in NORDSIECK] + [
    (m, interp) for m in FIXED for interp in ("linear", "cubic")
]


@pytest.mark.parametrize(("method", "interp"), ORDER_CASES)
def test_interpolation_order_under_a_fixed_step(method, interp):
    """The error between steps shrinks as h^min(p, q + 1): the method's order p, the interpolant's q.

    Halving a pinned step on [0, 2] (0.25 to 0.125; 0.125 to 0.0625 for the fixed-step Adams methods,
    whose rk4 start-up needs smaller steps to be asymptotic), read at theta = 0.23 and 0.61 of each step
    against expm(A t). The observed order may fall short of the asymptotic one by the next term's
    share: 0.3 covers every case measured (lowest: 3.84 for 4, 2.94 for 3).
    """
    solver = hn.METHODS[method].solver()
    q = OWN_DENSE_ORDER.get(method, 3) if interp is None else {"linear": 1, "cubic": 3}[interp]
    expected = min(solver.order, q + 1)
    _, _, exact = _problem(method)
    errors = []
    # fixed-step Adams: its rk4 start-up needs smaller steps for the asymptotic order
    steps = (0.125, 0.0625) if type(solver).__module__.endswith("adams") else (0.25, 0.125)
    for h in steps:
        sol = _pinned(method, h, interp)
        times = [s.t0 + th * (s.t1 - s.t0) for s in sol.segments for th in (0.23, 0.61)]
        got = _flat(sol(torch.tensor(times, dtype=torch.float64))).numpy()
        errors.append(np.abs(got - np.stack([exact(t) for t in times])).max())
    observed = math.log2(errors[0] / errors[1])
    assert observed >= expected - 0.3, f"{method}: order {observed:.2f} between steps, documented {expected}"


def _pendulum():
    """A damped pendulum y'' = -sin y - 0.1 y' over [0, 10] and scipy's DOP853 solution at rtol 1e-13."""
    y0 = np.array([2.0, 0.0])

    def f_np(t, y):
        return np.array([y[1], -np.sin(y[0]) - 0.1 * y[1]])

    def f_torch(t, y):
        return torch.stack([y[1], -torch.sin(y[0]) - 0.1 * y[1]])

    ref = scipy.integrate.solve_ivp(f_np, (0, 10), y0, method="DOP853", rtol=1e-13, atol=1e-13, dense_output=True)
    return f_np, f_torch, y0, ref.sol


@pytest.mark.parametrize(
    ("method", "scipy_method"), [("dopri5", "RK45"), ("dopri8", "DOP853"), ("bdf", "BDF"), ("lsoda", "LSODA")]
)
def test_dense_error_not_worse_than_scipys(method, scipy_method):
    """At the same tolerances our dense output's error is within 3x of scipy's ``dense_output``.

    Same pairs of methods (dopri5 is RK45's pair, with its free 4th-order interpolant; dopri8 DOP853's
    with its 7th-order one), 398 reads off the steps against DOP853 at rtol 1e-13. Measured ratios at
    rtol 1e-6: 0.88, 1.61, 1.60, 1.01 (1e-4 and 1e-8: at most 2.9). Neither solver's steps are the
    other's, so only a factor, not equality, is the contract. scipy's Radau has no adaptive
    counterpart here (radauIIA5 takes fixed steps).
    """
    f_np, f_torch, y0, ref = _pendulum()
    times = np.linspace(0.0, 10.0, 401)[1:-1] + 0.0123
    exact = ref(times).T
    theirs = scipy.integrate.solve_ivp(
        f_np, (0, 10), y0, method=scipy_method, rtol=1e-6, atol=1e-9, dense_output=True
    ).sol(times)
    ours = hn.odeint_dense(f_torch, torch.tensor(y0), 0.0, 10.0, method=method, rtol=1e-6, atol=1e-9)
    err_ours = np.abs(ours(torch.tensor(times)).numpy() - exact).max()
    err_theirs = np.abs(theirs.T - exact).max()
    assert err_ours <= 3 * err_theirs, f"{method}: {err_ours:.2e} against scipy {scipy_method}'s {err_theirs:.2e}"


# --- 3. what a read accepts: ends, ranges, batches, order, dtypes -----------------------------------


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
def test_ends_and_outside_reads(backward):
    """At t0 the read is y0 itself, at t1 odeint's end state; past either end (or NaN) a clear error."""
    func, y0, _ = _problem("dopri5")
    t0, t1 = (2.0, 0.0) if backward else (0.0, 2.0)
    sol = _dense("dopri5", t0, t1)
    assert torch.equal(sol(t0), y0)
    end = hn.odeint(func, y0, torch.tensor([t0, t1]), **_tols("dopri5"))[-1]
    assert torch.equal(sol(t1), end)
    assert torch.equal(sol(torch.tensor(t1, dtype=torch.float32)), end)  # 2.0 and 0.0 are exact in float32
    for outside in (-0.1, 2.1, math.nan, math.inf):
        with pytest.raises(ValueError, match="outside the solved interval"):
            sol(outside)
    with pytest.raises(ValueError, match="outside the solved interval"):
        sol(torch.tensor([0.5, 2.5]))  # one bad time in a batch fails the read


def test_batches_unsorted_duplicates_and_empty():
    """A batch of times gives the rows of the single reads, in the order asked; no times give no rows.

    To rounding, not bit for bit: a batch inside one step is one matrix product of the stage
    derivatives, a single read a sum of them (measured 1e-16 apart); step times are bitwise either way.
    """
    sol = _dense("dopri5")
    times = torch.tensor([1.5, 0.1, 0.7, 0.1, 2.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(sol(times), torch.stack([sol(float(t)) for t in times]), rtol=0, atol=1e-15)
    assert sol(torch.tensor([], dtype=torch.float64)).shape == (0, 2)
    pair = _dense("leapfrog")
    q, p = pair(torch.tensor([], dtype=torch.float64))
    assert q.shape == (0,) and p.shape == (0,)
    # float32 times are read at their float64 value (0.1f = 0.10000000149...), ints and lists as floats
    t32 = torch.tensor([0.1, 0.7], dtype=torch.float32)
    assert torch.equal(sol(t32), sol(t32.double()))
    assert torch.equal(sol(1), sol(1.0))
    assert torch.equal(sol([0.1, 0.7]), sol(torch.tensor([0.1, 0.7], dtype=torch.float64)))


def test_times_that_are_not_real_numbers_are_refused():
    """True read as t = 1 and a complex time lost its imaginary part (torch only warned): now TypeError."""
    sol = _dense("dopri5")
    for bad in (True, torch.tensor([0.5 + 0.1j]), torch.tensor([True, False])):
        with pytest.raises(TypeError, match="real times"):
            sol(bad)
    with pytest.raises(ValueError, match="1-D tensor"):
        sol(torch.zeros(2, 2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_times_on_another_device():
    """Times on the GPU read a CPU solve (they are turned into floats), and the other way round."""
    sol = _dense("dopri5")
    times = torch.tensor([0.3, 1.1], dtype=torch.float64)
    assert torch.equal(sol(times.cuda()), sol(times))
    a = torch.tensor(A, device="cuda")
    gpu = hn.odeint_dense(lambda t, y: y @ a.T, torch.tensor(Y0, device="cuda"), 0.0, 2.0)
    torch.testing.assert_close(gpu(times).cpu(), sol(times), rtol=0, atol=1e-12)


def test_methods_without_dense_output_are_refused():
    """scipy_solver (its own loop) and the Julia-only methods say why, enumerated from the registry."""
    func, y0, _ = _problem("dopri5")
    external = [n for n, s in hn.METHODS.items() if "torch" in s.backends and n not in METHODS]
    julia_only = [n for n, s in hn.METHODS.items() if "torch" not in s.backends]
    assert external and julia_only
    for name in external:
        with pytest.raises(ValueError, match="no dense output"):
            hn.odeint_dense(func, y0, 0.0, 1.0, method=name)
    for name in julia_only:
        with pytest.raises(hn.BackendError, match="Julia backend only"):
            hn.odeint_dense(func, y0, 0.0, 1.0, method=name)
    with pytest.raises(ValueError, match="per_sample has no dense output"):
        hn.odeint_dense(func, y0.expand(3, 2), 0.0, 1.0, options={"per_sample": True})(0.5)


# --- 4. the derivative a read implies -------------------------------------------------------------


@pytest.mark.parametrize("method", [m for m in ADAPTIVE if m not in NORDSIECK][:1] + sorted(OWN_DENSE_ORDER))
def test_slope_of_a_read_is_the_field(method):
    """DenseSolution has no derivative read of its own; the gradient in t is it, and it follows the field.

    d/dt of an interpolant of local order q + 1 is accurate to O(h^q): at rtol 1e-6 that is ~1e-4 at
    worst (rosenbrock23, q = 2, ~400 steps); the bound is 1e-3 of |f| ~ 1.
    """
    func, _, _ = _problem(method)
    sol = _dense(method)
    t = torch.tensor([0.37, 1.21, 1.9], dtype=torch.float64, requires_grad=True)
    ys = sol(t)
    slopes = torch.stack([torch.autograd.grad(ys[:, i].sum(), t, retain_graph=True)[0] for i in range(2)], -1)
    field = torch.stack([func(float(ti), yi) for ti, yi in zip(t.detach(), ys.detach())])
    torch.testing.assert_close(slopes, field, rtol=0, atol=1e-3)


# --- 5 (continued). gradients in y0 and the field's parameters --------------------------------------


def _one_per_interpolant() -> list[str]:
    """The first method (registry order) of each kind of dense output, so each interpolant is covered once."""
    seen: dict[str, str] = {}
    for m in METHODS:
        kind = type(_dense(m).segments[0].interpolant).__name__
        seen.setdefault(kind, m)
    return list(seen.values())


@pytest.mark.parametrize("method", _one_per_interpolant())
def test_gradients_in_y0_and_parameters_match_central_differences(method):
    """d read / d y0 and d read / d theta (y' = theta A y) against central differences, float64.

    Methods of order >= 4 run at rtol 1e-10: the implicit ones' Newton iterations stop at a test scaled
    by the tolerances, and backprop through an unconverged iteration is not the derivative of the
    converged map (pinning kencarp4's steps with loose tolerances put its theta-gradient 8e-4 off, in
    odeint too). Their steps move with the inputs, so the differences see the step choice move by ~tol
    (measured agreement: 1e-9). The low-order ones (here bosh3 and rosenbrock23, which iterate
    nothing) would take thousands of steps there: their steps are pinned (first_step = max_step =
    0.125, loose tolerances), so both sides differentiate the same steps. eps = 1e-6 adds ~1e-12 +
    1e-10 rounding. Bound: 1e-6.
    """
    a = torch.tensor(A)
    if method not in ADAPTIVE:
        opts: dict = {"step_size": 0.125}
        tols = {}
    elif hn.METHODS[method].solver().order >= 4:
        opts, tols = {}, {"rtol": 1e-10, "atol": 1e-12}
    else:
        opts, tols = {"first_step": 0.125, "max_step": 0.125}, {"rtol": 1e2, "atol": 1e2}
    times = torch.tensor([0.3, 1.05, 1.77], dtype=torch.float64)
    w = torch.tensor([[0.3, -1.2], [1.0, 0.4], [-0.7, 0.2]], dtype=torch.float64)

    def loss(y0: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sol = hn.odeint_dense(lambda t, y: theta * (y @ a.T), y0, 0.0, 2.0, method=method, options=opts, **tols)
        return (sol(times) * w).sum()

    y0 = torch.tensor(Y0, requires_grad=True)
    theta = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    g_y0, g_theta = torch.autograd.grad(loss(y0, theta), (y0, theta))
    torch.testing.assert_close(g_y0, _central(lambda v: loss(v, theta.detach()), y0, 1e-6), rtol=0, atol=1e-6)
    torch.testing.assert_close(g_theta, _central(lambda v: loss(y0.detach(), v), theta, 1e-6), rtol=0, atol=1e-6)


# --- 6. batch shapes, tuple states, compile=True ----------------------------------------------------


def test_batch_and_tuple_state_shapes():
    """A (4, 3, 2) state reads as (k, 4, 3, 2); each sample as the same solve of that sample alone would,
    to the tolerance (the batch shares its steps); a tuple state reads as a tuple of (k, ...) tensors."""
    a = torch.tensor(A)
    y0 = torch.linspace(-1.0, 1.0, 24, dtype=torch.float64).reshape(4, 3, 2)
    sol = hn.odeint_dense(lambda t, y: y @ a.T, y0, 0.0, 2.0, rtol=1e-9, atol=1e-11)
    times = torch.tensor([0.4, 1.3], dtype=torch.float64)
    got = sol(times)
    assert got.shape == (2, 4, 3, 2)
    exact = torch.stack([y0 @ torch.linalg.matrix_exp(a * t).T for t in times])
    torch.testing.assert_close(got, exact, rtol=0, atol=1e-7)  # ~100 x rtol: global error of the solve
    q, p = _dense("leapfrog")(times)
    assert q.shape == p.shape == (2,)


def test_compiled_dense_solve_equals_eager():
    """compile=True takes the same steps and reads, to rounding: the compiled kernels fuse and round
    differently, which moves the error ratios, hence the step sizes, by ~1e-12 relative (measured
    1.3e-12; the reads follow at |y'| times that). 1e-10 is far below a step chosen differently (>= 1e-3)."""
    func, y0, _ = _problem("dopri5")
    eager = hn.odeint_dense(func, y0, 0.0, 2.0)
    compiled = hn.odeint_dense(func, y0, 0.0, 2.0, options={"compile": True})
    torch.testing.assert_close(_step_times(compiled, False), _step_times(eager, False), rtol=1e-10, atol=0)
    times = torch.linspace(0.0, 2.0, 23, dtype=torch.float64)
    torch.testing.assert_close(compiled(times), eager(times), rtol=0, atol=1e-10)
