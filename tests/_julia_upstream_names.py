"""Names and keyword arguments that the upstream Julia packages define, for tests/test_julia_names.py.

Julia is not needed: the sources are read with tree-sitter-julia, our own (julia/*.jl) by the test and the
upstream ones by this script, which writes tests/data/julia_upstream_names.json. Regenerate it after a
change to the [compat] of Project.toml (or to this script) with

    python tests/_julia_upstream_names.py [--mirrors DIR]

where DIR holds bare git mirrors named owner+repo/repo (SciML+SciMLBase.jl/repo, ...). For every package,
the checked versions are the lowest and the newest tag of each major version that our [compat] admits (and
that can be installed beside SciMLSensitivity, see `_feasible`); a name or keyword must be accepted by all
of them.

What is recorded per package and checked version:
- the names a `using Package: name` can bring in: those the package defines at any depth of src/
  (functions, types, constants, macros, modules, including `for X in [:A, ...] @eval` definitions), imports
  by name (`import M: a`), or exports, re-exports included where the re-exported module is recorded too;
- for every such name, the keywords its methods and keyword constructors declare (`@kwdef` fields too),
  and whether some method takes `kwargs...` (then the keywords it accepts are not known from its signature);
- `allowedkeywords`, SciMLBase's and DiffEqBase's list of the common solver keywords that `solve` and
  `init` check their `kwargs...` against (`checkkwargs`, SciMLBase src/solve.jl, DiffEqBase src/solve.jl).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "julia_upstream_names.json"


# ---------------------------------------------------------------------------------------------------------
# Julia syntax (shared with tests/test_julia_names.py)


def parser() -> Any:
    """A tree-sitter parser for Julia (tree_sitter and tree_sitter_julia must be importable)."""
    import tree_sitter
    import tree_sitter_julia

    return tree_sitter.Parser(tree_sitter.Language(tree_sitter_julia.language()))


def text(node: Any) -> str:
    return node.text.decode()


def walk(node: Any) -> Iterator[Any]:
    """Every node below `node` (itself included), depth first."""
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(reversed(current.children))


def named(node: Any) -> list[Any]:
    """The children that are syntax, not punctuation or comments."""
    return [c for c in node.children if c.is_named and c.type not in ("comment", "line_comment", "block_comment")]


def unwrap_signature(node: Any) -> Any:
    """The call expression of a definition's signature: strips `where` clauses and return types."""
    while node is not None and node.type in ("signature", "where_expression", "typed_expression"):
        inner = named(node)
        node = inner[0] if inner else None
    return node


def callee_name(call: Any, symbols: dict[str, list[str]] | None = None) -> list[str]:
    """The last name of a call's callee (`f`, `M.f`, `T{P}`, `$Alg` with Alg bound by a loop over symbols)."""
    if call is None or call.type != "call_expression":
        return []
    head = named(call)[0]
    if head.type == "parametrized_type_expression":
        head = named(head)[0]
    if head.type == "field_expression":
        head = named(head)[-1]
    if head.type == "interpolation_expression" and symbols is not None:
        inner = named(head)
        return list(symbols.get(text(inner[0]), [])) if inner and inner[0].type == "identifier" else []
    if head.type in ("identifier", "operator"):
        return [text(head)]
    return []


def bound_name(node: Any) -> str | None:
    """`x` of `x`, `x::T` and `x = default` (a parameter or keyword in a signature)."""
    while node.type in ("named_argument", "typed_expression", "assignment", "optional_parameter"):
        inner = named(node)
        if not inner:
            return None
        node = inner[0]
    return text(node) if node.type == "identifier" else None


@dataclass
class Signature:
    """The keywords of one method: their names, and whether it also takes `kwargs...`."""

    keywords: set[str] = field(default_factory=set)
    slurps: bool = False


def signature_keywords(call: Any) -> Signature:
    """The keyword part (after `;`) of a definition's argument list."""
    signature = Signature()
    arguments = next((c for c in call.children if c.type == "argument_list"), None)
    if arguments is None:
        return signature
    after = False
    for child in arguments.children:
        if child.type == ";":
            after = True
        elif after and child.type == "splat_expression":
            signature.slurps = True
        elif after and child.is_named:
            name = bound_name(child)
            if name:
                signature.keywords.add(name)
    return signature


