"""Whether an engine a bundle lists may be loaded here: the refusal rules, as plain Python.

A TensorRT engine is compiled code for one TensorRT release and one GPU. Loading it elsewhere fails deep inside
TensorRT or, worse, runs kernels tuned for another chip; so the manifest records where each engine was built and the
runtime refuses a mismatch before TensorRT sees the file, with the command that rebuilds it:
- TensorRT: the same version string, unless the engine was built version-compatible; then any release of the same
  major that is not older than the builder (TensorRT's forward-compatibility promise);
- GPU: the same compute capability and the same GPU model (engines are tuned to the model's SM count and memory).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..bundle import EngineEntry
from ..errors import BundleError
from .tensorrt_api import TensorRTVersion


@dataclass(frozen=True)
class Machine:
    """Where an engine is built or loaded: the TensorRT version and the GPU (name, compute capability "9.0")."""

    tensorrt: str
    gpu: str
    sm: str


def rebuild_hint(bundle: str) -> str:
    return (f"rebuild the engines on this machine: `diffv2iqa-trt build --target tensorrt --from-bundle {bundle} "
            f"--out {bundle} --overwrite`")


def refusal(entry: EngineEntry, here: Machine) -> str | None:
    """Why `entry` cannot be loaded on `here`, or None when it can."""
    built = TensorRTVersion.parse(entry.tensorrt)
    runtime = TensorRTVersion.parse(here.tensorrt)
    if entry.version_compatible:
        if runtime.major != built.major or runtime < built:
            return (f"it was built version-compatible with TensorRT {built}, which runs on TensorRT "
                    f"{built.major}.x releases from {built.major}.{built.minor} on; this is TensorRT {runtime}")
    elif runtime.text != built.text:
        return f"it was built with TensorRT {built} and this is TensorRT {runtime}"
    if entry.sm != here.sm:
        return f"it was built for compute capability {entry.sm} ({entry.gpu}) and this GPU is {here.sm} ({here.gpu})"
    if entry.gpu != here.gpu:
        return f"it was built on a {entry.gpu} and this GPU is a {here.gpu} (same compute capability {here.sm})"
    return None


def check_loadable(bundle: str, graph: str, precision: str, entry: EngineEntry, here: Machine) -> None:
    """BundleError naming the engine, the mismatch and the rebuild command, unless `entry` may be loaded here."""
    why = refusal(entry, here)
    if why is not None:
        raise BundleError(f"{bundle}: the {precision} TensorRT engine of {graph} ({entry.file}) cannot be loaded here: "
                          f"{why}; {rebuild_hint(bundle)}")
