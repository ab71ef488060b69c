"""The serving load benchmark's request mix (benchmarks/serving_load.py); the benchmark itself runs the real server
and is not part of the test run (its results: benchmarks/results/serving/)."""

from __future__ import annotations

import io
import struct

import pytest
from PIL import Image

from diffv2iqa_trt.benchmarks.serving_load import BAD_INPUTS, is_bad, payload, png_bomb, tree_rss_mib


def test_the_bomb_declares_ten_gigapixels_in_a_few_bytes() -> None:
    bomb = png_bomb()
    assert len(bomb) < 100 and bomb.startswith(b"\x89PNG\r\n\x1a\n") and bomb[12:16] == b"IHDR"
    assert struct.unpack(">II", bomb[16:24]) == (100_000, 100_000)
    with pytest.raises(Image.DecompressionBombError, match="10000000000 pixels"):
        Image.open(io.BytesIO(bomb))  # Pillow reads the header and refuses it as a bomb


def test_every_nth_request_is_bad_and_the_bad_kinds_rotate() -> None:
    images = [b"a", b"b", b"c"]
    sent = [payload(i, images, 4) for i in range(12)]
    assert [is_bad(i, 4) for i in range(8)] == [False, False, False, True] * 2
    assert sent[3] == list(BAD_INPUTS.values())[0] and sent[7] == list(BAD_INPUTS.values())[1]
    assert sent[11] == list(BAD_INPUTS.values())[2]
    assert [sent[i] for i in (0, 1, 2, 4)] == [b"a", b"b", b"c", b"b"]  # good requests keep their image
    assert [payload(i, images, 0) for i in range(4)] == [b"a", b"b", b"c", b"a"]  # 0: no bad requests


def test_tree_rss_counts_children() -> None:
    import os
    import subprocess
    import sys
    import time

    child = subprocess.Popen([sys.executable, "-c", "x = bytearray(200 * 2**20); x[::4096] = b'1' * len(x[::4096]);"
                              "import time; time.sleep(30)"])
    try:
        deadline = time.monotonic() + 20
        while tree_rss_mib(child.pid) < 200 and time.monotonic() < deadline:  # until its 200 MiB are touched
            time.sleep(0.05)
        alone = tree_rss_mib(child.pid)
        assert alone > 200
        assert tree_rss_mib(os.getpid()) >= alone + 10  # this process and its child
    finally:
        child.kill()
        child.wait()
    assert tree_rss_mib(child.pid) == 0  # gone: nothing counted
