"""Each fact once: the graph contract (graph and tensor names, shapes) lives in contract.py, and the modules that
used to restate it derive it from there (issue 23, item 3).

An AST scan refuses a string literal equal to a graph or tensor name in those modules, apart from the exemptions
listed below with their reasons; and the shapes the contract derives equal what a real (tiny) bundle's manifest holds.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import diffv2iqa_trt
from diffv2iqa_trt.assemble import BuildOptions, profiles
from diffv2iqa_trt.contract import (
    BRANCH_GRAPHS,
    BROADCAST_INPUTS,
    GRAPH_INPUTS,
    GRAPH_NAMES,
    GRAPH_OUTPUTS,
    RESTORE_STEP,
    Z,
    graph_spec,
    input_shapes,
)

PACKAGE = Path(diffv2iqa_trt.__file__).parent
# The modules that restated the contract (issue 23, item 3).
SITES = ("assemble.py", "calibration/dataset.py", "calibration/record.py", "bundle/schema.py",
         "precision/evaluate.py", "benchmarks/precision_cpu.py")
CONTRACT_NAMES = frozenset(GRAPH_NAMES) | {n for names in (*GRAPH_INPUTS.values(), *GRAPH_OUTPUTS.values())
                                           for n in names}
# (module, enclosing function, literal): why that literal is not the contract's name.
EXEMPT = {
    ("bundle/schema.py", "_semantic_problems", "gamma"): "$.pipeline.gamma, a manifest field (manifest.schema.json)",
    ("bundle/schema.py", "_semantic_problems", "coef"): "$.pipeline.coef, a manifest field (manifest.schema.json)",
    ("bundle/schema.py", "_pipeline_problems", "gamma"): "$.pipeline.gamma, a manifest field (manifest.schema.json)",
    ("bundle/schema.py", "_pipeline_problems", "coef"): "$.pipeline.coef, a manifest field (manifest.schema.json)",
    ("benchmarks/precision_cpu.py", "time_end_to_end", "score"): "the fused score of a report row, not the tensor",
    ("benchmarks/precision_cpu.py", "markdown", "score"): "the fused score of a report row, not the tensor",
}


def contract_literals(source: str) -> list[tuple[str, str, int]]:
    """(enclosing function, literal, line) of every string constant in `source` equal to a contract name."""
    found: list[tuple[str, str, int]] = []

    def visit(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else where
            if isinstance(child, ast.Constant) and isinstance(child.value, str) and child.value in CONTRACT_NAMES:
                found.append((where, child.value, child.lineno))
            visit(child, inner)

    visit(ast.parse(source), "<module>")
    return found


def test_the_scan_finds_a_restated_name() -> None:
    src = 'def f(feed):\n    return feed["coef"], f"{RESTORE_STEP}", "restore_steps"\n'
    assert contract_literals(src) == [("f", "coef", 2)]


@pytest.mark.parametrize("module", SITES)
def test_sites_take_graph_and_tensor_names_from_the_contract(module: str) -> None:
    hits = contract_literals((PACKAGE / module).read_text(encoding="utf-8"))
    restated = [f"{module}:{line} {name!r} in {where}" for where, name, line in hits
                if (module, where, name) not in EXEMPT]
    assert restated == [], "use the contract's constants (diffv2iqa_trt/contract.py) instead"


def test_every_exemption_is_still_needed() -> None:
    used = {(m, where, name) for m in SITES
            for where, name, _ in contract_literals((PACKAGE / m).read_text(encoding="utf-8"))}
    assert set(EXEMPT) <= used, sorted(set(EXEMPT) - used)


def test_input_shapes_bind_the_symbolic_dims() -> None:
    assert input_shapes(RESTORE_STEP, 64, 3, 128, 96) == {
        "x": (3, 3, 128, 96), "y": (3, 3, 128, 96), "gamma": (3,), "coef": (3, 5), "z": (1, 3, 128, 96)}
    for graph in BRANCH_GRAPHS:  # crops of the crop size, whatever height/width are asked for
        assert input_shapes(graph, 64, 2, 512, 512) == dict.fromkeys(("x", "y0", "y_t1", "y_t2"), (2, 3, 64, 64))
    assert BROADCAST_INPUTS == (Z,) and input_shapes(RESTORE_STEP, 64, 7)[Z][0] == 1
    for graph in GRAPH_NAMES:
        spec = graph_spec(graph, 64)
        shapes = input_shapes(graph, 64, 5, 80, 48)
        assert tuple(shapes) == GRAPH_INPUTS[graph] == spec.input_names
        assert all(t.matches(shapes[t.name]) for t in spec.inputs)


def test_derived_shapes_equal_the_tiny_bundles_manifest(auto_built: tuple[Any, str]) -> None:
    from diffv2iqa_trt.benchmarks.precision_cpu import graph_inputs

    bundle, _ = auto_built
    crop = bundle.manifest.pipeline.crop_size
    o = BuildOptions()
    for graph in GRAPH_NAMES:
        entry = bundle.graph(graph)
        assert entry.input_names == GRAPH_INPUTS[graph] and entry.output_names == GRAPH_OUTPUTS[graph]
        assert entry.inputs == graph_spec(graph, crop).inputs
        assert entry.profiles.to_dict() == profiles(graph, crop, o).to_dict()
        assert dict(entry.profiles.max) == input_shapes(graph, crop, o.max_batch, o.max_size, o.max_size)
        assert dict(entry.profiles.min) == input_shapes(graph, crop, 1)
        feed = graph_inputs(bundle, graph, 3)  # the CPU precision benchmark's feed
        assert {k: v.shape for k, v in feed.items()} == input_shapes(graph, crop, 3)
        assert list(feed) == list(GRAPH_INPUTS[graph])
        assert all(v.dtype == np.float32 for v in feed.values())
