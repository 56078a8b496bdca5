"""An error or interrupt raised by the user's code inside a solve reaches the caller as it was raised.

The field (or an event function) raises at its k-th evaluation; the caller must get that very exception
object (type, message and the raising frame in its traceback), a KeyboardInterrupt stays one, and the next
identical solve gives the same bits as before the interruption (nothing the solve caches was left half-made).
"""

from __future__ import annotations

import threading
import traceback

import pytest
import torch

import hybrid_node as hn

pytestmark = pytest.mark.usefixtures("one_thread")


class Bomb(torch.nn.Module):
    """A small nonlinear field that raises ``kind`` at its ``at``-th evaluation (never when ``at`` is None)."""

    def __init__(self, kind: type[BaseException] = ValueError, at: int | None = None):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([[0.3, -0.5], [0.4, 0.2]], dtype=torch.float64))
        self.kind, self.at, self.calls, self.raised = kind, at, 0, None

    def forward(self, t, y):
        self.calls += 1
        if self.calls == self.at:
            self.raised = self.kind(f"raised at evaluation {self.at}")
            raise self.raised
        return torch.tanh(y @ self.w.T) - 0.1 * y


def _y0() -> torch.Tensor:
    return torch.tensor([[0.3, -0.2], [0.1, 0.4], [-0.5, 0.2]], dtype=torch.float64)


def _assert_unchanged(info: pytest.ExceptionInfo, field: Bomb) -> None:
    """The caller holds the field's own exception object, with its message and raising frame."""
    assert info.value is field.raised
    assert str(info.value) == f"raised at evaluation {field.at}"
    assert "forward" in [f.name for f in traceback.extract_tb(info.value.__traceback__)]


@pytest.mark.parametrize("kind", [ValueError, RuntimeError, KeyboardInterrupt])
def test_per_sample_first_evaluation_error_is_the_fields_own(kind):
    # The first per-sample evaluation re-raised a ValueError/RuntimeError as a new exception of the same
    # type with a hint appended to its message: the caller lost the object it raised and its message.
    field = Bomb(kind, at=1)
    with pytest.raises(kind) as info:
        hn.odeint(field, _y0(), torch.tensor([0.0, 1.0], dtype=torch.float64), options={"per_sample": True})
    _assert_unchanged(info, field)
    reference = hn.odeint(Bomb(), _y0(), torch.tensor([0.0, 1.0], dtype=torch.float64), options={"per_sample": True})
    field.at = None  # the next identical solve is not disturbed by the interrupted one
    again = hn.odeint(field, _y0(), torch.tensor([0.0, 1.0], dtype=torch.float64), options={"per_sample": True})
    assert torch.equal(again, reference)


def test_per_sample_scalar_time_mistake_still_gets_the_hint():
    """A field written for a scalar t fails on per-sample's (batch,) times; the hint rides along as a note."""

    def scalar_t_field(t, y):
        return y * t.reshape(1, 1)  # a (batch,) t cannot be reshaped to one element

    with pytest.raises(RuntimeError, match=r"t of shape \(batch,\)"):
        hn.odeint(scalar_t_field, _y0(), torch.tensor([0.0, 1.0], dtype=torch.float64), options={"per_sample": True})


@pytest.mark.parametrize("sensitivity", [hn.DirectBackprop(), hn.BacksolveAdjoint()])
@pytest.mark.parametrize("kind", [ValueError, KeyboardInterrupt])
def test_an_interrupted_odeblock_forward_leaves_its_counters_and_mode(sensitivity, kind):
    # The counts of a complete forward and backward pass; a forward pass that raised after 5 evaluations
    # added those to nfe_backward (14 + 5 of a backsolve; 5 for direct backpropagation, documented as 0).
    field = Bomb(kind)
    block = hn.nn.ODEBlock(field, train_settings=hn.nn.SolveSettings(sensitivity=sensitivity))
    x = _y0()
    block(x).sum().backward()
    counts = (block.nfe_forward, block.nfe_backward)
    assert counts[0] > 5 and (counts[1] > 0) == isinstance(sensitivity, hn.BacksolveAdjoint)
    field.calls, field.at = 0, 5
    with pytest.raises(kind) as info:
        block(x)
    _assert_unchanged(info, field)
    assert (block.nfe_forward, block.nfe_backward) == counts and block.training
    field.at = None  # the next pass counts as the first did
    block(x).sum().backward()
    assert (block.nfe_forward, block.nfe_backward) == counts


def _global_state() -> tuple:
    """What a solve could leave changed in the process."""
    return (
        torch.is_grad_enabled(),
        torch.is_inference_mode_enabled(),
        torch.get_default_dtype(),
        torch.get_num_threads(),
        torch.autograd.forward_ad._current_level,
        torch._C._functorch.maybe_current_level(),
        hn.get_backend(),
        sorted(t.name for t in threading.enumerate()),
    )


def _odeint(field):
    return hn.odeint(field, _y0(), torch.linspace(0, 1, 4, dtype=torch.float64), rtol=1e-6, atol=1e-8)


def _adjoint(field):
    return hn.odeint_adjoint(field, _y0(), torch.linspace(0, 1, 4, dtype=torch.float64), rtol=1e-6, atol=1e-8)


def _implicit(field):
    return hn.odeint(field, _y0(), torch.linspace(0, 1, 4, dtype=torch.float64), method="kvaerno5")


def _event(field):
    def event_fn(t, y):  # the event function shares the field's count, so it raises too
        return field(t, y)[..., 0].sum() * 0 + t - 0.7

    return hn.odeint(field, _y0(), torch.tensor([0.0, 2.0], dtype=torch.float64), event_fn=event_fn)[1]


class _SDE(torch.nn.Module):
    noise_type, sde_type = "diagonal", "ito"

    def __init__(self, field: Bomb):
        super().__init__()
        self.field = field

    def f(self, t, y):
        return self.field(t, y)

    def g(self, t, y):
        return 0.2 * torch.cos(y)


def _sde(field):
    bm = hn.BrownianInterval(0.0, 1.0, size=(3, 2), entropy=3, dtype=torch.float64)
    return hn.sdeint_adjoint(
        _SDE(field), _y0(), torch.linspace(0, 1, 3, dtype=torch.float64), bm=bm, dt=0.1, method="euler"
    )


@pytest.mark.parametrize("solve", [_odeint, _adjoint, _implicit, _event, _sde])
@pytest.mark.parametrize("kind", [ValueError, KeyboardInterrupt])
def test_an_error_at_any_evaluation_reaches_the_caller_and_leaves_nothing_behind(solve, kind):
    """The field raises at evaluations spread over the forward solve and the backward pass (the adjoint's
    backward solve, the implicit solver's Jacobians, the event search, the SDE adjoint): the caller gets
    that exception, the process state is as before, and the next solve gives the uninterrupted bits."""

    def loss_and_grad(field: Bomb) -> list[torch.Tensor]:
        out = solve(field)
        (grad,) = torch.autograd.grad(out.pow(2).sum(), field.w)
        return [out.detach(), grad]

    clean = Bomb()
    reference = loss_and_grad(clean)
    evaluations = clean.calls
    before = _global_state()
    for at in sorted({1, 2, evaluations // 3, evaluations // 2, evaluations - 1, evaluations}):
        field = Bomb(kind, at)
        with pytest.raises(kind) as info:
            loss_and_grad(field)
        _assert_unchanged(info, field)
        assert _global_state() == before, at
        again = loss_and_grad(Bomb())
        assert all(torch.equal(a, b) for a, b in zip(again, reference)), at
