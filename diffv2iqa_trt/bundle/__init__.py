"""The deployable bundle: a directory with `manifest.json` (schema in `manifest.schema.json`) and the ONNX files and
TensorRT engines it lists. Torch-free, so runtimes load bundles without the export stack."""

from .manifest import (
    GRAPH_INPUTS,
    GRAPH_NAMES,
    GRAPH_OUTPUTS,
    MANIFEST_NAME,
    PRECISIONS,
    SCHEMA_NAME,
    SCHEMA_VERSION,
    Bundle,
    BundleError,
    check_header,
    environment_versions,
    manifest_schema,
    sha256_file,
    to_plain_json,
    utc_timestamp,
    validate_manifest,
)
from .store import load_bundle, read_manifest, write_bundle

__all__ = [
    "GRAPH_INPUTS",
    "GRAPH_NAMES",
    "GRAPH_OUTPUTS",
    "MANIFEST_NAME",
    "PRECISIONS",
    "SCHEMA_NAME",
    "SCHEMA_VERSION",
    "Bundle",
    "BundleError",
    "check_header",
    "environment_versions",
    "load_bundle",
    "manifest_schema",
    "read_manifest",
    "sha256_file",
    "to_plain_json",
    "utc_timestamp",
    "validate_manifest",
    "write_bundle",
]
