"""`diffv2iqa-trt export-triton`: the Triton model repository of a bundle (serving/triton_repo.py).

The configs are read with Triton's own model-config protobuf (tritonclient), the files compared with the bundle's
sha256, and the Python-backend models loaded by the tritonserver binary PyTriton ships, which has the Python backend
only: `diffv2iqa_local` as exported, and the `diffv2iqa` front with the three graph models served by a stand-in
(a Python-backend model running ONNX Runtime on the exported model.onnx, in place of Triton's onnxruntime backend,
which is not shipped here), so the front's BLS loop runs in a real server. Scores are compared bit for bit with
`diffv2iqa_trt.load(bundle, backend="onnxruntime")`.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import text_format
from PIL import Image
from serve_server import free_ports, serve_python
from tritonclient.grpc import model_config_pb2
from typer.testing import CliRunner

import diffv2iqa_trt
from diffv2iqa_trt.bundle import load_bundle, read_manifest, sha256_file, write_bundle
from diffv2iqa_trt.bundle.store import Bundle
from diffv2iqa_trt.cli import app
from diffv2iqa_trt.runtime.noise import noise_bank

GRAPHS = ("restore_step", "vcg", "vda")
PYTHON_MODELS = ("diffv2iqa", "diffv2iqa_local")


def export(bundle: Path, out: Path, *args: str) -> Any:
    return CliRunner().invoke(app, ["export-triton", "--bundle", str(bundle), "--out", str(out), *args])


def parse_config(path: Path) -> Any:
    return text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())


@pytest.fixture(scope="module")
def bundle(auto_built: tuple[Bundle, str]) -> Bundle:
    return auto_built[0]


@pytest.fixture(scope="module")
def repo(bundle: Bundle, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("triton") / "repo"
    result = export(bundle.root, out)
    assert result.exit_code == 0, result.output
    return out


# --------------------------------------------------------------------------------------------- configs and files


def test_configs_parse_and_follow_the_profiles(repo: Path, bundle: Bundle) -> None:
    models = sorted(p.name for p in repo.iterdir() if p.is_dir())
    assert models == sorted((*GRAPHS, *PYTHON_MODELS))  # no engines in this bundle: no *_trt models
    max_batch = 16  # the tiny build's profiles: batch 1..16 for every graph
    for graph in GRAPHS:
        entry = bundle.graph(graph)
        config = parse_config(repo / graph / "config.pbtxt")
        assert config.name == graph and config.platform == "onnxruntime_onnx"
        batched = graph != "restore_step"  # z is broadcast over the batch: Triton must not batch restore_step
        assert config.max_batch_size == (max_batch if batched else 0)
        assert config.HasField("dynamic_batching") == batched
        assert [(g.kind, g.count) for g in config.instance_group] == [(model_config_pb2.ModelInstanceGroup.KIND_CPU,
                                                                       1)]
        assert [i.name for i in config.input] == list(entry.input_names)
        for tensor in config.input:
            lo, hi = entry.profiles.min[tensor.name], entry.profiles.max[tensor.name]
            want = [a if a == b else -1 for a, b in zip(lo, hi, strict=True)]
            assert list(tensor.dims) == (want[1:] if batched else want), (graph, tensor.name)
            assert tensor.data_type == model_config_pb2.TYPE_FP32
        (output,) = config.output
        if batched:  # score (B,): clients see [B, 1]
            assert output.name == "score" and list(output.dims) == [1] and output.HasField("reshape")
            assert list(output.reshape.shape) == []
        else:
            assert output.name == "y_next" and list(output.dims) == [-1, 3, -1, -1]
    for name in PYTHON_MODELS:
        config = parse_config(repo / name / "config.pbtxt")
        assert config.name == name and config.backend == "python" and config.max_batch_size == max_batch
        inputs = {i.name: (i.data_type, list(i.dims), i.optional) for i in config.input}
        assert inputs == {"image": (model_config_pb2.TYPE_STRING, [1], True),
                          "pixels": (model_config_pb2.TYPE_UINT8, [-1, -1, 3], True)}
        outputs = {o.name: o.data_type for o in config.output}
        assert outputs == {"score": model_config_pb2.TYPE_FP64, "vcg": model_config_pb2.TYPE_FP64,
                           "vda": model_config_pb2.TYPE_FP64, "crops": model_config_pb2.TYPE_INT32,
                           "error": model_config_pb2.TYPE_STRING}
    front = parse_config(repo / "diffv2iqa" / "config.pbtxt").parameters
    assert {k: front[k].string_value for k in ("restore_step_model", "vcg_model", "vda_model", "batch_size")} == {
        "restore_step_model": "restore_step", "vcg_model": "vcg", "vda_model": "vda", "batch_size": "8"}


def test_files_are_the_bundles(repo: Path, bundle: Bundle) -> None:
    files = bundle.manifest.files
    for graph in GRAPHS:
        variant = bundle.graph(graph).variants["fp32"]
        assert sha256_file(repo / graph / "1" / "model.onnx") == files[variant.file].sha256
    record = json.loads((repo / "export.json").read_text())
    checked = 0
    for model in record["models"].values():
        for rel, source in model["files"].items():
            assert (repo / rel).is_file(), rel
            if source is not None and source["bundle_file"] != "manifest.json":
                assert sha256_file(repo / rel) == source["sha256"] == files[source["bundle_file"]].sha256, rel
                checked += 1
    assert checked == 3 + len(files)  # the three graphs, and the local model's copy of every bundle file
    manifest = bundle.manifest_path.read_bytes()
    assert (repo / "diffv2iqa" / "1" / "bundle" / "manifest.json").read_bytes() == manifest
    p = bundle.manifest.pipeline
    bank = np.load(repo / "diffv2iqa" / "1" / "noise_bank.npy")
    assert bank.dtype == np.float32 and np.array_equal(bank, noise_bank(p.noise.seed, p.steps, p.crop_size,
                                                                        p.crop_size))
    assert load_bundle(repo / "diffv2iqa_local" / "1" / "bundle").manifest == bundle.manifest  # verified copy
    readme = (repo / "README.md").read_text()
    assert "diffv2iqa-trt" in readme and "Python backend" in readme


def test_refusals_leave_nothing_behind(bundle: Bundle, tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    result = export(bundle.root, taken)
    assert result.exit_code == 2 and "exists and is not empty" in result.output
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]

    result = export(bundle.root, tmp_path / "big", "--max-batch", "17")
    assert result.exit_code == 2 and "--max-batch 17 is larger than the bundle's profiles allow (16" in result.output

    damaged = tmp_path / "damaged"
    shutil.copytree(bundle.root, damaged)
    with open(damaged / "vcg.fp32.onnx", "r+b") as f:
        f.seek(100)
        f.write(b"\x00" * 8)
    result = export(damaged, tmp_path / "from-damaged")
    assert result.exit_code == 2 and "is damaged" in result.output and "vcg.fp32.onnx" in result.output

    result = export(bundle.root, tmp_path / "no-engines", "--bls-target", "tensorrt")
    assert result.exit_code == 2 and "holds no engine of restore_step (fp32)" in result.output

    result = export(bundle.root, tmp_path / "fp16", "--precision", "fp16")
    assert result.exit_code == 2 and "has no fp16 variant" in result.output
    # Nothing was created, and no staging folder was left beside the refused outputs.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged", "taken"]

    empty = tmp_path / "empty"
    empty.mkdir()
    result = export(bundle.root, empty, "--max-batch", "4", "--instances", "2", "--no-local")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in empty.iterdir() if p.is_dir()) == ["diffv2iqa", *GRAPHS]
    vcg = parse_config(empty / "vcg" / "config.pbtxt")
    assert vcg.max_batch_size == 4 and vcg.instance_group[0].count == 2
    front = parse_config(empty / "diffv2iqa" / "config.pbtxt")
    assert front.max_batch_size == 4 and front.parameters["batch_size"].string_value == "4"


def with_engines(bundle: Bundle, out: Path) -> Bundle:
    """The bundle with a (made-up) fp32 TensorRT engine of every graph: no engine can be built here."""
    doc = read_manifest(bundle.manifest_path)
    files = {name: bundle.root / name for name in doc.pop("files")}
    for graph in GRAPHS:
        plan = out.parent / f"{graph}.plan"
        plan.write_bytes(f"engine of {graph}".encode())
        files[f"engines/{graph}.fp32.plan"] = plan
        variant = doc["graphs"][graph]["variants"]["fp32"]["file"]
        doc["graphs"][graph]["engines"] = {"fp32": {
            "file": f"engines/{graph}.fp32.plan", "tensorrt": "10.13.0.35", "gpu": "NVIDIA H100 80GB HBM3",
            "sm": "9.0", "precision": "fp32", "source_onnx": variant, "source_sha256": sha256_file(files[variant]),
            "version_compatible": False, "flags": {"strongly_typed": True}, "device_memory_bytes": 1,
            "profile": {}, "build_seconds": 1.0, "census": {}}}
    return load_bundle(write_bundle(out, doc, files))


def test_engines_become_tensorrt_plan_models(bundle: Bundle, tmp_path: Path) -> None:
    engines = with_engines(bundle, tmp_path / "b")
    result = export(engines.root, tmp_path / "repo", "--no-local")
    assert result.exit_code == 0, result.output
    for graph in GRAPHS:
        name = f"{graph}_trt"
        text = (tmp_path / "repo" / name / "config.pbtxt").read_text()
        assert "built for TensorRT 10.13.0.35 on NVIDIA H100 80GB HBM3 (SM 9.0)" in text
        config = parse_config(tmp_path / "repo" / name / "config.pbtxt")
        assert config.name == name and config.platform == "tensorrt_plan"
        assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
        assert config.max_batch_size == (0 if graph == "restore_step" else 16)
        plan = tmp_path / "repo" / name / "1" / "model.plan"
        assert sha256_file(plan) == engines.engine(graph, "fp32").sha256
    front = parse_config(tmp_path / "repo" / "diffv2iqa" / "config.pbtxt").parameters
    assert front["restore_step_model"].string_value == "restore_step_trt"  # auto: the engines
    assert front["engines"].string_value == "1"
    result = export(engines.root, tmp_path / "onnx-front", "--no-local", "--bls-target", "onnx",
                    "--onnx-device", "gpu")
    assert result.exit_code == 0, result.output
    front = parse_config(tmp_path / "onnx-front" / "diffv2iqa" / "config.pbtxt").parameters
    assert front["vcg_model"].string_value == "vcg"
    vcg = parse_config(tmp_path / "onnx-front" / "vcg" / "config.pbtxt")
    assert vcg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU


# ---------------------------------------------------------------------------------- the shipped tritonserver

# Stands in for Triton's onnxruntime backend (not shipped with PyTriton): the exported model.onnx on ONNX Runtime's
# CPU provider, with the session options of the toolkit's onnxruntime executor.
ORT_STAND_IN = '''
import json
import os

import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.inputs = [t["name"] for t in config["input"]]
        self.outputs = [t["name"] for t in config["output"]]

    def execute(self, requests):
        responses = []
        for request in requests:
            feed = {n: pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in self.inputs}
            results = self.session.run(self.outputs, feed)
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(n, r) for n, r in zip(self.outputs, results)]))
        return responses
'''


def server_layout(python: str, root: Path) -> tuple[Path, dict[str, str]]:
    """The tritonserver binary PyTriton ships and its environment, as PyTriton's own launcher prepares them: a
    backend folder with the Python backend and the stub of this interpreter's version; the interpreter's own
    libpython (LIBDIR) and PyTriton's bundled libraries on LD_LIBRARY_PATH; the interpreter's bin/ first on PATH, so
    the stub's embedded Python finds that virtualenv (and its NumPy < 2)."""
    info = json.loads(subprocess.run(
        [python, "-c", "import json, pathlib, sys, sysconfig, pytriton; p = pathlib.Path(pytriton.__file__).parent; "
                       "print(json.dumps({'pytriton': str(p), 'libdir': sysconfig.get_config_var('LIBDIR'), "
                       "'version': '%d.%d' % sys.version_info[:2]}))"],
        capture_output=True, text=True, check=True, timeout=60).stdout)
    dist = Path(info["pytriton"]) / "tritonserver"
    python_backend = root / "backends" / "python"
    python_backend.mkdir(parents=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        (python_backend / name).symlink_to(dist / "backends" / "python" / name)
    shutil.copy(dist / "python_backend_stubs" / info["version"] / "triton_python_backend_stub", python_backend)
    env = dict(os.environ)
    libs = [info["libdir"], str(Path(info["pytriton"]).parent / "nvidia_pytriton.libs")]
    env["LD_LIBRARY_PATH"] = ":".join([*libs, *filter(None, [env.get("LD_LIBRARY_PATH")])])
    env["PATH"] = f"{Path(python).parent}:{env.get('PATH', '')}"
    return dist / "bin" / "tritonserver", env


class Server:
    def __init__(self, process: subprocess.Popen[bytes], http: int, grpc: int, log: Path) -> None:
        self.process, self.http, self.grpc, self.log = process, http, grpc, log

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def start_server(python: str, repo: Path, models: list[str], root: Path, timeout: float = 120) -> Server:
    binary, env = server_layout(python, root)
    http, grpc, metrics = free_ports(3)
    log = root / "server.log"
    command = [str(binary), f"--model-repository={repo}", "--model-control-mode=explicit",
               *(f"--load-model={m}" for m in models), f"--backend-directory={root / 'backends'}",
               "--http-address=127.0.0.1", f"--http-port={http}", "--grpc-address=127.0.0.1", f"--grpc-port={grpc}",
               "--allow-metrics=false", f"--metrics-port={metrics}", "--exit-on-error=true", "--exit-timeout-secs=5",
               f"--backend-config=python,shm-region-prefix-name=diffv2iqa-export-test-{os.getpid()}-"]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root)
    server = Server(process, http, grpc, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"tritonserver exited with {process.returncode}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=2) as r:
                if r.status == 200:
                    return server
        except OSError:
            pass
        time.sleep(0.5)
    stop_server(server)
    raise AssertionError(f"tritonserver not ready after {timeout} s:\n{server.log_tail()}")


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(timeout=10)


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The shipped tritonserver serving diffv2iqa_local as exported, and the diffv2iqa front as exported with its
    three graph models run by the ONNX Runtime stand-in (their exported config, on the Python backend)."""
    python = serve_python()
    root = tmp_path_factory.mktemp("tritonserver")
    served = root / "repo"
    shutil.copytree(repo, served)
    for graph in GRAPHS:
        config = served / graph / "config.pbtxt"
        text = config.read_text()
        assert 'platform: "onnxruntime_onnx"' in text
        config.write_text(text.replace('platform: "onnxruntime_onnx"', 'backend: "python"'))
        (served / graph / "1" / "model.py").write_text(ORT_STAND_IN)
    running = start_server(python, served, [*GRAPHS, *PYTHON_MODELS], root)
    try:
        yield running
    finally:
        stop_server(running)


@pytest.fixture(scope="module")
def images(photos: list[np.ndarray]) -> list[np.ndarray]:
    """Three photographs of one size (a `pixels` batch must be one shape), larger than the tiny model's crop."""
    return [np.ascontiguousarray(p[40:140, 60:180]) for p in photos[:3]]


def png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


def outputs(result: Any) -> dict[str, np.ndarray]:
    return {name: result.as_numpy(name) for name in ("score", "vcg", "vda", "crops", "error")}


@pytest.mark.parametrize("model", PYTHON_MODELS)
def test_python_models_score_as_the_toolkit(server: Server, model: str, bundle: Bundle,
                                            images: list[np.ndarray]) -> None:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    with diffv2iqa_trt.load(bundle.root, backend="onnxruntime") as scorer:
        want = scorer.score(images)
    assert all(r.ok for r in want)

    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.http}")
    pixels = httpclient.InferInput("pixels", [len(images), *images[0].shape], "UINT8")
    pixels.set_data_from_numpy(np.stack(images))
    got = outputs(client.infer(model, [pixels]))
    assert got["score"].shape == (3, 1) and got["error"].tolist() == [[b""]] * 3
    for i, r in enumerate(want):  # bit for bit: the same pipeline, batches and ONNX Runtime
        assert (got["score"][i, 0], got["vcg"][i, 0], got["vda"][i, 0], got["crops"][i, 0]) == (
            r.score, r.vcg, r.vda, r.crops), (model, i)

    # Encoded files through gRPC, one of them not an image: that item's error, the others scored.
    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc}")
    encoded = grpcclient.InferInput("image", [3, 1], "BYTES")
    encoded.set_data_from_numpy(np.array([[png(images[0])], [b"not an image"], [png(images[2])]], dtype=np.object_))
    got = outputs(grpc.infer(model, [encoded]))
    assert got["error"][1, 0] == b"not an image file Pillow can read (unknown or corrupt format)"
    assert np.isnan(got["score"][1, 0]) and got["crops"][1, 0] == 0
    assert [got["score"][0, 0], got["score"][2, 0]] == [want[0].score, want[2].score]
    assert got["error"][0, 0] == got["error"][2, 0] == b""

    # A request with both inputs: its row's error says so, as `serve` answers (Triton refuses one with none).
    both = httpclient.InferInput("image", [1, 1], "BYTES")
    both.set_data_from_numpy(np.array([[png(images[0])]], dtype=np.object_))
    one = httpclient.InferInput("pixels", [1, *images[0].shape], "UINT8")
    one.set_data_from_numpy(images[0][None])
    got = outputs(client.infer(model, [both, one]))
    assert got["error"][0, 0].startswith(b"a request carries exactly one of the inputs 'image'")
    assert np.isnan(got["score"][0, 0])
    with pytest.raises(InferenceServerException, match="request has 0 inputs"):
        client.infer(model, [])
    client.close()
    grpc.close()


