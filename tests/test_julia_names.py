"""Static checks of the names and keyword arguments in julia/*.jl, without Julia.

Every call, macro, type annotation and qualified name (`M.x`) in our Julia files must resolve to
- a binding of our own files (a function, type, constant, argument or local variable; not scope-exact:
  a name bound anywhere in the module counts),
- a name imported with `using Package: name` that the package has at every checked tag of the versions
  our [compat] admits (tests/data/julia_upstream_names.json, made by tests/_julia_upstream_names.py from
  the upstream sources), or
- a name of Julia's Base or standard libraries from the short lists below.
Every keyword argument passed to a function must be one that function declares: ours from their
signatures, upstream ones from their method signatures at every checked tag, `solve` and `init` also from
the common solver keywords (`allowedkeywords`) that DiffEqBase/SciMLBase check their `kwargs...` against.

Where the sources cannot decide (a method that takes `kwargs...` and hands them on unchecked, a keyword
splat whose keys are not visible, a name only a re-exported module we have not read could provide),
the check is skipped with the reason instead of passing.

Not covered: fields of values (`integrator.t`), argument counts and types, and anything Python sends.
"""

from __future__ import annotations

import functools
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import tomllib

pytest.importorskip("tree_sitter", reason="tree-sitter is in the `test` extra")
pytest.importorskip("tree_sitter_julia", reason="tree-sitter-julia is in the `test` extra")

import _julia_upstream_names as upstream  # noqa: E402
from _julia_upstream_names import callee_name, named, text, ungrouped, walk  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
JULIA_DIR = ROOT / "julia"
DATA = json.loads(upstream.DATA.read_text())

# The Base names our files use, a short list on purpose (a new one is added after checking the Julia
# manual). Core's builtins and types, which every module sees:
CORE = set(
    """
    AbstractString Any ArgumentError Bool ErrorException Exception Float64 IO Int Integer Nothing Real Ref
    String Symbol Tuple Union getfield isa isdefined throw typeof
    """.split()
)
# Names exported by Base (base/exports.jl):
BASE = CORE | set(
    """
    AbstractVector Array CompositeException DimensionMismatch Matrix ReentrantLock TaskFailedException
    UnitRange Vector
    abs all any cat collect copy copyto! diff eachcol eachindex enumerate exp expm1 fieldnames fill
    findfirst getproperty hasproperty identity in inv isempty isfinite isinf iszero join length lock log1p
    max merge min occursin one ones permutedims print push! range reshape showerror size split sqrt string
    sum tanh transpose vcat vec view zero zeros
    @info @warn
    """.split()
)
# Not exported but always there: Base.CoreLogging (Logging re-exports its API), and the `include` that
# every module has.
BASE |= {"CoreLogging", "include"}
# Base.CoreLogging (base/logging.jl): the logger interface and its levels.
CORELOGGING = set(
    """
    AbstractLogger NullLogger Warn catch_exceptions current_logger handle_message min_enabled_level
    shouldlog with_logger
    """.split()
)
# Standard libraries (Project.toml [extras]): only what runtests.jl uses.
STDLIB = {
    "Test": {"@test", "@testset", "@test_throws"},
    "LinearAlgebra": {"I"},
}
# Keywords of the Base functions we call with keywords (Julia manual: `range(start, stop; length, step)`,
# `cat(A...; dims)`).
BASE_KEYWORDS = {"range": {"length", "step", "stop", "start"}, "cat": {"dims"}}
# Upstream functions whose `kwargs...` are checked against `allowedkeywords` before use: DiffEqBase's
# `init_call`/`solve_call` call `checkkwargs(kwargshandle; kwargs...)` (DiffEqBase src/solve.jl; its list
# moved to SciMLBase src/errors.jl), which throws for a keyword not in the list.
GATED = {"solve", "init"}
# Packages whose methods a call may reach besides the one the name is imported from.
TRANSITIVE = {"solve": ("DiffEqBase", "CommonSolve"), "init": ("DiffEqBase", "CommonSolve")}