def call_keywords(call: Any) -> tuple[list[tuple[str, Any]], list[Any]]:
    """The keywords a call passes: `(name, node)` pairs, and the nodes of `x...` splats in keyword position.

    A call's keywords are its `name = value` arguments wherever they stand, and everything after `;`
    (`f(x; a)` passes `a = a`).
    """
    keywords: list[tuple[str, Any]] = []
    splats: list[Any] = []
    arguments = next((c for c in call.children if c.type == "argument_list"), None)
    if arguments is None:
        return keywords, splats
    after = False
    for child in arguments.children:
        if child.type == ";":
            after = True
        elif child.type == "named_argument":
            name = bound_name(named(child)[0])
            if name:
                keywords.append((name, child))
        elif after and child.type == "splat_expression":
            splats.append(child)
        elif after and child.type == "identifier":
            keywords.append((text(child), child))
    return keywords, splats


@dataclass
class ModuleNames:
    """What one package's sources define, import by name, export and use wholesale."""

    defined: set[str] = field(default_factory=set)
    imported: set[str] = field(default_factory=set)
    exported: set[str] = field(default_factory=set)
    reexported_modules: set[str] = field(default_factory=set)
    methods: dict[str, list[Signature]] = field(default_factory=dict)
    allowedkeywords: list[str] | None = None
    unparsed: int = 0  # ERROR nodes tree-sitter-julia could not parse


def _loop_symbols(node: Any) -> dict[str, list[str]]:
    """`X => [:A, :B]` for a `for X in [:A, :B]` (or a tuple of symbols) around `node`."""
    symbols: dict[str, list[str]] = {}
    parent = node.parent
    while parent is not None:
        if parent.type == "for_statement":
            for binding in (c for c in parent.children if c.type == "for_binding"):
                parts = named(binding)
                if len(parts) < 2:
                    continue
                # `for X in [:A, :B]`, or `for (X, y) in [(:A, 1), (:B, 2)]` (X is the i-th of each tuple)
                variables = [parts[0]] if parts[0].type == "identifier" else named(parts[0])
                for position, variable in enumerate(variables):
                    if variable.type != "identifier":
                        continue
                    items = named(parts[-1])
                    if parts[0].type != "identifier":
                        items = [
                            named(t)[position]
                            for t in items
                            if t.type == "tuple_expression" and len(named(t)) > position
                        ]
                    values = [named(q)[0] for q in items if q.type == "quote_expression" and named(q)]
                    if values and all(v.type == "identifier" for v in values):
                        symbols.setdefault(text(variable), [text(v) for v in values])
        parent = parent.parent
    return symbols


def _macro_name(node: Any) -> str:
    ident = next((c for c in node.children if c.type == "macro_identifier"), None)
    return text(ident).lstrip("@") if ident is not None else ""


def _import_names(statement: Any) -> tuple[list[str], list[str]]:
    """`(names bound by name, modules used wholesale)` of a `using`/`import` statement."""
    names: list[str] = []
    modules: list[str] = []
    is_using = statement.type == "using_statement"
    for part in named(statement):
        if part.type == "selected_import":
            for item in named(part)[1:]:
                if item.type == "import_alias":
                    item = named(item)[-1]
                names.append(text(item).split(".")[-1])
        elif part.type in ("identifier", "scoped_identifier", "import_path", "import_alias"):
            last = text(named(part)[-1] if part.type == "import_alias" else part).split(".")[-1]
            if is_using:
                modules.append(last)
            names.append(last)
    return names, modules


