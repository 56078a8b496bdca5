"""Gradients through the whole-solve graph's ``while_loop``, against the same solve with a Python loop.

The traced adaptive solve (:func:`hybrid_node.loop.whole.odeint_graph`: initial step, ``while_loop`` of
step attempts, output buffer) of a 2-H-2 tanh MLP, an 8x2 state, output times ``linspace(0, 2, N)``,
dopri5 at rtol 1e-7, atol 1e-9, float64, one thread, is differentiated with ``torch.autograd.grad`` of
a squared error and compared with the same function run with a Python ``while`` loop in place of
``while_loop`` (the operator's documented meaning: the same operations, so equal gradients up to
rounding)::

    python -m benchmarks.while_loop_grad --loop eager            # torch's eager while_loop
    python -m benchmarks.while_loop_grad --loop eager --no-workaround --params-only
    python -m benchmarks.while_loop_grad --loop inductor --repeat 20   # compiles: minutes

``--no-workaround`` leaves out :mod:`hybrid_node.loop.while_grad` (torch 2.13 then drops the gradient
through the output buffer and, with ``--params-only``, the state: docs/compiled/fixes.md, "Gradients
through while_loop"). ``--loop inductor`` compiles with Inductor's defaults (the library's CPU
options include ``cpp_wrapper``, which Inductor refuses for the loop's backward).
"""

from __future__ import annotations

import argparse
import time

import torch

import hybrid_node as hn
from hybrid_node.loop import whole


def python_while_loop(cond_fn, body_fn, carried):
    """``while_loop`` as its docstring defines it, as a Python loop."""
    while cond_fn(*carried):
        carried = tuple(body_fn(*carried))
    return carried


class MLP(torch.nn.Module):
    """f(t, y) = W2 tanh(W1 y + b1) + b2."""

    def __init__(self, hidden: int):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(2, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 2))

    def forward(self, t, y):
        return self.net(y)


def gradients(solve, field, y0, target, params_only: bool) -> list[torch.Tensor]:
    """The loss's gradients with respect to y0 (unless ``params_only``) and the field's parameters."""
    y = y0.clone().requires_grad_(not params_only)
    ys = solve(y)
    inputs = ([] if params_only else [y]) + list(field.parameters())
    return list(torch.autograd.grad(((ys - target) ** 2).sum(), inputs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop", choices=("eager", "aot_eager", "inductor"), default="eager")
    parser.add_argument("--hidden", type=int, default=16)
    parser.add_argument("--outputs", type=int, default=5, help="number of output times N")
    parser.add_argument("--params-only", action="store_true", help="y0 does not require grad")
    parser.add_argument("--no-workaround", action="store_true", help="leave out loop/while_grad.py")
    parser.add_argument("--repeat", type=int, default=0, help="then time this many calls (median)")
    args = parser.parse_args()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    field = MLP(args.hidden)
    y0, target = torch.randn(8, 2), torch.randn(args.outputs, 8, 2)
    t = torch.linspace(0.0, 2.0, args.outputs)
    controller = hn.PIDController(rtol=1e-7, atol=1e-9)
    if args.no_workaround:
        whole.differentiable_carries = lambda carries, which: tuple(carries)  # type: ignore[assignment]

    def solve(y):
        return whole.odeint_graph(field, y, t, hn.Dopri5(), controller)

    loop = solve if args.loop == "eager" else torch.compile(solve, backend=args.loop, fullgraph=True, dynamic=False)
    start = time.perf_counter()
    got = gradients(loop, field, y0, target, args.params_only)
    first = time.perf_counter() - start
    saved, whole.while_loop = whole.while_loop, python_while_loop
    reference = gradients(solve, field, y0, target, args.params_only)
    whole.while_loop = saved
    error = max((a - b).abs().max().item() for a, b in zip(got, reference))
    largest = max(b.abs().max().item() for b in reference)
    print(
        f"loop={args.loop} hidden={args.hidden} outputs={args.outputs} params_only={args.params_only} "
        f"workaround={not args.no_workaround}: largest gradient error {error:.3g} (largest gradient "
        f"{largest:.3g}); first call {first:.1f} s"
    )
    if args.repeat:
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            gradients(loop, field, y0, target, args.params_only)
            times.append(time.perf_counter() - start)
        print(f"median call (forward and backward) {1e3 * sorted(times)[len(times) // 2]:.2f} ms")


if __name__ == "__main__":
    main()
