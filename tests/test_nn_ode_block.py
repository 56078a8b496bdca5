"""ODEBlock: accuracy against the matrix exponential, shapes/dtypes, train/eval settings, NFE counts."""

import pytest
import scipy.linalg
import torch
from torch import nn

from hybrid_node import BackendError
from hybrid_node.nn import MLPDynamics, ODEBlock, SolveSettings
from hybrid_node.sensitivity import (
    BacksolveAdjoint,
    DirectBackprop,
    GaussAdjoint,
    InterpolatingAdjoint,
)


class Linear(nn.Module):
    """dy/dt = y A^T with a learnable A; counts its own calls to check the block's counter."""

    def __init__(self, a):
        super().__init__()
        self.a = nn.Parameter(a)
        self.calls = 0

    def forward(self, t, y):
        self.calls += 1
        return y @ self.a.T


A = torch.tensor([[-0.1, 1.0], [-1.0, -0.1]], dtype=torch.float64)
TIGHT = SolveSettings("dopri5", rtol=1e-10, atol=1e-12)


def test_final_state_matches_matrix_exponential():
    y0 = torch.tensor([[1.0, 0.5], [-0.3, 2.0]], dtype=torch.float64)
    block = ODEBlock(Linear(A.clone()), (0.0, 2.0), train_settings=TIGHT)
    exact = y0 @ torch.from_numpy(scipy.linalg.expm(2.0 * A.numpy())).T
    torch.testing.assert_close(block(y0), exact, rtol=1e-8, atol=1e-9)


def test_trajectory_shape_and_values():
    t = torch.linspace(0, 1, 5, dtype=torch.float64)
    y0 = torch.randn(3, 2, dtype=torch.float64)
    ys = ODEBlock(Linear(A.clone()), t, train_settings=TIGHT, return_trajectory=True)(y0)
    assert ys.shape == (5, 3, 2)
    for k, tk in enumerate(t.tolist()):
        exact = y0 @ torch.from_numpy(scipy.linalg.expm(tk * A.numpy())).T
        torch.testing.assert_close(ys[k], exact, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_is_kept(dtype):
    block = ODEBlock(Linear(A.to(dtype)))
    y = block(torch.randn(4, 2, dtype=dtype))
    assert y.dtype == dtype and y.shape == (4, 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_device_is_kept():
    block = ODEBlock(Linear(A.float())).cuda()
    y = block(torch.randn(4, 2, device="cuda"))
    assert y.device.type == "cuda"


def test_train_and_eval_settings_switch_with_mode():
    y0 = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    exact = y0 @ torch.from_numpy(scipy.linalg.expm(5.0 * A.numpy())).T
    block = ODEBlock(
        Linear(A.clone()),
        (0.0, 5.0),
        train_settings=SolveSettings(rtol=1e-2, atol=1e-2),
        eval_settings=SolveSettings(rtol=1e-9, atol=1e-11),
    )
    loose = block(y0)
    nfe_train = block.nfe_forward
    block.eval()
    assert block.settings is block.eval_settings
    tight = block(y0)
    assert block.nfe_forward > nfe_train
    assert (tight - exact).abs().max() < 1e-7 < (loose - exact).abs().max()
    block.train()
    assert block.settings is block.train_settings


def test_eval_settings_default_to_train_settings():
    block = ODEBlock(Linear(A.clone()), train_settings=TIGHT)
    block.eval()
    assert block.settings is TIGHT


def test_fixed_step_nfe_count():
    func = Linear(A.clone())
    rk4 = SolveSettings("rk4", options={"step_size": 0.25})
    block = ODEBlock(func, (0.0, 1.0), train_settings=rk4)
    block(torch.randn(2, 2, dtype=torch.float64)).sum().backward()
    assert block.nfe_forward == func.calls == 16  # 4 steps x 4 stages
    assert block.nfe_backward == 0  # direct backprop replays the graph


def test_adjoint_counts_backward_nfe_and_matches_direct_gradient():
    y0 = torch.randn(3, 2, dtype=torch.float64)
    grads, nfes = [], []
    for sens in (DirectBackprop(), BacksolveAdjoint()):
        func = Linear(A.clone())
        block = ODEBlock(func, (0.0, 1.0), train_settings=SolveSettings(rtol=1e-9, atol=1e-10, sensitivity=sens))
        block(y0).pow(2).sum().backward()
        assert block.nfe_forward + block.nfe_backward == func.calls
        grads.append(func.a.grad.clone())
        nfes.append(block.nfe_backward)
    assert nfes[0] == 0 and nfes[1] > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-6, atol=1e-8)


def test_gradient_against_finite_differences():
    y0 = torch.tensor([[0.7, -0.2]], dtype=torch.float64)
    func = Linear(A.clone())
    block = ODEBlock(func, (0.0, 1.0), train_settings=TIGHT)
    block(y0).sum().backward()
    eps, fd = 1e-6, torch.zeros_like(A)
    for i in range(2):
        for j in range(2):
            with torch.no_grad():
                func.a[i, j] += eps
                up = block(y0).sum()
                func.a[i, j] -= 2 * eps
                down = block(y0).sum()
                func.a[i, j] += eps
            fd[i, j] = (up - down) / (2 * eps)
    torch.testing.assert_close(func.a.grad, fd, rtol=1e-5, atol=1e-7)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="strictly increasing"):
        ODEBlock(Linear(A.clone()), (0.0, 1.0, 0.5))
    with pytest.raises(ValueError, match="at least two"):
        ODEBlock(Linear(A.clone()), (1.0,))
    with pytest.raises(TypeError, match="SolveSettings"):
        ODEBlock(Linear(A.clone()), train_settings={"rtol": 1e-3})
    with pytest.raises(TypeError, match="callable"):
        ODEBlock(3)
    with pytest.raises(ValueError, match="rtol"):
        SolveSettings(rtol=0)
    with pytest.raises(TypeError, match="sensitivity"):
        SolveSettings(sensitivity="adjoint")
    with pytest.raises(ValueError, match="backend"):
        SolveSettings(backend="jax")