@functools.cache
def _names(package: str) -> dict[str, str]:
    return ungrouped(DATA["packages"][package]["names"])


@functools.cache
def _keywords(package: str, function: str) -> dict[str, str]:
    return ungrouped(DATA["packages"][package]["keywords"][function]["keywords"])


def _all_ones(flags: str) -> bool:
    return bool(flags) and set(flags) == {"1"}


def _tags(package: str, flags: str, want: str = "0") -> list[str]:
    tags = DATA["packages"][package]["tags"]
    return [tags[i]["tag"] for i, f in enumerate(flags) if f == want]


@dataclass
class Check:
    """One name or keyword to check: where it is, and the verdict (`problem`, or `undecided` with why)."""

    where: str
    what: str
    problem: str | None = None
    undecided: str | None = None

    @property
    def id(self) -> str:
        return f"{self.where} {self.what}"


@dataclass
class LocalFunction:
    keywords: set[str]
    slurp: str | None  # the name of its `kwargs...`, if any
    body: Any


@dataclass
class Scope:
    """The names one Julia scope (the module HybridNODE, or the test script) can see."""

    bound: set[str] = field(default_factory=set)
    imported: dict[str, str] = field(default_factory=dict)  # name -> package
    modules: dict[str, tuple[str, str]] = field(default_factory=dict)  # alias -> namespace
    wholesale: set[str] = field(default_factory=set)  # `using Package`
    functions: dict[str, list[LocalFunction]] = field(default_factory=dict)
    assignments: dict[str, list[Any]] = field(default_factory=dict)  # name -> right-hand sides


def _bindings(node: Any) -> Iterator[str]:
    """Identifiers a node binds when it stands where a variable is introduced."""
    if node.type == "identifier":
        yield text(node)
    elif node.type in ("typed_expression", "named_argument", "splat_expression"):
        inner = named(node)
        if inner:
            yield from _bindings(inner[0])
    elif node.type in ("tuple_expression", "open_tuple", "argument_list", "parenthesized_expression"):
        for child in named(node):
            yield from _bindings(child)


def _function_call(node: Any) -> Any:
    """The signature call of a function definition (long or short form), or None."""
    if node.type in ("function_definition", "macro_definition"):
        signature = next((c for c in node.children if c.type == "signature"), None)
        return upstream.unwrap_signature(signature)
    if node.type == "assignment" and node.children:
        target = upstream.unwrap_signature(node.children[0])
        if target is not None and target.type == "call_expression":
            return target
    return None


def build_scope(trees: list[Any]) -> Scope:
    scope = Scope()
    for tree in trees:
        for node in walk(tree.root_node):
            kind = node.type
            call = _function_call(node)
            if call is not None and call.type == "call_expression":
                arguments = next((c for c in call.children if c.type == "argument_list"), None)
                if arguments is not None:
                    scope.bound.update(_bindings(arguments))
                names = callee_name(call)
                head = named(call)[0]
                if head.type == "parenthesized_expression":  # `(m::MLP)(u, θ, t)`: a functor method
                    scope.bound.update(_bindings(head))
                if names and head.type != "field_expression":
                    scope.bound.update(names)
                    signature = upstream.signature_keywords(call)
                    slurp = None
                    if signature.slurps and arguments is not None:
                        after = False
                        for child in arguments.children:
                            after = after or child.type == ";"
                            if after and child.type == "splat_expression":
                                slurp = text(named(child)[0])
                    body = node if node.type == "function_definition" else node.children[-1]
                    scope.functions.setdefault(names[0], []).append(LocalFunction(signature.keywords, slurp, body))
                if kind == "macro_definition" and names:
                    scope.bound.add("@" + names[0])
            elif kind == "assignment" and node.children:
                lhs = node.children[0]
                for name in _bindings(lhs):
                    scope.bound.add(name)
                    scope.assignments.setdefault(name, []).append(node.children[-1])
            elif kind in ("for_binding", "let_binding"):
                scope.bound.update(_bindings(named(node)[0]))
            elif kind == "catch_clause":
                ident = next((c for c in node.children if c.type == "identifier"), None)
                if ident is not None:
                    scope.bound.add(text(ident))
            elif kind == "do_clause":
                arguments = next((c for c in node.children if c.type == "argument_list"), None)
                if arguments is not None:
                    scope.bound.update(_bindings(arguments))
            elif kind == "arrow_function_expression":
                scope.bound.update(_bindings(named(node)[0]))
            elif kind in ("struct_definition", "abstract_definition"):
                name = upstream._type_name(node)
                if name:
                    scope.bound.add(name)
            elif kind == "using_statement" or kind == "import_statement":
                _add_import(scope, node)
    return scope


