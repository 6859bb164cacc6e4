"""The shape of the package, checked by parsing every import statement (at module level and
inside functions and classes alike; only those under ``if TYPE_CHECKING:`` are left out, as
they never run): the import-layers contract.

- no import circle anywhere in ``daskmm/``;
- ``core`` and ``kernels`` import no model; kernels never import dask;
- a model uses another only through its public names, and only where one holds the other
  (a GLMM holds its LMM); every model may use ``models.shared``;
- ``service`` imports only the public API (:data:`PUBLIC`);
- no module imports a private name (``_x``) from another module.

``from package import module`` counts as an import of the module, as import-linter's graph
counts it.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import daskmm.core.families as F
from daskmm.kernels import scalar_re as K

PKG = Path(__file__).resolve().parents[1] / "daskmm"
MODELS = ("lmm", "glmm", "gam", "gwas")
HOLDS = {"glmm": {"lmm"}}
"""Which model may use which other model's public names."""
PUBLIC = ("daskmm", "daskmm.api", "daskmm.errors", "daskmm.events", "daskmm.jobs",
          "daskmm.data.confine", "daskmm.data.staging")
"""What the service may import besides itself: the package's public entry points (``fit``,
the errors, progress events), job files (``daskmm.jobs``: the same jobs as ``daskmm run``) and
the data layer's two public guarantees (outputs never replace what daskmm did not write; reads
confined to allowed folders)."""


@cache
def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        out[".".join(rel.parts).removesuffix(".__init__")] = ast.parse(path.read_text())
    return out


def _runtime_nodes(tree: ast.AST):
    """Every node but those under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def _resolve(name: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = name.split(".")[: -node.level] if not _is_package(name) else \
        name.split(".")[: len(name.split(".")) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _is_package(name: str) -> bool:
    return (PKG.parent / Path(*name.split(".")) / "__init__.py").exists()


def imports(name: str, mods: dict | None = None) -> list[tuple[str, list[str]]]:
    """``(module imported, names taken from it)`` for each import statement of ``name``
    (``from pkg import mod`` gives ``pkg.mod``)."""
    mods = _modules() if mods is None else mods
    out = []
    for node in _runtime_nodes(mods[name]):
        if isinstance(node, ast.ImportFrom):
            base = _resolve(name, node)
            plain = []
            for a in node.names:
                if f"{base}.{a.name}" in mods:
                    out.append((f"{base}.{a.name}", []))
                else:
                    plain.append(a.name)
            if plain or not node.names:
                out.append((base, plain))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
    return out


def graph(mods: dict | None = None) -> dict[str, set[str]]:
    mods = _modules() if mods is None else mods
    return {m: {t for t, _ in imports(m, mods) if t in mods and t != m} for m in mods}


def circles(mods: dict | None = None) -> list[list[str]]:
    """The import circles: strongly connected components of more than one module."""
    g = graph(mods)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan, iteratively deep enough for this package
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def _model_of(name: str) -> str | None:
    parts = name.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "models" and parts[2] in MODELS else None


def test_no_import_circle_anywhere():
    assert circles() == []


def test_core_and_kernels_import_no_model():
    bad = [(m, t) for m in _modules() if m.startswith(("daskmm.core", "daskmm.kernels"))
           for t, _ in imports(m) if t.startswith("daskmm.models")]
    assert bad == []


def test_kernels_never_import_dask():
    bad = [(m, t) for m in _modules() if m.startswith("daskmm.kernels")
           for t, _ in imports(m) if t.split(".")[0] in ("dask", "distributed")]
    assert bad == []


def test_a_model_uses_another_only_where_it_holds_it():
    bad = []
    for m in _modules():
        mine = _model_of(m)
        if mine is None:
            continue
        for t, _ in imports(m):
            theirs = _model_of(t)
            if theirs is not None and theirs != mine and theirs not in HOLDS.get(mine, set()):
                bad.append((m, t))
    assert bad == []


def test_the_service_imports_only_the_public_api():
    bad = [(m, t) for m in _modules() if m.startswith("daskmm.service")
           for t, _ in imports(m) if t.startswith("daskmm")
           and not t.startswith("daskmm.service")
           and not any(t == p or t.startswith(p + ".") and p != "daskmm" for p in PUBLIC)]
    assert bad == []


def test_no_private_name_crosses_a_module():
    bad = [(m, t, n) for m in _modules() for t, names in imports(m)
           if t.startswith("daskmm") and t != m
           for n in names if n.startswith("_") and n != "__future__"]
    assert bad == []


ORCHESTRATION = ("daskmm.distributed", "daskmm.jobs", "daskmm.service", "daskmm.api",
                 "daskmm.cli", "daskmm.models.lmm.fit", "daskmm.models.lmm.criterion",
                 "daskmm.models.lmm.inference", "daskmm.models.glmm.fit",
                 "daskmm.models.glmm.criteria", "daskmm.models.glmm.stages",
                 "daskmm.models.gam.model", "daskmm.models.gwas.api", "daskmm.models.gwas.scan",
                 "daskmm.models.gwas.tasks", "daskmm.models.registry")
"""What decides what to evaluate and where (fits, criteria, stages, inference, tasks): no
linear algebra of its own; factorisations, solves and inverses live in ``daskmm.kernels``
(and the optimiser's Newton polish in ``daskmm.core``). A GAM's bases and its post-fit
results are built in ``models.gam`` (mgcv's ``smooth.construct``, ``gam.fit3.post``): not
orchestration."""


def test_orchestration_does_no_linear_algebra():
    bad = []
    for m, tree in _modules().items():
        if not any(m == o or m.startswith(o + ".") for o in ORCHESTRATION):
            continue
        for node in _runtime_nodes(tree):
            if isinstance(node, ast.Attribute) and node.attr == "linalg":
                bad.append((m, node.lineno))
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(n.endswith("linalg") for n in names):
                    bad.append((m, node.lineno))
    assert bad == []


def test_family_codes_are_the_kernels():
    assert (F.BINOMIAL, F.POISSON, F.NEGBIN) == (K.BINOMIAL, K.POISSON, K.NEGBIN)
    assert (F.GAMMA, F.INVERSE_GAUSSIAN, F.GAUSSIAN) == (K.GAMMA, K.INVERSE_GAUSSIAN,
                                                         K.GAUSSIAN)
    assert (F.LOGIT, F.PROBIT, F.CLOGLOG, F.LOG, F.IDENTITY, F.INVERSE, F.INVERSE_SQUARE) == \
        (K.LOGIT, K.PROBIT, K.CLOGLOG, K.LOG, K.IDENTITY, K.INVERSE, K.INVERSE_SQUARE)


def test_the_contract_sees_function_level_imports_and_circles():
    """The checks above miss nothing they claim to see: a circle made only by an import inside
    a function is found; an import under TYPE_CHECKING is not one."""
    fake = {"daskmm.x": ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                  "    import daskmm.z\nfrom daskmm.y import h\n"),
            "daskmm.y": ast.parse("def f():\n    from daskmm.x import g\n"),
            "daskmm.z": ast.parse("import daskmm.x\n")}
    assert circles(fake) == [["daskmm.x", "daskmm.y"]]
    assert [i for i in imports("daskmm.x", fake) if i[0].startswith("daskmm")] == \
        [("daskmm.y", ["h"])]
