"""One batching rule for both pipelines, derived from the bundle's optimisation profiles.

A bundle records, per graph, the min/opt/max shapes its engines accept (manifest `graphs.*.profiles`): a TensorRT
execution context refuses any other shape in `set_input_shape`. The host pipeline (pipeline.py) and the stream
pipeline (stream_pipeline.py) therefore cut their work the same way:
- a restoration batch holds at most `min(batch_size, restore_step's max batch)` images;
- a branch batch (VCG, VDA) holds at most `min(batch_size, the branches' max batch)` crops, however many crops the
  restoration batch produced (faithful mode with `five` at batch 8 yields 40);
- in `crops` mode the restored images are the branch inputs, so the restoration batch is also capped by the branches;
- an image whose restoration exceeds restore_step's max height or width (faithful mode above the build's
  `--max-size`) is refused as that image's error, before any work: a restoration cannot be split without changing the
  score. Only launchers that enforce profiles (TensorRT) ask for that check; ONNX Runtime and torch run any size.

Scores do not depend on batching (the noise bank is per resolution, the same for every image), so the rule changes
speed and memory, never a score.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..contract import BRANCH_GRAPHS, RESTORE_STEP
from .crops import ImageSizeError, WorkUnit

if TYPE_CHECKING:
    from ..bundle.manifest import Profiles
    from ..bundle.store import Bundle


@dataclass(frozen=True)
class BatchLimits:
    """The largest work each graph accepts; None: no limit."""

    restore_batch: int | None = None
    branch_batch: int | None = None
    max_height: int | None = None  # of a restoration (restore_step's x); None: any
    max_width: int | None = None

    @classmethod
    def from_profiles(cls, profiles: Mapping[str, Profiles], resolution: bool = True) -> BatchLimits:
        """Limits from each graph's max profile shapes. `resolution`: also bound the restoration size (launchers
        that enforce profiles); otherwise only the batch sizes (any backend, so batches are the same everywhere)."""
        restore = profiles[RESTORE_STEP].max["x"]
        branch = min(profiles[g].max["x"][0] for g in BRANCH_GRAPHS)
        return cls(restore_batch=int(restore[0]), branch_batch=int(branch),
                   max_height=int(restore[2]) if resolution else None,
                   max_width=int(restore[3]) if resolution else None)

    @classmethod
    def from_bundle(cls, bundle: Bundle, resolution: bool = True) -> BatchLimits:
        """Limits from a bundle's graph entries."""
        return cls.from_profiles({g: bundle.graph(g).profiles for g in (RESTORE_STEP, *BRANCH_GRAPHS)}, resolution)

    def restore_batch_for(self, batch_size: int, direct: bool) -> int:
        """Images per restoration batch; `direct`: the restored images are the branch inputs (crops mode)."""
        caps = [batch_size, self.restore_batch, self.branch_batch if direct else None]
        return min(c for c in caps if c is not None)

    def branch_batch_for(self, batch_size: int) -> int:
        """Crops per branch batch."""
        return min(batch_size, self.branch_batch) if self.branch_batch is not None else batch_size

    def check_unit(self, unit: WorkUnit) -> None:
        """ImageSizeError when a work unit's restoration is larger than restore_step's profile allows."""
        _, h, w = unit.shape
        too_high = self.max_height is not None and h > self.max_height
        too_wide = self.max_width is not None and w > self.max_width
        if too_high or too_wide:
            raise ImageSizeError(
                f"its restoration is {w}x{h} pixels (width x height), larger than the {self.max_width}x"
                f"{self.max_height} the bundle's restore_step engine accepts (faithful mode restores the whole "
                "image); use --mode crops, downscale the image, or rebuild the bundle with a larger --max-size")


UNLIMITED = BatchLimits()
