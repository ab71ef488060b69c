"""Image decoding: any file Pillow reads becomes an RGB uint8 array (H, W, 3), upright.

Conversions (documented in the README):
- EXIF orientation is applied;
- grayscale (L, 1, I, I;16, F) is replicated to three channels; 16-bit and 32-bit integer images are scaled to 8 bits
  by their nominal range (65535 -> 255), float images are clipped to [0, 255];
- alpha (RGBA, LA, PA, palette with transparency) is composited over white, as a viewer would show it;
- palette, CMYK, YCbCr and other modes go through Pillow's RGB conversion.

Work per file is bounded: the pixel count declared in the header is checked against `max_pixels` before anything is
decoded (a 300 kB PNG can declare 50000 x 50000), and every failure of Pillow on a hostile file becomes an
ImageDecodeError naming the file.

Memory per file: Pillow's decoded image plus the RGB uint8 result, nothing of the image's size besides. The
conversion to RGB runs in strips of rows (`_STRIP_PIXELS`), so the float64 arithmetic of a 16-bit image or the RGBA
composite of a transparent one never exists for the whole image at once, and no whole-image copy is made (the
upright image is transposed in place). Measured on 100-megapixel PNGs (growth of the peak RSS in `load_image`, before
-> after): 16-bit grey 2,482 -> 493 MB, 8-bit RGB 1,338 -> 683 MB, 8-bit grey 1,052 -> 394 MB, of which 300 MB is the
result and the rest Pillow's decoded image (2 bytes per pixel for 16-bit grey, 4 for RGB, 1 for grey).
"""

from __future__ import annotations

import io
import os
import re
import stat
import struct
import warnings
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ConfigError, ImageDecodeError

__all__ = ["DEFAULT_MAX_PIXELS", "IMAGE_SUFFIXES", "ImageDecodeError", "allow_pillow_pixels", "check_max_pixels",
           "expand_paths", "load_image"]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".pnm"})

# Largest image decoded by default: 100 megapixels (a 12000 x 8000 photograph) is 300 MB as RGB uint8, and decoding
# it takes up to about twice that (see the module docstring).
DEFAULT_MAX_PIXELS = 100_000_000
# Pixels converted at a time: float64 temporaries of a strip stay at a few tens of MB.
_STRIP_PIXELS = 1 << 20

# What Pillow's decoders raise on malformed input besides OSError (its "cannot identify/decode" error): parsers index
# past short tables, unpack short structs, divide by zero-sized fields, ... On a hostile file each of these is a bad
# file, not a bug of ours, so they are reported as that file's error.
_DECODER_ERRORS: tuple[type[Exception], ...] = (
    OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError, TypeError, ZeroDivisionError,
    OverflowError, NotImplementedError, AttributeError)