def collect_names(sources: list[bytes]) -> ModuleNames:
    """Definitions, imports, exports and method keywords of a package's source files."""
    result = ModuleNames()
    julia = parser()
    for source in sources:
        root = julia.parse(source).root_node
        for node in walk(root):
            kind = node.type
            if kind == "ERROR":
                result.unparsed += 1
            elif kind in ("function_definition", "macro_definition"):
                signature = next((c for c in node.children if c.type == "signature"), None)
                call = unwrap_signature(signature)
                if call is not None and call.type == "identifier":  # `function f end`
                    result.defined.add(text(call))
                    continue
                for name in callee_name(call, _loop_symbols(node)):
                    name = "@" + name if kind == "macro_definition" else name
                    _add_method(result, name, call, qualified=_is_qualified(call))
            elif kind == "assignment" and node.children and node.parent is not None:
                target = unwrap_signature(node.children[0])
                if target is not None and target.type == "call_expression":
                    for name in callee_name(target, _loop_symbols(node)):
                        _add_method(result, name, target, qualified=_is_qualified(target))
                elif node.parent.type in ("const_statement", "source_file", "module_definition"):
                    for ident in _targets(node.children[0]):
                        result.defined.add(ident)
                    if text(node.children[0]) == "allowedkeywords":
                        result.allowedkeywords = re.findall(r":(\w+)", re.sub(r"#.*", "", text(node.children[-1])))
            elif kind in ("struct_definition", "abstract_definition", "primitive_definition"):
                name = _type_name(node)
                if name:
                    result.defined.add(name)
                    if kind == "struct_definition" and _kwdef(node):
                        fields = {bound_name(c) for c in named(node)[1:]} - {None}
                        result.methods.setdefault(name, []).append(Signature({f for f in fields if f}))
            elif kind == "module_definition":
                ident = next((c for c in named(node) if c.type == "identifier"), None)
                if ident is not None:
                    result.defined.add(text(ident))
            elif kind in ("using_statement", "import_statement"):
                names, modules = _import_names(node)
                result.imported.update(names)
                macro = node.parent.parent if node.parent is not None else None  # @reexport's argument list
                if kind == "using_statement" and macro is not None and _macro_name(macro) == "reexport":
                    result.reexported_modules.update(modules)
            elif kind == "export_statement":
                result.exported.update(text(c) for c in named(node) if c.type in ("identifier", "macro_identifier"))
            elif kind == "macrocall_expression" and _macro_name(node) in ("enum", "enumx"):
                arguments = next((c for c in node.children if c.type == "macro_argument_list"), None)
                first = named(arguments)[0] if arguments is not None and named(arguments) else None
                if first is not None:
                    result.defined.add(text(named(first)[0] if first.type == "typed_expression" else first))
    return result


def _is_qualified(call: Any) -> bool:
    head = named(call)[0]
    return head.type == "field_expression"


def _targets(node: Any) -> list[str]:
    if node.type == "identifier":
        return [text(node)]
    if node.type in ("open_tuple", "tuple_expression", "typed_expression"):
        inner = named(node)
        if node.type == "typed_expression":
            return _targets(inner[0]) if inner else []
        return [name for child in inner for name in _targets(child)]
    return []


def _type_name(node: Any) -> str | None:
    head = next((c for c in node.children if c.type == "type_head"), None)
    if head is None:
        return None
    current = named(head)[0] if named(head) else None
    while current is not None and current.type in ("binary_expression", "parametrized_type_expression"):
        current = named(current)[0]
    return text(current) if current is not None and current.type == "identifier" else None


def _kwdef(struct: Any) -> bool:
    parent = struct.parent
    while parent is not None and parent.type == "macro_argument_list":
        parent = parent.parent
    return parent is not None and parent.type == "macrocall_expression" and _macro_name(parent) in ("kwdef", "with_kw")


def _add_method(result: ModuleNames, name: str, call: Any, *, qualified: bool) -> None:
    # `Base.show(...) = ...` adds a method to another module's function: its keywords count for the name
    # (a call of `solve` reaches DiffEqBase's `solve` methods), but it defines no new name here.
    if not qualified:
        result.defined.add(name)
    signature = signature_keywords(call)
    result.methods.setdefault(name, []).append(signature)


# ---------------------------------------------------------------------------------------------------------
# The upstream packages and the versions to check


@dataclass(frozen=True)
class Source:
    """Where a package's sources live: a mirrored repository, its tag prefix, and the package directory."""

    repo: str  # owner/name on GitHub
    tag_prefix: str  # "v" for a one-package repository, "Name-v" in the OrdinaryDiffEq monorepo
    directory: str  # "" or "lib/Name"


