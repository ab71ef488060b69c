"""The Python bundle loader against the hostile ONNX files shared with the C++ reader's tests (tests/data/hostile/,
its README says what each is): both readers find the same external-data references and refuse the same ones."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from diffv2iqa_trt.bundle.store import _external_locations, _location_name

HOSTILE = Path(__file__).parent / "data" / "hostile" / "onnx_external"
INDEX = json.loads((HOSTILE / "index.json").read_text()) if (HOSTILE / "index.json").is_file() else {}


@pytest.mark.parametrize("name", sorted(INDEX))
def test_the_python_walker_finds_what_the_cpp_walker_finds(name: str) -> None:
    case = INDEX[name]
    if "error" in case:
        with pytest.raises(Exception):  # noqa: B017 - any refusal; the loader turns it into a BundleError
            onnx.load(str(HOSTILE / name), load_external_data=False)
        return
    model = onnx.load(str(HOSTILE / name), load_external_data=False)
    found = _external_locations(model)
    # Every reference, including a function's default attribute and a mistyped attribute (the C++ walker's list).
    assert sorted(found, key=str) == sorted(case["locations"], key=str)
    names = [_location_name(name, loc) for loc in case["locations"]]
    assert names == case["bundle_names"]
