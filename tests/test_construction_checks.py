"""Misspelt methods and options fail where they are written, naming the closest valid name.

Before, the constructors that store solve settings (SolveSettings, the adjoint settings, LatentODE,
ODERNN, NeuralSDE, LatentSDE) kept any name and the mistake surfaced at the first forward pass, or
not at all. They share the check odeint applies at call time (``_registry.refuse_unknown_options``).
The last tests pin the behaviour of checks that were written twice and are now one function.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hybrid_node as hn
from hybrid_node._problem import broadcasts_to
from hybrid_node._registry import METHOD_SPECS, build_solver, check_solve_settings, option_names
from hybrid_node.irregular import zero_unobserved
from hybrid_node.julia import backend as julia_backend
from hybrid_node.nn import CNFSolver, LatentODE, LatentSDE, NeuralSDE
from hybrid_node.nn.ode_block import ODEBlock, SolveSettings
from hybrid_node.nn.ode_rnn import ODERNN
from hybrid_node.sde.solvers import build_solver as build_sde_solver
from hybrid_node.sensitivity._backward import resolve_params

T01 = torch.tensor([0.0, 1.0])


class _Field(nn.Module):
    def __init__(self, dim: int = 2):
        super().__init__()
        self.lin = nn.Linear(dim, dim)

    def forward(self, t, y):
        return self.lin(y)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: SolveSettings(method="rk4", options={"step_sise": 0.1}), r"'step_size' \(for 'step_sise'\)"),
        (lambda: SolveSettings(options={"max_num_step": 10}), r"'max_num_steps' \(for 'max_num_step'\)"),
        (lambda: SolveSettings(method="dopri55"), r"Unknown method 'dopri55'.*'dopri5' \(for 'dopri55'\)"),
        (lambda: SolveSettings(method="rk4", options={"step_sise": 0.1}, backend="torch"), "'step_size'"),
        (lambda: hn.BacksolveAdjoint(method="rk4", options={"step_sise": 0.1}), "'step_size'"),
        # no method: the backward solve uses the forward's, so a name no method takes is refused
        (lambda: hn.BacksolveAdjoint(options={"frist_step": 0.1}), r"for any method.*'first_step'"),
        (lambda: hn.InterpolatingAdjoint(method="tsit4"), r"'tsit5' \(for 'tsit4'\)"),
        (lambda: LatentODE(options={"max_num_step": 10}), "'max_num_steps'"),
        (lambda: LatentODE(method="dopri"), r"'dopri5' or 'dopri8' \(for 'dopri'\)"),
        (lambda: LatentODE(encoder="ode-rnn", ode_rnn_kwargs={"options": {"frist_step": 0.1}}), "'first_step'"),
        (lambda: ODERNN(2, method="eulr"), r"'euler' \(for 'eulr'\)"),
        (lambda: NeuralSDE(_Field(), _Field(), noise_type="diagnal"), r"'diagonal' \(for 'diagnal'\)"),
        (lambda: NeuralSDE(_Field(), _Field(), sde_type="itô"), r"'ito' \(for 'itô'\)"),
        (lambda: NeuralSDE(_Field(), _Field(), method="eulr"), r"'euler' \(for 'eulr'\)"),
        (lambda: LatentSDE(method="milsten"), r"'milstein' \(for 'milsten'\)"),
    ],
)
def test_a_misspelt_name_fails_at_construction(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_an_sde_method_that_does_not_fit_fails_at_construction():
    # heun solves Stratonovich SDEs only: before, NeuralSDE kept it until the first forward pass
    with pytest.raises(ValueError, match="solves stratonovich SDEs but sde_type is 'ito'"):
        NeuralSDE(_Field(), _Field(), method="heun")


def test_an_odeblock_gets_the_check_through_its_settings():
    with pytest.raises(ValueError, match="'step_size'"):
        ODEBlock(_Field(), train_settings=SolveSettings(method="rk4", options={"step_sise": 0.1}))


def test_odeint_gives_the_same_hint_at_call_time():
    """One checker: odeint's call-time message and the constructors' are the same text."""
    with pytest.raises(ValueError) as at_call:
        hn.odeint(lambda t, y: -y, torch.ones(1), T01, method="rk4", options={"step_sise": 0.1})
    with pytest.raises(ValueError) as at_construction:
        SolveSettings(method="rk4", options={"step_sise": 0.1}, backend="torch")
    assert "Did you mean 'step_size' (for 'step_sise')?" in str(at_call.value)
    assert str(at_call.value) == str(at_construction.value)


def test_an_option_of_another_method_gets_no_look_alike():
    # step_size is rk4's; dopri5's nearest name, step_t, would be a wrong hint
    with pytest.raises(ValueError, match=r"\['step_size'\] belong to other methods\.$"):
        hn.odeint(lambda t, y: -y, torch.ones(1), T01, method="dopri5", options={"step_size": 0.1})


def test_the_sde_and_julia_checks_give_the_hint_too():
    with pytest.raises(ValueError, match=r"Unknown options \['grad_fre'\].*'grad_free' \(for 'grad_fre'\)"):
        build_sde_solver("milstein", "ito", "diagonal", {"grad_fre": True})
    with pytest.raises(ValueError, match=r"on the Julia backend.*'first_step' \(for 'frist_step'\)"):
        julia_backend.resolve_options({"frist_step": 0.1}, "Tsit5", torch.tensor([0.0, 1.0]).numpy())
    with pytest.raises(ValueError, match="'first_step'"):
        CNFSolver(options={"frist_step": 0.1})  # CNFSolver built its solver at construction already


@pytest.mark.parametrize(
    "build",
    [
        lambda: SolveSettings(method="rk4", options={"step_size": 0.1}),
        lambda: SolveSettings(method="trbdf2", options={"adaptive": True, "first_step": 0.01}),
        lambda: SolveSettings(method="scipy_solver", options={"solver": "LSODA"}, backend="torch"),
        lambda: SolveSettings(method="Vern7", options={"first_step": 0.01}, backend="julia"),
        lambda: SolveSettings(method="Vern7", options={"first_step": 0.01}),  # the default backend may change
        lambda: hn.BacksolveAdjoint(options={"step_size": 0.1}),  # valid for a fixed-step forward method
        lambda: hn.InterpolatingAdjoint(method="rk4", options={"step_size": 0.1}, checkpoints=2),
        lambda: LatentODE(method="rk4", options={"step_size": 0.1}),
        lambda: NeuralSDE(_Field(), _Field(), noise_type="diagonal", sde_type="stratonovich"),
    ],
)
def test_valid_settings_are_still_taken(build):
    build()


def test_a_julia_only_method_on_the_torch_backend_fails_at_construction():
    with pytest.raises(hn.BackendError, match="Julia backend only"):
        SolveSettings(method="vern7", backend="torch")


@pytest.mark.parametrize("method", [name for name, spec in METHOD_SPECS.items() if "torch" in spec.backends])
def test_the_construction_check_takes_every_name_the_solve_takes(method):
    """No false refusals: every option name build_solver accepts for ``method`` (alone, or with
    ``adaptive=True`` where the method switches mode) passes the construction check.

    A name counts as accepted when build_solver raises no "Unknown options" error (a None value may
    fail its value check, which comes from a name the method knows)."""
    universe = sorted(option_names(None) | {"not_an_option"})
    bases = [{}, {"adaptive": True}] if "adaptive" in METHOD_SPECS[method].options else [{}]
    for base in bases:
        for name in universe:
            options = {**base, name: None}
            try:
                build_solver(method, options, 1e-6, 1e-6)
            except (TypeError, ValueError) as err:
                if str(err).startswith("Unknown options"):
                    continue
            check_solve_settings(method, options, "torch")
    with pytest.raises(ValueError, match="not_an_option"):
        check_solve_settings(method, {"not_an_option": 1}, "torch")


# -- review leftovers: one copy of each check, behaviour unchanged -------------------------------------------


@pytest.mark.parametrize("t0", [torch.tensor(True), torch.tensor(0.0 + 0.0j)], ids=["bool", "complex"])
def test_odeint_event_refuses_a_bool_or_complex_start_time(t0):
    # the check is controllers.bool_or_complex, as for the tolerances
    with pytest.raises(TypeError, match=f"t0 must be a real start time, got a {t0.dtype} tensor"):
        hn.odeint_event(lambda t, y: -y, torch.ones(1), t0, event_fn=lambda t, y: y - 0.5)


@pytest.mark.parametrize(
    "shape, target, fits",
    [((), (2, 3), True), ((3,), (2, 3), True), ((2, 1), (2, 3), True), ((2, 3), (3,), False), ((4,), (3,), False)],
)
def test_broadcasts_to_refuses_a_broadcast_that_grows_the_target(shape, target, fits):
    assert broadcasts_to(shape, target) is fits


def test_the_tolerance_and_mask_checks_share_broadcasts_to():
    y0 = torch.ones(3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"atol: a tolerance of shape \(2, 3\) does not broadcast to the state \(3,\)"):
        hn.odeint(lambda t, y: -y, y0, T01.double(), atol=torch.full((2, 3), 1e-6, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"mask of shape \(2, 3\) must broadcast to values of shape \(3,\)"):
        zero_unobserved(y0, torch.ones(2, 3))
    # a mask that does broadcast zeroes the unobserved entries, NaN included (a NaN times 0 would stay NaN)
    values = torch.tensor([[1.0, float("nan")], [3.0, 4.0]])
    out = zero_unobserved(values, torch.tensor([1.0, 0.0]))
    assert torch.equal(out, torch.tensor([[1.0, 0.0], [3.0, 0.0]]))


def test_per_sample_first_call_errors_are_as_its_docstring_says():
    """integrate_per_sample's Raises: the field's own error with a note on t, a TypeError for a wrong dtype."""
    y0, t = torch.ones(3, 2, dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)
    with pytest.raises(ValueError) as info:  # float() of a (batch,) time: the field's own error object
        hn.odeint(lambda s, y: -y * float(s), y0, t, options={"per_sample": True})
    assert any("one time per sample" in note for note in getattr(info.value, "__notes__", []))
    with pytest.raises(TypeError, match="func returned dtype torch.float32 but the state is torch.float64"):
        hn.odeint(lambda s, y: (-y).float(), y0, t, options={"per_sample": True})


class _SDE:
    noise_type, sde_type = "diagonal", "ito"

    def __init__(self, drift, diffusion):
        self.f, self.g = drift, diffusion


@pytest.mark.parametrize(
    "sde, error, match",
    [
        (_SDE(lambda t, y: None, lambda t, y: y), ValueError, "the drift must return a torch.Tensor, got NoneType"),
        (_SDE(lambda t, y: -y, lambda t, y: 0.1), ValueError, "the diffusion must return a torch.Tensor, got float"),
        (
            _SDE(lambda t, y: -y, lambda t, y: y.float()),
            ValueError,
            r"the diffusion returned dtype torch.float32 but y0 is torch.float64; return it in y0's dtype",
        ),
    ],
)
def test_sdeint_and_odeint_share_the_field_output_check(sde, error, match):
    """sdeint keeps its ValueError, odeint its TypeError: one function (_term.check_derivative) with the
    caller's names."""
    y0 = torch.ones(2, 1, dtype=torch.float64)
    with pytest.raises(error, match=match):
        hn.sdeint(sde, y0, [0.0, 1.0], dt=0.5)
    with pytest.raises(TypeError, match="func must return a torch.Tensor, got float; return a tensor of the state's"):
        hn.odeint(lambda t, y: 1.0, y0, T01.double())


def test_resolve_params_refuses_a_meta_tensor_as_its_docstring_says():
    meta = torch.empty(2, device="meta", requires_grad=True)
    with pytest.raises(ValueError, match=r"adjoint_params\[0\] is on the meta device"):
        resolve_params(lambda t, y: y, (meta,))
    with pytest.raises(TypeError, match="got a single tensor"):
        resolve_params(lambda t, y: y, torch.ones(2, requires_grad=True))
