"""The public Python API: `load` a model, `score` images, read typed results.

    import diffv2iqa_trt as iqa

    with iqa.load("bundle/") as scorer:           # or iqa.load(): the embedded demo model on the torch reference
        for r in scorer.score(["a.png", "b.jpg"]):
            print(r.source, r.score if r.ok else r.error)

Inputs, single or in a list, one result per image in input order:
- a path (str or os.PathLike): decoded by the runtime's checked decoder (runtime/images.py), exactly as
  `diffv2iqa-trt score` decodes it: same conversions, same pixel limit (`max_pixels`), same error texts;
- a PIL image: EXIF orientation applied and converted to RGB by the same rules as a file (16-bit grey scaled,
  alpha over white), so `Image.open(path)` scores as `path` does;
- a NumPy array (H, W, 3) uint8, RGB;
- a torch tensor (3, H, W) or (N, 3, H, W), floating point, RGB in [0, 1] (pyiqa's convention); a batch of N gives N
  results. Converted to uint8 by `tensor_to_rgb`: u = rint(v * 255) (half to even, computed exactly in float64),
  clipped to [0, 255]. A tensor made as `uint8_image / 255` therefore scores exactly as the uint8 image.

A bad input (a file that cannot be read, an array of the wrong shape or dtype, an image the crop rules refuse, a
non-finite score) is that result's `error`; the others are scored. An argument of the wrong type altogether (a
number, a dict, bytes, a list inside the list) raises TypeError: that is a bug of the caller, not a bad image.

Scores are computed a chunk of images at a time (`chunk` images or about `DEFAULT_PIXELS_PER_CHUNK` decoded pixels),
the same chunks `diffv2iqa-trt score` forms over a list of files, so the same inputs give the same scores, bit for bit.
A Scorer is not thread-safe: use one per thread.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps

from . import scorers
from .errors import ConfigError, ImageDecodeError
from .runtime.backends import backend_names
from .runtime.crops import ImageSizeError, WorkUnit
from .runtime.images import DEFAULT_MAX_PIXELS, allow_pillow_pixels, check_max_pixels, load_image
from .runtime.pipeline import ImageScore, PipelineSpec, ScoringPipeline
from .runtime.scoring import DEFAULT_IMAGES_PER_CHUNK, DEFAULT_PIXELS_PER_CHUNK, checked_result, path_text

if TYPE_CHECKING:
    from .runtime.scoring import FileResult

__all__ = ["AUTO", "ScoreResult", "Scorer", "create_metric", "load", "tensor_to_rgb"]

AUTO = scorers.AUTO
METRIC_NAME = "diffv2iqa"
ImageInput = Any  # str | os.PathLike[str] | PIL.Image.Image | np.ndarray | torch.Tensor (torch is optional)
Progress = Callable[[int], None]


@dataclass(frozen=True)
class ScoreResult:
    """One image's result: the fused score and its two branches, or the error that kept it from being scored."""

    score: float | None  # None when `error` is set
    vcg: float | None  # None on error, or when the branch has fusion weight 0 and was not run
    vda: float | None
    crops: int  # crops averaged into the score (0 on error)
    error: str | None  # why this input could not be scored; None when it was
    source: str  # the input, briefly: the path, "PIL RGB image 512x384", "array (512, 384, 3) uint8", "tensor[2] ..."

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def image_score(self) -> ImageScore | None:
        """The runtime's ImageScore of this result (None on error)."""
        if self.error is not None or self.score is None:
            return None
        return ImageScore(score=self.score, vcg=self.vcg, vda=self.vda, crops=self.crops)


@dataclass(frozen=True)
class _Item:
    """One image of the input stream: its description and how to get its RGB uint8 pixels (raising ImageDecodeError
    or ImageSizeError for a bad one)."""

    source: str
    decode: Callable[[], np.ndarray]


# ----------------------------------------------------------------------------------------------------- conversions


