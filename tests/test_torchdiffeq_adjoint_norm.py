"""torchdiffeq's ``adjoint_options={"norm": callable}``: the backward solve's error norm is the user's,
called on the tuple ``(t, *y, *adj_y, *adj_params)`` for tensor and tuple states.

Compared with the installed torchdiffeq (same shapes handed to the norm, same gradients).
"""

import pytest
import torch
import torchdiffeq

import hybrid_node as hn


def _problem(tuple_state):
    torch.manual_seed(0)
    p = (torch.rand(7, requires_grad=True), torch.rand((), requires_grad=True))
    if tuple_state:
        y0 = (torch.tensor(1.0), torch.tensor([[0.5, 0.5], [0.1, 0.1]]))

        def f(t, y):
            return (-y[0] * p[1], -y[1] * p[0].sum())

    else:
        y0 = torch.tensor([1.0, 0.5])

        def f(t, y):
            return -y * p[0].sum() * p[1]

    return f, y0, p


def _run(mod, tuple_state, norm):
    f, y0, p = _problem(tuple_state)
    xs = mod.odeint_adjoint(f, y0, torch.tensor([0.0, 0.5, 1.0]), adjoint_params=p, adjoint_options={"norm": norm})
    loss = sum(x.sum() for x in xs) if tuple_state else xs.sum()
    loss.backward()
    return [q.grad.clone() for q in p]


@pytest.mark.parametrize("tuple_state", [False, True])
def test_callable_norm_gets_torchdiffeqs_tuple(tuple_state):
    shapes = {}
    grads = {}
    for mod in (hn, torchdiffeq):
        seen = []

        def norm(tup, seen=seen):
            seen.append(tuple(x.shape for x in tup))
            return max(x.abs().max() for x in tup)

        grads[mod.__name__] = _run(mod, tuple_state, norm)
        shapes[mod.__name__] = set(seen)
    assert shapes["hybrid_node"] == shapes["torchdiffeq"]
    if tuple_state:
        assert shapes["hybrid_node"] == {((), (), (2, 2), (), (2, 2), (7,), ())}
    for a, b in zip(grads["hybrid_node"], grads["torchdiffeq"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_callable_norm_steers_the_backward_solve():
    # a norm that ignores everything but the state takes fewer backward steps than one that also
    # weighs the parameter channel heavily
    def loose(tup):
        return tup[1].abs().max()

    def strict(tup):
        return max(x.abs().max() for x in tup) * 1e3

    f, y0, p = _problem(False)
    sols = []
    for norm in (loose, strict):
        sol = hn.solve(f, y0, torch.tensor([0.0, 1.0]), sensitivity=hn.BacksolveAdjoint(norm=norm), adjoint_params=p)
        sol.ys.sum().backward()
        sols.append(sol.stats.n_steps_backward)
    assert sols[0] < sols[1]


def test_norm_must_be_a_name_or_callable():
    f, y0, p = _problem(False)
    with pytest.raises(ValueError, match="must be 'default', 'seminorm' or a callable"):
        hn.odeint_adjoint(f, y0, torch.tensor([0.0, 1.0]), adjoint_params=p, adjoint_options={"norm": 3})
    with pytest.raises(ValueError, match="norm must be one of"):
        hn.BacksolveAdjoint(norm="max")


def _grad_fn_options(xs, tuple_state):
    # where torchdiffeq's norm tests find the options: the Function's node, two views away for a tuple
    node = xs[0].grad_fn.next_functions[0][0].next_functions[0][0] if tuple_state else xs.grad_fn
    return node.adjoint_options


@pytest.mark.parametrize("seminorm", [False, True])
@pytest.mark.parametrize("tuple_state", [False, True])
def test_default_norm_in_grad_fn_equals_torchdiffeqs(tuple_state, seminorm):
    # the same tuple (t, y, adj_y, *adj_params) in torchdiffeq's internal layout (a tuple state flat)
    # handed to both libraries' default norms gives the same value
    torch.manual_seed(1)
    n = 5 if tuple_state else 2
    tup = (torch.tensor(0.3), torch.randn(n), torch.randn(n) * 4, torch.randn(7), torch.randn(()))
    kwargs = {"adjoint_options": {"norm": "seminorm"}} if seminorm else {}
    values = []
    for mod in (hn, torchdiffeq):
        f, y0, p = _problem(tuple_state)
        xs = mod.odeint_adjoint(f, y0, torch.tensor([0.0, 1.0]), adjoint_params=p, **kwargs)
        values.append(_grad_fn_options(xs, tuple_state)["norm"](tup))
    torch.testing.assert_close(values[0], values[1], rtol=1e-6, atol=0)


@pytest.mark.parametrize("tuple_state", [False, True])
def test_norm_replaced_in_grad_fn_runs_the_backward_solve(tuple_state):
    # a norm put into grad_fn.adjoint_options after the forward solve is the one the backward solve
    # uses: called on the same shapes as torchdiffeq's, with the same gradients
    shapes, grads = {}, {}
    for mod in (hn, torchdiffeq):
        f, y0, p = _problem(tuple_state)
        xs = mod.odeint_adjoint(f, y0, torch.tensor([0.0, 0.5, 1.0]), adjoint_params=p)
        options = _grad_fn_options(xs, tuple_state)
        default, seen = options["norm"], []

        def spy(tup, default=default, seen=seen):
            seen.append(tuple(x.shape for x in tup))
            return 10 * default(tup)

        options["norm"] = spy
        (sum(x.sum() for x in xs) if tuple_state else xs.sum()).backward()
        shapes[mod.__name__], grads[mod.__name__] = set(seen), [q.grad for q in p]
    assert shapes["hybrid_node"] == shapes["torchdiffeq"] and shapes["hybrid_node"]
    for a, b in zip(grads["hybrid_node"], grads["torchdiffeq"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_stricter_norm_in_grad_fn_takes_more_backward_steps():
    counts = []
    for scale in (1.0, 1e3):
        f, y0, p = _problem(False)
        sol = hn.solve(f, y0, torch.tensor([0.0, 1.0]), sensitivity=hn.BacksolveAdjoint(), adjoint_params=p)
        options = sol.ys.grad_fn.adjoint_options
        options["norm"] = lambda tup, base=options["norm"], s=scale: s * base(tup)
        sol.ys.sum().backward()
        counts.append(sol.stats.n_steps_backward)
    assert counts[0] < counts[1]
