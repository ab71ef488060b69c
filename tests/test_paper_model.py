"""The paper-size model runs end to end on the CPU (slow: 277 M parameters)."""

import numpy as np
import pytest
import torch

from diffv2iqa_trt.config import paper_config
from diffv2iqa_trt.model.diffv2iqa import build_model
from diffv2iqa_trt.schedule import step_tables


@pytest.mark.slow
def test_paper_graphs_run_and_are_batch_invariant():
    torch.manual_seed(0)
    model = build_model(paper_config(), seed=0)
    t = step_tables(model.config.schedule)
    x = torch.rand(2, 3, 224, 224) * 2 - 1
    y = torch.randn(2, 3, 224, 224)
    z = torch.randn(1, 3, 224, 224)
    i = 30
    gamma = torch.full((2,), float(t.gamma[i]))
    coef = torch.tensor(np.repeat(t.coef[i:i + 1], 2, 0), dtype=torch.float32)
    with torch.no_grad():
        y_next = model.restore_step(x, y, gamma, coef, z)
        y_first = model.restore_step(x[:1], y[:1], gamma[:1], coef[:1], z)
        scores = [model.vcg(x, y_next, y, y), model.vda(x, y_next, y, y)]
        firsts = [model.vcg(x[:1], y_next[:1], y[:1], y[:1]), model.vda(x[:1], y_next[:1], y[:1], y[:1])]
    assert y_next.shape == (2, 3, 224, 224) and torch.isfinite(y_next).all()
    torch.testing.assert_close(y_first, y_next[:1], atol=1e-5, rtol=0)
    for s, first in zip(scores, firsts, strict=True):
        assert s.shape == (2,) and torch.isfinite(s).all()
        torch.testing.assert_close(first, s[:1], atol=1e-5, rtol=0)
