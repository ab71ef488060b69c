"""The `diffv2iqa-trt` command line: a thin layer over the library API."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shlex
import time
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from . import __version__
from .calibration.dataset import MIN_IMAGES
from .errors import EXIT_FAILED, EXIT_USAGE, ConfigError, DiffV2IQAError
from .reference import backends as _reference_backends  # noqa: F401  (registers torch, torch-cuda; imports no torch)

app = typer.Typer(
    help="Deploy and run the DiffV2IQA no-reference image-quality model (PyTorch reference, ONNX, TensorRT).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Plain help (click's): it wraps option names and paths at any width, where rich's option table cuts them
    # ("--allow-lint-fa…") on an 80-column terminal.
    rich_markup_mode=None,
)
# No emoji codes either: a file named ":smile:.png" must print as itself, in tables and in JSON alike.
out = Console(highlight=False, soft_wrap=True, emoji=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)

# Characters that would act on the terminal rather than print: C0/C1 controls (ESC starts colour and hyperlink
# sequences) and the bidirectional overrides that reorder what is shown.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_CONTROL_IN_MESSAGE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _text(value: object) -> str:
    """Valid Unicode text of a value: the bytes of a file name that are not UTF-8 (surrogate escapes) as \\xNN."""
    text = os.fsdecode(value) if isinstance(value, os.PathLike) else str(value)
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


class _LineStatus:
    """Progress without a terminal (output redirected, CI logs): each new message as a line on stderr, with the
    seconds since the start, instead of a spinner that prints nothing there."""

    def __init__(self) -> None:
        self.start, self.last = time.perf_counter(), ""

    def update(self, message: str) -> None:
        if message != self.last:
            self.last = message
            # Messages arrive escaped for rich (through _show), as the spinner takes them.
            err.print(escape(f"[{time.perf_counter() - self.start:6.1f} s] ") + message, highlight=False)


@contextlib.contextmanager
def _status(label: str) -> Iterator[Any]:
    """A spinner on a terminal, progress lines elsewhere; both have `update(message)`."""
    if err.is_terminal:
        with err.status(label) as status:
            yield status
    else:
        lines = _LineStatus()
        lines.update(f"{escape(label)}: started")
        yield lines


def _show(value: object, *, message: bool = False) -> str:
    """A file name, label or message as it must be printed through rich: verbatim, never as markup, never as
    terminal control sequences (controls become \\xNN; a message keeps its line breaks and tabs)."""
    pattern = _CONTROL_IN_MESSAGE if message else _CONTROL
    text = pattern.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), _text(value))
    return escape(text)


def _json_safe(value: Any) -> Any:
    """NaN and infinity become null, so the JSON printed is JSON (json.dumps(allow_nan=False) holds)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _print_json(doc: Any) -> None:
    out.print(json.dumps(_json_safe(doc), indent=2, allow_nan=False), markup=False)


MAX_BATCH = 1024  # crops per graph call (and bench's images per iteration): beyond this only memory grows
MAX_THREADS = 1024
DEFAULT_MAX_PIXELS = 100_000_000  # runtime.images.DEFAULT_MAX_PIXELS (not imported: `--help` stays NumPy-free)


class OutputFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


class PresetName(str, Enum):
    tiny = "tiny"
    paper = "paper"


def _fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    err.print(f"[bold red]error:[/] {_show(message, message=True)}")
    return typer.Exit(code)


def _failed(exc: DiffV2IQAError) -> typer.Exit:
    """An expected failure of the library: its message, and the exit code its kind carries."""
    return _fail(str(exc), exc.exit_code)


