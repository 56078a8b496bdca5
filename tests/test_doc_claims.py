"""Statements of the user pages that no other test pins: lists of which methods do what, defaults quoted
in the prose, and what the pages say the peers (torchdiffeq, torchsde) do. Each list is compared with
what the registry declares or what a solve actually does, so a method added to or dropped from a
capability, or a default that changes, fails here until the page says so."""

from __future__ import annotations

import inspect
import math
import re
import warnings
from pathlib import Path

import pytest
import torch
from torch.func import vmap

import hybrid_node as hn
from hybrid_node.loop.dispatch import EVENT_MAX_STEPS
from hybrid_node.sde.solvers import DEFAULT_METHOD
from hybrid_node.sde.solvers import METHODS as SDE_METHODS

DOCS = Path(__file__).resolve().parent.parent / "docs"
_NOISE_TYPES = {"diagonal", "additive", "scalar", "general"}


def _page(name: str) -> str:
    # the pages wrap lines anywhere: compare against the text with its line breaks as spaces
    return " ".join((DOCS / name).read_text().split())


def _sentence(text: str, start: str, end: str) -> str:
    """The text from ``start`` up to (not including) the next ``end`` after it."""
    i = text.index(start)
    return text[i : text.index(end, i + len(start))]


def _names(fragment: str) -> set[str]:
    """Method names in a prose list such as "dopri5, tsit5 and bosh3" (words that are method names)."""
    return {w for w in re.findall(r"\w+", fragment) if w in hn.METHODS}


def _loop_methods(loop: str) -> set[str]:
    return {name for name, spec in hn.METHODS.items() if loop in spec.loops}


# --- solvers.md: the loop variants' method lists --------------------------------------------------


def test_device_loop_list_is_the_registrys():
    text = _page("solvers.md")
    listed = _names(_sentence(text, "### `device_loop=True`", "also take `device_loop=True`"))
    assert listed == _loop_methods("device_loop")


def test_per_sample_list_is_the_registrys():
    text = _page("solvers.md")
    listed = _names(_sentence(text, "one step size per sample", "take `per_sample=True`"))
    assert listed == _loop_methods("per_sample")


def test_whole_solve_list_is_the_registrys():
    text = _page("solvers.md")
    listed = _names(_sentence(text, "A solve without an autograd graph (inference,", ", and the backsolve"))
    assert listed == _loop_methods("whole_solve")


def test_defaults_quoted_on_the_solvers_page():
    text = _page("solvers.md")
    assert "`sync_every=K`, default 8" in text
    assert inspect.signature(hn.PIDController).parameters["sync_every"].default == 8
    assert "`max_num_steps` (default 10^6" in text
    assert inspect.signature(hn.ConstantStepSize).parameters["max_num_steps"].default == 10**6
    assert "`cap_after_reject` (default True" in text
    assert all(cls().cap_after_reject is True for cls in (hn.Kvaerno3, hn.Kvaerno5, hn.KenCarp4))
    assert '`jacobian`: `"jacrev"` (default)' in text
    assert hn.Rodas5P().jacobian == "jacrev" and hn.Kvaerno5().jacobian == "jacrev"
    assert '`time_derivative`: `"autodiff"` (default' in text
    assert hn.Rodas5P().time_derivative == "autodiff"


def test_fixed_grid_methods_refuse_jump_t_where_torchdiffeq_ignores_it():
    """solvers.md: ``odeint`` refuses jump_t for fixed-grid methods; torchdiffeq warns and ignores it."""
    assert "torchdiffeq 0.2.5 warns `Unexpected arguments` and ignores them there" in _page("solvers.md")
    td = pytest.importorskip("torchdiffeq")
    y0, t = torch.tensor([1.0], dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)
    options = {"step_size": 0.1, "jump_t": torch.tensor([0.5], dtype=torch.float64)}
    with pytest.raises(ValueError, match="jump_t"):
        hn.odeint(lambda s, y: -y, y0, t, method="rk4", options=options)
    with pytest.warns(UserWarning, match="Unexpected arguments"):
        ys = td.odeint(lambda s, y: -y, y0, t, method="rk4", options=options)
    # ignored: the solve is the plain rk4 one
    plain = td.odeint(lambda s, y: -y, y0, t, method="rk4", options={"step_size": 0.1})
    assert torch.equal(ys, plain)


