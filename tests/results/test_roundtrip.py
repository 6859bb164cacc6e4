"""Results written and read back without the data (``to_dict`` / ``from_dict``): the same
estimates, tables and printed summary."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

import daskmm
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
