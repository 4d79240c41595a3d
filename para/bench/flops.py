"""Counted FLOPs of each method on SDXL's real-size UNet: the hardware-independent side of `make bench`.

    python -m para.bench.flops [--resolutions 512 1024] [--out runs/bench]        # `make flops`, seconds on a CPU

SDXL 1.0's UNet and VAE are built on the meta device (shapes only, no weights, no memory) and every bench variant
(`para.bench.parts.VARIANTS`: PaRa r16 ExCA, LoRA r16 on the same layers, LoRA r16 on attention, DreamBooth, the frozen
floor) is attached through the registry exactly as a run attaches it. `torch.utils.flop_counter.FlopCounterMode`
then counts one training step (forward, the SDXL loss, backward) and one sampling forward at batch 1. It counts
matrix products, convolutions and attention (2 FLOPs per multiply-add); norms, activations and elementwise ops are
not counted, nor is the QR of PaRa's m × r factors (≈ 2·m·r² per layer, < 0.01 % of a step).

From these counts, a Table 1 cell (PAPER.md §4: 200 PaRa / 1000 baseline steps, then 25 prompts × 4 images at 50
DDIM steps with classifier-free guidance, i.e. 2 UNet forwards per step, and one VAE decode per image) and the
sustained throughput it needs to fit in 10 minutes. These are FLOP counts, not timings: how many of them a GPU
sustains is what `python -m para.bench --models sdxl` on that GPU measures.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from para.bench.parts import VARIANTS, variant_method, variant_overrides
from para.bench.report import TABLE1_IMAGES, TABLE1_SAMPLE_STEPS, TABLE1_STEPS, TABLE1_SUBJECTS
from para.core.io import write_results
from para.core.sdxl_architecture import build_sdxl_unet_meta
from para.run.config import compose_config

TOKENS = 77  # CLIP's context length
CELL_MINUTES = 10.0  # issue 8's target for one Table 1 cell on one H100 at 1024 px


def unet_inputs(unet: nn.Module, resolution: int, batch: int = 1) -> tuple[torch.Tensor, ...]:
    """Meta-device inputs of an SDXL-style UNet at `resolution` px: latents, timesteps, text embeddings (both
    encoders, concatenated), pooled embedding, the 6 size/crop ids; widths read from the UNet's config."""
    c = unet.config
    side = resolution // 8
    meta = {"device": "meta"}
    pooled = c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim
    return (
        torch.empty(batch, c.in_channels, side, side, **meta),
        torch.zeros(batch, dtype=torch.long, **meta),
        torch.empty(batch, TOKENS, c.cross_attention_dim, **meta),
        torch.empty(batch, pooled, **meta),
        torch.empty(batch, 6, **meta),
    )


