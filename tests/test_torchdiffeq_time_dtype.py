"""torchdiffeq's time contract: ``func`` gets the time in the state's real dtype, the solver keeps its own.

Compared with the installed torchdiffeq (same inputs, same answer) where it has the feature.
"""

import pytest
import torch
import torchdiffeq

import hybrid_node as hn

F32, F64 = torch.float32, torch.float64


def _recording(seen):
    def f(t, y):
        seen.append(t.dtype)
        return y * t  # a field that computes with t: float64 t would promote the result

    return f


@pytest.mark.parametrize("method", ["dopri5", "dopri8", "bosh3", "rk4", "euler", "implicit_adams"])
@pytest.mark.parametrize("adjoint", [False, True])
def test_float32_state_float64_times(method, adjoint):
    t = torch.tensor([1.0, 1.5, 2.0], dtype=F64)
    y0 = torch.tensor([1.0, -0.5], dtype=F32)
    opts = {"step_size": 0.01} if method in ("rk4", "euler", "implicit_adams") else {}
    seen_hn, seen_td = [], []
    kw = dict(method=method, options=opts)
    if adjoint:
        y0 = y0.clone().requires_grad_(True)
        ys = hn.odeint_adjoint(_recording(seen_hn), y0, t, adjoint_params=(), **kw)
        ys.sum().backward()
        ref = torchdiffeq.odeint(_recording(seen_td), y0.detach(), t, **kw)
    else:
        ys = hn.odeint(_recording(seen_hn), y0, t, **kw)
        ref = torchdiffeq.odeint(_recording(seen_td), y0, t, **kw)
    assert ys.dtype == F32
    assert set(seen_hn) == set(seen_td) == {F32}
    torch.testing.assert_close(ys.detach(), ref, rtol=1e-4, atol=1e-5)
    exact = y0.detach().double() * torch.exp((t**2 - 1.0) / 2)[:, None]
    tol = 3e-2 if method == "euler" else 1e-3  # first order at step 0.01
    torch.testing.assert_close(ys.detach().double(), exact, rtol=tol, atol=1e-4)


def test_float64_state_float32_times():
    seen = []
    t = torch.tensor([0.0, 1.0], dtype=F32)
    ys = hn.odeint(_recording(seen), torch.ones(2, dtype=F64), t)
    assert set(seen) == {F64} and ys.dtype == F64


def test_time_stays_precise_internally():
    # the solver's time is float64 even when func sees float32: output times that float32 cannot
    # tell apart from their neighbours' sums still land exactly (no drift in the float32 time)
    t = torch.tensor([1000.0, 1000.0 + 1e-3, 1000.0 + 2e-3], dtype=F64)
    ys = hn.odeint(lambda t, y: -y, torch.ones(1, dtype=F32), t, method="rk4", options={"step_size": 1e-4})
    exact = torch.exp(-(t - 1000.0)).to(F32)[:, None]
    torch.testing.assert_close(ys, exact, rtol=1e-5, atol=1e-6)


def test_dtype_option_is_torchdiffeqs():
    seen_hn, seen_td = [], []
    y0, t = torch.ones(2, dtype=F32), torch.tensor([0.0, 1.0], dtype=F32)
    ys = hn.odeint(_recording(seen_hn), y0, t, options={"dtype": F64})
    ref = torchdiffeq.odeint(_recording(seen_td), y0, t, options={"dtype": F64})
    assert set(seen_hn) == set(seen_td) == {F32}
    torch.testing.assert_close(ys, ref)
    with pytest.raises(ValueError, match="floating torch dtype"):
        hn.odeint(_recording([]), y0, t, options={"dtype": "float64"})


@pytest.mark.parametrize("method", ["dopri5", "rk4", "scipy_solver"])
def test_single_time_returns_y0_without_calling_func(method):
    calls = []

    def f(t, y):
        calls.append(t)
        return -y

    y0 = torch.tensor([1.0, 2.0])
    opts = {"step_size": 0.1} if method == "rk4" else {}
    ys = hn.odeint(f, y0, torch.tensor([1.0]), method=method, options=opts)
    assert calls == []  # torchdiffeq: none for the fixed-step methods (dopri5 picks a first step)
    ref = torchdiffeq.odeint(f, y0, torch.tensor([1.0]), method=method, options=opts)
    torch.testing.assert_close(ys, ref)
    assert ys.shape == (1, 2)
