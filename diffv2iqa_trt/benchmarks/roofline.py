"""Roofline context: the machine's measured peak on a backend (a large FP32 GEMM) and MACs per pipeline stage."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import ConfigError


def best_seconds(run: Callable[[], object], repeats: int) -> float:
    """The fastest of `repeats` timed calls of `run`, after one untimed call (allocation, compilation)."""
    run()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    return best


def gemm_peak_macs_per_s(backend: str, n: int = 2048, repeats: int = 5, threads: int | None = None) -> float:
    """Best-of-`repeats` multiply-accumulates per second of an n x n x n FP32 matrix product on `backend`."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    if backend == "torch":
        import torch

        ta, tb = torch.from_numpy(a), torch.from_numpy(a.T.copy())
        run: Callable[[], object] = lambda: torch.matmul(ta, tb)  # noqa: E731
    elif backend == "onnxruntime":
        import onnxruntime as ort
        from onnx import TensorProto, helper

        graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm",
                                  [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n]),
                                   helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, n])],
                                  [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        session = ort.InferenceSession(model.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        feeds = {"a": a, "b": a.T.copy()}
        run = lambda: session.run(None, feeds)  # noqa: E731
    else:
        raise ConfigError(f"no GEMM peak for backend {backend!r}")
    return n ** 3 / best_seconds(run, repeats)


def stage_macs(model_config: dict[str, Any], steps: int, restore_hw: tuple[int, int] | None = None
               ) -> dict[str, int] | None:
    """MACs per image and stage (one crop restored at crop size unless restore_hw), or None without torch."""
    try:
        from ..config import ModelConfig
        from ..model.summary import summarize
    except ImportError:  # deployment installs without torch: no roofline
        return None
    config = ModelConfig.from_dict(model_config)
    s = summarize(config, restore_hw=restore_hw, steps=steps)
    m = s.macs
    return {"restoration steps": m[f"restorer, {steps} steps"],
            "VCG": m["VCG: ViT, 4 images"] + m["VCG: head"],
            "VDA": m["VDA: ResNet, 4 images"] + m["VDA: head"]}