# ------------------------------------------------------------------- the front's BLS loop, without a server


class FakeTensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, np.asarray(array)

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class FakeError:
    def __init__(self, message: str) -> None:
        self._message = message

    def message(self) -> str:
        return self._message


class FakeResponse:
    def __init__(self, output_tensors: list[FakeTensor], error: FakeError | None = None) -> None:
        self.output_tensors, self._error = output_tensors, error

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> FakeError | None:
        return self._error


class FakeRequest:
    def __init__(self, inputs: list[FakeTensor]) -> None:
        self.inputs = inputs


def fake_pb_utils(repo: Path, calls: list[tuple[str, tuple[int, ...]]], broken: str | None = None) -> Any:
    """A stand-in for triton_python_backend_utils whose BLS requests run the repository's exported model.onnx on
    ONNX Runtime, returning what Triton would (a batched model's (B,) output as [B, 1], its config's dims [1])."""
    import types

    import onnxruntime as ort

    sessions: dict[str, Any] = {}

    class InferenceRequest:
        def __init__(self, model_name: str, requested_output_names: list[str], inputs: list[FakeTensor]) -> None:
            self.model, self.outputs, self.inputs = model_name, requested_output_names, inputs

        def exec(self) -> FakeResponse:
            calls.append((self.model, tuple(self.inputs[0].as_numpy().shape)))
            if self.model == broken:
                return FakeResponse([], FakeError(f"Model '{self.model}' is not ready."))
            if self.model not in sessions:
                sessions[self.model] = ort.InferenceSession(str(repo / self.model / "1" / "model.onnx"),
                                                            providers=["CPUExecutionProvider"])
            results = sessions[self.model].run(self.outputs, {t.name(): t.as_numpy() for t in self.inputs})
            batched = self.model != "restore_step"
            return FakeResponse([FakeTensor(n, r.reshape(-1, 1) if batched else r)
                                 for n, r in zip(self.outputs, results, strict=True)])

    def get_input_tensor_by_name(request: FakeRequest, name: str) -> FakeTensor | None:
        return next((t for t in request.inputs if t.name() == name), None)

    def get_output_tensor_by_name(response: FakeResponse, name: str) -> FakeTensor | None:
        return next((t for t in response.output_tensors if t.name() == name), None)

    module = types.ModuleType("triton_python_backend_utils")
    module.__dict__.update(Tensor=FakeTensor, InferenceRequest=InferenceRequest, InferenceResponse=FakeResponse,
                           TritonError=FakeError, get_input_tensor_by_name=get_input_tensor_by_name,
                           get_output_tensor_by_name=get_output_tensor_by_name)
    return module


