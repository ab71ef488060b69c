"""Precision plans: which ONNX variant of each graph to build or run (`--precision`).

    fp32 | fp16 | int8 | int8-cpu | best          one precision for every graph (best: searched per graph)
    bf16                                         a run-time hint: the fp32 graphs, run in BF16 by OpenVINO
    restore_step=fp16,vcg=fp16,vda=int8          per graph; graphs not named stay fp32

Torch- and ONNX-free: the runtime, the CLI and the builder all parse plans with this module.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from .contract import GRAPH_NAMES, PRECISIONS, check_graph
from .errors import BundleError, ConfigError

BEST = "best"
INT8 = "int8"
INT8_CPU = "int8-cpu"
BF16 = "bf16"
# Run-time precisions: no ONNX variant of their own; the backend runs the variant named here with its own
# inference-precision hint. Only backends that pass them to `runnable_plan` accept them (openvino: bf16).
HINTS = {BF16: "fp32"}
CHOICES = (*PRECISIONS, BEST)


@dataclass(frozen=True)
class PrecisionPlan:
    """One choice per graph: a precision of contract.PRECISIONS, a run-time hint of HINTS (only in a run request),
    or `best` (only in a build request)."""

    choices: Mapping[str, str]

    def __post_init__(self) -> None:
        if set(self.choices) != set(GRAPH_NAMES):
            raise ConfigError(f"a precision plan names every graph ({', '.join(GRAPH_NAMES)}), got "
                              f"{', '.join(self.choices)}")

    def __getitem__(self, graph: str) -> str:
        return self.choices[graph]

    @property
    def searched(self) -> tuple[str, ...]:
        """Graphs whose precision the `best` search picks."""
        return tuple(g for g in GRAPH_NAMES if self.choices[g] == BEST)

    @property
    def uniform(self) -> str | None:
        values = {self.choices[g] for g in GRAPH_NAMES}
        return values.pop() if len(values) == 1 else None

    def label(self) -> str:
        """The shortest text that parses back to this plan."""
        return self.uniform or ",".join(f"{g}={self.choices[g]}" for g in GRAPH_NAMES)

    def to_dict(self) -> dict[str, str]:
        return {g: self.choices[g] for g in GRAPH_NAMES}

    def with_choice(self, graph: str, precision: str) -> PrecisionPlan:
        return PrecisionPlan({**self.choices, check_graph(graph): precision})

    @classmethod
    def uniform_plan(cls, precision: str) -> PrecisionPlan:
        return cls({g: precision for g in GRAPH_NAMES})


def _check_choice(value: str, allow_best: bool, where: str) -> str:
    if allow_best and value in HINTS:
        raise ConfigError(f"{value}{where} is not built: it runs the bundle's {HINTS[value]} graphs with OpenVINO's "
                          f"{value} inference hint (`score --backend openvino --precision {value}`); build fp32")
    allowed = CHOICES if allow_best else (*PRECISIONS, *HINTS)
    if value not in allowed:
        raise ConfigError(f"unknown precision {value!r}{where} in --precision; choose one of {', '.join(allowed)}")
    return value


def parse_plan(text: str, *, allow_best: bool = False) -> PrecisionPlan:
    """Parse `--precision`: a shorthand for every graph, or comma-separated graph=precision pairs (others fp32)."""
    text = text.strip()
    if not text:
        raise ConfigError("--precision is empty; give fp32, fp16, int8, int8-cpu, bf16, best or graph=precision "
                          "pairs")
    if "=" not in text:
        return PrecisionPlan.uniform_plan(_check_choice(text, allow_best, ""))
    choices = dict.fromkeys(GRAPH_NAMES, "fp32")
    seen: set[str] = set()
    for part in text.split(","):
        graph, sep, value = (s.strip() for s in part.partition("="))
        if not sep or not graph or not value:
            raise ConfigError(f"cannot read {part.strip()!r} in --precision; write graph=precision, e.g. "
                              "restore_step=fp16,vcg=fp16,vda=int8")
        if graph not in GRAPH_NAMES:
            raise ConfigError(f"unknown graph {graph!r} in --precision; the graphs are {', '.join(GRAPH_NAMES)}")
        if graph in seen:
            raise ConfigError(f"graph {graph!r} is named twice in --precision")
        seen.add(graph)
        choices[graph] = _check_choice(value, allow_best, f" for {graph}")
    return PrecisionPlan(choices)


def lowest_precision(plan: PrecisionPlan) -> str:
    """The lowest precision a plan runs (its parity gates are that precision's)."""
    order = (INT8_CPU, INT8, BF16, "fp16", "fp32")  # bf16 keeps 8 mantissa bits, fp16 10
    return min((plan[g] for g in GRAPH_NAMES), key=lambda p: order.index(p) if p in order else len(order))


def runnable_plan(plan: PrecisionPlan, available: Mapping[str, tuple[str, ...]], *, cpu: bool,
                  source: str = "the bundle", hints: Collection[str] = ()) -> PrecisionPlan:
    """The variants to load for `plan` given each graph's available precisions. With `cpu`, a graph planned in int8
    runs its int8-cpu variant when there is one (same calibration, laid out for ONNX Runtime's CPU kernels); pass
    cpu=False to run exactly the plan. `hints`: the run-time precisions (HINTS) the backend applies itself; such a
    graph stays planned in the hint (load `variant_of(plan[graph])`), and a hint the backend does not take is a
    ConfigError. A missing variant is a BundleError naming what the bundle has and how to add it."""
    chosen = {}
    for graph in GRAPH_NAMES:
        want = plan[graph]
        if want == BEST:
            raise ConfigError("`best` is a build request (it searches for a plan); to run a bundle's chosen plan, "
                              "leave --precision out")
        if want in HINTS and want not in hints:
            raise ConfigError(f"--precision {want} (for {graph}) runs the {HINTS[want]} graphs with OpenVINO's {want} "
                              f"inference hint: use --backend openvino, on a CPU with {want.upper()} instructions "
                              f"(AVX-512 BF16 or AMX); the other backends run {', '.join(PRECISIONS)}")
        have = available[graph]
        if cpu and want == INT8 and INT8_CPU in have:
            want = INT8_CPU
        need = variant_of(want)
        if need not in have:
            raise BundleError(f"{source}: graph {graph} has no {need} variant (it has {', '.join(have)}); add it "
                              f"with `diffv2iqa-trt build --precision {graph}={need} ...` or pick another "
                              "--precision")
        chosen[graph] = want
    return PrecisionPlan(chosen)


def variant_of(precision: str) -> str:
    """The ONNX variant a planned precision runs: itself, or for a run-time hint the variant the hint applies to."""
    return HINTS.get(precision, precision)