def _torch_tensor_type() -> type | None:
    """torch.Tensor when torch is imported already (an input cannot be a tensor otherwise): torch is never imported
    here, so a deployment without torch scores paths and arrays."""
    torch = sys.modules.get("torch")
    return getattr(torch, "Tensor", None) if torch is not None else None


def _is_tensor(value: object) -> bool:
    tensor = _torch_tensor_type()
    return tensor is not None and isinstance(value, tensor)


def _is_input(value: object) -> bool:
    return isinstance(value, str | os.PathLike | Image.Image | np.ndarray) or _is_tensor(value)


def _wrong_type(value: object) -> TypeError:
    return TypeError(f"cannot score a {type(value).__name__}: give a path (str or os.PathLike), a PIL image, a NumPy "
                     "(H, W, 3) uint8 array, a torch tensor (3, H, W) or (N, 3, H, W) in [0, 1], or a list of those")


def _bad(reason: str) -> ImageDecodeError:
    """An in-memory input that is not an image the pipeline can score (the result's error is `reason`)."""
    return ImageDecodeError("<in-memory input>", reason)


def tensor_to_rgb(tensor: Any) -> np.ndarray:
    """An RGB image tensor (3, H, W) of floats in [0, 1] as the (H, W, 3) uint8 array the pipeline scores:
    u = rint(v * 255) (round half to even; v * 255 is exact in float64 for float16, bfloat16 and float32), clipped
    to [0, 255]. Raises ImageDecodeError for a tensor of another shape, dtype or with non-finite values."""
    shape = tuple(int(n) for n in tensor.shape)
    if len(shape) != 3 or shape[0] != 3 or shape[1] < 1 or shape[2] < 1:
        raise _bad(f"expected an RGB tensor (3, H, W) or a batch (N, 3, H, W), got shape {shape}")
    if not tensor.dtype.is_floating_point:
        raise _bad(f"expected a floating-point tensor with values in [0, 1] (pyiqa's convention), got "
                             f"{tensor.dtype}; divide a uint8 tensor by 255, or pass the (H, W, 3) uint8 array")
    import torch

    values: np.ndarray = tensor.detach().to(device="cpu", dtype=torch.float64).numpy()
    if not np.isfinite(values).all():
        raise _bad("the tensor holds NaN or infinite values")
    values = np.rint(values * 255.0)
    np.clip(values, 0, 255, out=values)
    return np.ascontiguousarray(values.astype(np.uint8).transpose(1, 2, 0))


def _array_rgb(array: np.ndarray, max_pixels: int) -> np.ndarray:
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3 or 0 in array.shape:
        hint = ("; convert floats in [0, 1] with np.rint(a * 255).clip(0, 255).astype(np.uint8)"
                if array.dtype.kind == "f" else "")
        raise _bad(f"expected an RGB image as an (H, W, 3) uint8 array, got shape {array.shape} dtype "
                             f"{array.dtype}{hint}")
    _check_pixels(array.shape[1], array.shape[0], max_pixels)
    return np.ascontiguousarray(array)


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageSizeError(f"image is {width}x{height} = {width * height / 1e6:,.1f} megapixels, above the limit "
                             f"of {max_pixels / 1e6:,.1f} megapixels; raise it with load(..., max_pixels=...)")


def _pil_rgb(image: Image.Image, max_pixels: int) -> np.ndarray:
    """A PIL image as the file decoder converts it: size checked before the pixels are loaded, EXIF orientation
    applied (on a copy: the caller's image is not changed), the mode rules of runtime/images.py."""
    # The file decoder's conversion rules and the errors Pillow raises on bad data (one copy of each).
    from .runtime.images import _DECODER_ERRORS, _to_rgb

    _check_pixels(image.size[0], image.size[1], max_pixels)
    try:
        image.load()
        if image.getexif().get(0x0112, 1) != 1:  # Orientation: transpose only when it says to (no copy otherwise)
            image = ImageOps.exif_transpose(image)
        rgb = _to_rgb(image)
    except MemoryError:
        raise _bad("decoding the PIL image needs more memory than is available") from None
    except _DECODER_ERRORS as exc:
        raise _bad(f"the PIL image cannot be decoded or converted to RGB ({exc or type(exc).__name__})") from None
    if rgb.ndim != 3 or 0 in rgb.shape:
        raise _bad(f"empty image of shape {rgb.shape}")
    return rgb