def _add_import(scope: Scope, node: Any) -> None:
    for part in named(node):
        if part.type == "selected_import":
            items = named(part)
            package = text(items[0])
            for item in items[1:]:
                name = text(item)
                if name == package:
                    scope.modules[name] = ("package", package)
                else:
                    scope.imported[name] = package
        else:  # `using X` / `import Base.CoreLogging`
            path = text(part)
            alias = path.split(".")[-1]
            if path == "HybridNODE":  # the test script's `using HybridNODE`: our own module
                scope.modules[alias] = ("ours", path)
                scope.wholesale.add(path)
            elif path == "Base.CoreLogging":
                scope.modules[alias] = ("base", "CoreLogging")
            else:
                scope.modules[alias] = ("package", path)
                if node.type == "using_statement":
                    scope.wholesale.add(path)


class Checker:
    """The checks for one copy of the Julia sources (the repository's, or a test's modified copy)."""

    def __init__(self, julia_dir: Path) -> None:
        parser = upstream.parser()
        module_files = sorted(julia_dir.glob("*.jl"))
        self.module = {p.name: parser.parse(p.read_bytes()) for p in module_files}
        runtests = julia_dir / "test" / "runtests.jl"
        self.script = {"test/runtests.jl": parser.parse(runtests.read_bytes())} if runtests.is_file() else {}
        self.ours = build_scope(list(self.module.values()))
        self.test_scope = build_scope(list(self.script.values()))
        exports = [n for tree in self.module.values() for n in walk(tree.root_node) if n.type == "export_statement"]
        self.exported = {text(c) for e in exports for c in named(e)}

    # ---- namespaces

    def members(self, namespace: tuple[str, str]) -> tuple[set[str] | None, str | None]:
        """The names a namespace has (None: unknown, with why), for `M.x` and `using M: x`."""
        kind, name = namespace
        if kind == "ours":
            return self.ours.bound | set(self.ours.imported) | set(self.ours.modules), None
        if kind == "base":
            return (BASE if name == "Base" else CORELOGGING), None
        if name in STDLIB:
            return STDLIB[name], None
        if name == "HybridNODE":
            return self.ours.bound | set(self.ours.imported) | set(self.ours.modules), None
        if name not in DATA["packages"]:
            return None, f"no upstream data for {name}"
        return None, None

    def package_has(self, package: str, name: str, where: str, guarded: bool) -> Check:
        check = Check(where, f"{package}.{name}")
        entry = DATA["packages"].get(package)
        if entry is None:
            check.problem = f"{package} is not a package we depend on (Project.toml [deps])"
            return check
        flags = _names(package).get(name, "0" * len(entry["tags"]))
        if _all_ones(flags) or (guarded and "1" in flags):
            return check
        if "1" not in flags and "1" in entry["reexports_unread"]:
            check.undecided = (
                f"{name} is not defined, imported or exported by {package}; it could come from a module "
                f"{package} re-exports that is not read: {entry['reexported_modules_unread']}"
            )
        elif "1" in flags:
            check.problem = f"{package} has no {name} at {_tags(package, flags)} (our [compat] admits them)"
        else:
            check.problem = f"{package} defines, imports and exports no {name} (tags {_tags(package, flags, '0')})"
        return check

    def resolve_namespace(self, scope: Scope, node: Any) -> tuple[str, str] | None:
        """The namespace a module expression names (`SciMLBase`, `HybridNODE.Zygote`, `Base.CoreLogging`)."""
        if node.type == "identifier":
            name = text(node)
            if name in scope.modules:
                return scope.modules[name]
            if name == "Base":
                return ("base", "Base")
            return None
        if node.type == "field_expression":
            parts = named(node)
            parent = self.resolve_namespace(scope, parts[0])
            member = text(parts[-1])
            if parent == ("base", "Base") and member == "CoreLogging":
                return ("base", "CoreLogging")
            if parent == ("ours", "HybridNODE") and member in self.ours.modules:
                return self.ours.modules[member]
        return None

    def qualified(self, scope: Scope, node: Any, where: str) -> Check | None:
        """The check of `M.x` when `M` is a module (None for a field of a value)."""
        parts = named(node)
        namespace = self.resolve_namespace(scope, parts[0])
        if namespace is None or parts[-1].type not in ("identifier", "macro_identifier"):
            return None
        member = text(parts[-1])
        if namespace[0] == "package" and namespace[1] in DATA["packages"]:
            return self.package_has(namespace[1], member, where, guarded=_isdefined_guard(node, member))
        names, why = self.members(namespace)
        check = Check(where, f"{text(parts[0])}.{member}")
        if names is None:
            check.undecided = why
        elif member not in names:
            check.problem = f"{namespace[1]} has no {member}"
        return check

    def plain(self, scope: Scope, name: str, where: str) -> Check:
        check = Check(where, name)
        if name in scope.bound or name in scope.modules or name in BASE:
            return check
        if name in scope.imported:
            return check  # the import itself is checked (test_imported_names_exist_upstream)
        for module in scope.wholesale:
            if module == "HybridNODE" and name in self.exported:
                return check
            if module in STDLIB and name in STDLIB[module]:
                return check
        check.problem = f"{name} is not defined in our files, not imported, and not in the Base list"
        return check

    # ---- the checks

    def scopes(self) -> Iterator[tuple[str, Any, Scope]]:
        for name, tree in self.module.items():
            yield name, tree, self.ours
        for name, tree in self.script.items():
            yield name, tree, self.test_scope

    def import_checks(self) -> list[Check]:
        checks = []
        for file, tree, _ in self.scopes():
            for node in walk(tree.root_node):
                if node.type not in ("using_statement", "import_statement"):
                    continue
                where = f"{file}:{node.start_point[0] + 1}"
                for part in named(node):
                    if part.type != "selected_import":
                        continue
                    items = named(part)
                    package = text(items[0])
                    for item in items[1:]:
                        name = text(item)
                        if name == package:
                            continue
                        if package in STDLIB or package == "HybridNODE":
                            names, _ = self.members(("package", package))
                            check = Check(where, f"using {package}: {name}")
                            if names is not None and name not in names:
                                check.problem = f"{package} has no {name}"
                            checks.append(check)
                        else:
                            checks.append(self.package_has(package, name, where, guarded=False))
        return checks

    def name_checks(self) -> list[Check]:
        checks: dict[str, Check] = {}
        for file, tree, scope in self.scopes():
            for node in walk(tree.root_node):
                where = f"{file}:{node.start_point[0] + 1}"
                found: list[Check | None] = []
                if node.type == "field_expression" and not _inside_import(node):
                    found.append(self.qualified(scope, node, where))
                elif node.type == "call_expression":
                    head = named(node)[0]
                    if head.type == "parametrized_type_expression":
                        head = named(head)[0]
                    if head.type == "identifier":
                        found.append(self.plain(scope, text(head), where))
                elif node.type == "macrocall_expression":
                    ident = next((c for c in node.children if c.type == "macro_identifier"), None)
                    if ident is not None and node.children[0] is ident:
                        found.append(self.plain(scope, text(ident), where))
                elif node.type in ("typed_expression", "curly_expression") or (
                    node.type == "binary_expression" and node.parent is not None and node.parent.type == "type_head"
                ):
                    for ident in _type_names(node):
                        found.append(self.plain(scope, ident, where))
                for check in found:
                    if check is not None:
                        # one check per file and name: the first place it is used
                        checks.setdefault(f"{file} {check.what}", check)
        return list(checks.values())

    def keyword_checks(self) -> list[Check]:
        checks = []
        for file, tree, scope in self.scopes():
            for node in walk(tree.root_node):
                if node.type != "call_expression" or _function_call(node.parent) is node:
                    continue
                if node.parent is not None and node.parent.type in ("signature", "where_expression"):
                    continue
                keywords, splats = upstream.call_keywords(node)
                if not keywords and not splats:
                    continue
                where = f"{file}:{node.start_point[0] + 1}"
                callee = self.callee(scope, node)
                for splat in splats:
                    keys, why = self.splat_keys(scope, splat, node)
                    if keys is None:
                        if why:
                            checks.append(Check(where, f"{callee[1]}({text(splat)})", undecided=why))
                        continue
                    keywords.extend((key, splat) for key in sorted(keys))
                for keyword, _ in keywords:
                    check = Check(where, f"{callee[1]}({keyword}=)")
                    verdict, why = self.accepts(scope, callee, keyword, set())
                    if verdict == "no":
                        check.problem = why
                    elif verdict == "unknown":
                        check.undecided = why
                    checks.append(check)
        return checks

    def callee(self, scope: Scope, call: Any) -> tuple[str, str]:
        """`(where it comes from, name)`: ("ours"|package|"base"|"value", name)."""
        head = named(call)[0]
        if head.type == "parametrized_type_expression":
            head = named(head)[0]
        if head.type == "field_expression":
            parts = named(head)
            namespace = self.resolve_namespace(scope, parts[0])
            name = text(parts[-1])
            if namespace is None:
                return ("value", text(head))
            if namespace[0] == "ours":
                return ("ours", name)
            if namespace[0] == "base":
                return ("base", name)
            return (namespace[1], name)
        name = text(head)
        if name in scope.functions or name in self.ours.functions and scope is self.test_scope:
            return ("ours", name)
        if name in scope.imported:
            return (scope.imported[name], name)
        if name in BASE:
            return ("base", name)
        return ("value", name)

    def accepts(self, scope: Scope, callee: tuple[str, str], keyword: str, seen: set[str]) -> tuple[str, str]:
        """("yes"|"no"|"unknown", why) for passing `keyword` to `callee`."""
        origin, name = callee
        if origin == "base":
            allowed = BASE_KEYWORDS.get(name)
            if allowed is None:
                return "unknown", f"no keyword list for Base's {name}"
            return ("yes", "") if keyword in allowed else ("no", f"Base's {name} takes no keyword {keyword}")
        if origin == "value":
            return "unknown", f"{name} is a value (a closure argument or a Python object), its keywords are unknown"
        if origin == "ours":
            definitions = self.ours.functions.get(name) or scope.functions.get(name)
            if not definitions:
                return "unknown", f"no definition of {name} in our files"
            if any(keyword in d.keywords for d in definitions):
                return "yes", ""
            forwards = [
                f for d in definitions if d.slurp for f in _forwarded_calls(d.body, d.slurp) if name not in seen
            ]
            if forwards:
                verdicts = [self.accepts(scope, self.callee(scope, f), keyword, seen | {name}) for f in forwards]
                worst = next((v for v in verdicts if v[0] == "no"), None) or next(
                    (v for v in verdicts if v[0] == "unknown"), ("yes", "")
                )
                return worst
            if any(d.slurp for d in definitions):
                return "unknown", f"our {name} takes kwargs... without handing them on"
            return "no", f"our {name} has no keyword {keyword}"
        return self.upstream_accepts(origin, name, keyword)

    def upstream_accepts(self, package: str, name: str, keyword: str) -> tuple[str, str]:
        packages = [package, *TRANSITIVE.get(name, ())]
        seen_methods = False
        for source in packages:
            entry = DATA["packages"].get(source)
            info = entry["keywords"].get(name) if entry else None
            if info is None:
                continue
            flags = _keywords(source, name).get(keyword, "0" * len(info["methods"]))
            for i, has_methods in enumerate(info["methods"]):
                if has_methods != "1":
                    continue
                seen_methods = True
                if flags[i] == "1":
                    continue
                tag = entry["tags"][i]["tag"]
                if info["slurps"][i] == "1":
                    if name in GATED:
                        if keyword in _allowed_everywhere():
                            continue
                        return "no", f"{name} at {source} {tag} checks kwargs... against allowedkeywords: no {keyword}"
                    return "unknown", f"{name} at {source} {tag} takes kwargs... ({keyword} is not declared)"
                return "no", f"{name} at {source} {tag} has no keyword {keyword}"
        if not seen_methods:
            return "unknown", f"no method of {name} with keywords found in {packages}"
        return "yes", ""

    def splat_keys(self, scope: Scope, splat: Any, call: Any) -> tuple[set[str] | None, str | None]:
        """The keys a keyword splat `x...` passes: known from named-tuple literals, or None with why
        (None without why: the enclosing function's own `kwargs...`, checked at its callers)."""
        value = named(splat)[0]
        if value.type != "identifier":
            return None, f"cannot see the keys of {text(splat)}"
        name = text(value)
        enclosing = _enclosing_definition(call)
        if enclosing is not None and name in _slurp_names(enclosing):
            return None, None
        keys = _named_tuple_keys(self.ours, self.test_scope, scope, name, set())
        if keys is None:
            return None, f"cannot see the keys of {name}..."
        return keys, None


