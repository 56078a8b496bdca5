"""The rational tanh of the compiled CPU graphs (hybrid_node/loop/fast_tanh.py)."""

import copy

import pytest
import torch
from torch._higher_order_ops.while_loop import while_loop

from hybrid_node.loop import fast_tanh
from hybrid_node.loop.inductor import compile_for, fast_tanh_enabled, inductor_options, own_code


def test_float32_error_is_a_few_ulp_absolute_and_relative():
    x = torch.linspace(-12.0, 12.0, 2_000_001, dtype=torch.float32)
    ref = torch.tanh(x.double())
    out = fast_tanh.rational_tanh(x)
    assert out.dtype == torch.float32
    assert (out.double() - ref).abs().max() < 4e-7  # 3.4e-7 measured: about 3 ulp of 1
    small = torch.logspace(-38, 0, 20_001, dtype=torch.float32)
    for sign in (1.0, -1.0):
        got = fast_tanh.rational_tanh(sign * small).double()
        want = torch.tanh(sign * small.double())
        assert ((got - want).abs() / want.abs()).max() < 4e-7  # relative, down to the smallest normals
    assert (out.abs() <= 1).all()


def test_special_values_and_other_dtypes():
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 40.0], dtype=torch.float32)
    out = fast_tanh.rational_tanh(x)
    assert torch.isnan(out[0])
    assert out[1:].tolist() == [1.0, -1.0, 0.0, 0.0, 1.0]
    assert torch.signbit(out[4])  # odd: -0 stays -0
    assert fast_tanh.rational_tanh(x.double()) is NotImplemented  # float64 keeps torch's tanh
    h = torch.linspace(-4, 4, 101, dtype=torch.bfloat16)
    out = fast_tanh.rational_tanh(h)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, torch.tanh(h))


def _loop_of_tanh(y):
    def cond(i, y):
        return i < 1

    def body(i, y):
        return i + 1, torch.tanh(y)

    return while_loop(cond, body, (torch.zeros((), dtype=torch.int64), y))[1]


def _points():
    """float32 points where the rational and torch's tanh differ by at least 2 ulp."""
    x = torch.linspace(-6.0, 6.0, 200_001, dtype=torch.float32)
    gap = (fast_tanh.rational_tanh(x) - torch.tanh(x)).abs() / torch.tanh(x).abs().clamp(min=1e-30)
    picked = x[gap > 2.2e-7]
    assert picked.numel() > 20
    return picked


def test_cpu_graphs_compute_tanh_inside_loop_bodies_with_the_rational(one_thread):
    x = _points()
    with torch.no_grad():
        compiled = compile_for(_loop_of_tanh, cpu=True, fullgraph=True)(x)
    rational, library = fast_tanh.rational_tanh(x), torch.tanh(x)
    # the kernel may contract multiply-adds differently from eager: compare on average, per point
    assert (compiled - rational).abs().mean() < 0.25 * (compiled - library).abs().mean()
    # the compiled clamps keep NaN (a failed solve must see it) and map +-inf to +-1, in the vector
    # lanes (67 elements: whole vectors of 16 or 8, then a tail) and in the scalar tail alike
    edge = torch.linspace(-3.0, 3.0, 67)
    nan, inf = [0, 5, 17, 40, 66], [3, 20, 65]
    edge[nan], edge[inf], edge[[1, 33]] = float("nan"), float("inf"), -float("inf")
    with torch.no_grad():
        special = compile_for(own_code(_loop_of_tanh), cpu=True, fullgraph=True)(edge)
    assert torch.isnan(special[nan]).all() and torch.isnan(special).sum() == len(nan)
    assert special[inf].tolist() == [1.0] * 3 and special[[1, 33]].tolist() == [-1.0, -1.0]
    # Inductor's table lent the entry for that compilation only: the user's own graphs keep tanh
    from torch._inductor.decomposition import select_decomp_table

    assert torch.ops.aten.tanh.default not in select_decomp_table()
    with torch.no_grad():
        users = torch.compile(own_code(_loop_of_tanh), fullgraph=True)(x)
    assert (users - library).abs().mean() < 0.25 * (users - rational).abs().mean()


def test_the_solvers_cpu_graphs_keep_the_rationals_error_bounds_with_contracted_multiply_adds(one_thread):
    from benchmarks.tanh_fit import errors

    options = inductor_options(cpu=True)
    assert options["cpp.enable_floating_point_contract_flag"] == "fast"  # Horner steps as FMAs
    with torch.no_grad():
        e = errors(compile_for(own_code(lambda x: torch.tanh(x)), cpu=True, options=options))
    # the bounds of the uncontracted rational (docs/compiled/cpu_kernels.md, "tanh on the CPU"); measured
    # with FMAs: 3.0e-7, 3.2e-7, 2.9e-7
    assert e["abs"] < 3.4e-7 and e["rel |x|<1"] < 3.3e-7 and e["rel 1e-30..1"] < 3.0e-7