def _items(inputs: Iterable[ImageInput], max_pixels: int) -> Iterator[_Item]:
    """The images of `inputs`, lazily: a tensor batch is N items; an entry of a wrong type raises TypeError when it is
    reached."""
    for value in inputs:
        yield from _items_of(value, max_pixels)


def _items_of(value: ImageInput, max_pixels: int) -> Iterator[_Item]:
    if isinstance(value, str | os.PathLike):
        path = Path(value)
        yield _Item(path_text(path), lambda: load_image(path, max_pixels))
    elif isinstance(value, Image.Image):
        source = f"PIL {value.mode} image {value.size[0]}x{value.size[1]}"
        name = getattr(value, "filename", "")
        if isinstance(name, str | os.PathLike) and name:
            source += f" from {path_text(name)}"
        yield _Item(source, lambda: _pil_rgb(value, max_pixels))
    elif isinstance(value, np.ndarray):
        yield _Item(f"array {tuple(value.shape)} {value.dtype}", lambda: _array_rgb(value, max_pixels))
    elif _is_tensor(value):
        shape = tuple(int(n) for n in value.shape)
        if len(shape) == 4:
            for i in range(shape[0]):
                yield _Item(f"tensor[{i}] of {shape} {value.dtype}", _tensor_decoder(value[i], max_pixels))
        else:
            yield _Item(f"tensor {shape} {value.dtype}", _tensor_decoder(value, max_pixels))
    else:
        raise _wrong_type(value)


def _tensor_decoder(tensor: Any, max_pixels: int) -> Callable[[], np.ndarray]:
    def decode() -> np.ndarray:
        rgb = tensor_to_rgb(tensor)
        _check_pixels(rgb.shape[1], rgb.shape[0], max_pixels)
        return rgb

    return decode


def _as_list(inputs: ImageInput | Iterable[ImageInput]) -> list[ImageInput]:
    """A single input as a list of one; a list (or other iterable) checked entry by entry, before anything is scored."""
    if _is_input(inputs):
        return [inputs]
    if isinstance(inputs, bytes | bytearray | dict) or not isinstance(inputs, Iterable):
        raise _wrong_type(inputs)
    entries = list(inputs)
    for entry in entries:
        if not _is_input(entry):
            raise _wrong_type(entry)
    return entries


# ---------------------------------------------------------------------------------------------------------- Scorer