ORDINARYDIFFEQ = "SciML/OrdinaryDiffEq.jl"
SUBLIBRARIES = (
    "OrdinaryDiffEqAdamsBashforthMoulton",
    "OrdinaryDiffEqBDF",
    "OrdinaryDiffEqLowOrderRK",
    "OrdinaryDiffEqRosenbrock",
    "OrdinaryDiffEqSDIRK",
    "OrdinaryDiffEqTsit5",
    "OrdinaryDiffEqVerner",
)
# Our direct dependencies (Project.toml [deps]).
DIRECT: dict[str, list[Source]] = {
    "ADTypes": [Source("SciML/ADTypes.jl", "v", "")],
    "PrecompileTools": [Source("JuliaLang/PrecompileTools.jl", "v", "")],
    "PythonCall": [Source("JuliaPy/PythonCall.jl", "v", "")],
    "SciMLBase": [Source("SciML/SciMLBase.jl", "v", "")],
    "SciMLSensitivity": [Source("SciML/SciMLSensitivity.jl", "v", "")],
    "Zygote": [Source("FluxML/Zygote.jl", "v", "")],
    **{name: [Source(ORDINARYDIFFEQ, f"{name}-v", f"lib/{name}")] for name in SUBLIBRARIES},
}
# Packages we do not load ourselves but whose methods our calls reach: `solve` and `init` of an ODEProblem
# are DiffEqBase's (CommonSolve owns the functions, SciMLBase imports them). DiffEqBase 6 has its own
# repository, DiffEqBase 7 lives in the OrdinaryDiffEq monorepo. The versions checked are those
# SciMLSensitivity's [compat] admits (lowest and newest checked SciMLSensitivity).
TRANSITIVE: dict[str, list[Source]] = {
    "DiffEqBase": [Source("SciML/DiffEqBase.jl", "v", ""), Source(ORDINARYDIFFEQ, "DiffEqBase-v", "lib/DiffEqBase")],
    "CommonSolve": [Source("SciML/CommonSolve.jl", "v", "")],
    # SciMLBase re-exports it (`@reexport using SciMLOperators`): its exports are SciMLBase's too.
    "SciMLOperators": [Source("SciML/SciMLOperators.jl", "v", "")],
}
# Whose [compat] decides which versions of a transitive package can be installed beside ours.
TRANSITIVE_VIA = {"DiffEqBase": "SciMLSensitivity", "CommonSolve": "SciMLBase", "SciMLOperators": "SciMLBase"}


class Mirror:
    def __init__(self, root: Path, repo: str) -> None:
        self.git_dir = root / repo.replace("/", "+") / "repo"
        if not self.git_dir.is_dir():
            raise SystemExit(f"no mirror of {repo} at {self.git_dir}")

    def git(self, *args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(self.git_dir), *args], check=True, capture_output=True, text=True
        ).stdout

    def tags(self) -> list[str]:
        return self.git("tag").split()

    def show(self, tag: str, path: str) -> bytes:
        return subprocess.run(
            ["git", "-C", str(self.git_dir), "show", f"{tag}:{path}"], check=True, capture_output=True
        ).stdout

    def julia_files(self, tag: str, directory: str) -> list[str]:
        src = f"{directory}/src" if directory else "src"
        files = self.git("ls-tree", "-r", "--name-only", tag, src).split("\n")
        return [f for f in files if f.endswith(".jl")]

    def commit(self, tag: str) -> str:
        return self.git("rev-list", "-n", "1", tag).strip()


def _version(tag: str, prefix: str) -> Any:
    from juliapkg.compat import Version

    rest = tag[len(prefix) :]
    if not tag.startswith(prefix) or not re.fullmatch(r"\d+\.\d+\.\d+", rest):
        return None
    return Version(*map(int, rest.split(".")))


def _compat(spec: str) -> Any:
    from juliapkg.compat import Compat

    # juliapkg does not read Pkg's inequality specifiers; the only one in these [compat] sections is the
    # stdlibs' "<0.0.1" (no registered version), which admits nothing a registry has.
    parts = [p.strip() for p in spec.split(",") if p.strip() and not p.strip().startswith("<")]
    return Compat.parse(", ".join(parts)) if parts else Compat.parse("=0.0.0")


def _project_compat(mirror: Mirror, tag: str, directory: str) -> dict[str, str]:
    import tomllib

    path = f"{directory}/Project.toml" if directory else "Project.toml"
    compat = tomllib.loads(mirror.show(tag, path).decode()).get("compat", {})
    return {k: v for k, v in compat.items() if isinstance(v, str)}