# --- transforms.md: which methods run inside torch.func transforms --------------------------------


def _runs_under_vmap(name: str) -> bool:
    """Whether ``vmap`` over ``odeint`` with this method solves (True) or is refused (False).

    Raises:
        AssertionError: the method failed in another way than the transforms' refusal.
    """
    y0 = torch.tensor([[1.0, 0.5], [0.3, -0.2]], dtype=torch.float64)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    tuple_state = "tuple state" in hn.METHODS[name].notes  # the separable symplectic methods

    def one(y):
        if tuple_state:
            return hn.odeint(lambda s, qp: (qp[1], -qp[0]), (y[:1], y[1:]), t, method=name)[0]
        return hn.odeint(lambda s, z: torch.stack([z[1], -z[0]]), y, t, method=name)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            vmap(one)(y0)
    except ValueError as err:
        assert "torch.func" in str(err), f"{name}: {err}"
        return False
    return True


def test_transform_method_list_is_what_runs():
    text = _page("transforms.md")
    listed = _names(_sentence(text, "for the adaptive explicit pairs", "`)."))
    torch_names = [name for name, spec in hn.METHODS.items() if spec.solver is not None]
    runs = {name for name in torch_names if _runs_under_vmap(name)}
    assert listed == runs


# --- events.md: defaults, and torchdiffeq's event-parameter gradient -----------------------------


def test_event_defaults_quoted_on_the_events_page():
    text = _page("events.md")
    params = inspect.signature(hn.Event).parameters
    assert "`Event(samples=4)`" in text and params["samples"].default == 4
    assert "`hn.Event(..., max_events=10_000)`" in text and params["max_events"].default == 10_000
    assert "(100,000 steps unless set in `options`)" in text and EVENT_MAX_STEPS == 100_000


