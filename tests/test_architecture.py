"""The shape of the package, checked by parsing imports: no module imports a private name
(``_x``) from another module, the models do not import each other, kernels never import dask,
and the families' kernel codes are the kernels' own."""

from __future__ import annotations

import ast
from pathlib import Path

import daskmm.core.families as F
from daskmm.kernels import scalar_re as K

PKG = Path(__file__).resolve().parents[1] / "daskmm"
MODELS = {"daskmm.lmm", "daskmm.glmm"}


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        yield name, ast.parse(path.read_text())


def _imports(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, []


def test_no_private_name_crosses_a_module():
    bad = [(name, mod, n) for name, tree in _modules() for mod, names in _imports(tree)
           if mod.startswith("daskmm") and mod != name
           for n in names if n.startswith("_") and n != "__future__"]
    assert bad == []


def test_models_do_not_import_each_other():
    bad = [(name, mod) for name, tree in _modules() if name in MODELS
           for mod, _ in _imports(tree) if mod in MODELS - {name}]
    assert bad == []


def test_kernels_never_import_dask():
    bad = [(name, mod) for name, tree in _modules() if name.startswith("daskmm.kernels")
           for mod, _ in _imports(tree) if mod.split(".")[0] in ("dask", "distributed")]
    assert bad == []


def test_family_codes_are_the_kernels():
    assert (F.BINOMIAL, F.POISSON, F.NEGBIN) == (K.BINOMIAL, K.POISSON, K.NEGBIN)
    assert (F.LOGIT, F.PROBIT, F.CLOGLOG, F.LOG) == (K.LOGIT, K.PROBIT, K.CLOGLOG, K.LOG)
