"""torchdiffeq's ``grid_constructor`` in the adjoint pass: it is called once per output interval, last
first, with that interval's two times in the backward direction (``t[i - 1:i + 1].flip(0)``), and
returns the grid from t[i] to t[i - 1]; for a solve backwards in time it gets and returns the user's
(decreasing) times.

Compared with the installed torchdiffeq.
"""

import pytest
import torch
import torchdiffeq

import hybrid_node as hn


class _Decay(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(-0.5, dtype=torch.float64))

    def forward(self, t, x):
        return self.a * x + torch.sin(t)


def _run(mod, n, t):
    seen = []

    def gc(f, y0, t):
        seen.append(t.tolist())
        return torch.linspace(float(t[0]), float(t[-1]), n, dtype=t.dtype)

    func = _Decay()
    x0 = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    xs = mod.odeint_adjoint(func, x0, t, method="rk4", options={"grid_constructor": gc})
    (xs**2).sum().backward()
    return seen, x0.grad, func.a.grad


@pytest.mark.parametrize("n", [3, 11])
@pytest.mark.parametrize("times", [[0.0, 1.0], [0.0, 0.5, 2.0, 3.0], [3.0, 2.0, 0.5, 0.0]])
def test_adjoint_pass_calls_it_per_interval_as_torchdiffeq(n, times):
    t = torch.tensor(times, dtype=torch.float64)
    ours, theirs = _run(hn, n, t), _run(torchdiffeq, n, t)
    backward = [[b, a] for a, b in zip(times[:-1], times[1:])][::-1]
    assert ours[0] == [times, *backward]
    # Backwards in time torchdiffeq's adjoint pass hands the constructor its internally negated times;
    # here it gets the user's own.
    sign = -1.0 if times[1] < times[0] else 1.0
    assert theirs[0] == [times] + [[sign * x for x in pair] for pair in backward]
    torch.testing.assert_close(ours[1], theirs[1], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours[2], theirs[2], rtol=1e-12, atol=1e-12)


def test_backwards_in_time_the_constructor_sees_the_users_times():
    seen = []

    def gc(f, y0, t):
        seen.append(t.tolist())
        return torch.tensor([float(t[0]), 1.7, float(t[-1])], dtype=t.dtype)  # a point inside [0, 3]

    ys = hn.odeint(
        lambda t, y: -y,
        torch.tensor([1.0], dtype=torch.float64),
        torch.tensor([3.0, 0.0]),
        method="euler",
        options={"grid_constructor": gc},
    )
    assert seen == [[3.0, 0.0]]
    assert float(ys[-1]) == pytest.approx((1 + 1.3) * (1 + 1.7))  # Euler's steps backwards: 3 -> 1.7 -> 0


def _growth_by_euler_adjoint(gc):
    """x' = x from x(0) = 1 (a leaf) to t = 1 by Euler on the grid of ``gc``, through ``odeint_adjoint``.

    Returns:
        ``(x0, xs)``: the initial state and the states at 0 and 1.
    """
    x0 = torch.tensor(1.0, requires_grad=True)
    xs = hn.odeint_adjoint(
        lambda t, x: x,
        x0,
        torch.tensor([0.0, 1.0]),
        method="euler",
        options={"grid_constructor": gc},
        adjoint_params=(),
    )
    return x0, xs


def test_euler_gradient_is_the_discrete_one():
    def gc(f, y0, t):
        return torch.linspace(float(t[0]), float(t[-1]), 11)

    x0, xs = _growth_by_euler_adjoint(gc)
    xs[1].backward()
    assert float(x0.grad) == pytest.approx((1 + 1 / 10) ** 10, rel=1e-5)  # Euler's (1 + h)^N


def test_a_forward_ordered_grid_in_the_adjoint_pass_is_refused():
    def gc(f, y0, t):
        return torch.linspace(0.0, 1.0, 5)  # ignores t: wrong in the adjoint pass

    _, xs = _growth_by_euler_adjoint(gc)
    with pytest.raises(ValueError, match="t.i - 1:i . 1..flip"):
        xs[1].backward()
