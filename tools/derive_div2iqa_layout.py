"""Write the authors' DIV2IQA state-dict key layout (paper preset) as JSON, without importing any model code.

The keys are enumerated by hand from the constructors the authors' module runs: DIV2IQA.__init__ (DiffV2IQA
models/div2iqa.py, embed_dim=768), timm's `vit_base_patch8_224`, torchvision's `resnet50` and MANIQA's Scale-Swin
(models/swin.py). The order is that of `Module.state_dict()`: a module's own parameters, then its own persistent
buffers, then its children in registration order.

Run: python tools/derive_div2iqa_layout.py [out.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SOURCE = (
    "handsomewzy/DiffV2IQA: models/div2iqa.py @ 6bdd015b549ab486056243c72e9a5df0f4677826 (DIV2IQA, built with "
    "embed_dim=768; its models/swin.py is MANIQA's). IIGROUP/MANIQA: models/swin.py @ "
    "6a9d49f67afce095b62909902f8dc74779367366 (SwinTransformer with `scale`; same keys as @ "
    "0e4c86429dbb0b18d0f026d4daacd72d3b5b3552). huggingface/pytorch-image-models: timm/models/vision_transformer.py @ "
    "0041cb7ba4ab3b8b3bce5bf105300f0ee57ffc22 (vit_base_patch8_224: patch 8, dim 768, depth 12, heads 12, qkv bias, "
    "1000 classes; identity submodules ls1/ls2/q_norm/k_norm/fc_norm hold no keys). pytorch/vision: "
    "torchvision/models/resnet.py @ f50e776b051ddf007b90d7bc8f70b0708c12d008 (resnet50). "
    "Derived by tools/derive_div2iqa_layout.py."
)

Keys = dict[str, list[int]]

# Paper sizes.
E = 768  # DIV2IQA embed_dim = ViT width
GRID = 224 // 8
TOKENS = GRID * GRID  # 784
NOISE = 192
CLASSES = 1000
WINDOW = 4
HEADS = (4, 4)
DEPTHS = (2, 2)
DIM_MLP = 768


def linear(k: Keys, p: str, fan_in: int, fan_out: int, bias: bool = True) -> None:
    k[f"{p}.weight"] = [fan_out, fan_in]
    if bias:
        k[f"{p}.bias"] = [fan_out]


def conv(k: Keys, p: str, cin: int, cout: int, ks: int, bias: bool = True) -> None:
    k[f"{p}.weight"] = [cout, cin, ks, ks]
    if bias:
        k[f"{p}.bias"] = [cout]


def layernorm(k: Keys, p: str, c: int) -> None:
    k[f"{p}.weight"] = [c]
    k[f"{p}.bias"] = [c]


def batchnorm(k: Keys, p: str, c: int) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        k[f"{p}.{name}"] = [c]
    k[f"{p}.num_batches_tracked"] = []


def vit_b8(k: Keys, p: str) -> None:
    k[f"{p}.cls_token"] = [1, 1, E]
    k[f"{p}.pos_embed"] = [1, TOKENS + 1, E]
    conv(k, f"{p}.patch_embed.proj", 3, E, 8)
    for i in range(12):
        b = f"{p}.blocks.{i}"
        layernorm(k, f"{b}.norm1", E)
        linear(k, f"{b}.attn.qkv", E, 3 * E)
        linear(k, f"{b}.attn.proj", E, E)
        layernorm(k, f"{b}.norm2", E)
        linear(k, f"{b}.mlp.fc1", E, 4 * E)
        linear(k, f"{b}.mlp.fc2", 4 * E, E)
    layernorm(k, f"{p}.norm", E)
    linear(k, f"{p}.head", E, CLASSES)


def resnet50(k: Keys, p: str) -> None:
    conv(k, f"{p}.conv1", 3, 64, 7, bias=False)
    batchnorm(k, f"{p}.bn1", 64)
    inplanes = 64
    for stage, (blocks, planes) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512), strict=True), start=1):
        for j in range(blocks):
            b = f"{p}.layer{stage}.{j}"
            conv(k, f"{b}.conv1", inplanes, planes, 1, bias=False)
            batchnorm(k, f"{b}.bn1", planes)
            conv(k, f"{b}.conv2", planes, planes, 3, bias=False)
            batchnorm(k, f"{b}.bn2", planes)
            conv(k, f"{b}.conv3", planes, planes * 4, 1, bias=False)
            batchnorm(k, f"{b}.bn3", planes * 4)
            if j == 0:  # first block of every stage changes width (and stride from stage 2 on)
                conv(k, f"{b}.downsample.0", inplanes, planes * 4, 1, bias=False)
                batchnorm(k, f"{b}.downsample.1", planes * 4)
            inplanes = planes * 4
    linear(k, f"{p}.fc", 2048, CLASSES)


def scale_swin(k: Keys, p: str, dim: int) -> None:
    # Grid 28 > window 4, so no block falls back to a single unshifted window.
    n = WINDOW * WINDOW
    windows = (GRID // WINDOW) ** 2
    conv(k, f"{p}.downsample", dim, dim, 3)
    for i, (depth, heads) in enumerate(zip(DEPTHS, HEADS, strict=True)):
        layer = f"{p}.layers.{i}"
        conv(k, f"{layer}.conv", dim, dim, 3)
        for j in range(depth):
            b = f"{layer}.blocks.{j}"
            if j % 2 == 1:  # shifted block: the mask is a persistent buffer (None, hence absent, otherwise)
                k[f"{b}.attn_mask"] = [windows, n, n]
            layernorm(k, f"{b}.norm1", dim)
            k[f"{b}.attn.relative_position_bias_table"] = [(2 * WINDOW - 1) ** 2, heads]
            k[f"{b}.attn.relative_position_index"] = [n, n]
            linear(k, f"{b}.attn.qkv", dim, 3 * dim)
            linear(k, f"{b}.attn.proj", dim, dim)
            layernorm(k, f"{b}.norm2", dim)
            linear(k, f"{b}.mlp.fc1", dim, DIM_MLP)
            linear(k, f"{b}.mlp.fc2", DIM_MLP, dim)


def tab(k: Keys, p: str, dim: int) -> None:
    for name in ("c_q", "c_k", "c_v"):
        linear(k, f"{p}.{name}", dim, dim)


def score_mlp(k: Keys, p: str, dim: int) -> None:
    # Sequential(Linear, ReLU, Dropout, Linear, act): parameters at indices 0 and 3.
    linear(k, f"{p}.0", dim, dim)
    linear(k, f"{p}.3", dim, 1)


def div2iqa() -> Keys:
    k: Keys = {}
    k["noise_levels"] = [1, 4, NOISE]  # the module's own parameter precedes all children
    vit_b8(k, "vit")
    for i in range(2):
        tab(k, f"tablock1.{i}", TOKENS)
    k["noise_embedding.weight"] = [4, NOISE]
    conv(k, "conv1", E * 8 + NOISE * 4, E * 3, 1)
    batchnorm(k, "bn1", E * 3)
    conv(k, "conv3", E * 3, E, 1)
    scale_swin(k, "swintransformer1", E)
    for i in range(2):
        tab(k, f"tablock2.{i}", TOKENS)
    conv(k, "conv2", E, E // 2, 1)
    scale_swin(k, "swintransformer2", E // 2)
    score_mlp(k, "fc_score", E // 2)
    score_mlp(k, "fc_weight", E // 2)
    resnet50(k, "res")
    for name in ("x_linear", "c_q", "c_k", "c_v"):
        linear(k, f"qa.{name}", CLASSES, TOKENS)
    conv(k, "conv_s1", 1, 32, 1)
    for name in ("rq_score", "fc_score1", "fc_weight1"):
        score_mlp(k, name, 32)
    return k


BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked", "relative_position_index", "attn_mask")


def main(argv: list[str]) -> None:
    out = Path(argv[1]) if len(argv) > 1 else Path("diffv2iqa_trt/model/authors_layout/div2iqa_paper.json")
    keys = div2iqa()
    n_params = 0
    for name, shape in keys.items():
        if not name.endswith(BUFFER_SUFFIXES):
            size = 1
            for d in shape:
                size *= d
            n_params += size
    doc = {
        "source": SOURCE,
        "preset": "paper: ViT-B/8 at 224 (taps 6-9), resnet50, embed_dim 768, noise 192, 2 TABs, Swin depths [2,2] "
        "heads [4,4] window 4 dim_mlp 768",
        "num_parameters": n_params,
        "keys": keys,
    }
    # One key per line (indent= alone would spread every shape list over several lines).
    lines = []
    for name, value in doc.items():
        if name == "keys":
            body = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in keys.items())
            lines.append(f' "keys": {{\n{body}\n }}')
        else:
            lines.append(f" {json.dumps(name)}: {json.dumps(value)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("{\n" + ",\n".join(lines) + "\n}\n")
    print(f"wrote {out}: {len(keys)} keys, {n_params} parameters")


if __name__ == "__main__":
    main(sys.argv)