@functools.cache
def _allowed_everywhere() -> frozenset[str]:
    """The keywords every checked `allowedkeywords` (DiffEqBase 6, SciMLBase) lists."""
    allowed: set[str] | None = None
    for entry in DATA["packages"].values():
        table = entry.get("allowedkeywords")
        if not table:
            continue
        present = table["tags"]
        listed = {
            k
            for k, flags in ungrouped(table["keywords"]).items()
            if all(f == "1" for f, p in zip(flags, present) if p == "1")
        }
        allowed = listed if allowed is None else allowed & listed
    return frozenset(allowed or ())


def _named_tuple_keys(ours: Scope, test: Scope, scope: Scope, name: str, seen: set[str]) -> set[str] | None:
    """The keys of the named tuples a variable is ever assigned (merge and local calls followed)."""
    if name in seen:
        return set()
    seen = seen | {name}
    values = scope.assignments.get(name)
    if not values:
        return None
    keys: set[str] = set()
    for value in values:
        found = _expression_keys(ours, test, scope, value, seen)
        if found is None:
            return None
        keys |= found
    return keys


def _expression_keys(ours: Scope, test: Scope, scope: Scope, node: Any, seen: set[str]) -> set[str] | None:
    if node.type in ("tuple_expression", "parenthesized_expression"):
        items = named(node)
        if items and all(i.type in ("named_field", "named_argument", "assignment") for i in items):
            return {text(named(i)[0]) for i in items}
        if node.type == "parenthesized_expression" and len(items) == 1:
            return _expression_keys(ours, test, scope, items[0], seen)
        return None
    if node.type == "identifier":
        return _named_tuple_keys(ours, test, scope, text(node), seen)
    if node.type == "call_expression":
        names = callee_name(node)
        arguments = next((c for c in node.children if c.type == "argument_list"), None)
        if names == ["merge"] and arguments is not None:
            keys: set[str] = set()
            for argument in named(arguments):
                found = _expression_keys(ours, test, scope, argument, seen)
                if found is None:
                    return None
                keys |= found
            return keys
        if names and names[0] in scope.functions:
            keys = set()
            for definition in scope.functions[names[0]]:
                returns = [r for r in walk(definition.body) if r.type == "return_statement" and named(r)]
                if not returns:
                    return None
                for r in returns:
                    found = _expression_keys(ours, test, scope, named(r)[0], seen)
                    if found is None:
                        return None
                    keys |= found
            return keys
    return None