@dataclass
class Candidate:
    source: Source
    tag: str
    version: Any


def _candidates(mirrors: Path, sources: list[Source], spec: Any) -> list[Candidate]:
    found = []
    for source in sources:
        mirror = Mirror(mirrors, source.repo)
        for tag in mirror.tags():
            version = _version(tag, source.tag_prefix)
            if version is not None and version in spec:
                found.append(Candidate(source, tag, version))
    return sorted(found, key=lambda c: c.version)


def _ends(candidates: list[Candidate]) -> list[Candidate]:
    """The lowest and the newest candidate of each breaking series (1.x, 2.x; 0.6.x, 0.7.x as Pkg has it)."""
    chosen: dict[tuple[int, int], list[Candidate]] = {}
    for candidate in candidates:
        version = candidate.version
        chosen.setdefault((version.major, version.minor if version.major == 0 else 0), []).append(candidate)
    picked = []
    for group in chosen.values():
        picked.extend([group[0]] if len(group) == 1 else [group[0], group[-1]])
    return picked


def _feasible(mirrors: Path, candidate: Candidate, constraints: dict[str, Any]) -> bool:
    """Whether this version's [compat] admits some version of each constrained package.

    The OrdinaryDiffEq sub-libraries' early 1.x releases need OrdinaryDiffEqCore 1, which no
    SciMLSensitivity that our [compat] admits installs beside (it needs OrdinaryDiffEqCore >= 3.4):
    those can never be resolved, so they are not checked.
    """
    compat = _project_compat(Mirror(mirrors, candidate.source.repo), candidate.tag, candidate.source.directory)
    for name, admitted in constraints.items():
        if name in compat and not (_compat(compat[name]) & admitted):
            return False
    return True


def generate(mirrors: Path) -> dict[str, Any]:
    import tomllib

    project = tomllib.loads((ROOT / "Project.toml").read_text())
    ours = {name: _compat(spec) for name, spec in project["compat"].items() if name != "julia"}
    chosen: dict[str, list[Candidate]] = {}
    for name in ("SciMLSensitivity", "SciMLBase"):
        chosen[name] = _ends(_candidates(mirrors, DIRECT[name], ours[name]))
    # What the checked SciMLSensitivity versions admit of the packages that decide feasibility.
    constraints: dict[str, Any] = {"SciMLBase": ours["SciMLBase"]}
    sensitivity_compat = [
        _project_compat(Mirror(mirrors, c.source.repo), c.tag, c.source.directory) for c in chosen["SciMLSensitivity"]
    ]
    core = [c["OrdinaryDiffEqCore"] for c in sensitivity_compat if "OrdinaryDiffEqCore" in c]
    if core:
        constraints["OrdinaryDiffEqCore"] = _compat(", ".join(core))
    for name, sources in DIRECT.items():
        if name not in chosen:
            candidates = [c for c in _candidates(mirrors, sources, ours[name]) if _feasible(mirrors, c, constraints)]
            chosen[name] = _ends(candidates)
    for name, sources in TRANSITIVE.items():
        via = [
            _project_compat(Mirror(mirrors, c.source.repo), c.tag, c.source.directory)[name]
            for c in chosen[TRANSITIVE_VIA[name]]
        ]
        chosen[name] = _ends(_candidates(mirrors, sources, _compat(", ".join(via))))
    collected = {name: [(c, _collect(mirrors, c)) for c in picked] for name, picked in chosen.items()}
    # Re-exported modules we also read contribute their exports (SciMLBase does not re-export ours).
    packages: dict[str, Any] = {}
    for name, snapshots in sorted(collected.items()):
        if not snapshots:
            raise SystemExit(f"no tag of {name} is admitted by the [compat] of Project.toml")
        packages[name] = _summarise(name, snapshots, collected)
    return {
        "about": "Generated by tests/_julia_upstream_names.py from the upstream sources at the tags below; "
        "read by tests/test_julia_names.py. Do not edit by hand.",
        "compat": project["compat"],
        "packages": packages,
    }


def _collect(mirrors: Path, candidate: Candidate) -> ModuleNames:
    mirror = Mirror(mirrors, candidate.source.repo)
    files = mirror.julia_files(candidate.tag, candidate.source.directory)
    return collect_names([mirror.show(candidate.tag, f) for f in files])