# The rules both decoders follow where Pillow and libpng (the C++ decoder) would read one file differently (issue 22,
# case 9; docs/bundle.md, "Decoding: one rule per disagreement"). Checked here before Pillow sees the file.
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Metadata that never changes the pixels: not shown to Pillow, whatever its size or content (Pillow refuses a zTXt or
# iCCP that inflates beyond 1 MB; libpng skips it). An XMP orientation (iTXt) is therefore not applied either.
_PNG_IGNORED = frozenset({b"tEXt", b"zTXt", b"iTXt", b"iCCP"})
_TRNS_BYTES = {0: 2, 2: 6}  # colour type -> the only valid tRNS length (a colour key)
_PPM_SPACE = b" \t\n\v\f\r"


class _Refused(ValueError):
    """A file both decoders refuse by a shared rule (the message is the reason)."""


class _Ranges(io.RawIOBase):
    """A read-only, seekable view of some byte ranges of a file, concatenated (the PNG without its ignored chunks)."""

    def __init__(self, f: io.BufferedReader, ranges: list[tuple[int, int]]) -> None:
        super().__init__()
        self._f, self._ranges, self._pos = f, ranges, 0
        self._size = sum(end - start for start, end in ranges)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        out, done, skip = memoryview(buffer).cast("B"), 0, self._pos
        for start, end in self._ranges:
            if skip >= end - start:
                skip -= end - start
                continue
            self._f.seek(start + skip)
            got = self._f.readinto(out[done:done + min(len(out) - done, end - start - skip)])
            done += got
            skip = 0
            if done == len(out) or not got:
                break
        self._pos += done
        return done


def _check_png(f: io.BufferedReader, size: int) -> list[tuple[int, int]] | None:
    """Walk a PNG's chunk headers (no chunk data is read but IHDR's): the byte ranges to show Pillow when ignored
    chunks are present (None: the file as it is); ValueError for the structures both decoders refuse."""
    pos, color, palette, trns = 8, -1, -1, -1
    ranges: list[tuple[int, int]] = [(0, 8)]
    dropped = False
    while pos + 12 <= size:
        f.seek(pos)
        length, kind = struct.unpack(">I4s", f.read(8))
        end = pos + 12 + length
        if kind == b"IHDR" and length == 13:
            color = f.read(13)[9]
        elif kind == b"PLTE":
            palette = length // 3
        elif kind == b"tRNS":
            trns = length
        elif kind == b"eXIf" and f.read(2) not in (b"II", b"MM"):
            # No TIFF byte order: libpng discards the chunk, so Pillow is not shown it either (it would skip a leading
            # "Exif\0\0" and apply the orientation behind it).
            kind = b"tEXt"
        if kind in _PNG_IGNORED and end <= size:
            dropped = True
        elif ranges[-1][1] == pos:
            ranges[-1] = (ranges[-1][0], min(end, size))
        else:
            ranges.append((pos, min(end, size)))
        pos = end
        if kind == b"IEND":
            break
    if pos < size:  # a truncated chunk, or bytes after IEND: as they are (Pillow reports the one, ignores the other)
        ranges.append((pos, size))
    if color == 3 and palette < 0:
        raise _Refused("a palette PNG without a PLTE chunk (the PNG specification requires one; libpng refuses it)")
    if trns >= 0:
        if color in (4, 6):
            raise _Refused("a tRNS chunk in a PNG with an alpha channel (the PNG specification forbids it)")
        if color == 3 and not 1 <= trns <= max(palette, 0):
            raise _Refused(f"a tRNS chunk of {trns} entries for a palette of {max(palette, 0)} colours (the PNG "
                             "specification allows 1 to the palette's size)")
        if color in _TRNS_BYTES and trns != _TRNS_BYTES[color]:
            raise _Refused(f"a tRNS chunk of {trns} bytes, expected {_TRNS_BYTES[color]} for this colour type")
    return ranges if dropped else None


def _ppm_token(data: bytes, at: int) -> tuple[int, int]:
    """One number of a P6 header at `at`: (value, index after its digits). Before it: at least one whitespace byte,
    then whitespace and comments ('#' through the next CR or LF, only after whitespace)."""
    if at >= len(data) or data[at] not in _PPM_SPACE:
        raise _Refused("a P6 header needs whitespace after the magic number and after each number (a '#' "
                         "comment may only follow whitespace)")
    while at < len(data) and (data[at] in _PPM_SPACE or data[at] == 0x23):
        if data[at] == 0x23:
            ends = [i for i in (data.find(b"\n", at), data.find(b"\r", at)) if i >= 0]
            if not ends:
                raise _Refused("the P6 header ends inside a comment")
            at = min(ends)
        at += 1
    start = at
    while at < len(data) and 0x30 <= data[at] <= 0x39 and at - start < 9:
        at += 1
    if at == start or (at < len(data) and 0x30 <= data[at] <= 0x39):
        raise _Refused("malformed P6 header (P6 WIDTH HEIGHT MAXVAL, decimal numbers of 1 to 9 digits)")
    return int(data[start:at]), at


def _check_ppm(f: io.BufferedReader, size: int) -> None:
    """A binary PPM (P6): the header by the shared rule and exactly the pixels it declares, nothing after them."""
    data = f.read(4096)  # a header is a few dozen bytes; longer comments are refused
    at = 2
    width, at = _ppm_token(data, at)
    height, at = _ppm_token(data, at)
    maxval, at = _ppm_token(data, at)
    if at >= len(data) or data[at] not in _PPM_SPACE:
        raise _Refused("the P6 header must end with one whitespace byte after MAXVAL (no comment there)")
    pixels = width * height * 3 * (2 if maxval > 255 else 1)
    if size - (at + 1) != pixels:
        raise _Refused(f"PPM of {width}x{height} pixels has {size - at - 1} bytes of pixels, expected {pixels} "
                         "(a PPM file holds one image and nothing after it)")


def check_max_pixels(max_pixels: int) -> int:
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ConfigError(f"--max-pixels must be a positive integer, got {max_pixels!r}")
    return max_pixels


def allow_pillow_pixels(max_pixels: int) -> None:
    """Raise Pillow's own decompression-bomb limit (process-wide) so that it does not refuse images `max_pixels`
    allows; it is never lowered. Pillow refuses above twice `PIL.Image.MAX_IMAGE_PIXELS` before our check runs."""
    current = Image.MAX_IMAGE_PIXELS
    if current is not None and 2 * current < check_max_pixels(max_pixels):
        Image.MAX_IMAGE_PIXELS = max_pixels


def _too_large(width: int, height: int, max_pixels: int) -> str:
    return (f"image is {width}x{height} = {width * height / 1e6:,.1f} megapixels, above the limit of "
            f"{max_pixels / 1e6:,.1f} megapixels; if the file is trusted, raise the limit with --max-pixels "
            f"(at least {width * height})")


def _bomb_reason(pillow_message: str, max_pixels: int) -> str:
    """Our reason for an image Pillow refused inside Image.open (it says only the pixel count, not the size)."""
    m = re.search(r"Image size \((\d+) pixels\)", pillow_message)
    if m is None or int(m.group(1)) <= max_pixels:  # above Pillow's limit although --max-pixels allows it
        return (f"image too large for Pillow's own limit ({pillow_message}); raise PIL.Image.MAX_IMAGE_PIXELS or "
                "use --max-pixels, which raises it")
    pixels = int(m.group(1))
    return (f"image declares {pixels / 1e6:,.1f} megapixels, above the limit of {max_pixels / 1e6:,.1f} "
            f"megapixels; if the file is trusted, raise the limit with --max-pixels (at least {pixels})")


def _gray_to_uint8(a: np.ndarray, scale: bool) -> np.ndarray:
    """A grey strip as uint8: scaled from the 16-bit range (65535 -> 255) or clipped, rounded half to even."""
    a = a.astype(np.float64)  # a copy, so the steps below can work in place (the same roundings as out of place)
    if scale:
        a /= 65535.0
        a *= 255.0
    np.rint(a, out=a)
    np.clip(a, 0, 255, out=a)
    return a.astype(np.uint8)


def _strip_to_rgb(strip: Image.Image, scale_integers: bool) -> np.ndarray:
    """The uint8 RGB of one strip of rows (see _to_rgb for the rules): (rows, W, 3), or (rows, W, 1) for grey, which
    the caller broadcasts to the three channels."""
    mode = strip.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        gray = _gray_to_uint8(np.asarray(strip), True)
    elif mode == "I":
        gray = _gray_to_uint8(np.asarray(strip), scale_integers)
    elif mode == "F":
        gray = _gray_to_uint8(np.nan_to_num(np.asarray(strip, dtype=np.float64), copy=False), False)
    else:
        if mode == "P" and "transparency" in strip.info:
            strip = strip.convert("RGBA")
            mode = "RGBA"
        if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
            rgba = strip.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            strip = Image.alpha_composite(white, rgba)
        return np.asarray(strip if strip.mode == "RGB" else strip.convert("RGB"), dtype=np.uint8)
    return gray[..., None]


def _to_rgb(img: Image.Image) -> np.ndarray:
    """Pillow image -> (H, W, 3) uint8, converted a strip of rows at a time into the one result array."""
    width, height = img.size
    scale_integers = False
    if img.mode == "I":
        # Pillow stores some 16-bit images as mode I; scale by the nominal 16-bit range when values exceed 8 bits.
        # The decision is the whole image's (Pillow's extrema: no copy), the arithmetic a strip's.
        highest = img.getextrema()[1]
        scale_integers = isinstance(highest, int | float) and highest > 255
    rgb = np.empty((height, width, 3), np.uint8)
    rows = max(1, _STRIP_PIXELS // max(width, 1))
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        rgb[top:bottom] = _strip_to_rgb(img.crop((0, top, width, bottom)), scale_integers)
    return rgb


def _decode(p: Path, max_pixels: int) -> Image.Image:
    """Pillow's part, on untrusted bytes: the header, the size check, the pixels and the EXIF orientation."""
    with warnings.catch_warnings():
        # The size check below decides; Pillow's warning (above MAX_IMAGE_PIXELS) would only print noise.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        # Pillow warns about defects it works around (corrupt EXIF, short TIFF reads); a defect that matters fails the
        # decode and is reported as the file's error, so these would only be noise (or tracebacks under -W error).
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL(\.|$)")
        with open(p, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            magic = f.read(8)
            f.seek(0)
            try:
                ranges = _check_png(f, size) if magic == _PNG_SIGNATURE else None
                if magic[:2] == b"P6":
                    _check_ppm(f, size)
            except _Refused as exc:
                raise ImageDecodeError(p, str(exc)) from None
            f.seek(0)
            source: IO[bytes] = f if ranges is None else io.BufferedReader(_Ranges(f, ranges))
            with Image.open(source) as opened:
                return _decode_opened(p, opened, max_pixels)


def _decode_opened(p: Path, opened: Image.Image, max_pixels: int) -> Image.Image:
    """The size check, the pixels and the EXIF orientation of an opened file."""
    width, height = opened.size  # from the header: nothing is decoded yet
    if width * height > max_pixels:
        raise ImageDecodeError(p, _too_large(width, height, max_pixels))
    opened.load()  # decode now so truncated files fail here, not later
    if opened.size[0] * opened.size[1] > max_pixels:  # a decoder that changed its mind about the size
        raise ImageDecodeError(p, _too_large(opened.size[0], opened.size[1], max_pixels))
    # Pixels Pillow mapped from the file (raw formats) are copied, so nothing depends on the file from here on;
    # decoded pixels are used as they are: leaving the block closes only the file.
    image: Image.Image = opened.copy() if getattr(opened, "map", None) is not None else opened
    if _orientation(image) != 1:
        ImageOps.exif_transpose(image, in_place=True)  # no copy when upright already
    return image


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation, 1 when there is none or the EXIF block cannot be read (a short or garbled eXIf chunk:
    the pixels are intact, and the C++ decoder reads it the same way)."""
    try:
        value = image.getexif().get(0x0112, 1)
    except _DECODER_ERRORS:
        return 1
    return value if isinstance(value, int) else 1


def load_image(path: str | os.PathLike[str], max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode one file to an upright RGB uint8 array (H, W, 3); raises ImageDecodeError naming the file.

    Images whose header declares more than `max_pixels` pixels are refused before decoding."""
    check_max_pixels(max_pixels)
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ImageDecodeError(p, "file not found") from None
    except OSError as exc:  # name too long, permission denied on a parent, a loop of links, ...
        raise ImageDecodeError(p, f"cannot read the file ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageDecodeError(p, "is a directory, not an image")
    if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block or never end
        raise ImageDecodeError(p, "is not a regular file (a pipe, socket or device?)")
    if st.st_size == 0:
        raise ImageDecodeError(p, "not an image file Pillow can read (the file is empty)")
    try:
        upright = _decode(p, max_pixels)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:  # above twice Pillow's own limit, checked inside Image.open
        raise ImageDecodeError(p, _bomb_reason(str(exc), max_pixels)) from None
    except UnidentifiedImageError:
        raise ImageDecodeError(p, "not an image file Pillow can read (unknown or corrupt format)") from None
    except PermissionError as exc:
        raise ImageDecodeError(p, f"cannot read the file ({exc.strerror or exc})") from None
    except MemoryError:  # a decoder's own buffers for a corrupt header; the pixels themselves are capped above
        raise ImageDecodeError(p, "decoding needs more memory than is available (corrupt header?)") from None
    except _DECODER_ERRORS as exc:
        raise ImageDecodeError(p, f"corrupt or truncated image ({exc or type(exc).__name__})") from None
    try:
        rgb = _to_rgb(upright)
    except (ValueError, OSError) as exc:  # a mode Pillow cannot convert to RGB
        raise ImageDecodeError(p, f"image mode {upright.mode} cannot be converted to RGB ({exc})") from None
    if rgb.ndim != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageDecodeError(p, f"empty image of shape {rgb.shape}")
    return rgb


def expand_paths(paths: list[str | os.PathLike[str]]) -> list[Path]:
    """Files are kept as given (so bad ones get reported); directories expand to their images, sorted, recursively.

    In a directory, every entry with an image suffix that is not itself a directory is kept, so a broken link or a
    pipe named x.png is reported rather than silently skipped."""
    out: list[Path] = []
    for path in paths:
        p = Path(path)
        if _is_dir(p):
            out.extend(sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and not _is_dir(f)))
        else:
            out.append(p)
    return out


def _is_dir(p: Path) -> bool:
    try:
        return p.is_dir()
    except OSError:  # e.g. a name too long: load_image reports it as that file's error
        return False