def _enclosing_definition(node: Any) -> Any:
    parent = node.parent
    while parent is not None:
        if _function_call(parent) is not None and parent.type in ("function_definition", "assignment"):
            return parent
        parent = parent.parent
    return None


def _slurp_names(definition: Any) -> set[str]:
    call = _function_call(definition)
    arguments = next((c for c in call.children if c.type == "argument_list"), None) if call is not None else None
    if arguments is None:
        return set()
    names, after = set(), False
    for child in arguments.children:
        after = after or child.type == ";"
        if after and child.type == "splat_expression":
            names.add(text(named(child)[0]))
    return names


def _forwarded_calls(body: Any, slurp: str) -> list[Any]:
    """The calls in a body that pass `slurp...` on as keywords."""
    calls = []
    for node in walk(body):
        if node.type == "call_expression":
            _, splats = upstream.call_keywords(node)
            if any(text(named(s)[0]) == slurp for s in splats):
                calls.append(node)
    return calls


def _inside_import(node: Any) -> bool:
    parent = node.parent
    while parent is not None:
        if parent.type in ("using_statement", "import_statement", "export_statement"):
            return True
        parent = parent.parent
    return False


def _isdefined_guard(node: Any, member: str) -> bool:
    """Whether `M.member` stands in the branch of an `if isdefined(M, :member)`: it may be missing at some tags."""
    parent = node.parent
    while parent is not None:
        if parent.type == "if_statement":
            condition = named(parent)[0]
            if f":{member}" in text(condition) and "isdefined(" in text(condition):
                return True
        parent = parent.parent
    return False


