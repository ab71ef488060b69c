"""The public Python API (diffv2iqa_trt.api): the README's examples run as written and give the scores of
`diffv2iqa-trt score --format json` on the same files and bundle, bit for bit; inputs of every kind, errors per
input, TypeError for arguments of the wrong type, the tensor conversion rule, and close() releasing the backend."""

from __future__ import annotations

import gc
import json
import re
import subprocess
import sys
import textwrap
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import diffv2iqa_trt as iqa
from diffv2iqa_trt import scorers
from diffv2iqa_trt.api import ScoreResult, tensor_to_rgb
from diffv2iqa_trt.cli import app
from diffv2iqa_trt.data.photos import photo
from diffv2iqa_trt.errors import ConfigError
from diffv2iqa_trt.runtime.pipeline import ImageScore
from diffv2iqa_trt.runtime.scoring import score_files

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "api-example.py"
README = ROOT / "README.md"
MARKERS = ("<!-- api-example:start -->", "<!-- api-example:end -->")
PHOTOS = ("astronaut", "chelsea", "coffee")  # RGB photographs of three sizes and aspect ratios
runner = CliRunner()


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The tiny model gains nothing from a second thread, and on a shared 2-core machine two threads wait on each
    other (a torch-reference crop: 0.5 s with one thread, up to 20 s with two under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Real photographs (scikit-image), shrunk to a long side of 160, as PNG files."""
    folder = tmp_path_factory.mktemp("api-photos")
    out = []
    for name in PHOTOS:
        img = Image.fromarray(photo(name))
        img.thumbnail((160, 160), Image.Resampling.BICUBIC)
        img.save(folder / f"{name}.png")
        out.append(folder / f"{name}.png")
    return out


@pytest.fixture(scope="module")
def bundle(auto_built: tuple[Any, str]) -> Path:
    return Path(auto_built[0].root)


def cli_rows(args: list[str]) -> dict[str, dict[str, Any]]:
    result = runner.invoke(app, ["score", *args, "--format", "json"])
    assert result.exit_code in (0, 1), result.output
    return {row["path"]: row for row in json.loads(result.stdout)["results"]}


@pytest.fixture(scope="module")
def cli(bundle: Path, files: list[Path]) -> dict[str, dict[str, Any]]:
    """What `diffv2iqa-trt score --bundle B --format json` prints for the photographs, by path."""
    return cli_rows([*map(str, files), "--bundle", str(bundle)])


@pytest.fixture(scope="module")
def scorer(bundle: Path) -> Any:
    with iqa.load(bundle) as s:
        yield s


def values(r: ScoreResult) -> tuple[Any, ...]:
    return r.score, r.vcg, r.vda, r.crops, r.error


def row_values(row: dict[str, Any]) -> tuple[Any, ...]:
    return row["score"], row["vcg"], row["vda"], row["crops"], row["error"]


# ----------------------------------------------------------------------------------------- the README's examples


def example_source() -> str:
    """The README's example: the Python block between the markers once the README has them, else docs/api-example.py
    (the block must be that file, verbatim)."""
    text = EXAMPLE.read_text()
    readme = README.read_text()
    if MARKERS[0] in readme:
        block = readme.split(MARKERS[0], 1)[1].split(MARKERS[1], 1)[0]
        code = re.search(r"```python\n(.*?)```", block, re.S)
        assert code is not None, "no ```python block between the api-example markers of README.md"
        assert code.group(1) == text, "README.md's API example differs from docs/api-example.py"
    return text


def run_example(bundle: Path, files: list[Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    source = example_source()
    for name, value in (("BUNDLE", str(bundle)), ("IMAGES", [str(f) for f in files])):
        pattern = re.compile(rf"^{name} = .*$", re.M)
        assert len(pattern.findall(source)) == 1, name
        source = pattern.sub(lambda _m, n=name, v=value: f"{n} = {v!r}", source)
    monkeypatch.chdir(tmp_path)  # "missing.png" is missing
    namespace: dict[str, Any] = {"__name__": "api_example"}
    exec(compile(source, str(EXAMPLE), "exec"), namespace)
    return namespace


def test_readme_example_gives_the_cli_scores_bit_for_bit(bundle, files, cli, monkeypatch, tmp_path, capsys):
    files = files[1:]  # two photographs of different sizes, as the example has
    ns = run_example(bundle, files, monkeypatch, tmp_path)
    expected = [row_values(cli[str(f)]) for f in files]
    assert all(e[4] is None and e[0] is not None for e in expected)
    for name in ("path_results", "from_pil", "from_numpy", "from_torch", "streamed"):
        got = [values(r) for r in ns[name]]
        assert got == expected, name  # floats compared with ==: the same bits
    assert [values(r) for r in ns["batch"]] == [expected[0]] * 2  # a batch of N gives N results
    assert [r.source for r in ns["path_results"]] == [str(f) for f in files]
    assert ns["scorer"].closed  # the with block closed it
    printed = capsys.readouterr().out.splitlines()
    assert printed == [f"{f} {e[0]:.6f} (VCG {e[1]:.6f}, VDA {e[2]:.6f})" for f, e in zip(files, expected, strict=True)]


def test_api_equals_the_runtime_file_scorer(bundle, files, scorer):
    """Independent of the CLI (which now calls the API): the runtime's own score_files over the same pipeline."""
    reference = score_files(scorers.open_scorer(scorers.ScoreOptions(bundle=bundle)).pipeline, files)
    assert [values(r) for r in scorer.score(files)] == [
        (r.score.score, r.score.vcg, r.score.vda, r.score.crops, None) for r in reference if r.score]


def test_default_model_without_bundle_equals_cli(files):
    """load() with no bundle is `score` without --bundle: the embedded demo model on the torch reference."""
    with iqa.load() as s:
        assert s.backend == "torch" and s.trained and "tiny" in s.label
        got = s.score(files[1])
    expected = cli_rows([str(files[1])])[str(files[1])]
    assert len(got) == 1 and got[0].ok and values(got[0]) == row_values(expected)


# --------------------------------------------------------------------------------------------------- inputs


def test_mixed_inputs_in_order_with_errors_per_item(scorer, files, cli, tmp_path):
    (tmp_path / "junk.png").write_bytes(b"not an image")
    rgb = np.asarray(Image.open(files[0]))
    inputs = [files[2], tmp_path / "junk.png", np.zeros((8, 8, 3), np.float32), Image.open(files[1]),
              torch.stack([torch.from_numpy(rgb.copy()).permute(2, 0, 1) / 255.0] * 2), rgb.astype(np.int16),
              torch.zeros(4, 8, 8), str(files[0])]
    results = scorer.score(inputs)
    assert len(results) == 9  # the tensor batch of 2 is two results
    ok = {i: values(r) for i, r in enumerate(results) if r.ok}
    assert ok == {0: row_values(cli[str(files[2])]), 3: row_values(cli[str(files[1])]),
                  4: row_values(cli[str(files[0])]), 5: row_values(cli[str(files[0])]),
                  8: row_values(cli[str(files[0])])}
    assert results[1].error == "not an image file Pillow can read (unknown or corrupt format)"
    assert results[2].error.startswith("expected an RGB image as an (H, W, 3) uint8 array, got shape (8, 8, 3) "
                                       "dtype float32; convert floats")
    assert "dtype int16" in results[6].error
    assert results[7].error == "expected an RGB tensor (3, H, W) or a batch (N, 3, H, W), got shape (4, 8, 8)"
    assert [r.source for r in results[:6]] == [
        str(files[2]), str(tmp_path / "junk.png"), "array (8, 8, 3) float32",
        f"PIL RGB image {Image.open(files[1]).size[0]}x{Image.open(files[1]).size[1]} from {files[1]}",
        f"tensor[0] of (2, 3, {rgb.shape[0]}, {rgb.shape[1]}) torch.float32",
        f"tensor[1] of (2, 3, {rgb.shape[0]}, {rgb.shape[1]}) torch.float32"]
    assert all(r.score is None and r.crops == 0 for r in results if not r.ok)


def test_pil_images_follow_the_file_decoder_rules(scorer, tmp_path):
    """A 16-bit grey PNG and an EXIF-rotated JPEG score the same opened with PIL as given by path; the caller's image
    is not changed."""
    grey = (photo("camera")[:120, :90, 0].astype(np.uint16) * 257 + 3)
    Image.fromarray(grey).save(tmp_path / "grey16.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to show
    Image.fromarray(photo("coffee")[:100, :150]).save(tmp_path / "rotated.jpg", exif=exif)
    for name in ("grey16.png", "rotated.jpg"):
        pil = Image.open(tmp_path / name)
        size, mode = pil.size, pil.mode
        by_path, by_pil = scorer.score([tmp_path / name, pil])
        assert by_path.ok and values(by_path) == values(by_pil), name
        assert (pil.size, pil.mode) == (size, mode)
    assert Image.open(tmp_path / "grey16.png").mode.startswith("I")  # the case the rule is about


def test_iter_scores_streams_in_chunks(scorer, files, cli):
    pulled: list[int] = []
    seen: list[int] = []

    def stream():
        for i in range(5):
            pulled.append(i)
            yield files[i % 3]

    it = scorer.iter_scores(stream(), chunk=2, progress=seen.append)
    first = next(it)
    assert pulled == [0, 1] and seen == [2]  # one chunk read, scored and reported before the first result
    rest = list(it)
    assert seen == [2, 2, 1] and pulled == list(range(5))
    assert [values(r) for r in [first, *rest]] == [row_values(cli[str(files[i % 3])]) for i in range(5)]


@pytest.mark.parametrize("bad", [42, None, b"a.png", {"a": 1}, [["nested.png"]], [1.5], object()])
def test_arguments_of_the_wrong_type_raise_type_error(scorer, bad):
    with pytest.raises(TypeError, match="cannot score a"):
        scorer.score(bad)


def test_iter_scores_raises_type_error_when_it_reaches_a_wrong_entry(scorer, files):
    it = scorer.iter_scores([files[0], 7], chunk=1)
    assert next(it).ok
    with pytest.raises(TypeError, match="cannot score a int"):
        next(it)
    with pytest.raises(TypeError, match="use score"):
        next(scorer.iter_scores(str(files[0])))


def test_max_pixels_applies_to_every_kind_of_input(bundle, files):
    with iqa.load(bundle, max_pixels=100) as s:
        a, b, c = s.score([files[0], np.zeros((11, 10, 3), np.uint8), torch.zeros(3, 20, 20)])
    assert "above the limit of 0.0 megapixels" in a.error and "--max-pixels" in a.error  # the CLI's own words
    assert b.error.startswith("image is 10x11 = 0.0 megapixels") and "max_pixels=" in b.error
    assert c.error.startswith("image is 20x20")


# ------------------------------------------------------------------------------------------- tensor conversion


def test_tensor_rule_round_half_to_even_then_clip():
    every = torch.arange(256, dtype=torch.float32) / 255  # uint8 / 255 comes back exactly, all 256 values
    assert np.array_equal(tensor_to_rgb(every.reshape(1, 1, 256).expand(3, 1, 256))[0, :, 0], np.arange(256))
    assert np.float64(126.5 / 255) * 255 == 126.5  # the half case below is exact
    v = torch.tensor([0.0, 0.25, 0.5, 0.75, 126.5 / 255, 127.5 / 255, -0.1, 1.2, 1.0], dtype=torch.float64)
    got = tensor_to_rgb(v.reshape(1, 1, -1).expand(3, 1, -1).contiguous())
    assert got.dtype == np.uint8 and got.shape == (1, 9, 3)
    #                                      63.75 127.5 191.25 126.5 127.5 clip clip
    assert got[0, :, 0].tolist() == [0, 64, 128, 191, 126, 128, 0, 255, 255]
    for dtype in (torch.float16, torch.bfloat16):
        assert tensor_to_rgb(torch.full((3, 2, 2), 0.5, dtype=dtype))[0, 0].tolist() == [128] * 3


@pytest.mark.parametrize("tensor,message", [
    (torch.zeros(3, 4, 4, dtype=torch.uint8), "expected a floating-point tensor"),
    (torch.full((3, 4, 4), float("nan")), "NaN or infinite"),
    (torch.zeros(1, 3, 4, 4, 1), "got shape (1, 3, 4, 4, 1)"),
    (torch.zeros(3, 0, 4), "got shape (3, 0, 4)"),
])
def test_bad_tensors_are_that_items_error(scorer, tensor, message):
    (result,) = scorer.score([tensor])
    assert result.error is not None and message in result.error


# ---------------------------------------------------------------------------------------- load and lifecycle


def test_auto_backend_is_chosen_in_one_place():
    assert scorers.choose_backend(None, None) == scorers.choose_backend("auto", None) == "torch"
    assert scorers.choose_backend("auto", Path("b")) == scorers.choose_backend(None, Path("b")) == "onnxruntime"
    assert scorers.choose_backend("torch", Path("b")) == "torch"


def test_load_options_are_checked(bundle):
    with pytest.raises(ConfigError, match="unknown backend 'onnx'; use auto or one of"):
        iqa.load(bundle, backend="onnx")
    with pytest.raises(ConfigError, match="--precision needs --bundle"):
        iqa.load(precision="fp16")
    with pytest.raises(ConfigError, match="unknown metric 'musiq'"):
        iqa.create_metric("musiq")
    with pytest.raises(ConfigError, match="as_loss"):
        iqa.create_metric(as_loss=True)


def test_create_metric_is_load(bundle, files, cli):
    with iqa.create_metric("diffv2iqa", bundle=bundle, device=None) as metric:
        assert metric.backend == "onnxruntime-cpu" and metric.lower_better is False
        assert [values(r) for r in metric(files[0])] == [row_values(cli[str(files[0])])]


def test_close_drops_the_sessions_and_is_idempotent(bundle, files):
    s = iqa.load(bundle)
    executor = weakref.ref(s.pipeline.executor)
    s.score(files[0])
    s.close()
    gc.collect()
    assert executor() is None  # nothing holds the ONNX Runtime sessions any more
    s.close()
    with pytest.raises(ConfigError, match="closed"):
        s.score(files[0])
    assert "closed" in repr(s)


def test_close_closes_a_stream_pipeline():
    closed: list[bool] = []

    class Pipeline:
        spec = None  # only close() matters here
        executor = None

        def close(self) -> None:
            closed.append(True)

    s = iqa.Scorer(scorers.Scorer(Pipeline(), "m", True))  # type: ignore[arg-type]
    with s:
        pass
    s.close()
    assert closed == [True]


def test_a_non_finite_score_is_that_images_error():
    """The rule of `score` (runtime.scoring.checked_result): NaN or infinity in the score or a branch that ran."""

    class Pipeline:
        spec = executor = None

        def prepare(self, rgb: np.ndarray) -> list[Any]:
            return [int(rgb[0, 0, 0])]

        def score_prepared(self, prepared: list[list[int]]) -> list[ImageScore]:
            table = {0: ImageScore(0.5, 0.25, 0.75, 1), 1: ImageScore(float("nan"), float("nan"), 0.1, 1),
                     2: ImageScore(0.3, None, float("inf"), 2)}
            return [table[units[0]] for units in prepared]

    s = iqa.Scorer(scorers.Scorer(Pipeline(), "m", True))  # type: ignore[arg-type]
    results = s.score([np.full((4, 4, 3), v, np.uint8) for v in (1, 0, 2)])
    assert [r.error is None for r in results] == [False, True, False]
    assert results[0].error.startswith("the model produced a non-finite score (nan)") and results[0].score is None
    assert "(inf)" in results[2].error and values(results[1]) == (0.5, 0.25, 0.75, 1, None)


def test_paths_and_arrays_need_neither_torch_nor_numpy_at_import(bundle, files, cli):
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # import torch now fails
        import diffv2iqa_trt as iqa
        assert "numpy" not in sys.modules, "import diffv2iqa_trt imported numpy"
        import numpy as np
        from PIL import Image
        with iqa.load({str(bundle)!r}) as s:
            results = s.score([{str(files[0])!r}, np.asarray(Image.open({str(files[1])!r}))])
        print(repr([r.score for r in results]))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == repr([cli[str(f)]["score"] for f in files[:2]])