def test_interpolating_adjoint_matches_direct_gradient():
    y0 = torch.randn(2, 2, dtype=torch.float64)
    grads = []
    for sens in (DirectBackprop(), InterpolatingAdjoint(checkpoints=4)):
        func = Linear(A.clone())
        block = ODEBlock(func, (0.0, 1.5), train_settings=SolveSettings(rtol=1e-9, atol=1e-10, sensitivity=sens))
        block(y0).pow(2).sum().backward()
        grads.append(func.a.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-6, atol=1e-8)


def test_julia_only_sensitivity_on_torch_names_the_alternatives():
    block = ODEBlock(Linear(A.clone()), train_settings=SolveSettings(sensitivity=GaussAdjoint(), backend="torch"))
    with pytest.raises(BackendError, match="BacksolveAdjoint"):
        block(torch.randn(1, 2, dtype=torch.float64))


def test_unknown_method_is_reported():
    # where the settings are written, not at the first forward pass
    with pytest.raises(ValueError, match="Unknown method 'rk99'"):
        SolveSettings(method="rk99")


@pytest.mark.parametrize("sensitivity", [DirectBackprop(), BacksolveAdjoint()], ids=["direct", "backsolve"])
def test_a_compiled_block_compiles_on_its_first_step_only_and_counts_as_eager(float64_default, one_thread, sensitivity):
    """``compile=True`` in a block: the graphs compiled by the first training step serve the next
    ones (the counting wrapper is kept across forward passes and its count is a counter the graphs
    freeze; a new wrapper per pass counting in a list compiled a graph on every step and kept the
    adjoint's backward pass eager), and the counts and gradients are the eager block's."""
    from conftest import CountingMLP

    torch.manual_seed(0)
    x = torch.randn(6, 2)

    def make(options):
        torch.manual_seed(1)
        settings = SolveSettings(rtol=1e-8, atol=1e-10, options=options, sensitivity=sensitivity)
        return ODEBlock(CountingMLP(), (0.0, 1.0), train_settings=settings)

    eager, compiled = make(None), make({"compile": True})
    graphs = torch._dynamo.utils.counters["stats"]
    for step in range(3):
        results = []
        for block in (eager, compiled):
            block.zero_grad()
            block(x).pow(2).sum().backward()
            results.append((block.nfe_forward, block.nfe_backward, [p.grad.clone() for p in block.parameters()]))
        if step == 0:
            after_first = graphs["unique_graphs"]
        (*counts_e, grads_e), (*counts_c, grads_c) = results
        assert counts_c == counts_e and counts_c[0] > 0
        for got, want in zip(grads_c, grads_e):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)
    assert graphs["unique_graphs"] == after_first


