"""Fit the rational tanh of hybrid_node/loop/fast_tanh.py and measure its float32 error.

tanh(x) ~ x P(x^2) / Q(x^2) on [0, 9] with P, Q of degree 4 and Q(0) = 1, by linearised least squares
(Sanathanan-Koerner: the residual x P - tanh Q is weighted by 1 / Q of the previous iterate) with
Lawson's reweighting towards the minimax error. Prints the fitted coefficients, the errors of the
library's coefficients evaluated in float32 (absolute, relative, near 0) and their speed against
torch's tanh and Inductor's exp form on a 512x64 float32 block (one thread, compiled).

    python -m benchmarks.tanh_fit
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from hybrid_node.loop import fast_tanh


def fit(degree: int = 4, iterations: int = 120) -> tuple[float, np.ndarray, np.ndarray]:
    """The fitted (max float64 error, P, Q), constant terms first."""
    x = np.linspace(0.0, fast_tanh.CLAMP, 200_001)
    s, y = x * x, np.tanh(x)
    powers = [s**k for k in range(degree + 1)]
    a = np.concatenate([np.stack([x * p for p in powers], 1), np.stack([-y * p for p in powers[1:]], 1)], 1)
    weights, q_prev, best = np.ones_like(x), np.ones_like(x), None
    for _ in range(iterations):
        w = weights / q_prev
        coef, *_ = np.linalg.lstsq(a * w[:, None], y * w, rcond=None)
        p, q = coef[: degree + 1], np.concatenate([[1.0], coef[degree + 1 :]])
        q_prev = np.polynomial.polynomial.polyval(s, q)
        err = x * np.polynomial.polynomial.polyval(s, p) / q_prev - y
        worst = np.abs(err).max()
        if best is None or worst < best[0]:
            best = (worst, p.copy(), q.copy())
        weights = weights * np.sqrt(np.abs(err) / worst + 1e-3)
        weights /= weights.max()
    assert best is not None
    return best


def errors(f) -> dict[str, float]:
    """Float32 errors of ``f`` against the float64 tanh."""
    x = torch.linspace(-10.0, 10.0, 4_000_001, dtype=torch.float32)
    ref = torch.tanh(x.double())
    out = f(x).double()
    near0 = (x != 0) & (x.abs() < 1)
    tiny = torch.logspace(-30, 0, 10_001, dtype=torch.float32)
    return {
        "abs": (out - ref).abs().max().item(),
        "rel |x|<1": ((out - ref).abs() / ref.abs())[near0].max().item(),
        "rel 1e-30..1": ((f(tiny).double() - torch.tanh(tiny.double())).abs() / torch.tanh(tiny.double())).max().item(),
    }


def speed_us(f, options: dict) -> float:
    """Median microseconds of the compiled ``f`` on a 512x64 float32 block (call included)."""
    x = torch.randn(512, 64) * 2
    g = torch.compile(f, options=options)
    for _ in range(20):
        g(x)
    times = []
    for _ in range(2000):
        t = time.perf_counter()
        g(x)
        times.append(time.perf_counter() - t)
    return 1e6 * float(np.median(times))


def main(argv=None) -> None:
    # no options: the parser gives --help and refuses anything else before the minute of fitting and compiling
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args(argv)
    torch.set_num_threads(1)
    worst, p, q = fit()
    print(f"fit: largest float64 error {worst:.2e}")
    print("P =", tuple(float(c) for c in p))
    print("Q =", tuple(float(c) for c in q))
    print("\n| tanh (float32) | abs error | rel error, 0<|x|<1 | rel error, 1e-30..1 |\n| --- | --- | --- | --- |")
    for name, f in (("torch.tanh", torch.tanh), ("rational (library's coefficients)", fast_tanh.rational_tanh)):
        e = errors(f)
        print(f"| {name} | {e['abs']:.2e} | {e['rel |x|<1']:.2e} | {e['rel 1e-30..1']:.2e} |")
    print("\n| compiled, 512x64 float32, one thread | median us |\n| --- | --- |")
    rows = (
        ("torch.tanh, library form", torch.tanh, {"cpp.use_decompose_tanh": False}),
        ("torch.tanh, exp form", torch.tanh, {"cpp.use_decompose_tanh": True}),
        ("rational", fast_tanh.rational_tanh, {}),
        ("x + 1 (the call's own cost)", lambda x: x + 1, {}),
    )
    for name, f, options in rows:
        print(f"| {name} | {speed_us(f, options):.1f} |")


if __name__ == "__main__":
    main()
