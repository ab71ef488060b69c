import math

import numpy as np
import pytest

from diffv2iqa_trt.config import ScheduleConfig
from diffv2iqa_trt.schedule import betas, check_capture_steps, step_tables


def closed_form_alphabar(t: int, n: int, s: float = 8e-3) -> float:
    f = lambda u: math.cos((u / n + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    return f(t) / f(0)


def test_cosine_alphabar_matches_closed_form():
    n = 50
    tables = step_tables(ScheduleConfig(steps=n))
    # Below the 0.999 clip the cumulative product telescopes to f(t+1)/f(0).
    b = betas("cosine", n)
    for i in range(n):
        if b[: i + 1].max() < 0.999:
            assert tables.alphas_cumprod[i] == pytest.approx(closed_form_alphabar(i + 1, n), rel=1e-12)
    assert b.max() <= 0.999
    assert b[-1] == pytest.approx(0.999)  # the last beta is clipped


def test_snapshot_noise_levels_match_model_spec():
    # MODEL_SPEC: at T = 50, y_t1 (after step 5) has sqrt(alphabar) 0.9859, y_t2 (after step 10) 0.9480.
    t = step_tables(ScheduleConfig())
    level_after = lambda i: math.sqrt(t.alphas_cumprod[i - 1])  # noqa: E731
    assert level_after(5) == pytest.approx(0.9859, abs=5e-5)
    assert level_after(10) == pytest.approx(0.9480, abs=5e-5)


def test_coefficients_against_scalar_formulas():
    n = 20
    t = step_tables(ScheduleConfig(steps=n))
    b = betas("cosine", n)
    abar = 1.0
    for i in range(n):
        abar_prev, abar = abar, abar * (1 - b[i])
        var = b[i] * (1 - abar_prev) / (1 - abar)
        expected = [1 / math.sqrt(abar), math.sqrt(1 / abar - 1), b[i] * math.sqrt(abar_prev) / (1 - abar),
                    (1 - abar_prev) * math.sqrt(1 - b[i]) / (1 - abar), 0.0 if i == 0 else math.sqrt(var)]
        np.testing.assert_allclose(t.coef[i], expected, rtol=1e-12, atol=1e-15)
        assert t.gamma[i] == pytest.approx(math.sqrt(abar), rel=1e-12)
        # A noise-free x_t = sqrt(abar_t) x0 has posterior mean sqrt(abar_{t-1}) x0.
        assert t.coef[i, 2] + t.coef[i, 3] * math.sqrt(abar) == pytest.approx(math.sqrt(abar_prev), rel=1e-12)


def test_linear_schedule_and_errors():
    np.testing.assert_allclose(betas("linear", 5, linear_start=0.1, linear_end=0.5), [0.1, 0.2, 0.3, 0.4, 0.5])
    with pytest.raises(ValueError, match="unknown schedule"):
        betas("quadratic", 5)
    with pytest.raises(ValueError, match="outside the 8-step schedule"):
        check_capture_steps(ScheduleConfig(), 8)