def load_front(repo: Path, pb_utils: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The repository's diffv2iqa/1/model.py, imported against `pb_utils` and initialised as Triton would."""
    import importlib.util

    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb_utils)
    spec = importlib.util.spec_from_file_location("exported_front_model", repo / "diffv2iqa" / "1" / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    config = parse_config(repo / "diffv2iqa" / "config.pbtxt")
    parameters = {k: {"string_value": v.string_value} for k, v in config.parameters.items()}
    model = module.TritonPythonModel()
    model.initialize({"model_config": json.dumps({"parameters": parameters}),
                      "model_repository": str(repo / "diffv2iqa"), "model_version": "1"})
    return model


def test_front_bls_loop_scores_as_the_toolkit(repo: Path, bundle: Bundle, images: list[np.ndarray],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, tuple[int, ...]]] = []
    front = load_front(repo, fake_pb_utils(repo, calls), monkeypatch)
    with diffv2iqa_trt.load(bundle.root, backend="onnxruntime") as scorer:
        want = scorer.score(images)
    requests = [FakeRequest([FakeTensor("pixels", np.stack(images[:2]))]),
                FakeRequest([FakeTensor("image", np.array([[png(images[2])], [b""]], dtype=np.object_))])]
    first, second = front.execute(requests)
    assert not first.has_error() and not second.has_error()
    got = {t.name(): t.as_numpy() for t in first.output_tensors}
    assert got["score"][:, 0].tolist() == [want[0].score, want[1].score]
    assert got["vcg"][:, 0].tolist() == [want[0].vcg, want[1].vcg] and got["crops"][:, 0].tolist() == [1, 1]
    got = {t.name(): t.as_numpy() for t in second.output_tensors}
    assert got["score"][0, 0] == want[2].score and got["error"][:, 0].tolist() == [
        b"", b"the 'image' input is empty (0 bytes): send the encoded image file's bytes"]  # serve's own answer
    # The three images of both requests ran as one batch: 12 restore steps, then one call per branch.
    steps = bundle.manifest.pipeline.steps
    assert calls == [("restore_step", (3, 3, 64, 64))] * steps + [("vcg", (3, 3, 64, 64)), ("vda", (3, 3, 64, 64))]


