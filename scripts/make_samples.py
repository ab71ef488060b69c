"""Write sample images for the demo: real photographs shipped in scikit-image's wheel, pristine and distorted.

Usage: python scripts/make_samples.py OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

PHOTOS = ("astronaut", "chelsea", "coffee")


def main(out_dir: str) -> None:
    from skimage import data

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in PHOTOS:
        img = Image.fromarray(getattr(data, name)()).convert("RGB")
        img.thumbnail((256, 256))
        img.save(out / f"{name}.png")
        img.filter(ImageFilter.GaussianBlur(4)).save(out / f"{name}_blur.png")
        noisy = np.asarray(img, dtype=np.float32) + rng.normal(0, 40, (img.height, img.width, 3))
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(out / f"{name}_noise.png")
        img.save(out / f"{name}_jpeg.jpg", quality=8)
    print(f"wrote {len(PHOTOS) * 4} images to {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "out/samples")
