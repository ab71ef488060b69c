"""The deployable bundle: a directory with `manifest.json` (schema in `manifest.schema.json`) and the ONNX files and
TensorRT engines it lists. A torch-free format layer: it never imports export/, model/ or the runtime."""

from ..errors import BundleError
from .manifest import EngineEntry, GraphEntry, Manifest, ModelSection, PipelineSection, VariantEntry
from .schema import (
    MANIFEST_NAME,
    SCHEMA_NAME,
    SCHEMA_VERSION,
    environment_versions,
    manifest_schema,
    sha256_file,
    to_plain_json,
    validate_manifest,
)
from .store import Bundle, BundleRecoveredWarning, load_bundle, read_manifest, write_bundle

__all__ = [
    "MANIFEST_NAME",
    "SCHEMA_NAME",
    "SCHEMA_VERSION",
    "Bundle",
    "BundleError",
    "BundleRecoveredWarning",
    "EngineEntry",
    "GraphEntry",
    "Manifest",
    "ModelSection",
    "PipelineSection",
    "VariantEntry",
    "environment_versions",
    "load_bundle",
    "manifest_schema",
    "read_manifest",
    "sha256_file",
    "to_plain_json",
    "validate_manifest",
    "write_bundle",
]
