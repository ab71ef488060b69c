"""The PyTorch reference scorer: a model (checkpoint, preset or embedded default) wired into the runtime pipeline."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..config import ScoringConfig, preset
from ..errors import CheckpointError
from ..model.checkpoint import CheckpointInfo, load_checkpoint, read_checkpoint_config
from ..model.diffv2iqa import DiffV2IQA, build_model
from ..runtime.pipeline import Pipeline, PipelineSpec
from .torch_executor import TorchExecutor

DEFAULT_PRESET = "tiny"
DEFAULT_SEED = 0
# The embedded default: the tiny demo checkpoint (see weights/MODEL_CARD.md for what its scores are worth).
DEMO_WEIGHTS = Path(__file__).parent.parent / "weights" / "tiny-demo.safetensors"


@dataclass(frozen=True)
class LoadedModel:
    model: DiffV2IQA
    info: CheckpointInfo
    init_seed: int | None = None  # set when the weights are a seeded initialisation, not a checkpoint
    path: Path | None = None  # the checkpoint file the weights came from (the embedded default included)

    @property
    def label(self) -> str:
        name = self.model.config.name
        if not self.info.trained:
            return f"{name} (UNTRAINED: {self.info.description})"
        return f"{name} ({self.info.description})" if self.info.description else name


def load_model(checkpoint: str | os.PathLike[str] | None = None, preset_name: str | None = None) -> LoadedModel:
    """A native checkpoint; a preset with seeded random weights (untrained); or, with neither, the embedded demo
    checkpoint (`tiny`, trained on synthetic distortions of real photographs)."""
    if checkpoint is None and preset_name is None:
        checkpoint = DEMO_WEIGHTS
    if preset_name is not None:
        preset(preset_name)  # an unknown name is a ConfigError before any file is read
    if checkpoint is not None:
        if preset_name is not None:  # refuse a mismatch from the header, before the weights are read
            config, _ = read_checkpoint_config(checkpoint)
            if preset_name != config.name:
                raise CheckpointError(f"{checkpoint} holds a {config.name!r} model but --preset {preset_name} was "
                                      "given; drop --preset or pick the matching checkpoint")
        model, info = load_checkpoint(checkpoint)
        return LoadedModel(model, info, path=Path(checkpoint))
    name = preset_name or DEFAULT_PRESET
    model = build_model(preset(name), seed=DEFAULT_SEED)
    info = CheckpointInfo(trained=False, description=f"random weights from seed {DEFAULT_SEED}")
    return LoadedModel(model, info, init_seed=DEFAULT_SEED)


def reference_pipeline(model: DiffV2IQA, scoring: ScoringConfig, steps: int | None = None, batch_size: int = 8,
                       device: str = "cpu") -> Pipeline:
    return Pipeline(TorchExecutor(model, device), PipelineSpec.from_config(model.config, scoring, steps), batch_size)
