import numpy as np
import pytest
from scipy import stats as sp

from diffv2iqa_trt.metrics import abs_error_summary, krcc, plcc, rank_flips, ranks, srcc


def test_against_scipy_with_ties():
    rng = np.random.default_rng(0)
    a = np.round(rng.normal(size=60), 1)  # rounding makes ties
    b = a + rng.normal(scale=0.5, size=60)
    assert plcc(a, b) == pytest.approx(sp.pearsonr(a, b)[0], abs=1e-12)
    assert srcc(a, b) == pytest.approx(sp.spearmanr(a, b)[0], abs=1e-12)
    assert krcc(a, b) == pytest.approx(sp.kendalltau(a, b)[0], abs=1e-12)
    np.testing.assert_allclose(ranks(a), sp.rankdata(a))


def test_rank_flips_and_errors():
    ref = np.array([0.1, 0.2, 0.3, 0.4])
    assert rank_flips(ref, ref + 1) == 0
    assert rank_flips(ref, np.array([0.1, 0.3, 0.2, 0.4])) == 1
    assert rank_flips(ref, ref[::-1]) == 6
    e = abs_error_summary(ref, ref + np.array([0, 0, 0, 0.5]))
    assert e["max"] == pytest.approx(0.5) and e["mean"] == pytest.approx(0.125)