def _version(value: bool) -> None:
    if value:
        out.print(f"diffv2iqa-trt {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Deploy and run the DiffV2IQA no-reference image-quality model."""


def _fmt(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.6f}"


class BackendName(str, Enum):
    auto = "auto"
    torch = "torch"
    onnxruntime = "onnxruntime"
    openvino = "openvino"
    torch_cuda = "torch-cuda"
    tensorrt = "tensorrt"


class OnOff(str, Enum):
    on = "on"
    off = "off"


@app.command()
def score(
    paths: Annotated[list[Path], typer.Argument(help="Image files or directories (searched recursively).")],
    bundle: Annotated[Path | None, typer.Option(help="A bundle written by `build`; scores come from its graphs.")]
    = None,
    backend: Annotated[BackendName | None, typer.Option(
        help="torch (the reference), onnxruntime, openvino (CPU; the `openvino` extra; --precision bf16 on CPUs with "
             "AVX-512 BF16 or AMX), or the GPU stream backends torch-cuda (the PyTorch graphs on CUDA streams and "
             "graphs) and tensorrt (the bundle's engines; never run in this project so far); auto: the fastest CPU "
             "choice whose measured accuracy keeps the bundle's budget (timed once per machine and bundle, cached; "
             "one line on stderr says what ran). Default: onnxruntime with --bundle (bit-reproducible; its thread "
             "count measured once unless --threads), torch without.")] = None,
    precision: Annotated[str | None, typer.Option(
        help="Precision plan of the bundle's graphs for onnxruntime: fp32, fp16, int8, int8-cpu or per graph "
             "(restore_step=fp16,vcg=fp16,vda=int8); for openvino: fp32, bf16 (the fp32 graphs with OpenVINO's "
             "bf16 hint) or int8-cpu (the bundle's int8-cpu variants on OpenVINO's integer kernels), also per "
             "graph; auto: the fastest plan inside the budget (as --backend auto). Default: "
             "the plan the bundle was built with (fp32 if none). On the CPU, int8 runs the int8-cpu variant where "
             "the bundle has one.")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="Native checkpoint (.safetensors). Default: the embedded "
                                                         "demo model (tiny, trained on synthetic distortions; see "
                                                         "weights/MODEL_CARD.md).")] = None,
    preset: Annotated[PresetName | None, typer.Option(help="Model preset with seeded random (untrained) weights, "
                                                           "instead of a checkpoint.")] = None,
    crops: Annotated[str | None, typer.Option(help="Crop policy: center, five, grid:N or resize224 "
                                                   "(default: the bundle's, else center).")] = None,
    mode: Annotated[str | None, typer.Option(help="crops: restore only the crops; faithful: restore the whole image "
                                                  "(resized to a multiple of 16) and crop afterwards "
                                                  "(default: the bundle's, else crops).")] = None,
    steps: Annotated[int | None, typer.Option(help="Denoising steps (default: the model's schedule; "
                                                   "fixed by the bundle).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the deterministic noise bank (default: the bundle's, "
                                                  "else 0).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=MAX_BATCH, help="Crops per batch.")] = 8,
    device: Annotated[str, typer.Option(help="cpu or cuda (torch); cpu, cuda or tensorrt (onnxruntime EPs).")]
    = "cpu",
    threads: Annotated[int | None, typer.Option(min=1, max=MAX_THREADS, help="CPU threads for onnxruntime and "
                                                                             "openvino.")]
    = None,
    max_pixels: Annotated[int, typer.Option(min=1, help="Refuse images whose header declares more pixels than this "
                                                        "(checked before decoding; default 100 megapixels).")]
    = DEFAULT_MAX_PIXELS,
    fmt: Annotated[OutputFormat, typer.Option("--format", help="Output format.")] = OutputFormat.table,
    streams: Annotated[OnOff | None, typer.Option(help="torch-cuda/tensorrt: run VCG and VDA on two CUDA streams "
                                                       "(default on).")] = None,
    cuda_graph: Annotated[OnOff | None, typer.Option(help="torch-cuda/tensorrt: capture the whole loop and both "
                                                          "branches as one CUDA graph per batch shape and replay it "
                                                          "(default on).")] = None,
    lean_runtime: Annotated[Path | None, typer.Option(
        help="tensorrt: the lean runtime library (libnvinfer_lean.so.<major>) that engines built with "
             "--exclude-lean-runtime need.")] = None,
) -> None:
    """Score images. Bad files are reported and skipped; the exit code is 1 if any file could not be scored."""
    from .api import Scorer
    from .runtime.images import expand_paths
    from .runtime.scoring import results_csv, results_json
    from .scorers import ScoreOptions

    options = ScoreOptions(bundle=bundle, backend=backend.value if backend else None, precision=precision,
                           checkpoint=checkpoint, preset=preset.value if preset else None, crops=crops, mode=mode,
                           steps=steps, seed=seed, batch_size=batch_size, device=device, threads=threads,
                           streams=None if streams is None else streams is OnOff.on,
                           cuda_graph=None if cuda_graph is None else cuda_graph is OnOff.on,
                           lean_runtime=lean_runtime)
    try:
        scorer = Scorer.from_options(options, max_pixels=max_pixels)
    except DiffV2IQAError as exc:
        raise _failed(exc) from None
    for line in scorer.notes:  # what auto chose and why; an unmeasured bf16 plan
        err.print(_show(line, message=True))
    files = expand_paths(list(paths))
    if not files:
        raise _fail("no images found in the given paths")
    if not scorer.trained:
        err.print(f"[yellow]warning:[/] model {_show(scorer.label)}: scores are not meaningful quality ratings")

    progress = Progress(TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        console=err, disable=len(files) < 2, transient=True)
    with scorer, progress:
        task = progress.add_task("score", total=len(files))
        try:
            results = scorer.score_files(files, progress=lambda n: progress.advance(task, n))
        except DiffV2IQAError as exc:
            raise _failed(exc) from None

    spec = scorer.spec
    if fmt is OutputFormat.json:
        header = {"model": {"label": scorer.label, "trained": scorer.trained}, "backend": scorer.backend,
                  "precision": scorer.precision, "crops": spec.crops, "mode": spec.mode, "steps": spec.steps,
                  "noise_seed": spec.noise_seed}
        _print_json(results_json(results, header))
    elif fmt is OutputFormat.csv:
        out.print(results_csv(results, scorer.label), end="", markup=False)
    else:
        _print_scores(results, scorer.label, scorer.backend, spec)
    failed = [r for r in results if r.error is not None]
    for r in failed:
        err.print(f"[bold red]error:[/] {_show(r.path)}: {_show(r.error or '', message=True)}")
    if failed:
        err.print(f"{len(failed)} of {len(files)} file(s) could not be scored")
        raise typer.Exit(EXIT_FAILED)


def _print_scores(results: list[Any], label: str, backend: str, spec: Any) -> None:
    table = Table(title=f"DiffV2IQA scores, model {_show(label)}",
                  caption=_show(f"backend={backend} crops={spec.crops} mode={spec.mode} steps={spec.steps} "
                                f"seed={spec.noise_seed}"))
    table.add_column("image", overflow="fold")
    for col in ("score", "VCG", "VDA", "crops"):
        table.add_column(col, justify="right")
    for r in results:
        row = r.row()
        if r.error is None:
            table.add_row(_show(row["path"]), _fmt(row["score"]), _fmt(row["vcg"]), _fmt(row["vda"]),
                          str(row["crops"]))
        else:
            table.add_row(_show(row["path"]), "[red]error[/]", "", "", "")
    out.print(table)


class BuildTarget(str, Enum):
    onnx = "onnx"
    tensorrt = "tensorrt"
    auto = "auto"


@app.command()
def build(
    out_dir: Annotated[Path, typer.Option("--out", help="Bundle directory to write.")],
    target: Annotated[BuildTarget, typer.Option(
        help="onnx: the ONNX bundle (graphs and precision variants). tensorrt: also a strongly typed TensorRT engine "
             "for every fp32/fp16/int8 variant, built on this machine's GPU (needs TensorRT and an NVIDIA GPU; "
             "exit 2 without them). auto: tensorrt where TensorRT and a GPU are usable, otherwise onnx, saying "
             "so.")] = BuildTarget.onnx,
    checkpoint: Annotated[Path | None, typer.Option(help="Native checkpoint (.safetensors). Default: the embedded "
                                                         "demo model (tiny, trained on synthetic distortions; see "
                                                         "weights/MODEL_CARD.md).")] = None,
    preset: Annotated[PresetName | None, typer.Option(help="Model preset with seeded random (untrained) weights, "
                                                           "instead of a checkpoint.")] = None,
    crops: Annotated[str, typer.Option(help="Default crop policy recorded in the bundle.")] = "center",
    mode: Annotated[str, typer.Option(help="Default restoration mode recorded in the bundle.")] = "crops",
    seed: Annotated[int, typer.Option(help="Noise-bank seed recorded in the bundle.")] = 0,
    opset: Annotated[int, typer.Option(help="ONNX opset (18 or newer).")] = 18,
    opt_batch: Annotated[int, typer.Option(min=1, help="TensorRT profile: optimal batch.")] = 8,
    max_batch: Annotated[int, typer.Option(min=1, help="TensorRT profile: largest batch.")] = 16,
    max_size: Annotated[int, typer.Option(help="TensorRT profile: largest restoration height/width "
                                               "(faithful mode).")] = 512,
    steps: Annotated[int | None, typer.Option(help="Denoising steps baked into the bundle (default: the model's "
                                                   "schedule, 50 for paper).")] = None,
    no_checkpoint: Annotated[bool, typer.Option("--no-checkpoint", help="Do not embed the weights as "
                                                "model.safetensors (the torch backend then cannot run).")] = False,
    allow_lint_failures: Annotated[bool, typer.Option(help="Write the bundle even if the TensorRT lint fails.")]
    = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing bundle at --out.")] = False,
    precision: Annotated[str, typer.Option(
        help="Precision plan: fp32, fp16, int8, int8-cpu, best, or per graph, e.g. "
             "restore_step=fp16,vcg=fp16,vda=int8 (graphs not named stay fp32). best searches, per graph, the lowest "
             "precision whose scores stay within the budget on --eval-images. int8 also makes an int8-cpu variant "
             "for the CPU backend. bf16 (with --from-bundle and --eval-images, on a CPU with AVX-512 BF16 or AMX): "
             "measure OpenVINO's bf16 hint on the FP32 graphs, and the bundle's int8-cpu variants on OpenVINO, and "
             "record their accuracy and the plan within the budget, for `score --backend auto`.")] = "fp32",
    from_bundle: Annotated[Path | None, typer.Option(
        "--from-bundle", help="Add the --precision variants to this bundle's FP32 graphs instead of exporting "
                              "(--out may be the same bundle, with --overwrite).")] = None,
    calib_images: Annotated[list[Path] | None, typer.Option(
        help=f"Calibration images (files or folders, repeatable; at least {MIN_IMAGES}): needed by every "
             "precision but fp32.")] = None,
    eval_images: Annotated[list[Path] | None, typer.Option(
        help="Evaluation images, disjoint from the calibration images (50 or more recommended): needed by best; "
             "with other plans, each variant's score deltas are measured on them too.")] = None,
    calib_crops: Annotated[int, typer.Option(help="Calibration crops recorded at most.")] = 64,
    calib_methods: Annotated[str, typer.Option(help="INT8 calibration methods tried (the better one is kept): "
                                                    "entropy, max, or both comma-separated.")] = "entropy,max",
    min_srcc: Annotated[float, typer.Option(help="Accuracy budget: SRCC against the FP32 scores.")] = 0.995,
    max_delta: Annotated[float, typer.Option(help="Accuracy budget: max |Δscore| as a fraction of the FP32 scores' "
                                                  "range.")] = 0.02,
    timing_cache: Annotated[Path | None, typer.Option(
        help="TensorRT timing cache file, read and updated by every engine build (default: one per TensorRT "
             "version and GPU under ~/.cache/diffv2iqa-trt/timing).")] = None,
    opt_level: Annotated[int, typer.Option(help="TensorRT builder optimisation level, 0-5: higher builds slower "
                                                "and may run faster.")] = 3,
    workspace_mib: Annotated[int | None, typer.Option(help="TensorRT workspace limit in MiB (default: TensorRT's, "
                                                           "the GPU's memory).")] = None,
    version_compatible: Annotated[bool, typer.Option(help="Build version-compatible engines: they load on later "
                                                          "TensorRT releases of the same major.")] = False,
    exclude_lean_runtime: Annotated[bool, typer.Option(help="With --version-compatible: do not embed the lean "
                                                            "runtime in the engines (smaller plans; loading them "
                                                            "needs --lean-runtime).")] = False,
    lean_runtime: Annotated[Path | None, typer.Option(
        help="With --exclude-lean-runtime: the lean runtime library of this TensorRT (libnvinfer_lean.so.<major>), "
             "which TensorRT needs to load (and inspect) the engines it builds.")] = None,
    fallback_allowance: Annotated[float, typer.Option(
        help="Precision census: how much larger than the ONNX asks (fraction of compute layers) the FP32 share of "
             "an engine, or how much smaller its INT8 share, may be before the build fails.")] = 0.05,
) -> None:
    """Export the three graphs, lint them for TensorRT, check them against torch and write a bundle; with
    --precision, add FP16/INT8 variants made from a calibration set and measured against the FP32 graphs; with
    --target tensorrt, add a TensorRT engine for each variant and check its precision census."""
    from .assemble import BuildOptions, BuildRequest, VariantRequest, output_errors, prepare_build
    from .config import ScoringConfig
    from .engine.builder import BuildSettings

    try:
        request = BuildRequest(
            out=out_dir, precision=precision, target=target.value, checkpoint=checkpoint,
            preset=preset.value if preset else None, from_bundle=from_bundle,
            options=BuildOptions(scoring=ScoringConfig(crops=crops, mode=mode, noise_seed=seed), opset=opset,
                                 opt_batch=opt_batch, max_batch=max_batch, max_size=max_size, steps=steps,
                                 include_checkpoint=not no_checkpoint, allow_lint_failures=allow_lint_failures,
                                 overwrite=overwrite),
            variants=VariantRequest(calibration_images=tuple(calib_images or ()),
                                    evaluation_images=tuple(eval_images or ()), max_crops=calib_crops,
                                    methods=calib_methods, min_srcc=min_srcc, max_delta=max_delta),
            engines=BuildSettings(opt_level=opt_level, workspace_mib=workspace_mib,
                                  version_compatible=version_compatible, exclude_lean_runtime=exclude_lean_runtime,
                                  lean_runtime=lean_runtime, timing_cache=timing_cache,
                                  fallback_allowance=fallback_allowance))
        job = prepare_build(request, note=lambda m: err.print(f"[yellow]note:[/] {_show(m, message=True)}"))
        if job.untrained is not None:
            err.print(f"[yellow]warning:[/] model {_show(job.untrained)}")
        with _status(job.label) as status:
            done = job.run(progress=lambda m: _progress(status, m))
    except DiffV2IQAError as exc:
        raise _failed(exc) from None
    if done.exported is not None:
        _print_lint(done.exported.lint)
        table = Table(title="ONNX Runtime (CPU) vs torch, example inputs at batch 2")
        for col in ("graph", "output", "max |Δ|", "max rel"):
            table.add_column(col, justify="left" if col in ("graph", "output") else "right")
        for e in output_errors(done.exported):
            table.add_row(_show(e.graph), _show(e.output), f"{e.max_abs:.3g}", f"{e.max_rel:.3g}")
        out.print(table)
    if done.bf16:
        _print_bf16(done.path)
    if done.variants:
        _print_precision(done.path)
    if done.engines:
        _print_engines(done.path)
    out.print(f"wrote bundle {_show(done.path)}")


def _print_bf16(path: Path) -> None:
    from .bundle import load_bundle
    from .precision.bf16 import bf16_record

    r = bf16_record(load_bundle(path))
    if r is None:
        return
    over = "" if r.within_budget else " (over the budget: " + "; ".join(r.over_budget) + ")"
    out.print(f"OpenVINO plan {_show(r.plan_label)}: SRCC {r.plan_scores['srcc']:.5f}, max |Δ| "
              f"{100 * r.plan_scores['max_abs_fraction']:.2f} % of the score range vs fp32{_show(over)}")


def _progress(status: Any, message: str) -> None:
    """Spinner text for every step; finished engines also get a line of their own (time per engine)."""
    if " built in " in message:
        err.print(_show(message))
    status.update(_show(message))


def _print_engines(path: Path) -> None:
    from .bundle import load_bundle
    from .bundle.summary import engine_rows

    table = Table(title="TensorRT engines (strongly typed) and their precision census")
    for col in ("graph", "precision", "MiB", "build s", "FP32 share (ONNX)", "INT8 share (ONNX)", "census"):
        table.add_column(col, justify="left" if col in ("graph", "precision", "census") else "right")
    for row in engine_rows(load_bundle(path)):
        table.add_row(*(_show(str(c)) for c in row))
    out.print(table)


def _print_precision(path: Path) -> None:
    from .benchmarks.precision_report import PrecisionReport
    from .bundle import load_bundle

    chosen = load_bundle(path).manifest.precision
    if chosen is None:
        return
    report = PrecisionReport.from_section(chosen)
    table = Table(title=f"Precision variants (plan: {_show(', '.join(f'{g}={p}' for g, p in report.plan.items()))})")
    for col in ("graph", "variant", "tensor max |Δ|", "score max |Δ|", "% of range", "SRCC", "budget"):
        table.add_column(col, justify="left" if col in ("graph", "variant", "budget") else "right",
                         overflow="fold")
    for graph, variant, tensor, _cos, score, frac, srcc_, verdict in report.report.rows():
        table.add_row(*(_show(c) for c in (graph, variant, tensor, score, frac, srcc_,
                                           "over" if verdict.startswith("over") else verdict)))
    out.print(table)
    scores = report.report.plan_scores
    if scores is not None and scores.measured:
        out.print(f"plan end to end on {scores.images} images: max |Δ| {scores.max_abs:.3g} "
                  f"({100 * (scores.max_abs_fraction or 0.0):.2f} % of range), SRCC {scores.srcc:.5f}")


def _print_lint(lint: dict[str, Any]) -> None:
    table = Table(title="TensorRT ONNX-parser compatibility lint")
    for col in ("graph", "TensorRT", "result", "problems"):
        table.add_column(col)
    for graph, by_major in lint.items():
        for major, report in by_major.items():
            bad = [r for r in report.rows if r.status != "ok"]
            text = "; ".join(f"{r.status}: {r.subject}: {r.detail}" for r in bad[:5]) or "-"
            table.add_row(_show(graph), _show(f"{major}.x"), "[green]ok[/]" if report.ok else "[red]FAIL[/]",
                          _show(text))
    out.print(table)


@app.command()
def inspect(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory (or its manifest.json).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole summary as JSON (every lint row, "
                                                         "candidate and value; the text form counts long lists).")]
    = False,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip the sha256 check of every file.")] = False,
) -> None:
    """Summarise a bundle: model, pipeline, graphs, files, lint and parity. Verifies every file's sha256."""
    from .bundle import load_bundle
    from .bundle.summary import bundle_summary

    try:
        b = load_bundle(bundle, verify_hashes=not no_verify)
    except DiffV2IQAError as exc:
        raise _failed(exc) from None
    summary = bundle_summary(b)
    if as_json:
        _print_json(summary)
        return
    _print_summary(summary)


SUMMARY_LIST_ITEMS = 8  # a longer list, or one of records, is counted in the text summary (all of it: --json)
SUMMARY_TEXT = 160  # characters of one value shown in the text summary


def _print_summary(summary: dict[str, Any], prefix: str = "") -> None:
    """The bundle summary as an indented outline that a person can read: short lists one item a line, long lists and
    lists of records (lint rows, candidates) as a count, long values cut; `--json` prints everything."""
    for key, value in summary.items():
        name = _show(key)
        if isinstance(value, dict):
            out.print(f"{prefix}[bold]{name}[/]")
            _print_summary(value, prefix + "  ")
        elif isinstance(value, list | tuple) and value and (len(value) > SUMMARY_LIST_ITEMS or any(
                isinstance(v, dict | list | tuple) for v in value)):
            out.print(f"{prefix}{name}: {len(value)} entries (all of them: --json)")
        elif isinstance(value, list | tuple) and value:
            out.print(f"{prefix}{name}:")
            for item in value:
                out.print(f"{prefix}  - {_show(_cut(str(item)))}")
        else:
            out.print(f"{prefix}{name}: {_show(_cut(str(value)))}")


def _cut(text: str) -> str:
    return text if len(text) <= SUMMARY_TEXT else text[:SUMMARY_TEXT - 20] + f"… ({len(text)} characters: --json)"


def _invocation(ctx: typer.Context) -> str:
    """The command line that made a report, rebuilt from the parsed options (sys.argv is not ours under tests)."""
    parts = ["diffv2iqa-trt", ctx.info_name or ""]
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        if value is None or value is False or not param.opts:
            continue
        flag = param.opts[0]
        if value is True:
            parts.append(flag)
            continue
        for v in value if isinstance(value, list | tuple) else [value]:
            parts += [flag, _text(v.value if isinstance(v, Enum) else v)]  # valid text even for non-UTF-8 names
    return shlex.join(parts)


@app.command()
def parity(
    ctx: typer.Context,
    bundle: Annotated[Path, typer.Option(help="Bundle to check.")],
    images: Annotated[list[Path], typer.Option(help="Image files or directories (repeatable).")],
    labels: Annotated[Path | None, typer.Option(help="CSV with columns image,score (or mos): also report SRCC/PLCC "
                                                     "against these labels.")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Report directory (JSON, Markdown, PNG).")]
    = Path("parity-report"),
    batch_size: Annotated[int, typer.Option(min=1, max=MAX_BATCH, help="Crops per batch.")] = 8,
    threads: Annotated[int | None, typer.Option(min=1, max=MAX_THREADS, help="CPU threads for onnxruntime and "
                                                                             "openvino.")]
    = None,
) -> None:
    """Score parity of every backend x precision in the bundle against the torch fp32 reference. Exits 1 when a
    variant breaks a gate of the manifest."""
    from .benchmarks.parity import read_labels, run_parity, write_report
    from .benchmarks.report_folder import check_report_folder
    from .bundle import load_bundle
    from .runtime.images import expand_paths

    try:
        check_report_folder(out_dir)  # before the run, not after it
        b = load_bundle(bundle)
        label_map = read_labels(labels) if labels else None
        files = expand_paths(list(images))
        with _status("parity") as status:
            report = run_parity(b, files, label_map, batch_size=batch_size, threads=threads,
                                progress=lambda m: status.update(f"parity: {_show(m)}"))
        paths = write_report(report, out_dir, invocation=_invocation(ctx))
    except DiffV2IQAError as exc:
        raise _failed(exc) from None
    table = Table(title=f"Parity against torch fp32, {report.images} images")
    for col in ("variant", "max |Δ|", "SRCC", "rank flips", "result"):
        table.add_column(col)
    for name, v in report.variants.items():
        m = v.metrics
        table.add_row(_show(name), f"{m.abs_error.max:.3g}", f"{m.srcc:.6f}", _show(m.rank_flips),
                      "[green]PASS[/]" if v.passed else f"[red]FAIL[/] {_show('; '.join(v.failures))}")
    out.print(table)
    out.print("wrote " + ", ".join(_show(p) for p in paths))
    if not report.passed:
        raise typer.Exit(EXIT_FAILED)


@app.command()
def bench(
    ctx: typer.Context,
    bundle: Annotated[Path, typer.Option(help="Bundle to measure.")],
    images: Annotated[list[Path] | None, typer.Option(help="An image or folder to score; repeat the option for "
                                                            "several (--images a.png --images b.png). Default: one "
                                                            "synthetic 256x256 image written to the report folder.")]
    = None,
    backends: Annotated[str, typer.Option(help="Comma-separated backends (torch, onnxruntime, and on a GPU "
                                                "torch-cuda, tensorrt), the first is the baseline of the ratios.")]
    = "torch,onnxruntime",
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes (crops) for the offline scenario.")]
    = "1,2,4,8",
    warmup: Annotated[int, typer.Option(min=0, help="Warm-up iterations per measurement.")] = 1,
    min_iters: Annotated[int, typer.Option(min=1, help="Minimum timed iterations per measurement.")] = 5,
    min_seconds: Annotated[float, typer.Option(min=0, help="Minimum timed seconds per measurement.")] = 2.0,
    offline_images: Annotated[int, typer.Option(min=1, max=MAX_BATCH, help="Images per offline iteration.")] = 8,
    threads: Annotated[int | None, typer.Option(min=1, max=MAX_THREADS, help="CPU threads (torch and "
                                                                              "onnxruntime).")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Report directory (JSON, Markdown, PNG).")]
    = Path("bench-report"),
    name: Annotated[str | None, typer.Option(help="Report file stem (default: bench_<model>).")] = None,
) -> None:
    """Latency (single stream) and throughput (offline) of the bundle on several backends, side by side."""
    from .benchmarks.bench import BenchSettings, bench_bundle

    try:
        settings = BenchSettings(backends=tuple(backends.split(",")),
                                 batch_sizes=_int_list(batch_sizes, "--batch-sizes"), warmup=warmup,
                                 min_iters=min_iters, min_seconds=min_seconds, threads=threads,
                                 offline_images=offline_images)
        with _status("bench") as status:
            report, paths = bench_bundle(bundle, images, settings, out_dir, name, invocation=_invocation(ctx),
                                         progress=lambda m: status.update(f"bench: {_show(m)}"))
    except DiffV2IQAError as exc:
        raise _failed(exc) from None
    table = Table(title=f"Single-stream latency, model {_show(report.model)}")
    for col in ("backend", "median s", "p99 s", "speed-up", "best images/s (offline)"):
        table.add_column(col)
    for v in report.backends.values():
        s = v.single_stream.no_decode
        table.add_row(_show(v.executor), f"{s.median:.4f}", f"{s.p99:.4f}", f"{v.speedup:.2f}x",
                      f"{v.best_images_per_s:.3f}")
    out.print(table)
    out.print("wrote " + ", ".join(_show(p) for p in paths))


def _int_list(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"{option} {text!r} is not a comma-separated list of integers, e.g. 1,2,4,8") from None
    if any(not 1 <= v <= MAX_BATCH for v in values):
        raise ConfigError(f"{option} {text!r}: every value must be between 1 and {MAX_BATCH}")
    return values


@app.command()
def calibrate(
    bundle: Annotated[Path, typer.Option(help="Bundle whose FP32 graphs record the calibration inputs.")],
    images: Annotated[list[Path], typer.Option(help="Image files or folders (searched recursively; repeatable): "
                                                    "at least 8 distinct images that decode.")],
    crops: Annotated[str | None, typer.Option(help="Crop policy: center, five, grid:N or resize224 "
                                                   "(default: the bundle's).")] = None,
    mode: Annotated[str | None, typer.Option(help="crops or faithful (default: the bundle's).")] = None,
    max_crops: Annotated[int, typer.Option(help="Crops recorded at most, taken round-robin over the images "
                                                "(at least 8). Paper size: about 32 MB per crop.")] = 64,
    rows_per_step: Annotated[int | None, typer.Option(min=1, help="Keep at most this many restore_step rows per "
                                                                  "step (default: every crop at every step).")]
    = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Cache folder (default: $XDG_CACHE_HOME/diffv2iqa-trt/"
                                                        "calibration, else ~/.cache/...).")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Record again; read and write no cache.")] = False,
    batch_size: Annotated[int, typer.Option(min=1, max=MAX_BATCH, help="Crops per batch while recording.")] = 8,
    device: Annotated[str, typer.Option(help="cpu or cuda (onnxruntime).")] = "cpu",
    threads: Annotated[int | None, typer.Option(min=1, max=MAX_THREADS, help="CPU threads for onnxruntime and "
                                                                             "openvino.")]
    = None,
    max_pixels: Annotated[int, typer.Option(min=1, help="Refuse images whose header declares more pixels than this "
                                                        "(default 100 megapixels).")] = DEFAULT_MAX_PIXELS,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary and per-step ranges as JSON.")] = False,
) -> None:
    """Record (or reuse) the calibration set of a bundle: restore_step inputs at every step, branch snapshot crops."""
    import warnings

    from .bundle import load_bundle
    from .calibration import calibration_set, step_ranges
    from .calibration.cache import CalibrationCacheWarning
    from .runtime.images import allow_pillow_pixels

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        console=err, transient=True)
    try:
        allow_pillow_pixels(max_pixels)
        b = load_bundle(bundle)
        with progress, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", CalibrationCacheWarning)
            task = progress.add_task("calibration", total=None)
            cs, reused = calibration_set(
                b, list(images), crops=crops, mode=mode, max_crops=max_crops, rows_per_step=rows_per_step,
                max_pixels=max_pixels, cache_dir=cache_dir, use_cache=not no_cache, device=device,
                batch_size=batch_size, threads=threads,
                progress=lambda stage, done, total: progress.update(task, description=stage, completed=done,
                                                                    total=total))
    except DiffV2IQAError as exc:
        raise _failed(exc) from None
    for w in caught:  # e.g. a cached set that failed its hash check and was recorded again
        err.print(f"[yellow]warning:[/] {_show(str(w.message), message=True)}")
    for skipped in cs.meta.get("skipped", []):
        err.print(f"[yellow]skipped:[/] {_show(skipped['file'])}: {_show(skipped['reason'], message=True)}")
    ranges = step_ranges(cs)
    counts = cs.meta["counts"]
    if as_json:
        _print_json({"key": cs.key, "reused": reused, "counts": counts, "pipeline": cs.meta["pipeline"],
                     "settings": cs.meta["settings"], "bytes": cs.nbytes,
                     "step_ranges": [r.__dict__ for r in ranges]})
        return
    table = Table(title="restore_step input y per step (one INT8 range serves every step)")
    for col in ("step", "gamma", "rows", "min", "max", "|max|", "share of largest |max|"):
        table.add_column(col, justify="right")
    for r in ranges:
        table.add_row(str(r.step), f"{r.gamma:.4f}", str(r.rows), f"{r.y_min:.3f}", f"{r.y_max:.3f}",
                      f"{r.y_absmax:.3f}", f"{r.share:.2f}")
    out.print(table)
    how = "reused cached" if reused else "recorded"
    out.print(f"{how} calibration set {cs.key[:16]}: {counts['images']} images, {counts['crops']} crops, "
              f"{counts['restore_rows']} restore_step rows, {cs.nbytes / 1e6:.1f} MB")


@app.command()
def info(
    preset: Annotated[PresetName, typer.Option(help="Model preset.")] = PresetName.tiny,
    crop_size: Annotated[int | None, typer.Option(min=1, help="Crop size for the MAC count (default: the "
                                                           "preset's).")] = None,
    image_size: Annotated[str | None, typer.Option(help="Restoration size HxW, e.g. 384x512 (default: one crop).")]
    = None,
    steps: Annotated[int | None, typer.Option(min=1, help="Denoising steps (default: the preset's schedule).")]
    = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Model summary: parameters and MACs per stage for a preset."""
    from .config import preset as make_preset
    from .model.summary import summarize
    from .runtime.pipeline import check_steps

    config = make_preset(preset.value)
    try:
        if steps is not None:
            check_steps(steps)
        restore_hw = _parse_hw(image_size) if image_size else None
        summary = summarize(config, crop_size=crop_size, restore_hw=restore_hw, steps=steps)
    except DiffV2IQAError as exc:
        raise _failed(exc) from None
    if as_json:
        _print_json(summary.to_dict())
        return
    params = Table(title=f"Parameters, preset {_show(config.name)}")
    params.add_column("part")
    params.add_column("parameters", justify="right")
    params.add_column("M", justify="right")
    for name, count in summary.params.items():
        params.add_row(_show(name), f"{count:,}", f"{count / 1e6:.2f}")
    out.print(params)
    macs = Table(title=f"MACs per stage, crop {summary.crop_size}x{summary.crop_size}, restoration "
                      f"{summary.restore_hw[0]}x{summary.restore_hw[1]}, {summary.steps} steps")
    macs.add_column("stage")
    macs.add_column("GMAC", justify="right")
    for name, count in summary.macs.items():
        macs.add_row(_show(name), f"{count / 1e9:.3f}")
    out.print(macs)


def _parse_hw(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"image size {text!r} is not HxW, e.g. 384x512") from None
    return h, w


@app.command()
def convert(
    sr3: Annotated[Path, typer.Option(help="Authors' SR3 generator checkpoint (*_gen.pth, a state dict).")],
    div2iqa: Annotated[Path, typer.Option(help="Authors' DIV2IQA checkpoint (a state dict).")],
    out_path: Annotated[Path, typer.Option("--out", help="Native checkpoint to write (.safetensors).")],
    preset: Annotated[PresetName, typer.Option(help="Architecture of the checkpoints.")] = PresetName.paper,
    feed_t1_as_t2: Annotated[bool, typer.Option(help="The IQA net was trained with y_t1 fed where y_t2 belongs "
                                                     "(the authors' code snapshot).")] = False,
    vcg_weight: Annotated[float | None, typer.Option(help="Fusion weight of VCG (default: the preset's).")] = None,
    vda_weight: Annotated[float | None, typer.Option(help="Fusion weight of VDA (default: the preset's).")] = None,
) -> None:
    """Convert the authors' checkpoints into one native checkpoint."""
    from .config import preset as make_preset
    from .model.checkpoint import convert_authors

    config = make_preset(preset.value).with_scoring_head(feed_t1_as_t2=feed_t1_as_t2, vcg_weight=vcg_weight,
                                                         vda_weight=vda_weight)
    try:
        convert_authors(config, sr3, div2iqa, out_path)
    except DiffV2IQAError as exc:
        raise _failed(exc) from None
    out.print(f"wrote {_show(out_path)}")


@app.command("score-dataset")
def score_dataset(
    source: Annotated[Path, typer.Argument(help="A folder of images (searched recursively), a list of paths (.txt: "
                                                "one per line; .csv: a header with the path column) or a Parquet "
                                                "table (.parquet) with a path column.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder of result parts (created; a re-run with the same "
                                                        "folder skips the images already scored there).")],
    bundle: Annotated[Path, typer.Option(help="A bundle written by `build`; every worker loads it once (it must be "
                                              "readable at this path on every node).")],
    workers: Annotated[int, typer.Option(min=1, max=MAX_THREADS, help="Scoring actors, each with its own copy of "
                                                                      "the bundle.")] = 1,
    batch_size: Annotated[int, typer.Option(min=1, max=MAX_BATCH, help="Images per batch handed to a worker.")]
    = 16,
    address: Annotated[str | None, typer.Option(help="An existing Ray cluster (auto, or host:6379, or "
                                                     "ray://host:10001). Default: a local Ray started for this run.")]
    = None,
    backend: Annotated[BackendName | None, typer.Option(
        help="onnxruntime (default, CPU), openvino (CPU), or tensorrt / torch-cuda (one GPU per worker; GPU workers "
             "were never run in this project).")] = None,
    precision: Annotated[str | None, typer.Option(help="Precision plan of the bundle's graphs (as for `score`).")]
    = None,
    crops: Annotated[str | None, typer.Option(help="Crop policy (default: the bundle's).")] = None,
    mode: Annotated[str | None, typer.Option(help="crops or faithful (default: the bundle's).")] = None,
    seed: Annotated[int | None, typer.Option(help="Noise seed (default: the bundle's).")] = None,
    crop_batch: Annotated[int, typer.Option(min=1, max=MAX_BATCH, help="Crops per graph call inside a worker "
                                                                       "(`score --batch-size`).")] = 8,
    device: Annotated[str, typer.Option(help="onnxruntime: cpu, cuda or tensorrt (cuda and tensorrt take a GPU "
                                             "per worker).")] = "cpu",
    threads: Annotated[int | None, typer.Option(min=1, max=MAX_THREADS, help="CPU threads (and Ray CPUs) per "
                                                                             "onnxruntime worker (default 1).")]
    = None,
    fmt: Annotated[str, typer.Option("--format", help="Parts as parquet or csv.")] = "parquet",
    path_column: Annotated[str, typer.Option(help="Column of paths in a CSV or Parquet list.")] = "path",
    part_rows: Annotated[int, typer.Option(min=1, help="Rows per result part (a part is also written after a "
                                                       "minute without one).")] = 1000,
    max_parts: Annotated[int | None, typer.Option(min=1, help="Stop after writing this many parts (the next run "
                                                              "resumes).")] = None,
    max_pixels: Annotated[int, typer.Option(min=1, help="Refuse images whose header declares more pixels than "
                                                        "this.")] = DEFAULT_MAX_PIXELS,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Score a collection on Ray Data, streaming, into Parquet (or CSV) parts: one row per image with its score or
    its error. Exit 0 when every image has a row (failed images are rows with status=error)."""
    from .scale import DatasetOptions, RunProgress
    from .scale import score_dataset as run_score_dataset
    from .scorers import ScoreOptions

    options = ScoreOptions(bundle=bundle, backend=backend.value if backend else None, precision=precision,
                           crops=crops, mode=mode, seed=seed, batch_size=crop_batch, device=device, threads=threads)
    job = DatasetOptions(workers=workers, batch_size=batch_size, address=address, fmt=fmt, path_column=path_column,
                         part_rows=part_rows, max_parts=max_parts, max_pixels=max_pixels)

    def report(p: RunProgress) -> None:
        err.print(f"part {p.parts}: {p.done}/{p.total} images done: {p.done - p.failed} scored, {p.failed} failed")

    try:
        summary = run_score_dataset(source, out_dir, options, job, progress=report)
    except DiffV2IQAError as exc:
        raise _failed(exc) from None
    if as_json:
        _print_json(summary.to_dict())
        return
    table = Table(title=f"score-dataset: {_show(summary.out)}", show_header=False)
    for name, value in (("paths listed", summary.listed), ("duplicates (scored once)", summary.duplicates),
                        ("already in the output", summary.skipped), ("scored now", summary.scored),
                        ("of which failed", summary.failed), ("left for a later run", summary.remaining),
                        ("parts written", summary.parts), ("workers", summary.workers),
                        ("seconds (start-up)", f"{summary.seconds:.1f} ({summary.startup_seconds:.1f})"),
                        ("images/s", f"{summary.images_per_s:.2f}")):
        table.add_row(name, _show(value))
    out.print(table)


def _register_training() -> None:
    """`diffv2iqa-trt train ...` (restorer, iqa, evaluate, curves); imported here so the CLI core stays small."""
    from .training.cli import train_app

    app.add_typer(train_app, name="train", help="Train the tiny demo model on synthetic distortions of real photos.")


def _register_serving() -> None:
    """`diffv2iqa-trt serve` and `export-triton` (diffv2iqa_trt/serving); their modules import PyTriton lazily."""
    from .serving.export_command import export_triton
    from .serving.serve_command import serve

    app.command("serve")(serve)
    app.command("export-triton")(export_triton)


_register_training()
_register_serving()


if __name__ == "__main__":
    app()
