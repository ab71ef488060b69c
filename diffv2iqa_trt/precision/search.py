"""The `best` plan: per graph, the lowest precision (then the fewest node groups kept in FP32) whose end-to-end
score deltas stay inside the budget, then the combination checked as a whole.

Pure logic over measurements, so it is tested without models: each graph's candidates are listed lowest precision
first, each measured alone (the other graphs in FP32); `measure_plan` scores a combination. When a combination
breaks the budget although each part kept it alone, the graph whose chosen candidate moved the scores most is raised
to its next candidate that kept the budget, until the combination passes (all-FP32 always does: it is the reference).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .evaluate import Budget

FP32_CANDIDATE = "fp32"


@dataclass
class Candidate:
    """One way to run one graph: `key` names a variant (or "fp32"); `alone` are the score deltas of the plan that
    runs only this graph reduced."""

    key: str
    precision: str
    alone: Mapping[str, Any] | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def passes(self) -> bool:
        return self.alone is not None and not self.failures


@dataclass
class SearchResult:
    chosen: dict[str, Candidate]
    plan_deltas: Mapping[str, Any]
    rounds: list[dict[str, Any]]


def choose(candidates: Mapping[str, Sequence[Candidate]], budget: Budget,
           measure_plan: Callable[[Mapping[str, Candidate]], Mapping[str, Any]], *,
           others_reduced: bool = False) -> SearchResult:
    """Pick one candidate per graph (see the module docstring). `candidates[g]` must end with the fp32 candidate.
    `others_reduced`: graphs outside the search run a fixed reduced precision, so even the all-FP32 choice is
    measured (and may stay over budget: then the result's last round lists the failures)."""
    for graph, cands in candidates.items():
        if not cands or cands[-1].key != FP32_CANDIDATE:
            raise ValueError(f"{graph}: the candidate list must end with fp32")
        cands[-1].failures = []
    chosen = {g: next(c for c in cands if c.passes or c.key == FP32_CANDIDATE) for g, cands in candidates.items()}
    rounds = []
    while True:
        if all(c.key == FP32_CANDIDATE for c in chosen.values()) and not others_reduced:
            deltas: Mapping[str, Any] = {"srcc": 1.0, "max_abs": 0.0, "max_abs_fraction": 0.0, "mean_abs": 0.0,
                                         "reference": True}
        else:
            deltas = measure_plan(chosen)
        failures = budget.failures(deltas)
        rounds.append({"plan": {g: c.key for g, c in chosen.items()}, "deltas": dict(deltas), "failures": failures})
        if not failures:
            return SearchResult(chosen, deltas, rounds)
        raised = [g for g, c in chosen.items() if c.key != FP32_CANDIDATE]
        if not raised:
            return SearchResult(chosen, deltas, rounds)  # the fixed graphs alone break the budget
        worst = max(raised, key=lambda g: float((chosen[g].alone or {}).get("max_abs_fraction", 0.0)))
        cands = list(candidates[worst])
        nxt = cands[cands.index(chosen[worst]) + 1:]
        chosen[worst] = next(c for c in nxt if c.passes or c.key == FP32_CANDIDATE)