def test_front_answers_every_request_when_a_graph_model_fails(repo: Path, images: list[np.ndarray],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    front = load_front(repo, fake_pb_utils(repo, [], broken="vda"), monkeypatch)
    responses = front.execute([FakeRequest([FakeTensor("pixels", images[0][None])]),
                               FakeRequest([FakeTensor("pixels", images[1][None])])])
    assert not any(r.has_error() for r in responses)
    errors = [{t.name(): t.as_numpy() for t in r.output_tensors}["error"].tolist() for r in responses]
    assert errors == [[[b"scoring failed on the server: BackendError: the vda model 'vda' failed: Model 'vda' is "
                        b"not ready."]]] * 2


def test_front_refuses_a_noise_bank_that_is_not_the_bundles(repo: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from diffv2iqa_trt.errors import BundleError

    copy = tmp_path / "repo"
    shutil.copytree(repo / "diffv2iqa", copy / "diffv2iqa")
    bank = np.load(copy / "diffv2iqa" / "1" / "noise_bank.npy")
    bank[3, 0, 0, 0] += 1
    np.save(copy / "diffv2iqa" / "1" / "noise_bank.npy", bank)
    with pytest.raises(BundleError, match="the noise bank is not the bundle's"):
        load_front(copy, fake_pb_utils(copy, []), monkeypatch)


def test_external_data_travels_beside_model_onnx(bundle: Bundle, tmp_path: Path) -> None:
    """A graph whose weights are external data: the data file lands beside model.onnx under the name the graph
    refers to, so ONNX Runtime (and Triton's onnxruntime backend) loads the exported model.onnx as it is."""
    import onnx
    import onnxruntime as ort

    src = tmp_path / "src"
    src.mkdir()
    model = onnx.load(str(bundle.onnx_path("vcg")))
    onnx.save(model, str(src / "vcg.fp32.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="vcg.fp32.onnx.data")
    doc = read_manifest(bundle.manifest_path)
    files = {name: bundle.root / name for name in doc.pop("files")}
    files |= {"vcg.fp32.onnx": src / "vcg.fp32.onnx", "vcg.fp32.onnx.data": src / "vcg.fp32.onnx.data"}
    external = load_bundle(write_bundle(tmp_path / "b", doc, files))
    result = export(external.root, tmp_path / "repo", "--no-local")
    assert result.exit_code == 0, result.output
    version = tmp_path / "repo" / "vcg" / "1"
    assert sorted(p.name for p in version.iterdir()) == ["model.onnx", "vcg.fp32.onnx.data"]
    assert sha256_file(version / "vcg.fp32.onnx.data") == external.manifest.files["vcg.fp32.onnx.data"].sha256
    crops = {n: np.random.default_rng(0).standard_normal((2, 3, 64, 64), dtype=np.float32)
             for n in ("x", "y0", "y_t1", "y_t2")}
    exported = ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])
    original = ort.InferenceSession(str(bundle.onnx_path("vcg")), providers=["CPUExecutionProvider"])
    assert np.array_equal(exported.run(None, crops)[0], original.run(None, crops)[0])
