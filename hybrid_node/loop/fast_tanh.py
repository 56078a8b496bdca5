"""A rational ``tanh`` for the float32 kernels of the CPU graphs a solve compiles.

A tanh MLP field spends much of an evaluation in ``tanh`` (docs/compiled/cpu_kernels.md, "tanh on the
CPU"). Inductor's exp form ``2 / (1 + exp(-2x)) - 1`` costs one vectorised ``exp`` per element; this
odd rational function costs nine multiply-adds and one division:

    tanh(x) ~ x P(x^2) / Q(x^2),   x clamped to [-9, 9],   result clamped to [-1, 1],

with P and Q of degree 4 (Q(0) = 1). The coefficients were fitted here to the float64 tanh on [0, 9]
by linearised least squares reweighted towards the minimax error (Sanathanan-Koerner iteration with
Lawson weights; ``python -m benchmarks.tanh_fit`` repeats the fit and the error measurements): the
largest error of the float64 rational is 2e-8; evaluated in float32 (the form used) the absolute
error is at most 3.4e-7 (about 3 ulp of 1) and the relative error 3.2e-7 everywhere, including near 0
(where the exp form loses relative accuracy). Beyond 9, float32 tanh is 1 to within half an ulp.
NaN stays NaN (``clamp`` propagates it) and +-inf gives +-1.

Only float32, bfloat16 and float16 tensors take it (the last two computed in float32); float64 keeps
torch's ``tanh``, whose precision a degree-4 rational does not reach. The switch is the one for the
exp form: ``TORCHINDUCTOR_CPP_USE_DECOMPOSE_TANH=0`` compiles the library ``tanh`` everywhere.

The compiler meets it as one operation: :func:`cpp_expression` is the C++ that Inductor's CPU code
generator emits for a float32 ``tanh`` in the solver's graphs (``inductor.rational_tanh_codegen``).
Written as a decomposition into some twenty tensor operations instead, the rational made the graph
lowering and C++ generation of the mlp whole-solve graph about 4 s longer (14 tanh calls).
:func:`rational_tanh` is the same function on tensors, the reference the tests compare against.

References: C. K. Sanathanan, J. Koerner, "Transfer function synthesis as a ratio of two complex
polynomials", IEEE Trans. Automatic Control 8 (1963); C. L. Lawson, "Contributions to the theory of
linear least maximum approximation", PhD thesis, UCLA, 1961; Hart et al., Computer Approximations,
Wiley 1968 (rational approximation of elementary functions).
"""

from __future__ import annotations

import struct

import torch

#: P's coefficients, constant term first (fitted by benchmarks/tanh_fit.py)
P = (0.9999999038122501, 0.13378620724866958, 0.0034928848877511702, 2.0569457563197197e-05, 1.3307578400345577e-08)
#: Q's coefficients, constant term first
Q = (1.0, 0.4671191939027292, 0.025866326611497563, 0.0003281434705428594, 7.755688738175781e-07)
#: |x| beyond which the result is +-1 (float32 tanh(9) = 1 - 3e-8)
CLAMP = 9.0
#: changes whenever the coefficients or the form change: it is part of the compiled graphs' cache key
VERSION = "rational-4-4-v3"

_SHORT = (torch.float32, torch.bfloat16, torch.float16)


def _horner(coefficients: tuple[float, ...], s: torch.Tensor) -> torch.Tensor:
    out = s * coefficients[-1] + coefficients[-2]
    for c in reversed(coefficients[:-2]):
        out = out * s + c
    return out


def rational_tanh(x: torch.Tensor) -> torch.Tensor:
    """tanh of a float32 (or 16-bit) tensor as the clamped odd rational above, in tensor operations:
    what :func:`cpp_expression` computes in the compiled kernels, and the reference for its tests.

    Args:
        x: the argument.

    Returns:
        tanh(x) to about 3 float32 ulp, in x's dtype; ``NotImplemented`` for other dtypes (float64
        keeps ``torch.tanh``).
    """
    if x.dtype not in _SHORT:
        return NotImplemented
    xc = x.float().clamp(-CLAMP, CLAMP)
    s = xc * xc
    return (xc * _horner(P, s) / _horner(Q, s)).clamp(-1.0, 1.0).to(x.dtype)


def _cpp_float(c: float) -> str:
    """``c`` rounded to float32 as torch rounds it, as an exact C++ hexadecimal literal of type ``V``."""
    return f"V({struct.unpack('f', struct.pack('f', c))[0].hex()}f)"


def _cpp_horner(coefficients: tuple[float, ...]) -> str:
    """Horner's scheme of :func:`_horner` in C++, in the variable ``s`` and the scalar or vector type ``V``."""
    out = f"(s * {_cpp_float(coefficients[-1])} + {_cpp_float(coefficients[-2])})"
    for c in reversed(coefficients[:-2]):
        out = f"({out} * s + {_cpp_float(c)})"
    return out


def cpp_expression(x: str, vector: bool) -> str:
    """The C++ expression of :func:`rational_tanh` for the float32 value ``x``, for Inductor's CPU kernels.

    Args:
        x: a C++ expression of type ``float`` or, when ``vector``, ``at::vec::Vectorized<float>``.
        vector: ``x`` is a vector.

    Returns:
        An immediately called lambda (``x`` evaluated once) with the operations of
        :func:`rational_tanh` in the same order; its clamps propagate NaN as ``torch.clamp`` does.
    """
    # at::vec::clamp(a, lo, hi) is min(hi, max(lo, a)) with the operands in the order that keeps a NaN
    # of ``a`` (x86's max/min return their second operand when either is NaN; NEON, SVE and the scalar
    # fallback propagate NaN anyway): two instructions where Inductor's NaN-propagating maximum and
    # minimum take four each, which was ~5 us of the rational's ~10 us per 512x64 block
    form = "at::vec::clamp({}, {}, {})" if vector else "min_propagate_nan(max_propagate_nan({}, {}), {})"

    def clamp(a: str, bound: float) -> str:
        return form.format(a, _cpp_float(-bound), _cpp_float(bound))

    return (
        "([](auto x) { using V = decltype(x); "
        f"auto c = {clamp('x', CLAMP)}; auto s = c * c; "
        f"return {clamp(f'c * {_cpp_horner(P)} / {_cpp_horner(Q)}', 1.0)}; "
        f"}}({x}))"
    )