def test_a_block_of_an_unhashable_callable_solves_and_counts():
    """The counting wrapper is kept per field object; a callable that cannot be a dict key (a
    dataclass with ``eq=True``) gets a new wrapper per pass and still counts."""
    import dataclasses

    @dataclasses.dataclass
    class Decay:
        rate: float

        def __call__(self, t, y):
            return -self.rate * y

    block = ODEBlock(Decay(0.5), (0.0, 1.0), train_settings=TIGHT)
    y0 = torch.ones(1, dtype=torch.float64)
    torch.testing.assert_close(block(y0), torch.exp(torch.tensor([-0.5], dtype=torch.float64)), rtol=1e-7, atol=0)
    assert block.nfe_forward > 0


def test_a_replaced_field_is_solved_and_counted_and_the_state_dict_is_unchanged():
    """The counting wrapper is kept per field object outside the block's submodules: after
    ``block.func`` is replaced the new field is solved and counted, and the block's parameters and
    state dict name only the field's own."""
    first, second = Linear(A.clone()), Linear(-A.clone())
    block = ODEBlock(first, (0.0, 1.0), train_settings=TIGHT)
    y0 = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    block(y0)
    block.func = second
    got = block(y0)
    want = torch.linalg.matrix_exp(-A) @ y0[0]
    torch.testing.assert_close(got[0], want, rtol=1e-8, atol=1e-10)
    assert second.calls == block.nfe_forward > 0
    assert list(block.state_dict()) == ["func.a"] and len(list(block.parameters())) == 1


def test_a_replaced_field_is_not_kept_alive_by_the_block():
    """The block keeps one counting wrapper per field object; replacing the field drops the wrapper
    of the old one at the next forward pass, so the old module can be freed."""
    import gc
    import weakref

    block = ODEBlock(Linear(A.clone()), (0.0, 1.0), train_settings=TIGHT)
    y0 = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    block(y0)
    old = weakref.ref(block.func)
    for k in range(3):
        block.func = Linear((k + 2) * A.clone())
        block(y0)
    gc.collect()
    assert old() is None
    assert len(block.__dict__["_kept_fields"]) == 1


@pytest.mark.parametrize("options", [{}, pytest.param({"compile": True}, marks=pytest.mark.slow)])
def test_a_model_holding_a_block_trains_under_torch_compile_without_compiling_again(options):
    """``torch.compile`` of a model with an ODE block, trained: the block's counted solve runs untraced
    (the solve would anyway); traced, with the block's own ``compile=True`` every training step
    compiled a graph again. Losses, gradients and counts are the eager model's."""
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    settings = SolveSettings("dopri5", rtol=1e-10, atol=1e-12, options=options)
    block = ODEBlock(MLPDynamics(2, hidden=8), (0.0, 1.0), train_settings=settings)
    model = nn.Sequential(nn.Linear(3, 2), block)
    compiled = torch.compile(model)
    x = torch.randn(4, 3)
    counters.clear()
    graphs = []
    for _ in range(3):
        got = compiled(x).square().sum()
        got.backward()
        grads_c, nfe_c = [p.grad.clone() for p in model.parameters()], block.nfe_forward
        model.zero_grad()
        want = model(x).square().sum()
        want.backward()
        torch.testing.assert_close(got, want)
        for c, e in zip(grads_c, [p.grad for p in model.parameters()]):
            torch.testing.assert_close(c, e)
        assert nfe_c == block.nfe_forward > 0
        model.zero_grad()
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[0] > 0 and graphs[1] == graphs[2] == graphs[0]


