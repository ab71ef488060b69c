"""The I/O contract of the three graphs (see DESIGN.md, "The three graphs"), as data, plus the modules that export them.

Everything downstream (engines, the bundle manifest, the runtime) reads names, dtypes and symbolic shapes from
`graph_spec`, so they are written down once here. Symbolic dimensions are strings: `batch` everywhere, `height` and
`width` for restore_step (multiples of `UNetConfig.size_multiple`); the branch graphs have the crop size S fixed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ..config import ModelConfig
from ..model.diffv2iqa import DiffV2IQA
from ..model.schedule import step_tables

GRAPHS = ("restore_step", "vcg", "vda")
BRANCH_INPUTS = ("x", "y0", "y_t1", "y_t2")

DimValue = int | str


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, ONNX-style dtype name, and shape (ints are fixed, strings are symbolic)."""

    name: str
    dtype: str
    shape: tuple[DimValue, ...]

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    def matches(self, shape: tuple[int, ...], bindings: dict[str, int] | None = None) -> bool:
        """Whether a concrete shape fits this spec; `bindings` collects (and checks) the symbolic values."""
        seen = {} if bindings is None else bindings
        if len(shape) != len(self.shape):
            return False
        for want, got in zip(self.shape, shape, strict=True):
            if isinstance(want, int):
                if want != got:
                    return False
            elif seen.setdefault(want, got) != got:
                return False
        return True


@dataclass(frozen=True)
class GraphSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "inputs": [t.to_dict() for t in self.inputs],
                "outputs": [t.to_dict() for t in self.outputs]}


def check_graph(graph: str) -> str:
    if graph not in GRAPHS:
        raise ValueError(f"unknown graph {graph!r}; choose one of {', '.join(GRAPHS)}")
    return graph


def graph_spec(graph: str, config: ModelConfig) -> GraphSpec:
    """The contract of one graph for a model config (the branch graphs' spatial size is the config's crop size)."""
    f32 = "float32"
    if check_graph(graph) == "restore_step":
        image = ("batch", 3, "height", "width")
        return GraphSpec(
            name=graph,
            inputs=(
                TensorSpec("x", f32, image),
                TensorSpec("y", f32, image),
                TensorSpec("gamma", f32, ("batch",)),
                TensorSpec("coef", f32, ("batch", 5)),
                # One noise image per step, broadcast over the batch: every image of a resolution shares the bank.
                TensorSpec("z", f32, (1, 3, "height", "width")),
            ),
            outputs=(TensorSpec("y_next", f32, image),),
        )
    s = config.crop_size
    crop = ("batch", 3, s, s)
    return GraphSpec(
        name=graph,
        inputs=tuple(TensorSpec(n, f32, crop) for n in BRANCH_INPUTS),
        outputs=(TensorSpec("score", f32, ("batch",)),),
    )


# --- modules that export ------------------------------------------------------------------------------------------
# The model's methods *are* the graphs; these wrappers only give each one a forward() with the contract's argument
# names, because torch.export traces forward() and takes the input names from its signature.

class RestoreStepGraph(nn.Module):
    def __init__(self, model: DiffV2IQA) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, y: Tensor, gamma: Tensor, coef: Tensor, z: Tensor) -> Tensor:
        return self.model.restore_step(x, y, gamma, coef, z)


class VCGGraph(nn.Module):
    def __init__(self, model: DiffV2IQA) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, y0: Tensor, y_t1: Tensor, y_t2: Tensor) -> Tensor:
        return self.model.vcg(x, y0, y_t1, y_t2)


class VDAGraph(nn.Module):
    def __init__(self, model: DiffV2IQA) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, y0: Tensor, y_t1: Tensor, y_t2: Tensor) -> Tensor:
        return self.model.vda(x, y0, y_t1, y_t2)


_WRAPPERS: dict[str, type[nn.Module]] = {"restore_step": RestoreStepGraph, "vcg": VCGGraph, "vda": VDAGraph}


def graph_module(model: DiffV2IQA, graph: str) -> nn.Module:
    """The module whose forward() is `graph`, in eval mode (dropout off, BatchNorm on running statistics)."""
    if model.training:
        raise ValueError("the model is in training mode; call model.eval() before exporting or comparing")
    return _WRAPPERS[check_graph(graph)](model).eval()


def example_inputs(config: ModelConfig, graph: str, *, batch: int = 1, height: int | None = None,
                   width: int | None = None, step: int | None = None, seed: int = 0) -> dict[str, Tensor]:
    """Realistic float32 inputs for `graph`, keyed and ordered as the contract.

    restore_step: x uniform in [-1, 1] (an image), y and z standard normal (a sample and the step's noise), gamma
    and coef from the schedule tables at `step` (default: the middle of the schedule) for every batch row.
    Branch graphs: x uniform in [-1, 1]; the snapshots are x plus decreasing noise (y_t2 noisiest), like restored
    images, before the graph's own clamp and uint8 round trip. `height`/`width` apply to restore_step only and
    default to the crop size.
    """
    spec = graph_spec(graph, config)
    gen = np.random.default_rng(seed)
    s = config.crop_size
    if graph == "restore_step":
        h, w = height or s, width or s
        m = config.unet.size_multiple
        if h % m or w % m:
            raise ValueError(f"restore_step needs height and width that are multiples of {m}, got {h}x{w}")
        tables = step_tables(config.schedule)
        i = tables.steps // 2 if step is None else step
        if not 0 <= i < tables.steps:
            raise ValueError(f"step {i} is outside the {tables.steps}-step schedule")
        arrays = {
            "x": gen.uniform(-1.0, 1.0, (batch, 3, h, w)),
            "y": gen.standard_normal((batch, 3, h, w)),
            "gamma": np.full((batch,), tables.gamma[i]),
            "coef": np.repeat(tables.coef[i][None, :], batch, axis=0),
            "z": gen.standard_normal((1, 3, h, w)),
        }
    else:
        x = gen.uniform(-1.0, 1.0, (batch, 3, s, s))
        arrays = {"x": x}
        for name, sigma in zip(BRANCH_INPUTS[1:], (0.05, 0.1, 0.2), strict=True):
            arrays[name] = x + sigma * gen.standard_normal(x.shape)
    return {t.name: torch.from_numpy(np.ascontiguousarray(arrays[t.name], dtype=np.float32)) for t in spec.inputs}
