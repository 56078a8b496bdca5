"""Training with compiled steps: the same loop eagerly and with options={"compile": True}.

Fits an MLP vector field to a trajectory of a damped oscillator with the adjoint, first eagerly and
then with compiled step attempts, and prints the time per iteration and the final losses (equal up to
rounding). The first compiled iteration traces the solves and runs them uncompiled while a worker
process compiles them; the second waits for the compiled graphs.

Run: python examples/compiled_training.py [--iters N]
"""

import argparse
import time

import torch

import hybrid_node as hn

torch.set_num_threads(1)
A = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]])
t = torch.linspace(0.0, 5.0, 40)
y0 = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    target = hn.odeint(lambda t, y: y @ A.T, y0, t, rtol=1e-7, atol=1e-9)


class Field(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.Tanh(), torch.nn.Linear(64, 2))

    def forward(self, t, y):
        return self.net(y)


def train(options, iters=30):
    torch.manual_seed(1)
    field = Field()
    opt = torch.optim.Adam(field.parameters(), lr=1e-2)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        opt.zero_grad()
        ys = hn.odeint_adjoint(field, y0, t, rtol=1e-5, atol=1e-6, options=options)
        loss = ((ys - target) ** 2).mean()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return loss.item(), times


def iterations(text: str) -> int:
    """A whole number >= 3: the first two iterations are reported apart from the rest."""
    value = int(text)
    if value < 3:
        raise argparse.ArgumentTypeError(f"must be >= 3, got {value}")
    return value


parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--iters", type=iterations, default=30, help="training iterations of each loop (default 30)")
args = parser.parse_args()
for name, options in (("eager", {}), ("compiled", {"compile": True})):
    loss, times = train(options, args.iters)
    steady = sorted(times[2:])[len(times[2:]) // 2]
    print(
        f"{name:9s} first iteration {times[0]:6.2f} s, second {times[1]:6.2f} s, "
        f"then {1e3 * steady:6.1f} ms per iteration, final loss {loss:.5f}"
    )
