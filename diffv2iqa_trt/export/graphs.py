"""The modules that export the three graphs of the contract (`contract.py`), and realistic example inputs for them.

The contract itself (names, dtypes, symbolic shapes) lives in the torch-free `contract` module; this module binds it
to a model config and to the PyTorch model.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from ..config import ModelConfig
from ..contract import BRANCH_INPUTS, GRAPH_NAMES, RESTORE_STEP, GraphSpec, check_graph
from ..contract import graph_spec as contract_graph_spec
from ..errors import ConfigError
from ..model.diffv2iqa import DiffV2IQA
from ..schedule import step_tables


def graph_spec(graph: str, config: ModelConfig) -> GraphSpec:
    """The contract of one graph for a model config (the branch graphs take crops of the config's crop size)."""
    return contract_graph_spec(graph, config.crop_size)


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


_WRAPPERS: dict[str, type[nn.Module]] = dict(zip(GRAPH_NAMES, (RestoreStepGraph, VCGGraph, VDAGraph), strict=True))


def graph_module(model: DiffV2IQA, graph: str) -> nn.Module:
    """The module whose forward() is `graph`, in eval mode (dropout off, BatchNorm on running statistics)."""
    if model.training:
        raise ConfigError("the model is in training mode; call model.eval() before exporting or comparing")
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
    if graph == RESTORE_STEP:
        h, w = height or s, width or s
        m = config.unet.size_multiple
        if h % m or w % m:
            raise ConfigError(f"restore_step needs height and width that are multiples of {m}, got {h}x{w}")
        tables = step_tables(config.schedule)
        i = tables.steps // 2 if step is None else step
        if not 0 <= i < tables.steps:
            raise ConfigError(f"step {i} is outside the {tables.steps}-step schedule")
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