def _type_names(node: Any) -> list[str]:
    """The type names in a `::T` annotation, the parameters of `T{...}`, or a struct's `<: Super`."""
    if node.type == "typed_expression":
        parts = named(node)
        targets = parts[1:] if len(parts) > 1 else []
    elif node.type == "curly_expression":
        targets = named(node)
    else:  # `S <: Super` in a type head
        targets = named(node)[1:]
    names = []
    for target in targets:
        if target.type == "identifier":
            names.append(text(target))
        elif target.type == "parametrized_type_expression":
            head = named(target)[0]
            if head.type == "identifier":
                names.append(text(head))
        elif target.type == "unary_expression":  # `<:Integer`
            names.extend(text(c) for c in named(target) if c.type == "identifier")
    return names


# ---------------------------------------------------------------------------------------------------------

CHECKER = Checker(JULIA_DIR)
IMPORTS = CHECKER.import_checks()
NAMES = CHECKER.name_checks()
KEYWORDS = CHECKER.keyword_checks()


def _verdict(check: Check) -> None:
    if check.problem:
        pytest.fail(f"{check.where}: {check.what}: {check.problem}")
    if check.undecided:
        pytest.skip(f"{check.where}: {check.what}: cannot decide: {check.undecided}")


@pytest.mark.parametrize("check", IMPORTS, ids=lambda c: c.id)
def test_imported_names_exist_upstream(check):
    _verdict(check)


