"""Named groups of nodes that a reduced-precision variant may keep in FP32 (the `exclusions` of a variant).

Export names every node after the module it comes from (export/onnx_export.py), so a group is a set of name
prefixes plus op types, stable across model sizes. Groups, per graph:
- `pipeline`: arithmetic of the sampler or the round trip, not network layers: the posterior-mean update of
  restore_step (y_next from x0, y_t and z with the per-step coefficients) and its top-level gamma handling; the uint8
  round trip of the branch graphs (rounding to 256 levels needs every bit of the scaled value).
- `embedding` (restore_step): the noise-level embedding (sin/cos), its MLP, and every block's projection of it
  (`noise_func`): their inputs change with the step, not with the image.
- `norm` (restore_step): GroupNorm statistics (exported as InstanceNormalization).
- `heads` (vcg/vda): the score and weight heads.
- `softmax` (vcg/vda): the TAB softmax over the wide channel axis and the attention softmaxes.
ONNX-only; no ModelOpt or ONNX Runtime here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import onnx

from ..contract import RESTORE_STEP, VCG, VDA, check_graph
from ..errors import ConfigError


@dataclass(frozen=True)
class NodeGroup:
    name: str
    prefixes: tuple[str, ...] = ()  # node-name prefixes (module paths)
    contains: tuple[str, ...] = ()  # module-path parts anywhere in the name (e.g. every block's noise projection)
    op_types: tuple[str, ...] = ()
    top_level: bool = False  # nodes exported outside any module (names starting with "/")

    def matches(self, node: onnx.NodeProto) -> bool:
        return (node.name.startswith(self.prefixes) or any(c in node.name for c in self.contains)
                or node.op_type in self.op_types
                or (self.top_level and node.name.startswith("/")))


_BRANCH_GROUPS = {
    "pipeline": NodeGroup("pipeline", prefixes=("snapshot_roundtrip",)),
    "heads": NodeGroup("heads", prefixes=("iqa.fc_score", "iqa.fc_weight")),
    "softmax": NodeGroup("softmax", op_types=("Softmax",)),
}
GROUPS: dict[str, dict[str, NodeGroup]] = {
    RESTORE_STEP: {
        "pipeline": NodeGroup("pipeline", prefixes=("restore_update",), top_level=True),
        "embedding": NodeGroup("embedding", prefixes=("unet.noise_level_mlp",), contains=(".noise_func.",),
                               op_types=("Sin", "Cos")),
        "norm": NodeGroup("norm", op_types=("InstanceNormalization", "GroupNormalization")),
    },
    VCG: _BRANCH_GROUPS,
    VDA: _BRANCH_GROUPS,
}
# Exclusion levels tried, fewest groups first: none, the sampler arithmetic, (restore_step) the step conditioning,
# then every group. Measured on the demo model (INT8 restore_step, ModelOpt, benchmarks/results/precision/demo_best.md):
# with the sampler arithmetic quantised, the last step's output moved by 54 % of its range (scores: 26.7 % of their
# range); kept in float, 10 % (2.6 %); with the step conditioning in float as well, 1.9 % of the score range.
LEVELS: dict[str, tuple[tuple[str, ...], ...]] = {
    RESTORE_STEP: ((), ("pipeline",), ("pipeline", "embedding"), tuple(GROUPS[RESTORE_STEP])),
    VCG: ((), ("pipeline",), tuple(GROUPS[VCG])),
    VDA: ((), ("pipeline",), tuple(GROUPS[VDA])),
}


def check_groups(graph: str, names: Sequence[str]) -> tuple[str, ...]:
    known = GROUPS[check_graph(graph)]
    for name in names:
        if name not in known:
            raise ConfigError(f"unknown node group {name!r} for {graph}; groups: {', '.join(known)}")
    return tuple(names)


def excluded_nodes(model: onnx.ModelProto, graph: str, groups: Sequence[str]) -> list[str]:
    """Names of the nodes of `model` in any of `groups` (in graph order)."""
    chosen = [GROUPS[graph][g] for g in check_groups(graph, groups)]
    return [n.name for n in model.graph.node if any(grp.matches(n) for grp in chosen)]


def as_patterns(names: Sequence[str]) -> list[str]:
    """Exact-name regular expressions (ModelOpt matches node names by regex)."""
    return [f"^{re.escape(n)}$" for n in names]
