"""The layering rules of DESIGN.md, checked on the source: deployment code never imports the PyTorch side.

runtime/, bundle/ and engine/ (and the bottom modules they use) must run where only NumPy and ONNX Runtime or
TensorRT are installed (an engine build box needs no torch), so they may not import torch, the model, the exporter,
the reference, the benchmarks, training, bundle assembly or the CLI. Checked statically on every import statement
(including imports inside functions), so a lazy import cannot slip through the way it would in a test that only
imports the package. Imports named by strings (`importlib.import_module("diffv2iqa_trt.x")`, `__import__`, a
"module:function" reference) are edges too: the checker reads them, and no module of the package may name one of
the package's own modules that way (issue 23 item 3: the backend registry used to, so the test could not see that the
runtime reached the reference side).
"""

from __future__ import annotations

import ast
import re
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
# "pkg.module" or "pkg.module:function" in a string: how an import by name is spelled.
_MODULE_TEXT = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*(:[A-Za-z_]\w*)?")
# String-named edges into the package that exist on purpose, each with why; an entry is removed with its cause.
TRANSITIONAL_EDGES: dict[tuple[str, str], str] = {}


def string_imports(tree: ast.AST) -> set[str]:
    """Modules named by strings: the argument of importlib.import_module / __import__ (a constant), and any string
    constant of the form "diffv2iqa_trt.module:function" (a lazy reference resolved later, like the registry's old
    entries). A bare module name in a string is not counted: `python -m diffv2iqa_trt.cli` command lines and
    importlib.resources package names are not imports."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) and isinstance(
                node.args[0].value, str):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if called in ("import_module", "__import__"):
                names.add(node.args[0].value.partition(":")[0])
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith(
                "diffv2iqa_trt.") and ":" in node.value and _MODULE_TEXT.fullmatch(node.value):
            names.add(node.value.partition(":")[0])
    return names


def imported_modules(path: Path, module: str | None = None) -> set[str]:
    """Absolute names of every module an import statement in `path` names (relative imports resolved), and every
    module it names by a string (string_imports); `module`: the dotted name the file has (default: from its place in
    the package)."""
    package = module or ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = string_imports(tree)
    for node in ast.walk(tree):
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


def test_resolver_sees_imports_named_by_strings(tmp_path: Path) -> None:
    probe = tmp_path / "_probe_for_test.py"
    probe.write_text('import importlib\nREGISTRY = {"torch": "diffv2iqa_trt.reference.torch_executor:make"}\n'
                     'def f():\n    importlib.import_module("diffv2iqa_trt.model.unet")\n    __import__("torch")\n'
                     '    return "diffv2iqa_trt.benchmarks.bench is a phrase, not a module"\n')
    names = imported_modules(probe, "diffv2iqa_trt.runtime._probe_for_test")
    assert {"diffv2iqa_trt.reference.torch_executor", "diffv2iqa_trt.model.unet", "torch"} <= names
    assert not any(n.startswith("diffv2iqa_trt.benchmarks") for n in names)  # prose is not an import


def _forbidden(path: Path) -> list[str]:
    rel = str(path.relative_to(PACKAGE))
    return sorted(n for n in imported_modules(path) if any(n == f or n.startswith(f + ".") for f in FORBIDDEN)
                  and (rel, n) not in TRANSITIONAL_EDGES)


@pytest.mark.parametrize("path", DEPLOYMENT, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_deployment_modules_do_not_import_the_torch_side(path: Path) -> None:
    bad = _forbidden(path)
    assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}"


def test_the_old_string_registry_would_fail_the_layering_test(tmp_path: Path) -> None:
    # What runtime/backends/__init__.py held before issue 23 item 3: the rule must catch it.
    old = tmp_path / "__init__.py"
    old.write_text('_REGISTRY = {"torch": "diffv2iqa_trt.reference.torch_executor:executor_from_bundle"}\n')
    names = imported_modules(old, "diffv2iqa_trt.runtime.backends")
    assert "diffv2iqa_trt.reference.torch_executor" in names


def test_no_module_names_a_module_of_the_package_by_a_string() -> None:
    """Every edge inside the package is an import statement (the layering checks above read those), except the
    listed transitional ones."""
    found = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = str(path.relative_to(PACKAGE))
        for name in string_imports(ast.parse(path.read_text(), filename=str(path))):
            if name.startswith("diffv2iqa_trt.") and (rel, name) not in TRANSITIONAL_EDGES:
                found.add((rel, name))
    assert not found, sorted(found)
    for rel, name in TRANSITIONAL_EDGES:  # a listed edge that is gone must leave the list too
        assert name in string_imports(ast.parse((PACKAGE / rel).read_text())), (rel, name)


def test_backends_are_registered_as_functions_by_their_own_side() -> None:
    from diffv2iqa_trt.reference import backends as reference
    from diffv2iqa_trt.runtime import backends

    assert set(backends.backend_names()) == {"onnxruntime", "openvino", "torch", "torch-cuda", "tensorrt"}
    assert backends.create_executor.__module__ == "diffv2iqa_trt.runtime.backends"
    assert backends.STREAM_BACKENDS["torch-cuda"] is reference.torch_cuda_pipeline
    for name in ("onnxruntime", "openvino", "tensorrt"):
        factory = backends._REGISTRY.get(name) or backends.STREAM_BACKENDS[name]
        assert factory.__module__ == "diffv2iqa_trt.runtime.backends", name
    with pytest.raises(TypeError, match="register a function, not str"):
        backends.register_backend("torch", "diffv2iqa_trt.reference.torch_executor:executor_from_bundle")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="register a function"):
        backends.register_stream_backend("x", "diffv2iqa_trt.reference.torch_cuda:stream_pipeline_from_bundle")  # type: ignore[arg-type]
    assert "x" not in backends.backend_names()


def test_bottom_modules_import_nothing_above_them() -> None:
    # contract and errors are the bottom of the package: everything imports them, they import no other layer.
    for name in ("contract.py", "errors.py"):
        ours = {n for n in imported_modules(PACKAGE / name) if n.startswith("diffv2iqa_trt")}
        assert ours <= {"diffv2iqa_trt.errors", "diffv2iqa_trt.errors.ConfigError"}, (name, ours)
