"""torchdiffeq's step callbacks: ``func.callback_step(t0, y0, dt)``, ``callback_accept_step``,
``callback_reject_step`` and their ``_adjoint`` variants in odeint_adjoint's backward solve.

Compared with the installed torchdiffeq (same inputs, same calls) where it has the method.
"""

import warnings

import pytest
import torch
import torchdiffeq

import hybrid_node as hn

NAMES = ("callback_step", "callback_accept_step", "callback_reject_step")


class Field(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(2, 2)

    def forward(self, t, x):
        return torch.tanh(self.lin(x))


def _record(f, names, log):
    for name in names:
        setattr(f, name, lambda t0, y0, dt, name=name: log.append((name, float(t0), y0, float(dt))))


def _count(log, name):
    return sum(1 for entry in log if entry[0] == name)


FIXED = ["euler", "rk4", "midpoint", "explicit_adams", "implicit_adams", "implicit_euler", "gl4", "trbdf2"]


@pytest.mark.parametrize("method", FIXED)
@pytest.mark.parametrize("reverse", [False, True])
def test_fixed_step_callbacks(method, reverse):
    f = Field()
    log = []
    _record(f, ["callback_step", "callback_step_adjoint"], log)
    t = torch.tensor([1.0, 0.0]) if reverse else torch.tensor([0.0, 1.0])
    xs = hn.odeint_adjoint(f, torch.tensor([1.0, 2.0]), t, method=method, options={"step_size": 0.1})
    forward = [e for e in log if e[0] == "callback_step"]
    assert len(forward) == 10
    # the step's start in the user's time, the state there, a positive step
    starts = [e[1] for e in forward]
    expected = [1.0 - 0.1 * k for k in range(10)] if reverse else [0.1 * k for k in range(10)]
    assert starts == pytest.approx(expected, abs=1e-12)
    assert all(e[3] == pytest.approx(0.1) for e in forward)
    torch.testing.assert_close(forward[0][2], torch.tensor([1.0, 2.0]))
    xs.sum().backward()
    backward = [e for e in log if e[0] == "callback_step_adjoint"]
    assert len(backward) == 10
    # the backward solve runs from t[-1] to t[0]: its steps start where the forward ones end
    assert [e[1] for e in backward] == pytest.approx(
        [0.1 * k for k in range(10)] if reverse else [1.0 - 0.1 * k for k in range(10)], abs=1e-9
    )
    # backsolve: the augmented state (y, adj_y, *adj_params) at the step's start
    y, adj_y, *adj_params = backward[0][2]
    torch.testing.assert_close(y, xs[-1].detach())
    torch.testing.assert_close(adj_y, torch.ones(2))
    assert [p.shape for p in adj_params] == [p.shape for p in f.parameters()]


@pytest.mark.parametrize("method", ["euler", "rk4", "explicit_adams"])
def test_fixed_step_calls_match_torchdiffeq(method):
    logs = []
    for mod in (hn, torchdiffeq):
        f = Field()
        log = []
        _record(f, ["callback_step", "callback_step_adjoint"], log)
        xs = mod.odeint_adjoint(
            f, torch.tensor([1.0, 2.0]), torch.tensor([0.0, 1.0]), method=method, options={"step_size": 0.25}
        )
        xs.sum().backward()
        logs.append(log)
    ours, theirs = logs
    assert [e[0] for e in ours] == [e[0] for e in theirs]
    assert [e[1] for e in ours] == pytest.approx([e[1] for e in theirs], abs=1e-6)
    assert [e[3] for e in ours] == pytest.approx([e[3] for e in theirs], abs=1e-6)
    for a, b in zip(ours, theirs):
        if a[0] == "callback_step":
            # explicit_adams starts up differently (rk4 here): states agree to the method's error
            torch.testing.assert_close(a[2], b[2], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("method", ["dopri5", "bosh3", "adaptive_heun", "fehlberg2", "dopri8"])
def test_adaptive_callbacks(method):
    f = Field()
    log = []
    _record(f, [n + s for n in NAMES for s in ("", "_adjoint")], log)
    xs = hn.odeint_adjoint(f, torch.tensor([1.0, 2.0]), torch.tensor([0.0, 1.0]), method=method, rtol=1e-5, atol=1e-6)
    n = _count(log, "callback_step")
    assert n > 0 and _count(log, "callback_accept_step") + _count(log, "callback_reject_step") == n
    # accepted steps tile the interval
    accepted = [e for e in log if e[0] == "callback_accept_step"]
    assert accepted[0][1] == 0.0
    assert accepted[-1][1] + accepted[-1][3] == pytest.approx(1.0)
    xs.sum().backward()
    m = _count(log, "callback_step_adjoint")
    assert m > 0
    assert _count(log, "callback_accept_step_adjoint") + _count(log, "callback_reject_step_adjoint") == m


def test_rejections_are_reported():
    # a tight tolerance and a big first step: the first attempt is rejected
    f = Field()
    log = []
    _record(f, NAMES, log)
    hn.odeint(f, torch.tensor([1.0, 2.0]), torch.tensor([0.0, 5.0]), rtol=1e-9, atol=1e-9, options={"first_step": 2.0})
    assert log[0][0] == "callback_step" and log[1][0] == "callback_reject_step"
    assert log[1][3] == pytest.approx(2.0)


def test_dopri5_accepted_steps_match_torchdiffeq():
    logs = []
    for mod in (hn, torchdiffeq):
        f = Field()
        log = []
        _record(f, ["callback_accept_step"], log)
        mod.odeint(f, torch.tensor([1.0, 2.0], dtype=torch.float64).float(), torch.tensor([0.0, 1.0]))
        logs.append(log)
    ours, theirs = logs
    # the same first step (Hairer's heuristic) and the same number of steps to the end
    assert ours[0][3] == pytest.approx(theirs[0][3], rel=1e-6)
    assert abs(len(ours) - len(theirs)) <= 1


def test_tuple_state_callbacks_get_tuples():
    seen = []

    def f(t, y):
        return (-y[0], -y[1])

    class Holder:
        def __call__(self, t, y):
            return f(t, y)

        def callback_step(self, t0, y0, dt):
            seen.append(y0)

    y0 = (torch.ones(2), torch.ones(3, 1))
    hn.odeint(Holder(), y0, torch.tensor([0.0, 1.0]), method="rk4", options={"step_size": 0.5})
    assert len(seen) == 2 and isinstance(seen[0], tuple) and seen[0][1].shape == (3, 1)


@pytest.mark.parametrize(
    "method, name, kw",
    [
        ("rk4", "callback_accept_step", {"options": {"step_size": 0.1}}),
        ("euler", "callback_reject_step", {"options": {"step_size": 0.1}}),
        ("scipy_solver", "callback_step", {}),
        ("scipy_solver", "callback_accept_step", {}),
        ("scipy_solver", "callback_reject_step", {}),
    ],
)
def test_unsupported_callbacks_warn_as_torchdiffeq(method, name, kw):
    messages = []
    for mod in (hn, torchdiffeq):
        f = Field()
        setattr(f, name, lambda t0, y0, dt: None)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            mod.odeint(f, torch.tensor([1.0, 2.0]), torch.tensor([0.0, 1.0]), method=method, **kw)
        messages.append([str(x.message) for x in w if "callbacks" in str(x.message)])
    assert messages[0] == messages[1] == [f"Solver '{method}' does not support callbacks {{'{name}'}}"]


def test_supported_callbacks_do_not_warn():
    f = Field()
    for name in NAMES:
        setattr(f, name, lambda t0, y0, dt: None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hn.odeint(f, torch.tensor([1.0, 2.0]), torch.tensor([0.0, 1.0]), method="dopri5")


def test_adjoint_callbacks_warn_for_the_backward_method():
    f = Field()
    f.callback_accept_step_adjoint = lambda t0, y0, dt: None
    xs = hn.odeint_adjoint(
        f,
        torch.tensor([1.0, 2.0]),
        torch.tensor([0.0, 1.0]),
        method="dopri5",
        adjoint_method="rk4",
        adjoint_options={"step_size": 0.1},
    )
    with pytest.warns(UserWarning, match="Solver 'rk4' does not support callbacks {'callback_accept_step'}"):
        xs.sum().backward()


def test_no_callbacks_from_time_gradients():
    # the extra evaluations of the time gradients are not steps
    f = Field()
    log = []
    _record(f, ["callback_step"], log)
    t = torch.tensor([0.0, 0.5, 1.0], requires_grad=True)
    xs = hn.odeint(f, torch.tensor([1.0, 2.0]), t, method="rk4", options={"step_size": 0.5})
    xs.sum().backward()
    assert len(log) == 2
