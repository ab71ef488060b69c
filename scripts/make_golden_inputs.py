"""Write the bundle's golden test inputs (diffv2iqa_trt/data/golden/*.ppm): two small crops of scikit-image
photographs, stored as binary PPM (the decoded RGB bytes, so no decoder enters the golden scores).

Run once; the files are committed. Needs scikit-image (the `dev` extra): `python scripts/make_golden_inputs.py`.
"""

from __future__ import annotations

from pathlib import Path

from diffv2iqa_trt.data.photos import photo
from diffv2iqa_trt.golden import write_ppm

OUT = Path(__file__).resolve().parents[1] / "diffv2iqa_trt" / "data" / "golden"

# (file, photograph, top, left, height, width): a 64x64 face crop (no upscale at the tiny model's 64-pixel crops, an
# upscale at 224) and a 20x30 crop that every model upscales.
GOLDEN = (("astronaut-64x64.ppm", "astronaut", 60, 180, 64, 64), ("coffee-20x30.ppm", "coffee", 150, 200, 20, 30))

if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    for name, source, top, left, h, w in GOLDEN:
        write_ppm(OUT / name, photo(source)[top:top + h, left:left + w])
        print(OUT / name)
