import csv
import io
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from diffv2iqa_trt.cli import app

runner = CliRunner()


@pytest.fixture()
def image_dir(tmp_path, photos):
    for name, rgb in zip(("astronaut", "chelsea"), photos, strict=False):
        Image.fromarray(rgb).resize((96, 96)).save(tmp_path / f"{name}.png")
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    return tmp_path


def test_score_reports_bad_files_and_scores_the_rest(image_dir):
    result = runner.invoke(app, ["score", str(image_dir), "--preset", "tiny", "--format", "json"])
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["model"]["trained"] is False and "UNTRAINED" in doc["model"]["label"]
    by_name = {r["path"].rsplit("/", 1)[1]: r for r in doc["results"]}
    assert by_name["corrupt.jpg"]["error"] and by_name["corrupt.jpg"]["score"] is None
    assert all(np.isfinite(by_name[n]["score"]) for n in ("astronaut.png", "chelsea.png"))
    assert "corrupt.jpg" in result.stderr and "1 of 3 file(s) could not be scored" in result.stderr


def test_score_formats_agree(image_dir):
    good = [str(image_dir / "astronaut.png"), str(image_dir / "chelsea.png")]
    js = json.loads(runner.invoke(app, ["score", *good, "--preset", "tiny", "--format", "json"]).stdout)
    res = runner.invoke(app, ["score", *good, "--preset", "tiny", "--format", "csv"])
    assert res.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert [float(r["score"]) for r in rows] == pytest.approx([r["score"] for r in js["results"]], abs=1e-9)
    assert all("UNTRAINED" in r["model"] for r in rows)
    table = runner.invoke(app, ["score", *good, "--preset", "tiny"])
    assert table.exit_code == 0 and "UNTRAINED" in table.stdout and "astronaut.png" in table.stdout


@pytest.mark.parametrize("args,message", [
    (["--crops", "random"], "unknown crop policy"),
    (["--mode", "fast"], "unknown mode"),
    (["--steps", "3"], "outside the 3-step schedule"),
    (["--checkpoint", "missing.safetensors"], "checkpoint file not found"),
])
def test_score_bad_options(image_dir, args, message):
    result = runner.invoke(app, ["score", str(image_dir / "astronaut.png"), *args])
    assert result.exit_code == 2
    assert message in result.stderr


