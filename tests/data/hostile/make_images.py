"""Image files the two decoders once read differently (issue 22, case 9), each with the shared rule's verdict.

`python tests/data/hostile/make_images.py` rewrites images/ (a few hundred bytes each) and images/index.json; the large
ones (`write_large`, 200 MB of chunk data or inflation) are made by the tests into a temporary folder, never committed.
index.json: {name: {"accept": bool, "rule": the docs/bundle.md rule, "python": / "cpp": a fragment of each decoder's
refusal}}. Accepted files decode to the same RGB bytes in both decoders.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent / "images"
PIXELS = bytes(range(2 * 2 * 3))


def chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png(before_idat: bytes = b"", color: int = 2, after_idat: bytes = b"", w: int = 4, h: int = 3) -> bytes:
    """An 8-bit PNG of w x h pixels with values (k % 7) in file order, chunks inserted around its IDAT."""
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color]
    rows = bytes(k % 7 for k in range(w * h * channels))
    stride = w * channels
    data = b"".join(b"\0" + rows[y * stride:(y + 1) * stride] for y in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0)) + before_idat
            + chunk(b"IDAT", zlib.compress(data)) + after_idat + chunk(b"IEND", b""))


def _exif(orientation: int) -> bytes:
    """A big-endian TIFF structure with one IFD entry: Orientation (SHORT)."""
    return b"MM\0*\0\0\0\x08" + struct.pack(">HHHIHH", 1, 0x0112, 3, 1, orientation, 0) + b"\0\0\0\0"


PLTE = chunk(b"PLTE", bytes(range(12)))  # 4 colours
EXIF = "eXIf: orientation from a chunk that starts with a TIFF byte order (II or MM), else none"
TRNS = "tRNS: 1..palette size entries (palette), 2 bytes (grey), 6 bytes (RGB), none with alpha; else refused"
META = "tEXt, zTXt, iTXt, iCCP: ignored whatever their size or content"
PPM = "P6: whitespace after the magic number and each number, '#' comments only after whitespace, not after MAXVAL"
TRAIL = "P6: exactly width x height x 3 bytes of pixels, nothing after them"

CASES: dict[str, tuple[bytes, bool, str, str, str]] = {
    # name: (bytes, accepted, rule, fragment of the Python refusal, fragment of the C++ refusal)
    "exif-short.png": (png(chunk(b"eXIf", b"MM\0*")), True, EXIF, "", ""),
    "exif-one-byte.png": (png(chunk(b"eXIf", b"M")), True, EXIF, "", ""),
    "exif-not-tiff.png": (png(chunk(b"eXIf", b"XXXXXXXXXXXX")), True, EXIF, "", ""),
    "exif-app1-prefix-rotated.png": (png(chunk(b"eXIf", b"Exif\0\0" + _exif(6))), True, EXIF, "", ""),
    "exif-orientation-9.png": (png(chunk(b"eXIf", _exif(9))), True, EXIF, "", ""),
    "exif-after-idat-rotated.png": (png(after_idat=chunk(b"eXIf", _exif(6))), True,
                                    "eXIf after the image data counts (Python rotates, C++ refuses)", "",
                                    "EXIF orientation (6)"),
    "ztxt-2mb-inflated.png": (png(chunk(b"zTXt", b"k\0\0" + zlib.compress(b"a" * (2 << 20), 9))), True, META, "",
                              ""),
    "palette-without-plte.png": (png(color=3), False, "a palette PNG needs its PLTE chunk", "without a PLTE chunk",
                                 "Missing PLTE"),
    "trns-longer-than-palette.png": (png(PLTE + chunk(b"tRNS", bytes([0, 128, 255, 7, 9, 11])), color=3), False,
                                     TRNS, "tRNS chunk of 6 entries for a palette of 4", "tRNS: invalid"),
    "trns-long-rgb.png": (png(chunk(b"tRNS", b"\0\1\0\2\0\3\0\4")), False, TRNS, "tRNS chunk of 8 bytes",
                          "tRNS: invalid"),
    "trns-short-rgb.png": (png(chunk(b"tRNS", b"\0\1")), False, TRNS, "tRNS chunk of 2 bytes", "tRNS: invalid"),
    "trns-long-grey.png": (png(chunk(b"tRNS", b"\0\1\0\2"), color=0), False, TRNS, "tRNS chunk of 4 bytes",
                           "tRNS: invalid"),
    "p6-comment-line.ppm": (b"P6\n# made by hand\n2 2\n255\n" + PIXELS, True, PPM, "", ""),
    "p6-comment-between-numbers.ppm": (b"P6 2 #c\n2 #d\r255\n" + PIXELS, True, PPM, "", ""),
    "p6-comment-after-magic.ppm": (b"P6#c\n2 2\n255\n" + PIXELS, False, PPM, "needs whitespace after the magic",
                                   "is malformed"),
    "p6-comment-inside-number.ppm": (b"P6\n2#c\n2 2\n255\n" + PIXELS, False, PPM, "needs whitespace after",
                                     "is malformed"),
    "p6-comment-after-maxval.ppm": (b"P6\n2 2\n255#c\n" + PIXELS, False, PPM, "must end with one whitespace byte",
                                    "is malformed"),
    "p6-comment-before-pixels.ppm": (b"P6\n2 2\n255\n#c\n" + PIXELS, False, TRAIL, "has 15 bytes of pixels",
                                     "has 15 bytes of pixels"),
    "p6-trailing-bytes.ppm": (b"P6\n2 2\n255\n" + PIXELS + b"\n", False, TRAIL, "has 13 bytes of pixels",
                              "has 13 bytes of pixels"),
}


def index() -> dict[str, dict[str, object]]:
    return {name: {"accept": ok, "rule": rule, "python": py, "cpp": cpp}
            for name, (_, ok, rule, py, cpp) in CASES.items()}


def write_large(folder: Path) -> dict[str, dict[str, object]]:
    """The 200 MB cases (accepted: metadata is ignored): a zTXt and an iCCP inflating to 200 MB (~200 kB files), and a
    sparse file whose iCCP chunk holds 200 MB of zeros. Returns their index entries."""
    bomb = zlib.compress(bytes(200 << 20), 9)
    (folder / "ztxt-200mb-inflated.png").write_bytes(png(chunk(b"zTXt", b"k\0\0" + bomb)))
    (folder / "iccp-200mb-inflated.png").write_bytes(png(chunk(b"iCCP", b"p\0\0" + bomb)))
    size = 200 << 20
    crc = zlib.crc32(b"iCCP")
    zeros = bytes(1 << 20)
    for _ in range(size >> 20):
        crc = zlib.crc32(zeros, crc)
    whole = png(b"\0" * 12)  # a placeholder chunk header after IHDR, replaced below
    head, tail = whole[:33], whole[45:]
    with open(folder / "iccp-200mb-chunk.png", "wb") as f:
        f.write(head + struct.pack(">I", size) + b"iCCP")
        f.truncate(33 + 8 + size)  # sparse: no disk
        f.seek(0, 2)
        f.write(struct.pack(">I", crc) + tail)
    return {name: {"accept": True, "rule": META, "python": "", "cpp": ""}
            for name in ("ztxt-200mb-inflated.png", "iccp-200mb-inflated.png", "iccp-200mb-chunk.png")}


if __name__ == "__main__":
    HERE.mkdir(exist_ok=True)
    for name, (data, *_) in CASES.items():
        (HERE / name).write_bytes(data)
    (HERE / "index.json").write_text(json.dumps(index(), indent=1) + "\n", encoding="utf-8")
