"""The code a method's results depend on, as one hash: part of every cell's config hash.

A finished cell is reused when its config hash matches, so the hash must change whenever the code
that computed it changes, including shared code (an edit to ``_splitting.py`` changes what
``s2d``, ``signed-s2d`` and ``fast-s2d`` produce). A hand-bumped version number is forgotten; this
module derives the method's part of the hash from source instead, as benchopt hashes a solver's
file.

The code of a method is its class's module plus every module it imports *at module level*,
followed transitively within growbench and within the method's own top-level package (a plugin
in ``my_package`` follows ``my_package.*``). Imports inside functions are not followed: they are
lazy registration hooks (``registry.available_methods`` imports every built-in) whose targets
would tie every method to every other. Each module counts by its syntax tree with every docstring
removed (attribute docstrings included), so comments, docstrings, option descriptions and
formatting do not retrain anything; a change to code does.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
from functools import cache


def method_fingerprint(cls: type) -> str:
    """sha256 over the code of ``cls``'s module and the modules it depends on (see above)."""
    digest = hashlib.sha256()
    for name, module_digest in sorted(dependency_digests(cls.__module__).items()):
        digest.update(f"{name}:{module_digest}\n".encode())
    return digest.hexdigest()


@cache
def dependency_digests(module: str) -> dict[str, str]:
    """{module name: digest of its code} for ``module`` and everything it depends on."""
    roots = {"growbench", module.split(".")[0]}
    found: dict[str, str] = {}
    pending = [module]
    while pending:
        name = pending.pop()
        if name in found:
            continue
        source, package = _source(name)
        if source is None:
            found[name] = "no source"
            continue
        tree = ast.parse(source)
        found[name] = hashlib.sha256(_code_only(tree).encode()).hexdigest()
        for imported in _module_level_imports(tree, package, roots):
            if imported not in found:
                pending.append(imported)
    return found


def _source(name: str) -> tuple[str | None, str]:
    """A module's source text and the package its relative imports resolve in."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None, name
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return None, name
    with open(spec.origin, encoding="utf-8") as handle:
        text = handle.read()
    package = name if spec.submodule_search_locations is not None else name.rpartition(".")[0]
    return text, package


def _code_only(tree: ast.Module) -> str:
    """The syntax tree without docstrings, as text: every statement that is a bare string
    constant goes, wherever it stands (module, class and function docstrings, and the attribute
    docstrings under a Config's fields that ``growbench.options`` reads), so rewording a
    description never changes a fingerprint. Such a statement does nothing when it runs."""
    for node in ast.walk(tree):
        for name in ("body", "orelse", "finalbody"):
            statements = getattr(node, name, None)
            if not isinstance(statements, list) or not statements:
                continue
            kept = [statement for statement in statements if not _is_bare_string(statement)]
            if len(kept) != len(statements):
                setattr(node, name, kept or ([ast.Pass()] if name == "body" else []))
    return ast.dump(tree, annotate_fields=False)


def _is_bare_string(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    )


def _module_level_imports(tree: ast.Module, package: str, roots: set[str]) -> list[str]:
    """Modules under ``roots`` imported by statements at module level (``if`` blocks included,
    except ``if TYPE_CHECKING``); ``from a import b`` names ``a`` and, when it is one, ``a.b``."""
    names: list[str] = []
    statements = list(tree.body)
    while statements:
        node = statements.pop(0)
        if isinstance(node, ast.If):
            if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                statements = node.body + node.orelse + statements
        elif isinstance(node, (ast.Try, ast.With)):
            statements = node.body + statements
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = importlib.util.resolve_name("." * node.level + base, package)
            if base.split(".")[0] in roots:
                names.append(base)
                names += [f"{base}.{a.name}" for a in node.names if _is_module(base, a)]
    return [name for name in names if name.split(".")[0] in roots]


def _is_module(base: str, alias: ast.alias) -> bool:
    try:
        return importlib.util.find_spec(f"{base}.{alias.name}") is not None
    except (ImportError, ValueError):
        return False