@pytest.mark.parametrize("check", NAMES, ids=lambda c: c.id)
def test_called_and_qualified_names_are_defined(check):
    _verdict(check)


@pytest.mark.parametrize("check", KEYWORDS, ids=lambda c: c.id)
def test_keyword_arguments_are_accepted(check):
    _verdict(check)


def test_upstream_data_matches_our_compat():
    # The data file must be regenerated when [compat] changes (python tests/_julia_upstream_names.py).
    project = tomllib.loads((ROOT / "Project.toml").read_text())
    assert DATA["compat"] == project["compat"]
    assert set(project["deps"]) <= set(DATA["packages"])
    for name, entry in DATA["packages"].items():
        assert entry["tags"], name


def test_the_checks_cover_the_upstream_calls():
    # The checker must actually look at the calls that matter, or an empty list would pass.
    seen = {c.what for c in KEYWORDS}
    for call in (
        "solve(saveat=)",
        "init(save_everystep=)",
        "remake(u0=)",
        "VectorContinuousCallback(interp_points=)",
        "Rodas5P(autodiff=)",
        "GaussAdjoint(autojacvec=)",
        "InterpolatingAdjoint(checkpointing=)",
        "QuadratureAdjoint(reltol=)",
        "ODEFunction(vjp_p=)",
        "init(abstol=)",
        "solve(tstops=)",
    ):
        assert call in seen, call
    names = {c.what for c in NAMES}
    for name in (
        "SciMLBase.derivative_discontinuity!",
        "SciMLBase.u_modified!",
        "Zygote.pullback",
        "Zygote.gradient",
        "CoreLogging.with_logger",
        "HybridNODE.activation",
    ):
        assert name in names, name


