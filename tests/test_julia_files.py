"""Checks of the Julia sources and manifests that run without Julia.

They catch syntax errors (tree-sitter-julia), undeclared packages, manifests that disagree, and
names that the Python side sends but the Julia side does not know. Undefined names and keyword
arguments upstream does not accept are checked by tests/test_julia_names.py (statically, against the
upstream sources); running the code needs Julia (tests/test_cross_backend.py).
"""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import pytest
import tomllib

from hybrid_node.julia import backend as julia_backend

ROOT = Path(__file__).resolve().parents[1]
JULIA_DIR = ROOT / "julia"
PROJECT = tomllib.loads((ROOT / "Project.toml").read_text())
JULIAPKG_PATH = ROOT / "hybrid_node" / "juliapkg.json"
JULIAPKG = json.loads(JULIAPKG_PATH.read_text())
SOURCES = sorted(JULIA_DIR.glob("*.jl"))
STDLIBS = {"LinearAlgebra", "Random", "Test", "Pkg", "Libdl", "Base", "Core"}


def _parser():
    ts = pytest.importorskip("tree_sitter", reason="tree-sitter is in the `test` extra")
    tsj = pytest.importorskip("tree_sitter_julia", reason="tree-sitter-julia is in the `test` extra")
    return ts.Parser(ts.Language(tsj.language()))


def _problems(tree):
    found = []
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        if node.type == "ERROR" or node.is_missing:
            found.append(f"{node.type}{' (missing)' if node.is_missing else ''} at line {node.start_point[0] + 1}")
        stack.extend(node.children)
    return found


def _code(path: Path) -> str:
    """Source without comments and docstrings (so prose cannot fake a `using` line)."""
    text = re.sub(r'"""(.|\n)*?"""', "", path.read_text())
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def test_sources_exist_and_module_includes_them_all():
    module = (JULIA_DIR / "HybridNODE.jl").read_text()
    included = set(re.findall(r'include\("([^"]+)"\)', module))
    assert included, "HybridNODE.jl includes no files"
    assert included == {p.name for p in SOURCES} - {"HybridNODE.jl"}
    assert re.search(r"^module HybridNODE\b", module, re.M)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_julia_file_parses_without_errors(path):
    tree = _parser().parse(path.read_bytes())
    assert _problems(tree) == []


def test_parser_detects_broken_code():
    # Control: the check above must be able to fail.
    parser = _parser()
    assert _problems(parser.parse(b"function f(x)\n    y = (x + 1\nend\n"))
    assert _problems(parser.parse(b"module M\nfunction g() 1 end\n"))


def test_every_used_package_is_declared_with_compat():
    used = set()
    for path in SOURCES:
        for match in re.finditer(r"^\s*(?:using|import)\s+([A-Za-z0-9_., :]+)", _code(path), re.M):
            statement = match.group(1)
            # `using A: x, y` loads A only; `using A, B` loads both.
            parts = [statement.split(":", 1)[0]] if ":" in statement else statement.split(",")
            for part in parts:
                name = part.strip().split(".")[0].strip()
                if name:
                    used.add(name)
    used -= STDLIBS
    assert used, "no `using` lines found"
    deps = set(PROJECT["deps"])
    assert used <= deps, f"used but not in [deps]: {sorted(used - deps)}"
    assert deps <= used, f"declared but never used: {sorted(deps - used)}"
    assert set(PROJECT["compat"]) == deps | {"julia"}, "every dependency (and julia) needs [compat]"


def test_juliapkg_json_equals_project_toml():
    packages = dict(JULIAPKG["packages"])
    own = packages.pop(PROJECT["name"])
    assert own["uuid"] == PROJECT["uuid"] and own["dev"] is True
    assert {name: entry["uuid"] for name, entry in packages.items()} == PROJECT["deps"]
    assert {name: entry["version"] for name, entry in packages.items()} == {
        name: c for name, c in PROJECT["compat"].items() if name != "julia"
    }
    assert JULIAPKG["julia"] == PROJECT["compat"]["julia"]


