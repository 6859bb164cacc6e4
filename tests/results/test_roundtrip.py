"""Results written and read back without the data (``to_dict`` / ``from_dict``): the same
estimates, tables and printed summary."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import daskmm
from daskmm.errors import DataError
from daskmm.models.glmm.result import GlmmResult
from daskmm.models.lmm.result import LmmResult
from daskmm.models.registry import MixedResult
from tests.conftest import load_fixture


def _check(res, cls):
    doc = json.loads(json.dumps(res.to_dict(ranef=True)))
    back = MixedResult.from_dict(doc)
    assert type(back) is cls and back.spec is None
    assert back.summary() == res.summary()
    pd.testing.assert_frame_equal(back.fixef(), res.fixef())
    pd.testing.assert_frame_equal(back.varcorr(), res.varcorr())
    pd.testing.assert_frame_equal(back.ranef_frame(), res.ranef_frame(), check_dtype=False)
    np.testing.assert_array_equal(back.theta, res.theta)
    assert back.optinfo == res.optinfo or back.optinfo.to_dict() == json.loads(
        json.dumps(res.optinfo.to_dict()))
    assert back.to_dict() == json.loads(json.dumps(res.to_dict()))


def test_lmm_round_trip():
    fx = load_fixture("sleepstudy_reml")
    _check(daskmm.lmm(fx["formula"], pd.read_csv(fx["data_path"])), LmmResult)


def test_glmm_round_trip():
    fx = load_fixture("cbpp_laplace")
    res = daskmm.glmm(fx["formula"], fx["data_path"], fx["family"], factors=fx["factors"])
    _check(res, GlmmResult)


def test_results_are_siblings():
    assert not issubclass(GlmmResult, LmmResult) and not issubclass(LmmResult, GlmmResult)
    assert issubclass(GlmmResult, MixedResult) and issubclass(LmmResult, MixedResult)


def test_a_document_is_read_in_a_process_that_imported_no_model_result(tmp_path):
    # the registry names the result modules and imports one when a document of its kind is
    # first read: a command that stops at its first check imports none of them
    import subprocess
    import sys

    fx = load_fixture("cbpp_laplace")
    res = daskmm.glmm(fx["formula"], fx["data_path"], fx["family"], factors=fx["factors"])
    path = tmp_path / "fit.json"
    path.write_text(json.dumps(res.to_dict(ranef=True)))
    code = (
        "import json, sys\n"
        "from daskmm.models.registry import MixedResult\n"
        "assert 'daskmm.models.glmm.result' not in sys.modules\n"
        "assert 'daskmm.models.lmm.result' not in sys.modules\n"
        f"back = MixedResult.from_dict(json.load(open({str(path)!r})))\n"
        "print(type(back).__name__, 'daskmm.models.lmm.result' in sys.modules)\n"
        "from daskmm.models.registry import LmmResult\n"
        "print(LmmResult.kind)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["GlmmResult", "False", "lmm"]
    bad = dict(json.loads(path.read_text()), model={"kind": "tree"})
    with pytest.raises(DataError, match="model.kind is 'tree'; a daskmm result document has "
                                        "one of: glmm, lmm "):
        MixedResult.from_dict(bad)