# ---- controls: planted mistakes in a copy of the sources must be found


def _planted(tmp_path: Path, file: str, old: str, new: str) -> Checker:
    copy = tmp_path / "julia"
    shutil.copytree(JULIA_DIR, copy)
    path = copy / file
    source = path.read_text()
    assert source.count(old) == 1, old  # one place, in code (not a docstring's copy of it)
    path.write_text(source.replace(old, new))
    return Checker(copy)


def _problems(checker: Checker) -> list[str]:
    checks = checker.import_checks() + checker.name_checks() + checker.keyword_checks()
    return [f"{c.what}: {c.problem}" for c in checks if c.problem]


@pytest.mark.parametrize(
    "file, old, new, expected",
    [
        ("bridge.jl", "solve!(integrator)", "solv!(integrator)", "solv!"),  # misspelled call
        ("events.jl", "terminate!(integrator)", "terminat!(integrator)", "terminat!"),
        (
            "events.jl",
            "SciMLBase.u_modified!(integrator, changed)",
            "SciMLBase.u_modifed!(integrator, changed)",
            "SciMLBase.u_modifed!",
        ),  # misspelled qualified name
        ("HybridNODE.jl", "set_u!, solve", "set_uu!, solve", "SciMLBase.set_uu!"),  # import of a missing name
        (
            "algorithms.jl",
            "= AutoTsit5(Rodas5P(; kwargs...))",
            "= AutoTsit5(ContinuousCallback(; kwargs...))",
            "ContinuousCallback",
        ),  # a name from a package we do not import
        ("algorithms.jl", "return Rodas5P(autodiff = ad)", "return Rodas5P(autodif = ad)", "Rodas5P(autodif=)"),
        (
            "algorithms.jl",
            "GaussAdjoint(autojacvec = vjp)",
            "GaussAdjoint(autojacvec = vjp, checkpoint = true)",
            "GaussAdjoint(checkpoint=)",
        ),
        ("bridge.jl", "save_everystep = false,", "save_every_step = false,", "init(save_every_step=)"),
        ("bridge.jl", "(adaptive = false, tstops = ts)", "(adaptive = false, tstop = ts)", "tstop="),  # via opts...
        (
            "events.jl",
            "interp_points = Int(interp_points), negative...)",
            "interp_point = Int(interp_points), negative...)",
            "VectorContinuousCallback(interp_point=)",
        ),
        (
            "bridge.jl",
            "make_algorithm(algorithm; finite_diff = true)",
            "make_algorithm(algorithm; finitediff = true)",
            "make_algorithm(finitediff=)",
        ),  # our own function's keyword
        (
            "algorithms.jl",
            "AutoTsit5Rodas5P(autodiff = ad)",
            "AutoTsit5Rodas5P(autodiffs = ad)",
            "AutoTsit5Rodas5P(autodiffs=)",
        ),  # checked through the kwargs... it hands to Rodas5P
        ("bridge.jl", "CoreLogging.current_logger()", "CoreLogging.currentlogger()", "CoreLogging.currentlogger"),
    ],
)
def test_planted_mistakes_are_found(tmp_path, file, old, new, expected):
    problems = _problems(_planted(tmp_path, file, old, new))
    assert any(expected in p for p in problems), problems


def test_the_unmodified_sources_have_no_problems():
    assert _problems(CHECKER) == []
