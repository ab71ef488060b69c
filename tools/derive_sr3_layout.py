"""Write the authors' SR3 generator key layout (paper preset) as JSON, without importing any model code.

The names are enumerated by hand, following the constructor loops of the SR3 U-Net
(Janspiry/Image-Super-Resolution-via-Iterative-Refinement, model/sr3_modules/unet.py) and the buffers that
GaussianDiffusion.set_new_noise_schedule registers (model/sr3_modules/diffusion.py). The generator checkpoint is
`GaussianDiffusion.state_dict()`, so every U-Net key sits under `denoise_fn.`.

Run: python tools/derive_sr3_layout.py [out.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SOURCE = (
    "Janspiry/Image-Super-Resolution-via-Iterative-Refinement: model/sr3_modules/unet.py "
    "@ d6a9b1d5a2309971bec4f4360fb83c3555501431 (norm_groups variant; key names identical to "
    "0f39139b9ccc72e912933780e0c2b557ca5f5eff), "
    "model/sr3_modules/diffusion.py @ 9be9afd41586869659337dae0107bfce0c449f0c, "
    "model/networks.py @ d6a9b1d5a2309971bec4f4360fb83c3555501431 (define_G: norm_groups defaults to 32, "
    "image_size from model.diffusion.image_size). handsomewzy/DiffV2IQA @ af1ecef9e1c660b2a67ec1e6a00f11a635782dbd "
    "ships only .pyc files for its sr3_modules/unet.py; its diffusion/config/iqa_data_restore.json (unet block) and "
    "diffusion/model/model.py (save_network stores GaussianDiffusion.state_dict()) were read. Derived by "
    "tools/derive_sr3_layout.py."
)

# Buffers registered by GaussianDiffusion.set_new_noise_schedule, each of shape (n_timestep,).
SCHEDULE_BUFFERS = [
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
]


def _gn(keys: dict[str, list[int]], p: str, c: int) -> None:
    keys[f"{p}.weight"] = [c]
    keys[f"{p}.bias"] = [c]


def _conv(keys: dict[str, list[int]], p: str, cin: int, cout: int, k: int, bias: bool = True) -> None:
    keys[f"{p}.weight"] = [cout, cin, k, k]
    if bias:
        keys[f"{p}.bias"] = [cout]


def _norm_act_conv(keys: dict[str, list[int]], p: str, cin: int, cout: int) -> None:
    # Sequential(GroupNorm, Swish, Dropout|Identity, Conv3x3): parameters at indices 0 and 3.
    _gn(keys, f"{p}.block.0", cin)
    _conv(keys, f"{p}.block.3", cin, cout, 3)


def _res_attn(keys: dict[str, list[int]], p: str, cin: int, cout: int, emb: int, attn: bool) -> None:
    r = f"{p}.res_block"
    keys[f"{r}.noise_func.noise_func.0.weight"] = [cout, emb]
    keys[f"{r}.noise_func.noise_func.0.bias"] = [cout]
    _norm_act_conv(keys, f"{r}.block1", cin, cout)
    _norm_act_conv(keys, f"{r}.block2", cout, cout)
    if cin != cout:
        _conv(keys, f"{r}.res_conv", cin, cout, 1)
    if attn:
        _gn(keys, f"{p}.attn.norm", cout)
        _conv(keys, f"{p}.attn.qkv", cout, 3 * cout, 1, bias=False)
        _conv(keys, f"{p}.attn.out", cout, cout, 1)


def unet_keys(
    in_channel: int = 6,
    out_channel: int = 3,
    inner_channel: int = 64,
    channel_mults: tuple[int, ...] = (1, 2, 4, 8, 8),
    attn_res: tuple[int, ...] = (16,),
    res_blocks: int = 2,
    image_size: int = 128,
) -> dict[str, list[int]]:
    """U-Net state-dict keys -> shapes, in registration order."""
    keys: dict[str, list[int]] = {}
    emb = inner_channel
    keys["noise_level_mlp.1.weight"] = [4 * emb, emb]
    keys["noise_level_mlp.1.bias"] = [4 * emb]
    keys["noise_level_mlp.3.weight"] = [emb, 4 * emb]
    keys["noise_level_mlp.3.bias"] = [emb]

    n = len(channel_mults)
    pre = inner_channel
    skips = [pre]
    res = image_size
    i = 0
    _conv(keys, f"downs.{i}", in_channel, inner_channel, 3)
    i += 1
    for level in range(n):
        ch = inner_channel * channel_mults[level]
        for _ in range(res_blocks):
            _res_attn(keys, f"downs.{i}", pre, ch, emb, res in attn_res)
            i += 1
            skips.append(ch)
            pre = ch
        if level != n - 1:
            _conv(keys, f"downs.{i}.conv", pre, pre, 3)
            i += 1
            skips.append(pre)
            res //= 2

    _res_attn(keys, "mid.0", pre, pre, emb, True)
    _res_attn(keys, "mid.1", pre, pre, emb, False)

    i = 0
    for level in reversed(range(n)):
        ch = inner_channel * channel_mults[level]
        for _ in range(res_blocks + 1):
            _res_attn(keys, f"ups.{i}", pre + skips.pop(), ch, emb, res in attn_res)
            i += 1
            pre = ch
        if level >= 1:
            _conv(keys, f"ups.{i}.conv", pre, pre, 3)
            i += 1
            res *= 2
    assert not skips

    _norm_act_conv(keys, "final_conv", pre, out_channel)
    return keys


def main(out: Path) -> None:
    keys = {f"denoise_fn.{k}": v for k, v in unet_keys().items()}
    n_params = 0
    for shape in keys.values():
        size = 1
        for d in shape:
            size *= d
        n_params += size
    doc = {
        "source": SOURCE,
        "preset": "paper: in 6, out 3, inner 64, norm_groups 32, mults [1,2,4,8,8], attn_res [16], res_blocks 2, "
        "image_size 128, dropout 0.2",
        "num_parameters": n_params,
        "keys": keys,
        "schedule_buffers": SCHEDULE_BUFFERS,
        "schedule_buffer_shape": "(n_timestep,) each; n_timestep = 2000 for the authors' training schedule",
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    # One key per line (indent= alone would spread every shape list over several lines).
    lines = []
    for name, value in doc.items():
        if name == "keys":
            body = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in keys.items())
            lines.append(f' "keys": {{\n{body}\n }}')
        else:
            lines.append(f" {json.dumps(name)}: {json.dumps(value)}")
    text = "{\n" + ",\n".join(lines) + "\n}\n"
    assert json.loads(text) == doc
    out.write_text(text)
    print(f"{len(keys)} keys, {n_params} parameters -> {out}")


if __name__ == "__main__":
    default = Path(__file__).resolve().parents[1] / "diffv2iqa_trt/model/authors_layout/sr3_unet_paper.json"
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else default)