def _forward(unet: nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    latents, timesteps, text, pooled, time_ids = inputs
    added = {"text_embeds": pooled, "time_ids": time_ids}
    return unet(latents, timesteps, encoder_hidden_states=text, added_cond_kwargs=added).sample


def count(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def train_step_flops(unet: nn.Module, resolution: int, floor: bool) -> int:
    """One step: forward, MSE to a target, backward (the floor: to the latents, as in `para.bench.compare`)."""
    inputs = unet_inputs(unet, resolution)
    if floor:
        inputs[0].requires_grad_(True)

    def step():
        pred = _forward(unet, inputs)
        F.mse_loss(pred.float(), torch.empty_like(pred).float()).backward()

    return count(step)


def sample_forward_flops(unet: nn.Module, resolution: int) -> int:
    with torch.no_grad():
        return count(lambda: _forward(unet, unet_inputs(unet, resolution)))


def vae_decode_flops(resolution: int, vae_config: dict | None = None) -> int:
    from diffusers import AutoencoderKL

    from para.bench.sdxl import SDXL_VAE

    with torch.device("meta"):
        vae = AutoencoderKL.from_config(dict(vae_config or SDXL_VAE))
    latents = torch.empty(1, vae.config.latent_channels, resolution // 8, resolution // 8, device="meta")
    with torch.no_grad():
        return count(lambda: vae.decode(latents))


def measure(
    variants: Sequence[str],
    resolutions: Sequence[int],
    base: nn.Module | None = None,
    vae_config: dict | None = None,
    model: str = "sdxl",
) -> list[dict]:
    """Records per (resolution, variant); `base` (a meta-device UNet) and `vae_config` default to SDXL's.

    Each variant is attached once through the registry, as a run attaches it, and counted at every resolution;
    sampling is counted in the method's own sampling form (`prepare_for_sampling`: PaRa merged, LoRA at its scale).
    """
    base = base if base is not None else build_sdxl_unet_meta()
    decode = {resolution: vae_decode_flops(resolution, vae_config) for resolution in resolutions}
    records = []
    for variant in variants:
        unet = copy.deepcopy(base)
        method = variant_method(variant, compose_config(*variant_overrides(variant), "run_dir=unused").method, model)
        trainable = sum(p.numel() for p in method.attach(unet))
        train = {r: train_step_flops(unet, r, floor=variant == "frozen") for r in resolutions}
        method.prepare_for_sampling(unet, merge=True)
        unet.requires_grad_(False)
        for resolution in resolutions:
            records.append(
                {
                    "method": variant,
                    "model": model,
                    "resolution": resolution,
                    "weights": "none (meta device: counted, not run)",
                    "trainable_params": trainable,
                    "train_step_flops": train[resolution],
                    "sample_forward_flops": sample_forward_flops(unet, resolution),
                    "vae_decode_flops": decode[resolution],
                }
            )
    records.sort(key=lambda r: list(resolutions).index(r["resolution"]))  # by resolution, variants in order
    return add_cell_costs(add_flop_ratios(records))


def add_flop_ratios(records: list[dict]) -> list[dict]:
    """Each record's training-step FLOPs ÷ LoRA's and ÷ the frozen floor's at the same resolution."""
    by = {(r["resolution"], r["method"]): r for r in records}
    out = []
    for r in records:
        r = dict(r)
        for reference in ("lora", "frozen"):
            ref = by.get((r["resolution"], reference))
            r[f"train_ratio_{reference}"] = r["train_step_flops"] / ref["train_step_flops"] if ref else None
        out.append(r)
    return out


def add_cell_costs(records: list[dict]) -> list[dict]:
    """A Table 1 cell's FLOPs (training + 100 images × 50 guided steps + 100 VAE decodes), and the sustained
    throughput (TFLOP/s) one GPU needs to finish it in 10 minutes; the whole table's FLOPs for 30 subjects."""
    out = []
    for r in records:
        r = dict(r)
        steps = TABLE1_STEPS.get(r["method"])
        if steps is not None:
            sampling = TABLE1_IMAGES * (TABLE1_SAMPLE_STEPS * 2 * r["sample_forward_flops"] + r["vae_decode_flops"])
            cell = steps * r["train_step_flops"] + sampling
            r.update(
                table1_train_steps=steps,
                cell_flops=cell,
                cell_sampling_share=sampling / cell,
                tflops_needed_for_10_min=cell / (CELL_MINUTES * 60) / 1e12,
                table_flops=cell * TABLE1_SUBJECTS,
            )
        out.append(r)
    return out


def _t(flops: float) -> str:
    return f"{flops / 1e12:,.2f}"


def to_markdown(records: list[dict]) -> str:
    lines = [
        "# Counted FLOPs on SDXL's real-size UNet (meta device: no weights, nothing run)",
        "",
        "torch.utils.flop_counter: matrix products, convolutions, attention (2 FLOPs per multiply-add). "
        "**Counts, not timings**; a GPU's sustained TFLOP/s turns them into time (`python -m para.bench --models "
        "sdxl` measures it).",
    ]
    for resolution in dict.fromkeys(r["resolution"] for r in records):
        rows = [r for r in records if r["resolution"] == resolution]
        lines += [
            "",
            f"## {resolution} px, batch 1",
            "",
            "| method | trainable | train step TFLOP | ×LoRA | ×frozen | sampling forward TFLOP | Table 1 cell PFLOP "
            "| sampling share | TFLOP/s for a cell in 10 min |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            cell = r.get("cell_flops")
            lines.append(
                f"| {r['method']} | {r['trainable_params']:,} | {_t(r['train_step_flops'])} | "
                f"{r['train_ratio_lora']:.4f} | {r['train_ratio_frozen']:.4f} | {_t(r['sample_forward_flops'])} | "
                + (
                    f"{cell / 1e15:,.1f} | {r['cell_sampling_share']:.0%} | {r['tflops_needed_for_10_min']:,.0f} |"
                    if cell is not None
                    else "– | – | – |"
                )
            )
        decode = rows[0]["vae_decode_flops"]
        lines += ["", f"VAE decode per image: {_t(decode)} TFLOP."]
    lines += [
        "",
        f"A Table 1 cell: {TABLE1_STEPS['para']} PaRa / {TABLE1_STEPS['lora']} baseline training steps, then "
        f"{TABLE1_IMAGES} images × {TABLE1_SAMPLE_STEPS} DDIM steps × 2 UNet forwards (guidance) + one VAE decode "
        "each; PaRa samples merged (the base model's forward). Text encoding and scoring are not counted.",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m para.bench.flops", description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--methods", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", default="runs/bench")
    args = parser.parse_args(argv)
    if any(r <= 0 or r % 8 for r in args.resolutions):
        parser.error(f"--resolutions {args.resolutions}: expected positive multiples of 8")
    records = measure(args.methods, args.resolutions)
    write_results(args.out, "flops", records, to_markdown(records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