def test_the_torch_switch_turns_it_off(one_thread, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CPP_USE_DECOMPOSE_TANH", "0")
    assert not fast_tanh_enabled()
    x = _points()
    with torch.no_grad():  # own_code: a new compilation of the same function
        fn = own_code(_loop_of_tanh)
        compiled = compile_for(fn, cpu=True, fullgraph=True, options={"cpp.use_decompose_tanh": False})(x)
    torch.testing.assert_close(compiled, torch.tanh(x), rtol=1.2e-7, atol=0)


def test_the_rational_is_generated_for_the_solvers_compilations_only(one_thread):
    """The code generator's tanh is lent for a compilation of the solver's and given back after; a
    bfloat16 kernel (computed in float32 by Inductor) takes the rational too."""
    from torch._inductor.codegen.cpp import CppOverrides, CppVecOverrides

    from hybrid_node.loop.inductor import rational_tanh_codegen

    library = (CppOverrides.__dict__["tanh"], CppVecOverrides.__dict__["tanh"])
    with rational_tanh_codegen():
        assert "max_propagate_nan" in CppOverrides.tanh(_Var("tmp0", torch.float32))
        assert "at::vec::clamp" in CppVecOverrides.__dict__["tanh"].__func__(_Var("tmp0", torch.float32))
        assert CppOverrides.tanh(_Var("tmp0", torch.float64)) == library[0].__func__("tmp0")
    assert (CppOverrides.__dict__["tanh"], CppVecOverrides.__dict__["tanh"]) == library
    # the lambda compiles where Inductor computes a bfloat16 kernel in float32 (rounded to bfloat16,
    # the rational and the library agree, so this checks the kernel, not which tanh it ran)
    h = torch.linspace(-5.0, 5.0, 1001, dtype=torch.bfloat16)
    with torch.no_grad():
        compiled = compile_for(own_code(_loop_of_tanh), cpu=True, fullgraph=True)(h)
    torch.testing.assert_close(compiled, torch.tanh(h))


class _Var(str):
    """A stand-in for the code generator's variables: a name with a dtype."""

    def __new__(cls, name: str, dtype: torch.dtype):
        var = super().__new__(cls, name)
        var.dtype = dtype
        return var


def test_float64_graphs_keep_torchs_tanh(one_thread):
    x = torch.linspace(-6.0, 6.0, 10_001, dtype=torch.float64)
    with torch.no_grad():
        compiled = compile_for(_loop_of_tanh, cpu=True, fullgraph=True)(x)
    torch.testing.assert_close(compiled, torch.tanh(x), rtol=1e-15, atol=1e-15)


def test_the_fit_script_reproduces_the_librarys_coefficients():
    from benchmarks.tanh_fit import fit

    worst, p, q = fit()
    assert worst < 3e-8
    # The Lawson iteration repeats a least-squares solve 120 times, so the coefficients it ends with
    # depend on the LAPACK build and the CPU's kernels (4e-5 relative on another machine than the one
    # that fitted them); as functions both agree with tanh to 3e-8.
    torch.testing.assert_close(torch.tensor(p), torch.tensor(fast_tanh.P, dtype=torch.float64), rtol=1e-3, atol=0)
    torch.testing.assert_close(torch.tensor(q), torch.tensor(fast_tanh.Q, dtype=torch.float64), rtol=1e-3, atol=0)
    x = torch.linspace(0.0, fast_tanh.CLAMP, 200_001, dtype=torch.float64)
    s = x * x
    library = x * sum(c * s**k for k, c in enumerate(fast_tanh.P)) / sum(c * s**k for k, c in enumerate(fast_tanh.Q))
    assert (library - torch.tanh(x)).abs().max() < 3e-8


class _Field(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(2, 32), torch.nn.Tanh(), torch.nn.Linear(32, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2)
        )

    def forward(self, t, y):
        return self.net(y)


@pytest.mark.slow
def test_a_compiled_float32_tanh_solve_is_as_accurate_as_the_eager_one(one_thread):
    """The rational tanh changes the field by ~3 ulp: the solve's error against a float64 reference
    stays at the level of the eager float32 solve's (both are set by rtol 1e-5, not by tanh)."""
    import hybrid_node as hn

    torch.manual_seed(0)
    field = _Field()
    y0, t = torch.randn(64, 2), torch.linspace(0.0, 3.0, 7)
    with torch.no_grad():
        ref = hn.odeint(copy.deepcopy(field).double(), y0.double(), t.double(), rtol=1e-11, atol=1e-12)
        eager = hn.odeint(field, y0, t, rtol=1e-5, atol=1e-6)
        compiled = hn.odeint(field, y0, t, rtol=1e-5, atol=1e-6, options={"compile": True})
    err_eager = (eager.double() - ref).abs().max().item()
    err_compiled = (compiled.double() - ref).abs().max().item()
    assert err_compiled < 2 * err_eager + 1e-6, (err_compiled, err_eager)
