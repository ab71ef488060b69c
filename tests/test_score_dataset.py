"""score-dataset: inputs, atomic parts and the resume index without Ray; then, on one local Ray instance with 2 CPUs,
the verb end to end against `score` and a resumed run."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from diffv2iqa_trt.cli import app
from diffv2iqa_trt.errors import ConfigError, DependencyError
from diffv2iqa_trt.runtime.scoring import score_files
from diffv2iqa_trt.scale import DatasetOptions, ScoringKey, score_dataset
from diffv2iqa_trt.scale.inputs import iter_paths
from diffv2iqa_trt.scale.job import block_count, resolve
from diffv2iqa_trt.scale.output import (
    PartWriter,
    arrow_schema,
    output_lock,
    part_files,
    remove_temporary_parts,
    resume_index,
)
from diffv2iqa_trt.scale.stages import BundleScorer, decode_and_crop
from diffv2iqa_trt.scorers import ScoreOptions, open_scorer

runner = CliRunner()
KEY = ScoringKey("ab" * 32, "backend=onnxruntime precision=bundle device=cpu crops=center mode=crops seed=0")


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory, photos: list[np.ndarray]) -> Path:
    """Small real photographs (PNG and JPEG, two sizes, in a subfolder too), a truncated PNG and a text file named
    .png: 10 images, 2 bad files."""
    root = tmp_path_factory.mktemp("collection")
    (root / "sub").mkdir()
    for i, rgb in enumerate(photos):
        img = Image.fromarray(rgb)
        img.thumbnail((150, 150))
        img.save(root / f"photo{i}.png")
        img.save(root / "sub" / f"photo{i}.jpg", quality=90)
        if i < 2:
            img.resize((img.width // 2 + 40, img.height // 2 + 40)).save(root / f"photo{i}-small.png")
    (root / "truncated.png").write_bytes((root / "photo1.png").read_bytes()[:400])
    (root / "notes.png").write_text("not an image\n")
    return root


def _rows(out: Path) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for part in part_files(out):
        if part.suffix == ".parquet":
            rows.extend(pq.read_table(part).to_pylist())
        else:
            import pyarrow.csv as pacsv

            rows.extend(pacsv.read_csv(part, convert_options=pacsv.ConvertOptions(
                column_types={"path": pa.string(), "error": pa.string(), "path_bytes_hex": pa.string()})).to_pylist())
    return rows


def _result_table(paths: list[str], statuses: list[str]) -> pa.Table:
    n = len(paths)
    return pa.table({"path": paths, "score": [0.5] * n, "vcg": [0.4] * n, "vda": [0.6] * n, "crops": [1] * n,
                     "status": statuses, "error": [None if s == "ok" else "bad" for s in statuses],
                     "path_bytes_hex": [None] * n, "bundle_sha256": [KEY.bundle_sha256] * n,
                     "settings": [KEY.settings] * n}, schema=arrow_schema())


# --------------------------------------------------------------------------------------------------------------------
# Inputs


def test_folder_list_csv_and_parquet_give_absolute_paths(tmp_path: Path, collection: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(collection.parent)
    from_folder = list(iter_paths(collection.name))
    assert len(from_folder) == 12  # 10 photos, 2 bad files; sorted, recursive, absolute
    assert all(os.path.isabs(p) for p in from_folder)
    assert from_folder == sorted(from_folder)
    assert os.fsencode(collection / "sub" / "photo3.jpg") in from_folder

    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "images").mkdir()
    text = lists / "paths.txt"
    text.write_bytes(b"# a comment\n\nimages/a.png\r\n" + os.fsencode(collection / "photo0.png") + b"\n  \n"
                     + b"images/caf\xe9.png\n")  # a name that is not UTF-8 survives as bytes
    assert list(iter_paths(text)) == [os.fsencode(lists / "images" / "a.png"), os.fsencode(collection / "photo0.png"),
                                      os.fsencode(lists / "images") + b"/caf\xe9.png"]

    table = lists / "paths.csv"
    table.write_text("id,file\n1,images/a.png\n2,\n3,/abs/b.png\n")
    assert list(iter_paths(table, "file")) == [os.fsencode(lists / "images" / "a.png"), b"/abs/b.png"]
    with pytest.raises(ConfigError, match="no column 'path'.*--path-column"):
        list(iter_paths(table))

    parquet = lists / "paths.parquet"
    pq.write_table(pa.table({"image": ["images/a.png", None, "file:///abs/c.png"], "n": [1, 2, 3]}), parquet)
    assert list(iter_paths(parquet, "image")) == [os.fsencode(lists / "images" / "a.png"), b"/abs/c.png"]
    with pytest.raises(ConfigError, match="column 'n' holds int64, not paths"):
        list(iter_paths(parquet, "n"))


@pytest.mark.parametrize(("name", "content", "message"), [
    ("uris.txt", "s3://bucket/a.png\n", "is a URI; score-dataset reads local or mounted files"),
    ("paths.json", "[]", "cannot tell what kind of list"),
    ("missing.txt", None, "no such file or folder"),
])
def test_inputs_refused_with_a_hint(tmp_path: Path, name: str, content: str | None, message: str) -> None:
    source = tmp_path / name
    if content is not None:
        source.write_text(content)
    with pytest.raises(ConfigError, match=message):
        list(iter_paths(source))


# --------------------------------------------------------------------------------------------------------------------
# Output parts and the resume index


def test_parts_are_written_whole_and_index_the_run_key(tmp_path: Path) -> None:
    out = tmp_path / "out"
    writer = PartWriter(out, "parquet")
    first = writer.write(_result_table(["/a.png", "/b.png"], ["ok", "error"]))
    second = writer.write(_result_table(["/c.png"], ["ok"]))
    assert part_files(out) == [first, second]
    assert first.name.endswith("-000000.parquet") and second.name.endswith("-000001.parquet")
    other = ScoringKey("cd" * 32, KEY.settings)  # rows of another bundle are kept but do not count as done
    PartWriter(out, "csv").write(pa.table(_result_table(["/d.png"], ["ok"]).to_pydict() | {
        "bundle_sha256": [other.bundle_sha256]}, schema=arrow_schema()))
    index = resume_index(out, KEY)
    assert index.done == {b"/a.png", b"/b.png", b"/c.png"} and index.rows == 4 and index.parts == 3
    assert resume_index(out, other).done == {b"/d.png"}


def test_a_failed_write_leaves_no_part_and_leftovers_are_removed(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    writer = PartWriter(out, "parquet")
    real_write = pq.write_table

    def dies_halfway(table: pa.Table, where: object, **kwargs: object) -> None:
        real_write(table.slice(0, 1), where)  # half the part is on disk, under the temporary name
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", dies_halfway)
    with pytest.raises(OSError, match="disk full"):
        writer.write(_result_table(["/a.png", "/b.png"], ["ok", "ok"]))
    monkeypatch.setattr(pq, "write_table", real_write)
    assert list(out.iterdir()) == []  # neither a part nor the temporary file
    # What a killed writer leaves (no `finally` ran): a temporary name, never read, removed by the next run.
    (out / ".part-x-000000.parquet.k3j2.tmp").write_bytes(b"PAR1 half")
    assert resume_index(out, KEY).done == set()
    assert remove_temporary_parts(out) == 1 and list(out.iterdir()) == []


def test_damaged_part_is_named(tmp_path: Path) -> None:
    out = tmp_path / "out"
    part = PartWriter(out).write(_result_table(["/a.png"], ["ok"]))
    part.write_bytes(part.read_bytes()[:20])
    with pytest.raises(ConfigError, match=f"{part.name}: cannot read this result part.*move it out"):
        resume_index(out, KEY)


def test_one_writer_per_output(tmp_path: Path) -> None:
    with output_lock(tmp_path), pytest.raises(ConfigError, match="another score-dataset run is writing"), \
            output_lock(tmp_path):
        pass
    with output_lock(tmp_path):  # released
        pass


def test_blocks_hold_whole_batches() -> None:
    assert block_count(12, DatasetOptions(workers=2, batch_size=2)) == 6
    assert block_count(1000, DatasetOptions(workers=2, batch_size=16)) == 21  # 3 batches a block, >= 8 per worker
    assert block_count(1_000_000, DatasetOptions(workers=2, batch_size=16)) == 3907  # capped at 16 batches a block


def test_without_ray_the_verb_says_how_to_install_it(tmp_path: Path, collection: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(DependencyError, match=r"pip install 'diffv2iqa-trt\[ray\]'"):
        score_dataset(collection, tmp_path / "out", ScoreOptions(bundle=tmp_path / "any"))
    result = runner.invoke(app, ["score-dataset", str(collection), "--out", str(tmp_path / "out"),
                                 "--bundle", str(tmp_path / "any")])
    assert result.exit_code == 2 and "diffv2iqa-trt[ray]" in result.output
    assert not (tmp_path / "out").exists()


class _FakeRay:
    """Records what score_dataset asks of Ray (no GPU here: the GPU request is checked, not run)."""

    def __init__(self) -> None:
        self.stages: list[dict[str, object]] = []
        self.items: list[bytes] = []
        self.data = self

    def is_initialized(self) -> bool:
        return True

    def ActorPoolStrategy(self, size: int) -> dict[str, int]:  # noqa: N802 - Ray's name
        return {"actor_pool_size": size}

    def from_items(self, items: list[bytes], override_num_blocks: int) -> _FakeRay:
        self.items, self.blocks = list(items), override_num_blocks
        return self

    def map_batches(self, fn: object, **kwargs: object) -> _FakeRay:
        self.stages.append({"fn": fn, **kwargs})
        return self

    def iter_batches(self, **kwargs: object) -> list[object]:
        return []


@pytest.mark.parametrize(("backend", "device", "threads", "gpus", "cpus"), [
    (None, "cpu", None, None, 1), (None, "cpu", 2, None, 2), ("tensorrt", "cpu", None, 1.0, 1),
    ("torch-cuda", "cuda", None, 1.0, 1),
])
def test_actor_resources(auto_built: tuple[object, str], collection: Path, tmp_path: Path,
                         monkeypatch: pytest.MonkeyPatch, backend: str | None, device: str, threads: int | None,
                         gpus: float | None, cpus: int) -> None:
    fake = _FakeRay()
    monkeypatch.setattr("diffv2iqa_trt.scale.job._import_ray", lambda: fake)
    bundle = auto_built[0].root  # type: ignore[attr-defined]
    summary = score_dataset(collection, tmp_path / "out", ScoreOptions(bundle=bundle, backend=backend,
                                                                       device=device, threads=threads),
                            DatasetOptions(workers=3, batch_size=4))
    decode, scoring = fake.stages
    assert decode["fn"] is decode_and_crop and decode["num_cpus"] == 1 and "num_gpus" not in decode
    assert scoring["fn"] is BundleScorer and scoring["compute"] == {"actor_pool_size": 3}
    assert scoring["num_gpus"] == gpus and scoring["num_cpus"] == cpus
    assert decode["batch_size"] == scoring["batch_size"] == 4
    opened = scoring["fn_constructor_kwargs"]["options"]  # type: ignore[index]
    assert opened.backend == (backend or "onnxruntime") and opened.threads == (None if gpus else cpus)
    assert sorted(fake.items) == sorted(iter_paths(collection)) and fake.blocks == 3  # 12 images, 4 a batch
    assert (summary.scored, summary.remaining, summary.gpus_per_worker) == (0, 12, gpus or 0.0)


def test_a_failed_ray_job_keeps_its_parts_and_says_how_to_resume(auto_built: tuple[object, str], collection: Path,
                                                                    tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken(_FakeRay):
        def iter_batches(self, **kwargs: object) -> list[object]:
            def rows():  # type: ignore[no-untyped-def]
                table = pa.table({"path_bytes": pa.array(self.items[:3], pa.binary())})
                yield pa.table({**{c: pa.array([None] * 3, pa.string()) for c in ("path", "error", "path_bytes_hex")},
                                "score": [0.5] * 3, "vcg": [0.4] * 3, "vda": [0.6] * 3, "crops": [1] * 3,
                                "status": ["ok"] * 3, "path_bytes": table.column(0)})
                try:
                    raise OSError("bundle /models/b is damaged\nrebuild it")
                except OSError as cause:
                    raise RuntimeError("ray.exceptions.RayTaskError(...): long Ray text") from cause
            return rows()  # type: ignore[no-any-return]

    monkeypatch.setattr("diffv2iqa_trt.scale.job._import_ray", Broken)
    from diffv2iqa_trt.scale import ScaleJobError

    out = tmp_path / "out"
    with pytest.raises(ScaleJobError, match=r"the Ray job failed: OSError: rebuild it; the parts written so far are "
                                            r"complete and kept: .* run the same command again") as failure:
        score_dataset(collection, out, ScoreOptions(bundle=auto_built[0].root),  # type: ignore[attr-defined]
                      DatasetOptions(part_rows=2))
    assert failure.value.exit_code == 1
    assert len(part_files(out)) == 1 and len(_rows(out)) == 2  # the full part is kept, the held row is not


# --------------------------------------------------------------------------------------------------------------------
# The two stages without Ray: the same numbers as score_files


def test_stages_give_score_files_numbers(auto_built: tuple[object, str], collection: Path) -> None:
    bundle = auto_built[0].root  # type: ignore[attr-defined]
    options, rules, key = resolve(ScoreOptions(bundle=bundle, crops="five"))
    assert key.settings == "backend=onnxruntime precision=bundle device=cpu crops=five mode=crops seed=0"
    assert key.bundle_sha256 == __import__("hashlib").sha256((bundle / "manifest.json").read_bytes()).hexdigest()
    files = [os.fsencode(p) for p in sorted(collection.rglob("*.*"))]
    prepared = decode_and_crop(pa.table({"item": pa.array(files, pa.binary())}), rules, 10**8)
    assert prepared.column("error").null_count == len(files) - 2
    rows = BundleScorer(options, rules)(prepared).to_pylist()
    expected = score_files(open_scorer(ScoreOptions(bundle=bundle, crops="five")).pipeline,
                           [os.fsdecode(f) for f in files])
    assert [r["path"] for r in rows] == [str(e.path) for e in expected]
    for row, want in zip(rows, expected, strict=True):
        w = want.row()
        assert row["status"] == ("ok" if w["error"] is None else "error") and row["error"] == w["error"]
        assert row["crops"] == w["crops"] == (5 if w["error"] is None else 0)
        if w["error"] is None:
            assert row["score"] == pytest.approx(w["score"], abs=1e-6)
            assert row["vcg"] == pytest.approx(w["vcg"], abs=1e-6) and row["vda"] == pytest.approx(w["vda"], abs=1e-6)


# --------------------------------------------------------------------------------------------------------------------
# On Ray: one local instance with 2 CPUs for the module


@pytest.fixture(scope="module")
def local_ray():  # type: ignore[no-untyped-def]
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


def test_verb_end_to_end_equals_score(local_ray: object, auto_built: tuple[object, str], collection: Path,
                                      tmp_path: Path) -> None:
    bundle = auto_built[0].root  # type: ignore[attr-defined]
    photos = sorted(str(p) for p in collection.rglob("photo*"))
    listed = [*photos, photos[3], str(collection / "truncated.png"), str(collection / "notes.png"),
              str(collection / "gone.png")]
    (tmp_path / "list.txt").write_text("\n".join(listed) + "\n")
    out = tmp_path / "scores"
    result = runner.invoke(app, ["score-dataset", str(tmp_path / "list.txt"), "--out", str(out), "--bundle",
                                 str(bundle), "--crops", "five", "--workers", "2", "--batch-size", "2",
                                 "--part-rows", "3", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["listed"], summary["duplicates"], summary["scored"], summary["failed"]) == (14, 1, 13, 3)
    assert summary["parts"] == 5 and summary["remaining"] == 0 and summary["images_per_s"] > 0

    rows = _rows(out)
    assert len(rows) == 13 and len({r["path"] for r in rows}) == 13  # every image once, the duplicate too
    assert all(r["bundle_sha256"] == summary["key"]["bundle_sha256"] for r in rows)
    reference = runner.invoke(app, ["score", "--bundle", str(bundle), "--crops", "five", "--format", "json",
                                    *sorted(set(listed))])
    assert reference.exit_code == 1  # three files could not be scored
    expected = {r["path"]: r for r in json.loads(reference.stdout)["results"]}
    assert set(expected) == {r["path"] for r in rows}
    for row in rows:
        want = expected[row["path"]]
        assert row["error"] == want["error"] and row["crops"] == want["crops"]
        assert row["status"] == ("ok" if want["error"] is None else "error")
        for name in ("score", "vcg", "vda"):
            if want[name] is None:
                assert row[name] is None
            else:
                assert abs(row[name] - want[name]) <= 1e-6, (row["path"], name, row[name], want[name])
    errors = {Path(str(r["path"])).name: r["error"] for r in rows if r["status"] == "error"}
    assert errors.keys() == {"truncated.png", "notes.png", "gone.png"}
    assert errors["gone.png"] == "file not found"


def test_interrupted_run_resumes_without_rescoring_or_duplicates(local_ray: object, auto_built: tuple[object, str],
                                                                 collection: Path, tmp_path: Path) -> None:
    bundle = auto_built[0].root  # type: ignore[attr-defined]
    out = tmp_path / "scores"
    options = ScoreOptions(bundle=bundle)
    first = score_dataset(collection, out, options, DatasetOptions(workers=2, batch_size=2, part_rows=2, max_parts=2,
                                                                   fmt="csv"))
    assert (first.listed, first.scored, first.parts, first.remaining) == (12, 4, 2, 8)
    kept = {p: p.read_bytes() for p in part_files(out)}
    assert len(kept) == 2
    # What a writer killed in the middle of a part leaves: a temporary file, which must be neither read nor kept.
    (out / f".{next(iter(kept)).name}.x1y2.tmp").write_text("path,score\n/half")

    second = score_dataset(collection, out, options, DatasetOptions(workers=2, batch_size=2, part_rows=5, fmt="csv"))
    assert (second.skipped, second.scored, second.remaining, second.parts) == (4, 8, 0, 2)
    assert {p: p.read_bytes() for p in part_files(out) if p in kept} == kept  # the first run's parts untouched
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    rows = _rows(out)
    paths = [str(r["path"]) for r in rows]
    assert len(paths) == len(set(paths)) == 12
    assert sorted(paths) == sorted(os.fsdecode(p) for p in iter_paths(collection))
    assert sum(r["status"] == "error" for r in rows) == 2

    third = score_dataset(collection, out, options, DatasetOptions(workers=2, fmt="csv"))  # nothing left: no Ray job
    assert (third.skipped, third.scored, third.parts) == (12, 0, 0)
    assert len(_rows(out)) == 12
