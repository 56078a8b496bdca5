"""Gradients with respect to the output times ``t`` under per-sample step control.

Direct backpropagation adds dL/dt_i = <dL/dy_i, f(t_i, y_i)> (and -<dL/dy_0, f(t_0, y_0)> for t_0)
around the loop. Per-sample control calls the field with one time per sample, and those products
must call it so too: a field written as ``t[:, None]`` failed there with an IndexError.
"""

import math

import pytest
import torch

import hybrid_node as hn

LAM = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
WEIGHTS = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)  # a loss that weighs each output time


def _field(t, y):
    # the per-sample form: t has one time per sample, shape (batch,)
    return -LAM[: y.shape[0], None] * y + torch.sin(LAM[: y.shape[0], None] * t[:, None])


def _loss(t: torch.Tensor, y0: torch.Tensor) -> torch.Tensor:
    ys = hn.odeint(_field, y0, t, rtol=1e-11, atol=1e-13, options={"per_sample": True})
    return (ys**2 * WEIGHTS[:, None, None]).sum()


@pytest.mark.parametrize("decreasing", [False, True])
def test_time_gradients_match_finite_differences(decreasing):
    y0 = torch.ones(3, 2, dtype=torch.float64)
    t = torch.tensor([0.1, 0.7, 1.3, 2.0], dtype=torch.float64)
    t = -t if decreasing else t  # backwards in time from -0.1 to -2
    tg = t.clone().requires_grad_()
    (grad,) = torch.autograd.grad(_loss(tg, y0), tg)
    eps = 1e-5
    fd = torch.stack([(_loss(t + eps * e, y0) - _loss(t - eps * e, y0)) / (2 * eps) for e in torch.eye(4).double()])
    # central differences: eps^2 truncation (~1e-10) and the solves' rtol 1e-11 over 2 eps; 1e-9 relative measured
    torch.testing.assert_close(grad, fd, rtol=1e-6, atol=1e-6)


def test_a_failed_sample_leaves_the_others_time_gradients_those_of_their_solve_alone():
    """With throw=False a failed sample's later outputs are NaN; a loss over the others has the time
    gradients of solving them alone, where f(NaN) in the products made every dL/dt_i NaN after the
    failure."""

    def blows_up(t, y):
        # sample 1: y' = y^2 from 1 blows up at t = 1; the others decay
        row1 = (torch.arange(y.shape[0]) == 1)[:, None]
        return torch.where(row1, y**2, _field(t, y))

    y0 = torch.ones(3, 2, dtype=torch.float64)
    t = torch.tensor([0.1, 0.7, 1.3, 2.0], dtype=torch.float64)
    good = torch.tensor([0, 2])
    tg = t.clone().requires_grad_()
    sol = hn.solve(
        blows_up,
        y0,
        tg,
        # odeint's step rule (torchdiffeq's), as the reference below is an odeint solve
        controller=hn.PIDController(rtol=1e-10, atol=1e-12, per_sample=True, shrink_after_accept=False),
        sensitivity=hn.DirectBackprop(),
        throw=False,
    )
    assert sol.status is not hn.Status.SUCCESS and bool(sol.ys[2:, 1].isnan().all())
    (grad,) = torch.autograd.grad((sol.ys[:, good] ** 2 * WEIGHTS[:, None, None]).sum(), tg)

    def alone(t_, y):
        lam = LAM[good][:, None]
        return -lam * y + torch.sin(lam * t_[:, None])

    ta = t.clone().requires_grad_()
    ys = hn.odeint(alone, y0[good], ta, rtol=1e-10, atol=1e-12, options={"per_sample": True})
    (ref,) = torch.autograd.grad((ys**2 * WEIGHTS[:, None, None]).sum(), ta)
    assert bool(torch.isfinite(grad).all()) and not math.isnan(float(grad.sum()))
    # each sample's steps are its own: the same solves, rounding only
    torch.testing.assert_close(grad, ref, rtol=1e-12, atol=1e-12)
