"""The training data: KADID-style synthetic distortions of real photographs, a pseudo-MOS, and a split by photo.

Everything is made at run time from the photographs in scikit-image's wheel (`data.photos`, distorted by
`data.distortions`); nothing is downloaded. The quality target is a **pseudo-MOS**: the SSIM (`training.ssim`, on
luminance) of the distorted image against its pristine photograph. It is not a human opinion score.
"""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..atomic import current_umask
from ..data.distortions import DISTORTIONS, LEVELS, distort
from ..data.photos import PHOTO_NAMES, photos
from ..errors import ConfigError
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

    names = list(names)
    unknown = [n for n in names if n not in PHOTO_NAMES]
    if unknown:
        raise ConfigError(f"unknown photograph(s) {', '.join(map(repr, unknown))}; "
                          f"use names of {', '.join(PHOTO_NAMES)}")
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


def check_split(split: str) -> None:
    """Raise ConfigError unless `split` names one of SPLITS."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")


def split_samples(split: str, **kwargs: object) -> list[Sample]:
    check_split(split)
    return make_samples(SPLITS[split], **kwargs)  # type: ignore[arg-type]


def sample_file_name(sample: Sample) -> str:
    """The PNG name of a sample in a written split: `<photo>-<kind><level>.png` or `<photo>-pristine.png`."""
    return f"{sample.photo}-{sample.kind}{sample.level}.png" if sample.level else f"{sample.photo}-pristine.png"


def write_split(split: str, out_dir: str | os.PathLike[str]) -> int:
    """Write a split's images as PNGs plus labels.csv (image, score = pseudo-MOS, 6 decimals) into `out_dir`.

    `out_dir` must not exist or be an empty folder (ConfigError otherwise, and for an unknown split). Returns the
    number of images written.
    """
    check_split(split)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} exists and is not an empty folder; pick a new one")
    samples = split_samples(split)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Everything goes to a sibling temp folder that is renamed at the end: never a half-written split.
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        rows = []
        for s in samples:
            name = sample_file_name(s)
            Image.fromarray(s.image).save(tmp / name)
            rows.append((name, f"{s.pseudo_mos:.6f}"))
        with open(tmp / "labels.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image", "score"])
            w.writerows(rows)
        tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes it private
        if out.exists():
            out.rmdir()  # checked empty above
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return len(rows)