class Scorer:
    """A loaded model on a backend. Score with `score` (lists) or `iter_scores` (streams); `close()` (or leaving a
    `with` block) releases its sessions, contexts and device memory."""

    lower_better = False  # pyiqa's attribute: a higher score is a better image

    def __init__(self, opened: scorers.Scorer, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self._opened: scorers.Scorer | None = opened
        self.max_pixels = check_max_pixels(max_pixels)
        self.label = opened.label  # the model, as users should see it (says UNTRAINED for random weights)
        self.trained = opened.trained
        self.backend = opened.backend
        self.precision = opened.precision
        self.choice = opened.choice  # auto_choice.Choice: what `auto` (or the default's thread count) picked
        self.notes = opened.notes  # lines for the user: the auto choice, an unmeasured bf16 plan
        self.spec: PipelineSpec = opened.pipeline.spec  # crops, mode, steps, noise_seed, fusion weights

    @classmethod
    def from_options(cls, options: scorers.ScoreOptions, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Scorer:
        """The scorer of the CLI's options (`diffv2iqa-trt score` opens its model here)."""
        allow_pillow_pixels(max_pixels)  # Pillow's own (process-wide) limit must not refuse what max_pixels allows
        return cls(scorers.open_scorer(options), max_pixels)

    @property
    def pipeline(self) -> ScoringPipeline:
        if self._opened is None:
            raise ConfigError("this Scorer is closed; load a new one with diffv2iqa_trt.load(...)")
        return self._opened.pipeline

    @property
    def closed(self) -> bool:
        return self._opened is None

    def score(self, inputs: ImageInput | Iterable[ImageInput], *, chunk: int = DEFAULT_IMAGES_PER_CHUNK,
              progress: Progress | None = None) -> list[ScoreResult]:
        """One ScoreResult per image, in input order. `inputs`: one input or a list of them (see the module doc);
        every entry's type is checked before anything is scored. `progress(n)` is called after each chunk with the
        number of images it covered."""
        return list(self.iter_scores(_as_list(inputs), chunk=chunk, progress=progress))

    __call__ = score  # pyiqa style: metric(image)

    def iter_scores(self, inputs: Iterable[ImageInput], *, chunk: int = DEFAULT_IMAGES_PER_CHUNK,
                    progress: Progress | None = None) -> Iterator[ScoreResult]:
        """Results as they are ready, one per image in input order, for a stream of inputs (a generator, a file
        list read lazily): at most `chunk` images (or about DEFAULT_PIXELS_PER_CHUNK decoded pixels) are held at a
        time. An entry of a wrong type raises TypeError when it is reached; results before it were yielded."""
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ConfigError(f"chunk must be a positive integer, got {chunk!r}")
        if _is_input(inputs) or isinstance(inputs, bytes | bytearray):
            raise TypeError("iter_scores takes an iterable of inputs (a list, a generator); use score() for one input")
        pipeline = self.pipeline
        sources: list[str] = []
        units: list[list[WorkUnit] | str] = []  # per image of the chunk: its work units, or its error
        pixels = 0
        for item in _items(inputs, self.max_pixels):
            sources.append(item.source)
            try:
                rgb = item.decode()
                units.append(pipeline.prepare(rgb))
                pixels += rgb.shape[0] * rgb.shape[1]
            except (ImageDecodeError, ImageSizeError) as exc:
                units.append(exc.reason)
            if len(units) >= chunk or pixels >= DEFAULT_PIXELS_PER_CHUNK:
                yield from self._flush(pipeline, sources, units, progress)
                pixels = 0
        if units:
            yield from self._flush(pipeline, sources, units, progress)

    @staticmethod
    def _flush(pipeline: ScoringPipeline, sources: list[str], units: list[list[WorkUnit] | str],
               progress: Progress | None) -> Iterator[ScoreResult]:
        scores = iter(pipeline.score_prepared([u for u in units if not isinstance(u, str)]))
        results = [_result(source, u if isinstance(u, str) else next(scores)) for source, u in zip(sources, units,
                                                                                                 strict=True)]
        count = len(results)
        sources.clear()
        units.clear()
        if progress is not None:
            progress(count)
        yield from results

    def score_files(self, files: Sequence[str | os.PathLike[str]], *,
                    progress: Progress | None = None) -> list[FileResult]:
        """`score` over file paths, as the runtime's FileResult rows (the path kept exactly, for JSON and CSV)."""
        from .runtime.scoring import FileResult

        return [FileResult(Path(f), r.image_score, r.error)
                for f, r in zip(files, self.score(list(files), progress=progress), strict=True)]

    def score_prepared(self, prepared: Sequence[Sequence[WorkUnit]]) -> list[ImageScore]:
        """Images already decoded and cut into work units (`runtime.crops.prepare`, as score-dataset's decoding
        stage does on other workers): one ImageScore per image, in order."""
        return self.pipeline.score_prepared(prepared)

    def close(self) -> None:
        """Release the backend: a GPU stream pipeline frees its buffers, graphs, contexts and streams; a host pipeline
        drops its sessions (ONNX Runtime) or model (torch) and its noise banks. Idempotent; scoring afterwards raises
        ConfigError."""
        opened, self._opened = self._opened, None
        if opened is None:
            return
        pipeline: Any = opened.pipeline
        close = getattr(pipeline, "close", None)
        if callable(close):
            close()
        for cache in ("_banks", "_step_inputs"):
            held = getattr(pipeline, cache, None)
            if isinstance(held, dict):
                held.clear()

    def __enter__(self) -> Scorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"backend={self.backend} precision={self.precision}"
        return f"<Scorer {self.label!r} {state} crops={self.spec.crops} mode={self.spec.mode}>"


def _result(source: str, outcome: ImageScore | str) -> ScoreResult:
    if isinstance(outcome, str):
        return ScoreResult(None, None, None, 0, outcome, source)
    checked = checked_result(Path(source), outcome)  # a NaN or infinite score is the image's error
    s = checked.score
    if s is None:
        return ScoreResult(None, None, None, 0, checked.error, source)
    return ScoreResult(s.score, s.vcg, s.vda, s.crops, None, source)


# ------------------------------------------------------------------------------------------------------ front door


def load(bundle: str | os.PathLike[str] | None = None, backend: str | None = None, precision: str | None = None, *,
         checkpoint: str | os.PathLike[str] | None = None, preset: str | None = None, crops: str | None = None,
         mode: str | None = None, seed: int | None = None, batch_size: int = 8, device: str = "cpu",
         threads: int | None = None, streams: bool | None = None, cuda_graph: bool | None = None,
         steps: int | None = None, lean_runtime: str | os.PathLike[str] | None = None,
         max_pixels: int = DEFAULT_MAX_PIXELS) -> Scorer:
    """A Scorer, with the options of `diffv2iqa-trt score` (same names, same defaults, same checks).

    `bundle`: a folder written by `diffv2iqa-trt build`; without one, the PyTorch reference runs `checkpoint`, a
    `preset` with seeded random weights, or the embedded demo model (tiny, trained on synthetic distortions).
    `backend`: None (the default: onnxruntime with a bundle, bit-reproducible, its thread count measured once per
    machine and bundle unless `threads` is given; torch without), "auto" (with a bundle: the fastest CPU backend and
    precision inside the bundle's accuracy budget, see auto_choice; the Scorer's `notes` say what was chosen),
    "torch", "onnxruntime", "openvino", or on a GPU "torch-cuda" and "tensorrt". `precision`: a precision plan of
    the bundle's graphs (default: the plan it was built with), or "auto". Options that do not apply (e.g. `precision`
    without a bundle) raise ConfigError; a missing package or device raises BackendError or DependencyError.
    """
    if backend is not None and not isinstance(backend, str):
        raise TypeError(f"backend must be a string, got {type(backend).__name__}")
    if backend is not None and backend != AUTO and backend not in backend_names():
        raise ConfigError(f"unknown backend {backend!r}; use {AUTO} or one of {', '.join(backend_names())}")
    if bundle is None and backend == AUTO:
        backend = None  # without a bundle only the torch reference runs
    options = scorers.ScoreOptions(
        bundle=None if bundle is None else Path(bundle), backend=backend,
        precision=precision, checkpoint=None if checkpoint is None else Path(checkpoint), preset=preset, crops=crops,
        mode=mode, steps=steps, seed=seed, batch_size=batch_size, device=device, threads=threads, streams=streams,
        cuda_graph=cuda_graph, lean_runtime=None if lean_runtime is None else Path(lean_runtime))
    return Scorer.from_options(options, max_pixels=max_pixels)


def create_metric(metric_name: str = METRIC_NAME, *, as_loss: bool = False, device: str | None = None,
                  **options: Any) -> Scorer:
    """pyiqa's `create_metric("...", device=...)` for this model: the same as `load(**options)`.
    `metric_name` must be "diffv2iqa"; `as_loss` is refused (the deployed graphs are inference only, no gradients);
    `device` None means "cpu"."""
    if metric_name.lower() != METRIC_NAME:
        raise ConfigError(f"unknown metric {metric_name!r}: this package provides {METRIC_NAME!r} only")
    if as_loss:
        raise ConfigError("as_loss=True is not supported: the scorer runs inference graphs without gradients")
    return load(device=device or "cpu", **options)
