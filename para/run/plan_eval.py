"""The evaluation nets' share of the resource plan: what scoring loads beside the base model, counted on shapes.

A run scores its samples while SDXL is still on its device (para.run.runner), so its last phase holds both:
DINO ViT-S/16, the CLIP of `eval.clip_arch`, LPIPS (`eval.lpips_net`) and the CLIP-score model
(`eval.clip_score_model`), in fp32 as `eval.backbones` loads them. They are built on the meta device in their
architectures (the default DINO's, open_clip's, LPIPS', the CLIP-score model's config: a known OpenAI CLIP or a
folder's config.json), and one forward of each at the batch eval runs it with is counted on fake tensors
(`LiveBytes`): DINO and CLIP on `eval.batch_size` images, the CLIP-score model on one image, LPIPS on its 8
generated images plus the photos whose features stay alive (up to 6 per DreamBooth subject), at `eval.lpips_size`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from para.core.fake_memory import LiveBytes, make_fake, module_bytes

LPIPS_BATCH, MAX_PHOTOS = 8, 6  # eval.metrics.lpips_matrix's batch; the most photos a DreamBooth subject has


@dataclass
class EvalCounts:
    weights: int  # the four nets' parameters and buffers
    peak: int  # the largest forward of one of them, above the weights


def _nets(opts) -> dict[str, tuple[nn.Module, Callable[[nn.Module], object]]]:
    """Each net on the meta device, with the forward eval runs it with."""
    import lpips
    import open_clip
    from transformers import CLIPModel, ViTConfig, ViTModel

    from eval.backbones import dino_vits16_config
    from eval.clip_score import clip_config

    def images(batch: int, side: int) -> torch.Tensor:
        return torch.randn(batch, 3, side, side)

    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        folder = __import__("pathlib").Path(opts.dino).expanduser()
        dino_config = ViTConfig.from_pretrained(folder) if (folder / "config.json").is_file() else dino_vits16_config()
        dino = ViTModel(dino_config, add_pooling_layer=False)
        scorer = CLIPModel(clip_config(opts.clip_score_model))
        lpips_net = lpips.LPIPS(net=opts.lpips_net, pnet_rand=True, verbose=False)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # open_clip's "initialized randomly": no weights are what we want here
    try:
        clip = open_clip.create_model(opts.clip_arch, pretrained=None, device="meta")
    finally:
        root.setLevel(level)
    side, score_side = clip.visual.image_size[0], scorer.config.vision_config.image_size
    batch, lpips_side = opts.batch_size, opts.lpips_size
    return {
        "dino": (dino, lambda m: m(pixel_values=images(batch, dino_config.image_size))),
        "clip": (clip, lambda m: m.encode_image(images(batch, side))),
        "clip_score": (scorer, lambda m: m.get_image_features(pixel_values=images(1, score_side))),
        "lpips": (lpips_net, lambda m: m.net(m.scaling_layer(images(LPIPS_BATCH + MAX_PHOTOS, lpips_side)))),
    }


def count_eval(opts) -> EvalCounts:
    """Weights and forward peak of the evaluation nets of `opts` (an `eval.options.EvalOptions`)."""
    weights, peak = 0, 0
    for net, forward in _nets(opts).values():
        net.to("meta").float().eval()  # (a few buffers are made on the CPU whatever the default device)
        weights += module_bytes(net)
        mode = FakeTensorMode(allow_non_fake_inputs=True)
        make_fake(net, mode)
        live = LiveBytes(ignore=[*net.parameters(), *net.buffers()])
        with mode, live, torch.no_grad():
            forward(net)
        peak = max(peak, live.peak)
    return EvalCounts(weights, peak)


def cached_eval_counts(eval_cfg, cache_dir: str | None) -> EvalCounts:
    """`count_eval` once per evaluation options (in this process and in `cache_dir`)."""
    from eval.options import EvalOptions
    from para.run.plan_count import _cached, _code_version
    from para.run.plan_shipped import library_versions

    opts = EvalOptions.from_any(eval_cfg)
    fields = json.dumps({k: v for k, v in dataclasses.asdict(opts).items() if k not in ("device", "backbones")})

    def key(version: str) -> str:
        return hashlib.sha1((fields + "eval" + version).encode()).hexdigest()[:16]

    return _cached(key(_code_version()), EvalCounts, cache_dir, lambda: count_eval(opts), key(library_versions()))