def test_default_model_is_the_trained_demo(image_dir):
    """No --checkpoint and no --preset: the embedded demo checkpoint, trained, scored as the model itself computes."""
    import torch

    from diffv2iqa_trt.model.checkpoint import load_checkpoint
    from diffv2iqa_trt.reference.loading import DEMO_WEIGHTS
    from diffv2iqa_trt.runtime.crops import prepare
    from diffv2iqa_trt.runtime.images import load_image
    from diffv2iqa_trt.runtime.noise import noise_bank

    image = image_dir / "astronaut.png"
    result = runner.invoke(app, ["score", str(image), "--format", "json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["model"]["trained"] is True and "UNTRAINED" not in doc["model"]["label"]
    assert "UNTRAINED" not in result.stderr
    # Independently: the demo checkpoint's own graphs on the centre crop with the seed-0 bank.
    model, info = load_checkpoint(DEMO_WEIGHTS)
    assert info.trained
    s, m = model.config.crop_size, model.config.unet.size_multiple
    x = torch.from_numpy(prepare(load_image(image), "center", "crops", s, m)[0].x[None])
    bank = torch.from_numpy(noise_bank(0, model.config.schedule.steps, s, s))
    assert doc["results"][0]["score"] == pytest.approx(float(model.score(x, bank)[0]), abs=1e-6)


def test_preset_and_checkpoint_must_agree(image_dir):
    from diffv2iqa_trt.reference.loading import DEMO_WEIGHTS

    res = runner.invoke(app, ["score", str(image_dir / "astronaut.png"), "--checkpoint", str(DEMO_WEIGHTS),
                              "--preset", "paper"])
    assert res.exit_code == 2 and "holds a 'tiny' model but --preset paper was given" in res.stderr
    assert res.exception is None or isinstance(res.exception, SystemExit)


def _torch_has_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


@pytest.mark.parametrize("args,message", [
    pytest.param(["--device", "cuda"], "no usable CUDA device", marks=pytest.mark.skipif(
        _torch_has_cuda(), reason="torch sees a CUDA GPU here, so --device cuda scores instead of refusing")),
    (["--device", "tpu"], "unknown torch device"),
    (["--backend", "onnxruntime"], "needs --bundle"),
])
def test_score_environment_errors_are_messages(image_dir, args, message):
    res = runner.invoke(app, ["score", str(image_dir / "astronaut.png"), "--preset", "tiny", *args])
    assert res.exit_code == 2 and message in res.stderr, res.output
    assert "Traceback" not in res.output


def test_a_bug_is_not_reported_as_a_usage_error(image_dir, monkeypatch):
    """The CLI maps only the library's own errors to messages; anything else escapes as the bug it is."""
    from diffv2iqa_trt import scorers

    def broken(options):
        raise KeyError("internal bug")

    monkeypatch.setattr(scorers, "open_scorer", broken)
    res = runner.invoke(app, ["score", str(image_dir / "astronaut.png")])
    assert isinstance(res.exception, KeyError) and res.exit_code == 1


def test_score_nothing_found(tmp_path):
    result = runner.invoke(app, ["score", str(tmp_path)])
    assert result.exit_code == 2 and "no images found" in result.stderr


def test_info_paper_parameter_counts():
    result = runner.invoke(app, ["info", "--preset", "paper", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    p = doc["params"]
    for name, expected in (("restorer U-Net", 97.81e6), ("ViT (VCG backbone)", 86.58e6),
                           ("ResNet (VDA backbone)", 25.56e6), ("DIV2IQA heads", 67.66e6)):
        assert p[name] == pytest.approx(expected, rel=5e-3), name
    # MODEL_SPEC: 143.6 GMAC per U-Net step at 224 x 224
    assert doc["macs"]["restorer U-Net, one step"] == pytest.approx(143.6e9, rel=1e-2)
    table = runner.invoke(app, ["info", "--preset", "paper"])
    assert "97.8" in table.stdout and "GMAC" in table.stdout


def test_convert_authors_checkpoints(tmp_path):
    import torch

    from diffv2iqa_trt.config import tiny_config
    from diffv2iqa_trt.model.diffv2iqa import build_model

    src = build_model(tiny_config(), seed=4)
    torch.save({f"denoise_fn.{k}": v for k, v in src.unet.state_dict().items()}, tmp_path / "gen.pth")
    torch.save({f"module.{k}": v for k, v in src.iqa.state_dict().items()}, tmp_path / "iqa.pth")
    out = tmp_path / "model.safetensors"
    result = runner.invoke(app, ["convert", "--sr3", str(tmp_path / "gen.pth"), "--div2iqa", str(tmp_path / "iqa.pth"),
                                 "--preset", "tiny", "--out", str(out)])
    assert result.exit_code == 0, result.output
    bad = runner.invoke(app, ["convert", "--sr3", str(tmp_path / "iqa.pth"), "--div2iqa", str(tmp_path / "iqa.pth"),
                              "--preset", "tiny", "--out", str(tmp_path / "bad.safetensors")])
    assert bad.exit_code == 2 and "missing keys" in bad.stderr and not (tmp_path / "bad.safetensors").exists()
    img = tmp_path / "i.png"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(img)
    scored = runner.invoke(app, ["score", str(img), "--checkpoint", str(out), "--format", "json"])
    assert scored.exit_code == 0 and json.loads(scored.stdout)["model"]["trained"] is True


def test_long_verbs_print_progress_lines_without_a_terminal(auto_built: tuple[object, str]) -> None:
    """Redirected output (here CliRunner's, as in CI logs or `> log`) gets a line per step on stderr, where a rich
    spinner would print nothing for minutes."""
    _, output = auto_built
    lines = [line for line in output.splitlines() if line.startswith("[") and " s] " in line]
    assert lines[0].endswith("building: started")
    assert any(line.endswith("exporting vcg") for line in lines) and len(lines) >= 6


def test_help_at_80_columns_shows_every_option_whole() -> None:
    import typer

    command = typer.main.get_command(app)
    for name, verb in command.commands.items():  # type: ignore[attr-defined]
        result = runner.invoke(app, [name, "--help"], terminal_width=80)
        assert result.exit_code == 0, result.output
        assert "…" not in result.output, (name, result.output)
        assert max(len(line) for line in result.output.splitlines()) <= 80, name
        for param in verb.params:
            for opt in (*param.opts, *param.secondary_opts):
                if opt.startswith("--"):
                    assert opt in result.output, (name, opt)


def test_inspect_text_is_a_readable_summary_and_json_has_everything(auto_built: tuple[object, str]) -> None:
    bundle = auto_built[0]
    text = runner.invoke(app, ["inspect", str(bundle.root)], terminal_width=200)  # type: ignore[attr-defined]
    assert text.exit_code == 0, text.output
    lines = text.output.splitlines()
    # Before: 41 kB, lint rows printed as Python lists of up to 6,647 characters on one line.
    assert len(text.output) < 8000 and max(len(line) for line in lines) <= 120
    assert sum("rows: " in line and "entries (all of them: --json)" in line for line in lines) == 6  # 3 graphs x 2
    assert "      - gamma: float32[batch]" in lines
    full = json.loads(runner.invoke(app, ["inspect", str(bundle.root), "--json"]).output)  # type: ignore[attr-defined]
    rows = full["lint"]["restore_step"]["10"]["rows"]
    assert f"rows: {len(rows)} entries (all of them: --json)" in text.output and rows[0]["check"] == "opset"
