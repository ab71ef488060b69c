"""The edits of tests/data/hostile/manifest_edits.json, applied to a parsed manifest: shared by the C++ reader's and the
Python loader's tests, so both read the same hostile manifests."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def apply_edits(doc: dict[str, Any], edits: list[dict[str, Any]]) -> None:
    """As the file's 'about' defines them: set VALUE, resize a list to LENGTH (repeating its last item), copy FROM to
    TO; "steps" and "crop_size" stand for the manifest's values before the edits."""
    p = doc["pipeline"]
    known = {"steps": p["steps"], "crop_size": p["crop_size"]}

    def value(v: Any) -> Any:
        return [known.get(x, x) if isinstance(x, str) else x for x in v] if isinstance(v, list) else known.get(v, v)

    def parent(path: list[Any]) -> Any:
        node: Any = doc
        for key in path[:-1]:
            node = node[key]
        return node

    for edit in edits:
        if edit["op"] == "set":
            parent(edit["path"])[edit["path"][-1]] = value(edit["value"])
        elif edit["op"] == "resize":
            items = parent(edit["path"])[edit["path"][-1]]
            length = value(edit["length"])
            items[:] = items[:length] + [items[-1]] * max(0, length - len(items))
        else:
            assert edit["op"] == "copy", edit
            parent(edit["to"])[edit["to"][-1]] = parent(edit["from"])[edit["from"][-1]]


def point_external_data_at(onnx_path: Path, location: str) -> None:
    """Rewrite every initializer's external-data `location` of an ONNX file (its data is not loaded)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    for t in model.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = location
    onnx_path.write_bytes(model.SerializeToString())
