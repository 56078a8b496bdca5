"""Fixed-step Adams methods (``explicit_adams``, ``implicit_adams``) and the ``scipy_solver`` wrapper:
behaviour at their failure points, against torchdiffeq and scipy run on the same inputs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torchdiffeq
from scipy.integrate import solve_ivp

import hybrid_node as hn

F64 = torch.float64
LAM = -30.0  # y' = LAM (y - cos t): a stiff linear relaxation


def relaxation(t, y):
    return LAM * (y - torch.cos(t))


def _warnings_of(solve) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        solve()
    return [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


@pytest.mark.parametrize("step_size", [0.1, 0.005])
def test_unconverged_corrector_warns_where_torchdiffeq_does(step_size):
    # At dt*|LAM| = 3 the Adams-Moulton functional iteration diverges (contraction 3 * 9/24 > 1) and the
    # result is ~1e14 where the solution stays in [-1, 1]; torchdiffeq warns, so must we. At dt = 0.005
    # (contraction 0.056) the iteration converges in both and neither warns.
    y0 = torch.tensor([1.0], dtype=F64)
    t = torch.linspace(0.0, 2.0, 11, dtype=F64)
    opts = {"step_size": step_size, "max_order": 4}
    ours = _warnings_of(lambda: hn.odeint(relaxation, y0, t, method="implicit_adams", options=dict(opts)))
    theirs = _warnings_of(lambda: torchdiffeq.odeint(relaxation, y0, t, method="implicit_adams", options=dict(opts)))
    assert bool(ours) == bool(theirs), (ours, theirs)
    if step_size == 0.1:
        assert ours
        # the same first sentence as torchdiffeq's, so a filter written for torchdiffeq's warning applies
        assert all(m.startswith("Functional iteration did not converge.") for m in ours), ours
        assert "max_iters=4" in ours[0] and "step_size" in ours[0]


def test_float32_corrector_converged_to_rounding_does_not_warn():
    # A float32 corrector settles to within a few ulps, and rtol=1e-7 is below one ulp of |y| in [1, 2]:
    # a test at rtol alone failed on ~2% of these steps (torchdiffeq too: 10 warnings) though the
    # iterates had converged (the result is as accurate as float32 at this step allows).
    torch.manual_seed(0)
    w = torch.randn(16, 16) / 4

    def field(t, y):
        return torch.tanh(y @ w.to(y.dtype)) - 0.1 * y

    y0 = torch.randn(8, 16) * 3
    t = torch.tensor([0.0, 10.0])
    opts = {"step_size": 0.02, "max_order": 4}
    got: list = []
    assert not _warnings_of(lambda: got.append(hn.odeint(field, y0, t, method="implicit_adams", options=dict(opts))))
    ref = hn.odeint(field, y0.double(), t.double(), method="implicit_adams", options=dict(opts))
    # float32 rounding over 500 steps of a state of size ~3 (measured 5e-6), far below the O(1) of garbage
    torch.testing.assert_close(got[0][-1].double(), ref[-1], rtol=0, atol=1e-4)


@pytest.mark.parametrize("solver", ["RK45", "Radau"])
@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_scipy_failure_reports_where_scipy_stopped(solver, direction):
    # y' = y^2 from y(0) = direction blows up at t = direction. With output times only at 0 and beyond,
    # scipy's sol.t holds just t0, and the error said "failed at t=0"; scipy called directly (no t_eval)
    # stops at its last accepted step, the reference here.
    t = torch.tensor([0.0, 2.0 * direction], dtype=F64)
    y0 = torch.tensor([direction], dtype=F64)
    with pytest.raises(hn.SolverError) as err:
        hn.odeint(lambda t, y: y**2, y0, t, method="scipy_solver", options={"solver": solver})
    ref = solve_ivp(
        lambda t, y: y**2, (0.0, 2.0 * direction), np.array([direction]), method=solver, rtol=1e-7, atol=1e-9
    )
    assert ref.status == -1
    # within 1e-3 of scipy's own stopping point (both are within 1e-5 of the blow-up at t = direction)
    assert abs(err.value.t - ref.t[-1]) < 1e-3, (err.value.t, ref.t[-1])


@pytest.mark.parametrize("option, value", [("max_step", None), ("first_step", "a"), ("min_step", [0.1])])
def test_scipy_step_option_that_is_not_a_number_is_named(option, value):
    # float(None) said only "float() argument must be a string or a real number, not 'NoneType'"
    with pytest.raises(ValueError, match=f"scipy_solver: {option} must be a number"):
        hn.odeint(
            lambda t, y: -y, torch.ones(2), torch.tensor([0.0, 1.0]), method="scipy_solver", options={option: value}
        )


def test_scipy_direct_backprop_error_names_the_adjoint_that_works():
    # torchdiffeq returns a result outside the graph (the gradient is silently absent); ours raises at
    # backward, and the message named only the torch solvers, not the black-box adjoint that does work
    y0 = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    ys = hn.odeint(lambda t, y: -y, y0, t, method="scipy_solver")
    with pytest.raises(RuntimeError, match="forward-only.*odeint_adjoint with method='scipy_solver'"):
        ys.sum().backward()
    ys = hn.odeint_adjoint(lambda t, y: -y, y0, t, method="scipy_solver", rtol=1e-10, atol=1e-10, adjoint_params=())
    (grad,) = torch.autograd.grad(ys[-1].sum(), y0)
    # d y(1) / d y0 = e^-1 exactly; LSODA at rtol 1e-10 on both passes (measured 1e-11)
    torch.testing.assert_close(grad, torch.full_like(y0, 0.36787944117144233), rtol=1e-8, atol=0)


def _pendulum(t, y):
    return torch.stack([y[1], -torch.sin(y[0])])


@pytest.mark.parametrize(
    "rtol,atol",
    [
        (torch.tensor(2.0**-10, dtype=F64), torch.tensor(2.0**-10, dtype=F64)),
        (np.float32(2.0**-10), np.float32(2.0**-10)),
        (torch.tensor([2.0**-10, 0.5], dtype=F64), np.array([2.0**-10, 2.0**-10])),
        (0, 1),
    ],
    ids=["tensor", "numpy-scalar", "per-component", "int"],
)
def test_corrector_takes_the_solve_tolerances_whatever_their_type(rtol, atol):
    # The corrector's test took rtol and atol only when they were Python floats; a tensor, a NumPy float32
    # or an int tolerance was replaced by 1e-7 / 1e-9, as if none had been given (198 evaluations instead
    # of 106 over this solve, a different result; torchdiffeq takes such tolerances as they are: 104).
    # Per-component values count by their smallest, as in the Newton methods' test.
    y0 = torch.tensor([1.0, 0.0], dtype=F64)
    t = torch.linspace(0.0, 5.0, 11, dtype=F64)

    def run(rtol, atol):
        calls = []

        def field(t, y):
            calls.append(1)
            return _pendulum(t, y)

        ys = hn.odeint(field, y0, t, method="implicit_adams", rtol=rtol, atol=atol, options={"step_size": 0.1})
        return ys, len(calls)

    smallest = (
        min(np.asarray(rtol, dtype=np.float64).reshape(-1)),
        min(np.asarray(atol, dtype=np.float64).reshape(-1)),
    )
    want, want_calls = run(float(smallest[0]), float(smallest[1]))
    got, got_calls = run(rtol, atol)
    # the same floats reach the same test: the same iterations, bit for bit
    assert got_calls == want_calls
    assert torch.equal(got, want)
    # and a loose tolerance did stop the corrector early (1e-7 / 1e-9 take ~2x the evaluations)
    _, tight_calls = run(1e-7, 1e-9)
    assert got_calls < 0.75 * tight_calls


def test_explicit_adams_of_order_3_is_torchdiffeqs_max_order_4():
    """torchdiffeq's explicit_adams with max_order=4 takes two rk4 (3/8 rule) steps and then
    Adams-Bashforth of order 3, as ours with max_order=3 (docs/solvers.md): the same numbers."""
    a = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=F64)

    def field(t, y):
        return y @ a.T + 0.3 * torch.sin(t)

    y0 = torch.tensor([1.0, 0.5], dtype=F64)
    t = torch.linspace(0.0, 4.0, 11, dtype=F64)
    theirs = torchdiffeq.odeint(field, y0, t, method="explicit_adams", options={"step_size": 0.05, "max_order": 4})
    ours = hn.odeint(field, y0, t, method="explicit_adams", options={"step_size": 0.05, "max_order": 3})
    # the same sums in another order: rounding only (1.6e-15 measured on values of ~1)
    torch.testing.assert_close(ours, theirs, rtol=0.0, atol=1e-13)
