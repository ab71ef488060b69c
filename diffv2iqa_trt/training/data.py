"""The training data: KADID-style synthetic distortions of real photographs, a pseudo-MOS, and a split by photo.

Everything is made at run time from the photographs in scikit-image's wheel (`data.photos`, distorted by
`data.distortions`); nothing is downloaded. The quality target is a **pseudo-MOS**: the SSIM (`training.ssim`, on
luminance) of the distorted image against its pristine photograph. It is not a human opinion score.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ..data.distortions import DISTORTIONS, LEVELS, distort
from ..data.photos import PHOTO_NAMES, photos
from .ssim import luminance, ssim_map

MAX_SIDE = 256  # photographs are shrunk (bicubic, aspect kept) so their long side is at most this

# Fixed split by source photograph (no photograph is in two splits).
SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("astronaut", "brick", "camera", "grass", "hubble_deep_field", "immunohistochemistry", "moon", "page",
              "text", "retina", "clock", "microaneurysms"),
    "val": ("coffee", "gravel", "rocket"),
    "test": ("chelsea", "coins", "stereo_motorcycle"),
}


@dataclass(frozen=True)
class Sample:
    photo: str
    kind: str  # a distortion name, or "pristine"
    level: int  # 0 for the pristine photograph
    image: np.ndarray  # (H, W, 3) uint8
    pristine: np.ndarray  # (H, W, 3) uint8, the source photograph
    ssim_map: np.ndarray  # (H, W) float32, per-pixel SSIM against the pristine photograph (luminance)
    pseudo_mos: float  # SSIM of the whole image (skimage's convention): the image's quality target

    def crop_target(self, top: int, left: int, size: int) -> float:
        """The pseudo-MOS of one crop: the mean of the SSIM map over the crop window."""
        return float(self.ssim_map[top:top + size, left:left + size].mean(dtype=np.float64))


def split_of(name: str) -> str:
    for split, names in SPLITS.items():
        if name in names:
            return split
    raise KeyError(f"photograph {name!r} is in no split")


def make_samples(names: Iterable[str], *, include_pristine: bool = True, max_side: int = MAX_SIDE) -> list[Sample]:
    """Every listed photograph under every distortion at every level (and itself, pristine)."""
    from .ssim import ssim

    library = photos(max_side)
    out: list[Sample] = []
    for name in names:
        ref = library[name]
        ref_y = luminance(ref)
        pid = PHOTO_NAMES.index(name)
        variants: list[tuple[str, int, np.ndarray]] = [("pristine", 0, ref)] if include_pristine else []
        for k, kind in enumerate(DISTORTIONS):
            # One seed per (photograph, distortion): the levels share their noise pattern and smear axis.
            variants.extend((kind, level, distort(ref, kind, level, seed=100 * pid + k))
                            for level in range(1, LEVELS + 1))
        for kind, level, img in variants:
            img_y = luminance(img)
            out.append(Sample(name, kind, level, img, ref, ssim_map(img_y, ref_y).astype(np.float32),
                              ssim(img_y, ref_y)))
    return out


def split_samples(split: str, **kwargs: object) -> list[Sample]:
    return make_samples(SPLITS[split], **kwargs)  # type: ignore[arg-type]