def test_uuids_are_well_formed_and_distinct():
    uuids = list(PROJECT["deps"].values()) + [PROJECT["uuid"]]
    assert all(re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", u) for u in uuids)
    assert len(set(uuids)) == len(uuids)


def test_compat_entries_parse_and_admit_juliacalls_pythoncall():
    compat = pytest.importorskip("juliapkg.compat", reason="juliapkg comes with the `julia` extra")
    for name, spec in PROJECT["compat"].items():
        assert compat.Compat.parse(spec), f"{name} compat {spec!r} is empty"
    # juliacall pins PythonCall to its own version; ours must admit the 0.9.34+ series.
    pythoncall = compat.Compat.parse(PROJECT["compat"]["PythonCall"])
    assert pythoncall & compat.Compat.parse("=0.9.37")


def test_juliapkg_path_resolves_to_the_package():
    entry = JULIAPKG["packages"][PROJECT["name"]]
    pkg_dir = (JULIAPKG_PATH.parent / entry["path"]).resolve()
    assert (pkg_dir / "Project.toml").is_file()
    assert tomllib.loads((pkg_dir / "Project.toml").read_text())["uuid"] == PROJECT["uuid"]
    entry_file = pkg_dir / "src" / f"{PROJECT['name']}.jl"
    assert entry_file.is_file()
    assert entry_file.read_text() == (JULIA_DIR / "HybridNODE.jl").read_text()


def _julia_tuple(name: str) -> set:
    text = (JULIA_DIR / "algorithms.jl").read_text()
    match = re.search(rf"const {name} = \(([^)]*)\)", text)
    assert match, name
    return set(re.findall(r'"([A-Za-z0-9]+)"', match.group(1)))


def test_python_and_julia_agree_on_algorithm_and_sensitivity_names():
    julia_algs = _julia_tuple("EXPLICIT_ALGORITHMS") | _julia_tuple("STIFF_ALGORITHMS")
    assert julia_algs == set(julia_backend.JULIA_ALGORITHMS) == set(julia_backend.METHODS.values())
    assert _julia_tuple("STIFF_ALGORITHMS") == set(julia_backend.STIFF_ALGORITHMS)
    assert _julia_tuple("ROSENBROCK_ALGORITHMS") == set(julia_backend.ROSENBROCK_ALGORITHMS)
    assert _julia_tuple("SENSITIVITIES") == {
        "GaussAdjoint",
        "InterpolatingAdjoint",
        "QuadratureAdjoint",
        "BacksolveAdjoint",
    }
    text = (JULIA_DIR / "algorithms.jl").read_text()
    for alg in julia_algs:
        assert f'name == "{alg}" && return {alg}(' in text, f"make_algorithm does not build {alg}"


def _keywords(fn: str) -> set:
    text = (JULIA_DIR / "bridge.jl").read_text()
    signature = re.search(rf"function {fn}\((.*?)\)\n", text, re.S).group(1)
    return set(re.findall(r"(\w+)(?:::[\w{}]+)?(?: = [^,]+)?(?:,|$)", signature.split(";", 1)[1]))


def test_python_sends_the_keywords_julia_accepts():
    source = Path(julia_backend.__file__).read_text()
    python = set(re.findall(r"(\w+)=config\.", source))
    events = set(re.findall(r"(event_\w+)=bridge\.", source))  # JuliaEngine.forward_events
    assert events == {"event_condition", "event_affect", "event_jumped", "event_len", "event_points"}
    # time_reversed goes to forward_mlp only: the callback path reverses time in its Python callbacks.
    assert python | events == _keywords("forward_mlp")
    assert (python | events) - {"time_reversed"} == _keywords("forward_callback")


def test_the_event_callback_follows_scimlbase_and_the_python_bridge():
    # SciMLBase 3.49 (src/callbacks.jl): VectorContinuousCallback(condition, affect!, len; ...) has no
    # affect_neg! (affect! gets every crossing, a keyword affect_neg! is a MethodError); SciMLBase 2's
    # defaults to affect!, so it is passed only where the type has that field (DiffEqBase 6 then calls
    # it for downcrossings). terminate! and set_u! are the integrator interface. The action codes
    # must be the Python bridge's.
    from hybrid_node.julia import events as julia_events

    code = _code(JULIA_DIR / "events.jl")
    assert re.search(r"VectorContinuousCallback\(cond!, act!, Int\(len\);", code)
    assert ":affect_neg! in fieldnames(VectorContinuousCallback) ? (; affect_neg! = act_neg!) : (;)" in code
    assert "interp_points = Int(interp_points), negative...)" in code
    assert "function cond!(out, u, t, integrator)" in code
    assert "Int(idx) - 1" in code  # Python's components are 0-based
    for name in ("IGNORE", "RECORD", "JUMP", "TERMINATE"):
        value = re.search(rf"const EVENT_{name} = (\d+)", code).group(1)
        assert int(value) == getattr(julia_events, name)
    assert "terminate!(integrator)" in code and "set_u!(integrator," in code
    module = (JULIA_DIR / "HybridNODE.jl").read_text()
    for name in ("VectorContinuousCallback", "terminate!", "set_u!", "pyconvert"):
        assert name in module
    bridge = _code(JULIA_DIR / "bridge.jl")
    # both paths end in solve_built, which asks for the events before it makes any sensealg
    shared = re.search(r"function solve_built\(.*?\nend", bridge, re.S).group(0)
    assert shared.index("if events_requested(event_condition)") < shared.index("make_sensealg(")
    assert "return run_events(prob, alg, u0m, θv, tsv, opts, cb)" in shared
    for entry in ("forward_mlp", "forward_callback"):
        body = re.search(rf"function {entry}\(.*?\nend", bridge, re.S).group(0)
        assert "return solve_built(prob, alg, u0m, θv, tsv;" in body and "make_sensealg(" not in body
        # the call hands on every keyword solve_built takes, by name (Julia's implicit `; name`)
        passed = re.search(r"solve_built\(prob, alg, u0m, θv, tsv;(.*?)\)", body, re.S).group(1)
        assert {k.strip() for k in passed.split(",")} == _keywords("solve_built")
    assert _keywords("solve_built") == _keywords("forward_callback")  # (forward_mlp's has time_reversed too)


def test_the_event_affect_takes_diffeqbase_6s_index_and_diffeqbase_7s_vector():
    # DiffEqBase 6 (src/callbacks.jl apply_callback!) calls affect!(integrator, idx::Int) for an
    # upcrossing and affect_neg!(integrator, idx) for a downcrossing; DiffEqBase 7
    # (OrdinaryDiffEq.jl lib/DiffEqBase/src/callbacks.jl apply_callback!) calls
    # affect!(integrator, simultaneous_events), an Int8 vector (0, +1 up, -1 down). Both are admitted
    # by the compat of the OrdinaryDiffEq sub-libraries ("1, 2"), so act! needs both methods; `idx - 1`
    # on the vector was a MethodError. The stand-in's _act_events models the vector method.
    code = _code(JULIA_DIR / "events.jl")
    vector = re.search(r"function act!\(integrator, events::AbstractVector\)\n(.*?)\n    end\n", code, re.S)
    assert vector, "no act! method for DiffEqBase 7's vector of crossings"
    body = vector.group(1)
    assert "for (idx, direction) in enumerate(events)" in body and "iszero(direction) && continue" in body
    assert "handle!(integrator, idx, direction)" in body  # DiffEqBase 7's direction goes to Python
    assert "code == EVENT_TERMINATE && return nothing" in body  # nothing after a terminating event
    # One discontinuity flag for all the handled components (a later RECORD must not clear a JUMP).
    assert body.count("mark_discontinuity!(") == 1 and "any_jump |= code == EVENT_JUMP" in body
    assert "function handle!(integrator, idx::Integer, direction::Integer)" in code
    # DiffEqBase 6: affect! at an upcrossing (prev_sign < 0), affect_neg! at a downcrossing
    assert "act!(integrator, idx::Integer) = act_one!(integrator, idx, 1)" in code
    assert "act_neg!(integrator, idx::Integer) = act_one!(integrator, idx, -1)" in code
    # Python receives (t, u, idx, direction), the signature EventBridge.affect takes
    assert re.search(
        r"affect\(Float64\(integrator\.t\), flat_copy\(integrator\.u\), Int\(idx\) - 1,\s+Int\(direction\)\)", code
    )
    from hybrid_node.julia import events as julia_events

    assert list(inspect.signature(julia_events.EventBridge.affect).parameters) == ["self", "s", "u", "idx", "crossing"]


def test_the_derivative_discontinuity_flag_uses_scimlbase_3s_name():
    # SciMLBase 3 (src/integrator_interface.jl) renamed u_modified! to derivative_discontinuity! and
    # keeps u_modified! as a deprecated alias (Base.depwarn); SciMLBase 2 has only u_modified!.
    code = _code(JULIA_DIR / "events.jl")
    body = re.search(r"function mark_discontinuity!\(integrator, changed::Bool\)\n(.*?)\nend", code, re.S)
    assert body and "if isdefined(SciMLBase, :derivative_discontinuity!)" in body.group(1)
    assert "SciMLBase.derivative_discontinuity!(integrator, changed)" in body.group(1)
    assert "SciMLBase.u_modified!(integrator, changed)" in body.group(1)  # SciMLBase 2
    assert code.count("u_modified!(") == 1  # only the SciMLBase 2 fallback
    module = _code(JULIA_DIR / "HybridNODE.jl")
    assert re.search(r"using SciMLBase: SciMLBase,", module)
    assert "u_modified!" not in module and "derivative_discontinuity!" not in module  # not imported


def test_the_event_callback_refuses_one_interp_point():
    # DiffEqBase's range(tprev, stop = t, length = interp_points)[2:end] throws for length 1 in the
    # middle of a solve; Python sends samples + 2 (hybrid_node/julia/events.py, EventBridge).
    code = _code(JULIA_DIR / "events.jl")
    assert re.search(r"interp_points == 1 &&\s*throw\(ArgumentError\(", code)


def test_python_reads_only_fields_the_julia_result_has():
    text = (JULIA_DIR / "bridge.jl").read_text()
    struct = re.search(r"struct ForwardResult\n(.*?)\nend", text, re.S).group(1)
    fields = set(re.findall(r"^\s*(\w+)::", struct, re.M))
    read = set(re.findall(r"\bres\.(\w+)", Path(julia_backend.__file__).read_text()))
    assert read and read <= fields, read - fields
    assert "t_reached" in read  # issue 20 item 2: the time reached, not sol.t[end]


def test_failed_solves_get_the_reached_time_from_the_solver():
    # Issue 20 item 2: sol.t is ts after sensitivity_solution; a plain re-solve's integrator knows.
    # Its state tells a step-size underflow from a non-finite state: SciMLBase check_error
    # (src/integrator_interface.jl) returns ReturnCode.Unstable for both with the default dtmin = 0.
    code = _code(JULIA_DIR / "bridge.jl")
    assert re.search(r"t_reached, state_finite = success \? \(ts\[end\], true\) : reached_time\(", code)
    body = re.search(r"function reached_time\(.*?\nend", code, re.S).group(0)
    assert "init(remake(prob" in body and "solve!(integrator)" in body
    assert "return Float64(integrator.t), all(isfinite, integrator.u)" in body


def test_event_solves_report_the_integrators_time_not_the_last_saved_one():
    # After terminate! or a failure, sol.t[end] is the last output time passed: the end point is
    # saved only at tspan[2] or a saveat time (OrdinaryDiffEqCore solution_endpoint_match_cur_integrator!,
    # src/integrators/integrator_utils.jl). run_events keeps the integrator to read where it stopped.
    code = _code(JULIA_DIR / "events.jl")
    body = re.search(r"function run_events\(.*?\nend", code, re.S).group(0)
    assert "init(remake(prob" in body and "sol = solve!(integrator)" in body
    assert "Float64(integrator.t),\n" in body and "all(isfinite, integrator.u)" in body
    assert "solve(prob" not in body


def test_julia_refuses_decreasing_times_and_reverses_time_instead():
    # Issue 20 item 1: upstream returns sol(sort(ts)) for every adjoint but BacksolveAdjoint.
    code = _code(JULIA_DIR / "bridge.jl")
    assert re.search(r"all\(>\(0\), diff\(tsv\)\) \|\|", code)
    assert "MLPField(mlp, σ)" in code and "time_reversed ? -1.0 : 1.0" in code
    assert "-f.mlp(u, θ, -s)" in _code(JULIA_DIR / "mlp.jl")


def test_python_exceptions_are_unwrapped_in_julia():
    # Issue 20 item 5: the helper the Python side calls on a JuliaError.
    code = _code(JULIA_DIR / "bridge.jl")
    assert "e isa PyException && return e.v" in code
    assert "python_exception" in (JULIA_DIR / "HybridNODE.jl").read_text().split("export", 1)[1]
    assert "self.jl.python_exception(" in Path(julia_backend.__file__).read_text()


def test_backward_raises_when_the_backward_solve_warned():
    # SciMLSensitivity 7.112 does not check the adjoint solve's retcode (gauss_adjoint.jl,
    # sensitivity_interface.jl, quadrature_adjoint.jl return state_values(adj_sol)[end]); DiffEqBase's
    # check_error only logs a warning. backward() runs the pullback under a logger that records
    # Warn-or-above records (forwarding every record to the previous logger) and throws.
    code = _code(JULIA_DIR / "bridge.jl")
    assert re.search(r"^struct SolverWarnings <: CoreLogging\.AbstractLogger\n", code, re.M)
    for name in ("min_enabled_level", "shouldlog", "catch_exceptions", "handle_message"):
        assert re.search(rf"^(function )?CoreLogging\.{name}\(l::SolverWarnings,?", code, re.M), name
    handle = re.search(r"function CoreLogging\.handle_message\(l::SolverWarnings.*?\nend", code, re.S).group(0)
    assert "level >= CoreLogging.Warn && group !== :depwarn" in handle
    assert "CoreLogging.handle_message(l.previous," in handle  # the user still sees the warning
    assert "CoreLogging.shouldlog(l.previous," in handle
    body = re.search(r"function backward\(result::ForwardResult, ybar\)\n(.*?)\nend", code, re.S).group(1)
    assert "SolverWarnings(CoreLogging.current_logger())" in body
    assert re.search(r"CoreLogging\.with_logger\(\(\) -> result\.back\(\(Ȳ, nothing\)\), warnings\)", body)
    assert "isempty(warnings.messages) || throw(AdjointSolveFailed(" in body
    assert re.search(r"^adjoint_failure\(e\) = e isa AdjointSolveFailed \?", code, re.M)
    module = (JULIA_DIR / "HybridNODE.jl").read_text()
    assert "import Base.CoreLogging" in _code(JULIA_DIR / "HybridNODE.jl")
    assert "adjoint_failure" in module.split("export", 1)[1]
    assert "self.jl.adjoint_failure(" in Path(julia_backend.__file__).read_text()


def test_quadrature_tolerances_are_checked_in_julia_too():
    # Issue 20 item 3.
    code = _code(JULIA_DIR / "bridge.jl")
    assert code.count("check_quadrature_tolerances(sensitivity;") == 2


def test_mlp_architecture_is_runtime_data():
    # Issue 20 item 7: MLP{L} compiled a new solve and adjoint for every network.
    code = _code(JULIA_DIR / "mlp.jl")
    assert re.search(r"^struct MLP\n", code, re.M) and re.search(r"^struct DenseLayer\n", code, re.M)
    assert not re.search(r"struct (MLP|DenseLayer|MLPField)\{", code)
    assert "layers::Vector{DenseLayer}" in code


def test_precompile_workload_cannot_break_loading():
    # Issue 20 item 7: an exception in @compile_workload would make `using HybridNODE` fail.
    code = _code(JULIA_DIR / "precompile.jl")
    workload = code.split("@compile_workload", 1)[1]
    assert re.search(r"\btry\b(.|\n)*forward_mlp(.|\n)*backward(.|\n)*\bcatch\b", workload)


def test_small_review_findings_are_gone():
    # Issue 20 item 9: no Base.stat shadowing, no citation of SciMLSensitivity #1165 for a reason it
    # is not about, and the manifest names only test files that exist.
    for path in SOURCES:
        code = _code(path)
        assert not re.search(r"^\s*stat\(", code, re.M), path.name
        assert "#1165" not in path.read_text(), path.name
    for name in re.findall(r"tests/\w+\.py", (ROOT / "Project.toml").read_text()):
        assert (ROOT / name).is_file(), name


def test_julia_test_suite_is_wired_into_the_package():
    runtests = JULIA_DIR / "test" / "runtests.jl"
    assert runtests.is_file()
    assert (ROOT / "hybrid_node" / "_julia" / "HybridNODE" / "test" / "runtests.jl").resolve() == runtests.resolve()
    assert set(PROJECT["targets"]["test"]) <= set(PROJECT["extras"])
    used = set(re.findall(r"^using (\w+)", _code(runtests), re.M))
    assert used - {"HybridNODE", "PythonCall"} <= set(PROJECT["extras"])
    assert _problems(_parser().parse(runtests.read_bytes())) == []
    text = runtests.read_text()
    for what in ("native path", "callback path", "MLP translation", "sensitivity_names()"):
        assert what in text


def test_julia_activation_names_match_translation():
    from hybrid_node.julia.translate import ACTIVATION_NAMES

    text = (JULIA_DIR / "activations.jl").read_text()
    julia_names = set(re.findall(r'name == "(\w+)" && return', text)) - {"identity"}
    assert julia_names == set(ACTIVATION_NAMES)


def test_julia_refuses_checkpointed_interpolating_adjoint_with_fixed_steps_as_python_does():
    # SciMLSensitivity re-solves each checkpoint interval with sol.alg and (; reltol, abstol) only
    # (src/interpolating_adjoint.jl:49-51 at v7.112.1), so fixed steps are lost there: make_sensealg
    # refuses it as resolve_sensitivity does, and solve_built hands it the forward's fixed_step.
    algorithms = _code(JULIA_DIR / "algorithms.jl")
    make = re.search(r"function make_sensealg\(.*?\nend", algorithms, re.S).group(0)
    signature = make.split(")\n", 1)[0]
    assert re.search(r"\bfixed_step::Bool = false\b", signature)
    branch = make[make.index('if name == "InterpolatingAdjoint"') :]
    refusal = re.search(r"if checkpointing && fixed_step\s+throw\(ArgumentError\(", branch)
    assert refusal and refusal.start() < branch.index("return InterpolatingAdjoint(")
    shared = re.search(r"function solve_built\(.*?\nend", _code(JULIA_DIR / "bridge.jl"), re.S).group(0)
    call = re.search(r"make_sensealg\(sensitivity, algorithm;(.*?)\)", shared, re.S).group(1)
    assert "fixed_step" in {k.strip() for k in call.split(",")}
