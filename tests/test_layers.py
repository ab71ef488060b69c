"""The layering rules of DESIGN.md, checked on the source: deployment code never imports the PyTorch side.

runtime/, bundle/ and engine/ (and the bottom modules they use) must run where only NumPy and ONNX Runtime or
TensorRT are installed (an engine build box needs no torch), so they may not import torch, the model, the exporter,
the reference, the benchmarks, training, bundle assembly or the CLI. Checked statically on every import statement
(including imports inside functions), so a lazy import cannot slip through the way it would in a test that only
imports the package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "diffv2iqa_trt"
DEPLOYMENT = [*sorted((PACKAGE / "runtime").rglob("*.py")), *sorted((PACKAGE / "bundle").rglob("*.py")),
              *sorted((PACKAGE / "calibration").rglob("*.py")), *sorted((PACKAGE / "engine").rglob("*.py")),
              *(PACKAGE / name for name in ("contract.py", "errors.py", "config.py", "schedule.py", "metrics.py",
                                            "cache_dirs.py", "precision_plan.py"))]
FORBIDDEN = ("torch", "diffv2iqa_trt.model", "diffv2iqa_trt.export", "diffv2iqa_trt.benchmarks",
             "diffv2iqa_trt.reference", "diffv2iqa_trt.training", "diffv2iqa_trt.assemble", "diffv2iqa_trt.cli",
             "diffv2iqa_trt.scorers")


def imported_modules(path: Path, module: str | None = None) -> set[str]:
    """Absolute names of every module an import statement in `path` names (relative imports resolved); `module`: the
    dotted name the file has (default: from its place in the package)."""
    package = module or ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rsplit(".", 1)[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def test_resolver_sees_relative_and_lazy_imports(tmp_path: Path) -> None:
    # The checker itself must catch what the rule is about, or the layering test could never fail.
    names = imported_modules(PACKAGE / "runtime" / "from_bundle.py")
    assert "diffv2iqa_trt.runtime.pipeline" in names and "diffv2iqa_trt.bundle.store" in names
    names = imported_modules(PACKAGE / "reference" / "torch_executor.py")
    assert "torch" in names and "diffv2iqa_trt.model.checkpoint" in names
    lazy = tmp_path / "_probe_for_test.py"  # read as if it sat in runtime/ (the package source is never written)
    lazy.write_text("def f():\n    from ..model import diffv2iqa\n    import torch.nn\n")
    assert {"diffv2iqa_trt.model", "torch.nn"} <= imported_modules(lazy, "diffv2iqa_trt.runtime._probe_for_test")


@pytest.mark.parametrize("path", DEPLOYMENT, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_deployment_modules_do_not_import_the_torch_side(path: Path) -> None:
    bad = sorted(n for n in imported_modules(path) if any(n == f or n.startswith(f + ".") for f in FORBIDDEN))
    assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}"


def test_bottom_modules_import_nothing_above_them() -> None:
    # contract and errors are the bottom of the package: everything imports them, they import no other layer.
    for name in ("contract.py", "errors.py"):
        ours = {n for n in imported_modules(PACKAGE / name) if n.startswith("diffv2iqa_trt")}
        assert ours <= {"diffv2iqa_trt.errors", "diffv2iqa_trt.errors.ConfigError"}, (name, ours)
