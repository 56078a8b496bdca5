"""torchdiffeq's ``grid_constructor`` in the adjoint pass: it is called with the output times in the
backward direction (``t.flip(0)``) and returns the grid from t[-1] to t[0].

Compared with the installed torchdiffeq.
"""

import pytest
import torch
import torchdiffeq

import hybrid_node as hn


def _run(mod, n):
    seen = []

    def gc(f, y0, t):
        seen.append(t.tolist())
        return torch.linspace(float(t[0]), float(t[-1]), n)

    x0 = torch.tensor(1.0, requires_grad=True)
    xs = mod.odeint_adjoint(
        lambda t, x: x,
        x0,
        torch.tensor([0.0, 1.0]),
        method="euler",
        options={"grid_constructor": gc},
        adjoint_params=(),
    )
    xs[1].backward()
    return seen, x0.grad


@pytest.mark.parametrize("n", [3, 11])
def test_adjoint_pass_gets_backward_times(n):
    ours, theirs = _run(hn, n), _run(torchdiffeq, n)
    assert ours[0] == theirs[0] == [[0.0, 1.0], [1.0, 0.0]]
    torch.testing.assert_close(ours[1], theirs[1])
    assert float(ours[1]) == pytest.approx((1 + 1 / (n - 1)) ** (n - 1), rel=1e-5)  # Euler's (1 + h)^N


def test_a_forward_ordered_grid_in_the_adjoint_pass_is_refused():
    def gc(f, y0, t):
        return torch.linspace(0.0, 1.0, 5)  # ignores t: wrong in the adjoint pass

    x0 = torch.tensor(1.0, requires_grad=True)
    xs = hn.odeint_adjoint(
        lambda t, x: x,
        x0,
        torch.tensor([0.0, 1.0]),
        method="euler",
        options={"grid_constructor": gc},
        adjoint_params=(),
    )
    with pytest.raises(ValueError, match="t.flip"):
        xs[1].backward()