def test_a_plain_callable_under_an_adjoint_is_refused_and_backpropagates_directly():
    # The adjoint differentiates the field module's parameters; a lambda's closure tensors would get
    # no gradient at all, silently.
    rate = torch.tensor(-0.5, dtype=torch.float64, requires_grad=True)
    adjoint = SolveSettings(sensitivity=BacksolveAdjoint())
    with pytest.raises(ValueError, match="plain callable.*nn.Module.*DirectBackprop"):
        ODEBlock(lambda t, y: rate * y, train_settings=adjoint)
    with pytest.raises(ValueError, match="plain callable"):
        ODEBlock(lambda t, y: rate * y, eval_settings=adjoint)
    block = ODEBlock(lambda t, y: rate * y, train_settings=TIGHT)
    block.train_settings = adjoint  # replaced after construction: refused at the forward pass
    with pytest.raises(ValueError, match="plain callable"):
        block(torch.ones(2, dtype=torch.float64, requires_grad=True))
    block.train_settings = TIGHT
    x = torch.tensor([1.0, 2.0], dtype=torch.float64)
    block(x).sum().backward()  # d/d rate of sum(x e^rate) = sum(x) e^rate
    torch.testing.assert_close(rate.grad, 3.0 * rate.detach().exp(), rtol=1e-8, atol=0)


def test_nfe_backward_counts_the_backward_pass_after_the_field_is_replaced():
    func = Linear(A.clone())
    block = ODEBlock(func, (0.0, 1.0), train_settings=SolveSettings(sensitivity=BacksolveAdjoint()))
    assert block.nfe_backward == 0  # no forward pass yet
    block(torch.randn(2, 2, dtype=torch.float64)).sum().backward()
    backward = block.nfe_backward
    assert backward > 0 and block.nfe_forward + backward == func.calls
    block.func = Linear(2 * A.clone())
    assert block.nfe_backward == backward  # the backward pass of the latest forward (was negative)
    block(torch.randn(2, 2, dtype=torch.float64))
    assert block.nfe_backward == 0


def test_float64_times_of_a_float32_state_keep_their_precision_as_in_odeint_and_torchdiffeq():
    """The block cast its times to the state's dtype: the float64 interval (1e4, 1e4 + 1e-3) became
    float32 (10000, 10000.0009765625), 2.3% short, and y' = 1 gave 0.0009765625; hn.odeint and
    torchdiffeq keep the float64 times and give 1e-3. Times 1e-4 apart near 1e4 became equal and the
    solve refused them."""
    torchdiffeq = pytest.importorskip("torchdiffeq")

    class One(nn.Module):
        def forward(self, t, y):
            return torch.ones_like(y)

    x = torch.zeros(1, 1)
    for times in ((1e4, 1e4 + 1e-3), torch.tensor([1e4, 1e4 + 1e-4, 1e4 + 3e-4], dtype=torch.float64)):
        want = torchdiffeq.odeint(One(), x, torch.as_tensor(times, dtype=torch.float64))
        got = ODEBlock(One(), times, return_trajectory=True)(x)
        assert got.dtype == torch.float32
        # y = t - t0 is O(1e-3): float32 rounding of the float64 steps is below 1e-10 (the bug is 2e-5)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-10)


def test_dtype_conversions_of_a_block_convert_its_weights_not_its_times():
    """``.float()`` / ``.half()`` / ``.to(dtype)`` converted the times buffer too: float64
    (1e4, 1e4 + 1e-3) became float32 (10000, 10000.0009765625) and the solve ran 2.3% short, and a
    later ``.double()`` did not bring the digits back. The times keep their float64 values."""

    class Rate(nn.Module):  # y' = w = 1
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones((), dtype=torch.float64))

        def forward(self, t, y):
            return self.w * torch.ones_like(y)

    times = (1e4, 1e4 + 1e-3)
    one_step = SolveSettings("rk4", options={"step_size": 1e-3})  # exact for y' = 1
    for convert, dtype in (
        (lambda m: m.float(), torch.float32),
        (lambda m: m.half().double(), torch.float64),
        (lambda m: m.to(torch.bfloat16).to(torch.float32), torch.float32),
    ):
        block = convert(ODEBlock(Rate(), times, train_settings=one_step))
        assert block.func.w.dtype == dtype  # the weights are converted
        assert block.t.dtype == torch.float64 and block.t.tolist() == list(times)
        got = block(torch.zeros(1, 1, dtype=dtype))
        # y(t1) = t1 - t0 = 1e-3 up to the rounding of a float32 state (the bug: 2.3e-5 short)
        torch.testing.assert_close(got, torch.full((1, 1), 1e-3, dtype=dtype), rtol=1e-6, atol=0)
