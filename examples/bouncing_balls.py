"""A batch of bouncing balls: non-terminal events with jumps, per-sample impact times, a learned restitution.

1. Five balls dropped from different heights bounce with restitution 0.8: ``hn.Event`` with
   ``on_event`` flips the velocity of the balls that hit the ground and the solver restarts there;
   every impact is recorded in ``sol.events`` and checked against the analytic impact times.
2. ``odeint_event(..., per_sample=True)``: each ball's own first impact time, with gradients.
3. The restitution coefficient is learned from observed impact times (gradient descent through
   the jumps; the event times' gradients come from the implicit function theorem).

Writes ``bouncing_balls.png`` (trajectories and detected impacts) into the given folder.

Run: python examples/bouncing_balls.py [--out DIR]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

import hybrid_node as hn

G = 9.81


def fall(t, y):
    """Free fall: y[:, 0] height, y[:, 1] velocity."""
    return torch.stack([y[:, 1], torch.full_like(y[:, 1], -G)], 1)


def bouncing(heights: torch.Tensor, e, t: torch.Tensor) -> hn.Solution:
    """Solve a batch of balls that bounce with restitution ``e`` (the ground is height 0)."""
    y0 = torch.stack([heights, torch.zeros_like(heights)], 1)

    def bounce(t, y, fired):
        # only the balls that hit the ground now bounce
        return torch.stack([y[:, 0], torch.where(fired, -e * y[:, 1], y[:, 1])], 1)

    event = hn.Event(lambda t, y: y[:, 0], direction=-1, on_event=bounce)
    return hn.solve(fall, y0, t, event=event, controller=hn.PIDController(rtol=1e-10, atol=1e-12))


def analytic_impacts(h: float, e: float, t_max: float) -> list[float]:
    out, v = [math.sqrt(2 * h / G)], math.sqrt(2 * G * h)
    while True:
        v *= e
        nxt = out[-1] + 2 * v / G
        if nxt > t_max or v < 1e-3:
            return out
        out.append(nxt)


def main(out: Path) -> int:
    torch.set_default_dtype(torch.float64)
    heights = torch.tensor([0.5, 1.0, 2.0, 3.0, 5.0])
    # up to 2.5 s: the 0.5 m ball comes to rest (infinitely many bounces, a Zeno point) at 2.87 s
    t = torch.linspace(0.0, 2.5, 251)
    sol = bouncing(heights, 0.8, t)
    worst = 0.0
    for i, h in enumerate(heights.tolist()):
        got = [float(r.t) for r in sol.events if r.index == (i,)][:6]
        want = analytic_impacts(h, 0.8, 2.5)[: len(got)]
        worst = max(worst, max(abs(a - b) for a, b in zip(got, want)))
    print(f"{len(sol.events)} impacts recorded; first six per ball within {worst:.1e} of the analytic times")

    h = heights.clone().requires_grad_(True)
    t_first, _ = hn.odeint_event(
        fall, torch.stack([h, torch.zeros(5)], 1), 0.0, event_fn=lambda t, y: y[:, 0], per_sample=True, rtol=1e-10
    )
    (dt_dh,) = torch.autograd.grad(t_first.sum(), h)
    print("first impacts:", [round(x, 4) for x in t_first.tolist()], "d t/d h:", [round(x, 4) for x in dt_dh.tolist()])

    # learn e from the observed times of the first three impacts of a 2 m drop
    observed = torch.tensor(analytic_impacts(2.0, 0.8, 10.0)[:3])
    e = torch.tensor(0.5, requires_grad=True)
    opt = torch.optim.Adam([e], lr=0.02)
    for _ in range(60):
        opt.zero_grad()
        fit = bouncing(torch.tensor([2.0]), e, torch.tensor([0.0, float(observed[-1]) + 1.0]))
        times = torch.stack([r.t for r in fit.events[:3]])
        loss = ((times - observed) ** 2).sum()
        loss.backward()
        opt.step()
    print(f"learned restitution {float(e.detach()):.4f} (true 0.8), loss {float(loss.detach()):.2e}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for i in range(len(heights)):
        (line,) = ax.plot(t, sol.ys[:, i, 0], lw=1.2, label=f"h0 = {float(heights[i]):g} m")
        hits = [float(r.t) for r in sol.events if r.index == (i,)]
        ax.plot(hits, [0.0] * len(hits), "x", color=line.get_color(), ms=5)
    ax.set_xlabel("t [s]")
    ax.set_ylabel("height [m]")
    ax.set_title("bouncing balls (restitution 0.8), x: detected impacts")
    ax.legend(fontsize=8)
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "bouncing_balls.png", dpi=120, bbox_inches="tight")
    print(f"wrote {out / 'bouncing_balls.png'}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for bouncing_balls.png")
    args = parser.parse_args()
    if args.out.exists() and not args.out.is_dir():  # found before the solves, not by savefig at the end
        parser.error(f"--out {str(args.out)!r} is a file, not a folder")
    try:  # a folder that cannot be made (no permission, a read-only place) failed after the solves
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        parser.error(
            f"cannot create the --out folder {str(args.out)!r} ({err.strerror}); pass a folder you can write to"
        )
    raise SystemExit(main(args.out))