def _summarise(
    name: str, snapshots: list[tuple[Candidate, ModuleNames]], collected: dict[str, list[tuple[Candidate, ModuleNames]]]
) -> dict[str, Any]:
    """One package's entry: its checked tags, and per name and keyword the tags that have it."""
    direct = name in DIRECT
    accessible: list[set[str]] = []
    opaque: list[list[str]] = []
    for _, names in snapshots:
        reachable = names.defined | names.imported | names.exported
        unread = []
        for module in names.reexported_modules:
            if module in collected:
                for _, other in collected[module]:
                    reachable |= other.exported
            else:
                unread.append(module)
        accessible.append(reachable)
        opaque.append(sorted(unread))
    every = sorted(set().union(*accessible)) if direct else []
    keyword_names = set().union(*(n.methods for _, n in snapshots))
    if direct:
        keyword_names &= set(every)
    else:
        # Only the functions our direct dependencies hand on (solve, init, ...) are of interest.
        keyword_names &= set().union(*(n.imported for _, n in collected["SciMLBase"]))
    methods: dict[str, Any] = {}
    for function in sorted(keyword_names):
        signatures = [names.methods.get(function) for _, names in snapshots]
        keywords = [set().union(*(s.keywords for s in sig)) if sig else set() for sig in signatures]
        slurps = [bool(sig) and any(s.slurps for s in sig) for sig in signatures]
        if any(keywords) or any(slurps):
            methods[function] = {
                "methods": _flags([sig is not None for sig in signatures]),
                "slurps": _flags(slurps),
                "keywords": _grouped({k: _flags([k in ks for ks in keywords]) for k in set().union(*keywords)}),
            }
    entry: dict[str, Any] = {
        "tags": [
            {"tag": c.tag, "repo": c.source.repo, "commit": _commit(c), "unparsed_nodes": n.unparsed}
            for c, n in snapshots
        ],
        "reexports_unread": _flags([bool(o) for o in opaque]),
        "reexported_modules_unread": sorted(set().union(*map(set, opaque))),
        "keywords": methods,
    }
    if direct:
        entry["names"] = _grouped({n: _flags([n in a for a in accessible]) for n in every})
    allowed = [n.allowedkeywords for _, n in snapshots]
    if any(a is not None for a in allowed):
        listed = set().union(*(a for a in allowed if a))
        entry["allowedkeywords"] = {
            "tags": _flags([a is not None for a in allowed]),
            "keywords": _grouped({k: _flags([a is not None and k in a for a in allowed]) for k in listed}),
        }
    return entry


def _grouped(flags: dict[str, str]) -> dict[str, str]:
    """`{flags: "name name ..."}`: the names with the same flags, space-separated (a compact file)."""
    groups: dict[str, list[str]] = {}
    for name, flag in flags.items():
        groups.setdefault(flag, []).append(name)
    return {flag: " ".join(sorted(names)) for flag, names in sorted(groups.items())}


def ungrouped(groups: dict[str, str]) -> dict[str, str]:
    """The inverse of `_grouped`: `{name: flags}`."""
    return {name: flag for flag, names in groups.items() for name in names.split()}


def _flags(values: list[bool]) -> str:
    """One character per checked tag, in the order of the package's "tags": "1" yes, "0" no."""
    return "".join("1" if v else "0" for v in values)


_MIRRORS: Path | None = None


def _commit(candidate: Candidate) -> str:
    assert _MIRRORS is not None
    return Mirror(_MIRRORS, candidate.source.repo).commit(candidate.tag)


def main(argv: list[str] | None = None) -> int:
    global _MIRRORS
    arguments = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    arguments.add_argument("--mirrors", type=Path, default=Path("/work/.mirror"), help="bare git mirrors")
    arguments.add_argument("--out", type=Path, default=DATA)
    options = arguments.parse_args(argv)
    _MIRRORS = options.mirrors
    data = generate(options.mirrors)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(data, indent=0, sort_keys=True, ensure_ascii=False) + "\n")
    for name, entry in data["packages"].items():
        print(f"{name}: {', '.join(t['tag'] for t in entry['tags'])}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
