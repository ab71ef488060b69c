import numpy as np
import torch
from PIL import Image

import diffv2iqa_trt as iqa

BUNDLE = "my-bundle"  # a folder written by `diffv2iqa-trt build`; iqa.load() alone runs the embedded demo model
IMAGES = ["photo1.png", "photo2.png"]

with iqa.load(BUNDLE) as scorer:  # default: ONNX Runtime with a bundle (bit-reproducible), torch without
    # Paths, decoded exactly as `diffv2iqa-trt score` decodes them: the same scores, bit for bit.
    path_results = scorer.score(IMAGES)
    for r in path_results:
        print(r.source, f"{r.score:.6f} (VCG {r.vcg:.6f}, VDA {r.vda:.6f})" if r.ok else f"error: {r.error}")

    # PIL images and NumPy arrays (H, W, 3) uint8 RGB.
    from_pil = scorer.score([Image.open(p) for p in IMAGES])
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in IMAGES]
    from_numpy = scorer.score(arrays)

    # torch tensors, pyiqa's convention: (3, H, W) or a batch (N, 3, H, W), RGB floats in [0, 1];
    # each image becomes round(v * 255) clipped to [0, 255], so uint8 / 255 scores exactly as the uint8 image.
    tensors = [torch.from_numpy(a.copy()).permute(2, 0, 1).float() / 255 for a in arrays]
    from_torch = scorer.score(tensors)
    batch = scorer.score(torch.stack([tensors[0], tensors[0]]))  # a batch of N gives N results

    # A stream of inputs (a generator): results come back in order as each chunk is scored.
    def frames():
        yield from IMAGES

    streamed = list(scorer.iter_scores(frames(), chunk=8))

    # A bad input is that result's error; the other inputs are still scored.
    bad = scorer.score(["missing.png", IMAGES[0]])
    assert bad[0].error == "file not found" and bad[1].ok