def test_torchdiffeq_gives_an_event_level_no_gradient():
    """events.md and torchdiffeq.md: torchdiffeq's event time has no gradient for a parameter of
    ``event_fn`` (None through odeint and odeint_adjoint); ours has the implicit function theorem's."""
    said = "no gradient: `None` with `odeint` and with `odeint_adjoint`"
    assert said in _page("events.md") and said in _page("torchdiffeq.md")
    td = pytest.importorskip("torchdiffeq")

    class Decay(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.k = torch.nn.Parameter(torch.tensor(1.5, dtype=torch.float64))

        def forward(self, t, y):
            return -self.k * y

    for interface in (td.odeint, td.odeint_adjoint):
        level = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
        t_e, _ = td.odeint_event(
            Decay(),
            torch.tensor([1.0], dtype=torch.float64),
            torch.tensor(0.0, dtype=torch.float64),
            event_fn=lambda t, y, level=level: y[0] - level,
            odeint_interface=interface,
        )
        assert torch.autograd.grad(t_e, level, allow_unused=True) == (None,)
    level = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    t_e, _ = hn.odeint_event(
        lambda t, y: -1.5 * y,
        torch.tensor([1.0], dtype=torch.float64),
        0.0,
        event_fn=lambda t, y: y[0] - level,
        rtol=1e-10,
        atol=1e-12,
    )
    # y = e^(-1.5 t) reaches the level at t_e = -log(level) / 1.5: dt_e/dlevel = -1 / (1.5 level)
    (grad,) = torch.autograd.grad(t_e, level)
    torch.testing.assert_close(grad.item(), -1 / (1.5 * 0.5), rtol=1e-6, atol=0)


# --- sde.md: the method table, the defaults and the signatures -----------------------------------


def _sde_table() -> dict[str, tuple[set[str], set[str]]]:
    """method -> (SDE types, noise types) as the Methods table of sde.md gives them."""
    rows = {}
    for line in (DOCS / "sde.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0].startswith("`") and cells[0].strip("`") in SDE_METHODS:
            sde_types = {s.strip().lower() for s in cells[1].split(",")}
            noise = _NOISE_TYPES if cells[2] == "all" else {s.strip() for s in cells[2].split(",")}
            rows[cells[0].strip("`")] = (sde_types, noise)
    return rows


def test_sde_method_table_is_the_registrys():
    table = _sde_table()
    assert set(table) == set(SDE_METHODS)
    for name, (factory, _) in SDE_METHODS.items():
        sde_types = {s for s in ("ito", "stratonovich") if s in factory(s).sde_types}
        noise = set(factory(next(iter(sde_types))).noise_types)
        assert table[name] == (sde_types, noise), name


def test_sde_default_methods_are_torchsdes():
    text = _page("sde.md")
    assert (
        "defaults are torchsde's (`srk` for Ito SDEs with diagonal, additive or scalar noise, `euler` for Ito "
        "with general noise, `midpoint` for Stratonovich)" in text
    )
    for noise in ("diagonal", "additive", "scalar"):
        assert DEFAULT_METHOD[("ito", noise)] == "srk"
    assert DEFAULT_METHOD[("ito", "general")] == "euler"
    assert all(DEFAULT_METHOD[("stratonovich", noise)] == "midpoint" for noise in _NOISE_TYPES)
    torchsde_sdeint = pytest.importorskip("torchsde._core.sdeint")
    source = inspect.getsource(torchsde_sdeint)
    assert re.search(r"NOISE_TYPES\.general: METHODS\.euler", source)
    assert re.search(r"SDE_TYPES\.stratonovich: METHODS\.midpoint", source)


@pytest.mark.parametrize("function", [hn.sdeint, hn.sdeint_adjoint])
def test_sde_signature_block_matches_the_functions(function):
    block = (DOCS / "sde.md").read_text()
    call = re.search(rf"ys = hn\.{function.__name__}\((.*?)\)\n", block, flags=re.S)
    assert call, function.__name__
    quoted = dict(re.findall(r"(\w+)=([^,\s)]+)", call.group(1)))
    params = inspect.signature(function).parameters
    for name, default in quoted.items():
        assert name in params, name
        assert params[name].default == eval(default), name  # the block's literals: numbers, None, bools
    if "..." not in call.group(1):  # sdeint's block lists every argument
        assert set(quoted) | {"sde", "y0", "ts"} == set(params)


# --- gradients.md / torchdiffeq.md: dL/dt_0 of the adjoint against torchdiffeq's time channel ------


def test_adjoint_t0_gradient_example_against_torchdiffeq():
    """The example both pages quote: y' = -y from 1, euler with step_size 0.1, outputs at 0, 1/3, 2/3, 1,
    L their sum. The continuous dL/dt_0 is sum_i e^(-t_i) over the later outputs (1.5978); both
    libraries are off by euler's error, each in its own way (1.5494 and 1.5523)."""
    td = pytest.importorskip("torchdiffeq")
    said = "torchdiffeq 1.5494, hybrid_node 1.5523, the continuous value 1.5978"
    assert said in _page("gradients.md") and said in _page("torchdiffeq.md")

    class Decay(torch.nn.Module):
        def forward(self, t, y):
            return -y

    def t0_gradient(odeint_adjoint) -> float:
        t = torch.linspace(0.0, 1.0, 4, dtype=torch.float64).requires_grad_()
        ys = odeint_adjoint(Decay(), torch.ones(1, dtype=torch.float64), t, method="euler", options={"step_size": 0.1})
        return torch.autograd.grad(ys.sum(), t)[0][0].item()

    continuous = sum(math.exp(-k / 3) for k in (1, 2, 3))
    # the page quotes four digits
    assert round(continuous, 4) == 1.5978
    assert round(t0_gradient(td.odeint_adjoint), 4) == 1.5494
    assert round(t0_gradient(hn.odeint_adjoint), 4) == 1.5523


def test_event_zero_at_t0_example():
    """events.md: an event function that is zero at t0 fires a few ulps past it (6.1e-16 for t0 = 0),
    with the one-sided derivatives dt_e/dy0 = 1/3 and dt_e/dt0 = 1 for y' = -1.5 y from 2 to the level 2:
    t_e = log(y0 / 2) / 1.5 + t0."""
    assert "(a few ulps: 6.1e-16 for t0 = 0)" in _page("events.md")
    y0 = torch.tensor([2.0], dtype=torch.float64, requires_grad=True)
    t0 = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
    t_e, _ = hn.odeint_event(lambda t, y: -1.5 * y, y0, t0, event_fn=lambda t, y: y[0] - 2.0, t_end=5.0)
    assert 0 < t_e.item() < 8 * torch.finfo(torch.float64).eps
    assert f"{t_e.item():.1e}" == "6.1e-16"
    d_y0, d_t0 = torch.autograd.grad(t_e, (y0, t0))
    torch.testing.assert_close(d_y0.item(), 1 / 3, rtol=1e-9, atol=0)
    torch.testing.assert_close(d_t0.item(), 1.0, rtol=1e-9, atol=0)


@pytest.mark.parametrize("loop", ["per_sample", "device_loop"])
def test_loop_options_are_taken_by_exactly_the_registrys_methods(loop):
    """The page's lists are compared with the registry above; here the registry with what odeint does:
    the option solves with the methods that declare the loop and is refused (ValueError) by the others."""
    y0 = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    t = torch.tensor([0.0, 0.5], dtype=torch.float64)
    taken = set()
    for name, spec in hn.METHODS.items():
        if spec.solver is None or not spec.loops or "tuple state" in spec.notes:
            continue  # Julia-only names, scipy's own loop, the symplectic methods' tuple states
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                hn.odeint(lambda s, y: -y, y0, t, method=name, options={loop: True})
        except ValueError:
            continue
        taken.add(name)
    assert taken == _loop_methods(loop)


def test_options_paragraph_lists_the_registrys_options():
    """solvers.md, Options: the common options of adaptive and of fixed-step methods (the loop
    options per_sample, device_loop/sync_every and compile have their own sections)."""
    from hybrid_node._registry import option_names

    text = _page("solvers.md")
    adaptive = set(re.findall(r"`(\w+)`", _sentence(text, "Adaptive methods take", "; fixed-step")))
    fixed = set(re.findall(r"`(\w+)`", _sentence(text, "fixed-step methods take", ". The explicit")))
    fixed -= {"linear", "cubic"}  # the values of `interp`
    loops = {"per_sample", "device_loop", "sync_every", "compile"}
    assert adaptive == set(option_names("dopri5")) - loops
    assert fixed == set(option_names("rk4")) - loops


def test_auto_at_tight_tolerance_example():
    """solvers.md: on y' = -1000 (y - cos t) - sin t over [0, 2] at rtol = atol = 1e-8, `auto` under
    hn.solve's default controller stays with tsit5 (993 steps, no switch), rodas5p takes 27 steps, and
    under odeint's controller (shrink_after_accept=False) auto switches once, 787 steps in all."""
    from hybrid_node._registry import build_solver

    text = _page("solvers.md")
    assert "it took tsit5's 993 steps without switching" in text and "`rodas5p` took 27" in text
    assert "after which the solve took 787 steps in all" in text

    def field(t, y):
        return -1000 * (y - torch.cos(t)) - torch.sin(t)

    def stats(method: str, shrink: bool):
        solver = build_solver(method, None, 1e-8, 1e-8)[0]
        controller = hn.PIDController(rtol=1e-8, atol=1e-8, shrink_after_accept=shrink)
        y0, t = torch.ones(1, dtype=torch.float64), torch.tensor([0.0, 2.0], dtype=torch.float64)
        return hn.solve(field, y0, t, solver=solver, controller=controller).stats

    stays = stats("auto", shrink=True)
    assert (stays.n_accepted, stays.n_switches) == (993, 0)
    assert stats("rodas5p", shrink=True).n_accepted == 27
    switches = stats("auto", shrink=False)
    assert (switches.n_accepted, switches.n_switches) == (787, 1)


def test_explicit_adams_default_order_example_against_torchdiffeq():
    """torchdiffeq.md: torchdiffeq's default explicit_adams (Adams-Bashforth of order 11) is unstable on
    y' = A y, eigenvalues -0.1 +- 2i, at step_size 0.04 over [0, 4] (2.7e23 returned); ours (order 4)
    errs by 7.2e-5 against the matrix exponential."""
    td = pytest.importorskip("torchdiffeq")
    assert "it returns 2.7e23, where ours errs by 7.2e-5" in _page("torchdiffeq.md")
    a = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=torch.float64)
    y0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    t = torch.tensor([0.0, 4.0], dtype=torch.float64)
    exact = torch.linalg.matrix_exp(4 * a) @ y0
    options = {"step_size": 0.04}
    theirs = td.odeint(lambda s, y: a @ y, y0, t, method="explicit_adams", options=options)[-1]
    ours = hn.odeint(lambda s, y: a @ y, y0, t, method="explicit_adams", options=options)[-1]
    assert f"{theirs.abs().max().item():.1e}" == "2.7e+23"
    assert f"{(ours - exact).abs().max().item():.1e}" == "7.2e-05"
