"""`python -m para.export`, `python -m eval`, `python -m para.run.plan`, `python -m para.run.preflight`.

`{tmp}/para` is a copy of a finished tiny PaRa run; `{tmp}/dreambooth`, `loha`, `svdiff` are adapter folders of those
methods (tests/test_bad_inputs.py: `trained`)."""

from __future__ import annotations

from pathlib import Path

import torch

from bad_inputs import case
from bad_inputs.setups import all_of, file_at, folder_at, removed, truncated

MERGED = ("config.json", "diffusion_pytorch_model.safetensors")


def merged_equals_the_run(name: str):
    """The merged UNet in {tmp}/<name>-unet computes what the run's own method computes in its sampling form."""

    def check(tmp: Path, _out: str) -> None:
        from diffusers import UNet2DConditionModel
        from omegaconf import OmegaConf

        from para.core.models import build_random_pipeline, model_id
        from para.run.registry import METHODS

        assert sorted(p.name for p in (tmp / f"{name}-unet").iterdir()) == sorted(MERGED)
        merged = UNet2DConditionModel.from_pretrained(tmp / f"{name}-unet").eval()
        cfg = OmegaConf.load(tmp / name / "config.yaml")
        unet = build_random_pipeline("tiny", seed=cfg.model.init_seed).unet
        method = METHODS[cfg.method.name](cfg.method, model_id(cfg.model))
        method.attach(unet)
        method.load_file(unet, tmp / name / "adapter.safetensors")
        method.end_training(unet)
        method.prepare_for_sampling(unet, merge=True)
        generator = torch.Generator().manual_seed(0)
        shapes = {"x": (1, 4, 4, 4), "c": (1, 77, unet.config.cross_attention_dim)}
        x, c = (torch.randn(s, generator=generator) for s in shapes.values())
        pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        extra = {"text_embeds": torch.randn(1, pooled, generator=generator), "time_ids": torch.tensor([[32.0] * 6])}
        with torch.no_grad():
            want = unet.eval()(x, 10, c, added_cond_kwargs=extra).sample
            got = merged(x, 10, c, added_cond_kwargs=extra).sample
        assert (want - got).abs().max() <= 1e-4 * want.abs().max(), (want - got).abs().max()

    return check


EXPORT_EQUALS = {name: merged_equals_the_run(name) for name in ("dreambooth", "loha", "svdiff")}

# one case, a few lines: the table reads as a table
# fmt: off
CASES = [
    # --- python -m para.export ------------------------------------------------------------------------------
    case("export-device-cuda", "export", "{tmp}/para --out {tmp}/para.safetensors --device cuda", 2,
         "--device='cuda', but this machine has no usable CUDA GPU", "--device=cpu",
         "`--device cuda` on a machine without a GPU (was a traceback: Found no NVIDIA driver)", uses=("para",)),
    case("export-config-not-yaml", "export", "{tmp}/para --out {tmp}/para.safetensors", 2,
         "config.yaml is not a run's config", "Put back the config.yaml", "a run folder whose config.yaml is not "
         "YAML (was a yaml ParserError traceback)", uses=("para",), setup=file_at("para/config.yaml", "{{: [")),
    case("export-config-no-model", "export", "{tmp}/para --out {tmp}/para.safetensors", 2,
         "config.yaml is not a run's config", "pipe=", "a run folder whose config.yaml is YAML of something else",
         uses=("para",), setup=file_at("para/config.yaml", "notes: mine\n")),
    case("export-merged-into-run-folder", "export", "{tmp}/para --format merged --out {tmp}/para --overwrite", 2,
         "is in the run folder", "--out {tmp}/para-unet", "a merged export written into the run folder itself "
         "(was done with --overwrite, after `pass --overwrite`)", uses=("para",)),
    case("export-lora-into-run-folder", "export", "{tmp}/para --out {tmp}/para/mine.safetensors", 2,
         "is in the run folder", "--out {tmp}/para.safetensors", "a LoRA export written into the run folder",
         uses=("para",)),
    case("export-merged-dreambooth", "export", "{tmp}/dreambooth --format merged --out {tmp}/dreambooth-unet "
         "--dtype fp32", 0, "wrote", "merged", "`--format merged` for DreamBooth (was refused with the LoRA "
         "reason)", uses=("dreambooth",), writes=("dreambooth-unet", "dreambooth-unet/*"),
         check=EXPORT_EQUALS["dreambooth"]),
    case("export-merged-loha", "export", "{tmp}/loha --format merged --out {tmp}/loha-unet --dtype fp32", 0, "wrote",
         "merged", "`--format merged` for LoHa (was refused with the LoRA reason)", uses=("loha",),
         writes=("loha-unet", "loha-unet/*"), check=EXPORT_EQUALS["loha"]),
    case("export-merged-svdiff", "export", "{tmp}/svdiff --format merged --out {tmp}/svdiff-unet --dtype fp32", 0,
         "wrote", "merged", "`--format merged` for SVDiff (was refused with the LoRA reason)", uses=("svdiff",),
         writes=("svdiff-unet", "svdiff-unet/*"), check=EXPORT_EQUALS["svdiff"]),
    case("export-lora-dreambooth", "export", "{tmp}/dreambooth --out {tmp}/db.safetensors", 2,
         "W − W0 has full rank", "--format merged", "a LoRA-format export of DreamBooth", uses=("dreambooth",)),
    case("export-kohya-loha", "export", "{tmp}/loha --format kohya --out {tmp}/loha.safetensors", 2,
         "Hadamard product", "--format merged", "a kohya export of LoHa", uses=("loha",)),
    case("export-merged-out-is-file", "export", "{tmp}/para --format merged --out {tmp}/unet.txt", 2, "is a file",
         "diffusers UNet folder", "a merged export to an existing file", uses=("para",),
         setup=file_at("unet.txt", "mine")),
    case("export-merged-out-holds-other-files", "export", "{tmp}/para --format merged --out {tmp}/mine "
         "--overwrite", 2, "mine holds notes.txt, not (only) a merged UNet", "choose a new or empty folder",
         "a merged export with --overwrite into a folder of other files", uses=("para",),
         setup=file_at("mine/notes.txt", "mine")),
    case("export-merged-out-exists", "export", "{tmp}/para --format merged --out {tmp}/unet", 2,
         "holds a merged UNet", "--overwrite", "a merged export over an earlier one, without --overwrite",
         uses=("para",), setup=all_of(file_at("unet/config.json", "{}"),
                                      file_at("unet/diffusion_pytorch_model.safetensors", "x"))),
    case("export-missing-source", "export", "{tmp}/nowhere --out {tmp}/a.safetensors", 2, "does not exist",
         "adapter file", "a source that does not exist"),
    case("export-source-metrics", "export", "{tmp}/para/metrics.json --out {tmp}/a.safetensors", 2,
         "is not a .safetensors file", "safetensors", "a source that is not an adapter file", uses=("para",)),
    case("export-truncated-adapter", "export", "{tmp}/para --out {tmp}/a.safetensors", 2,
         "is not a valid safetensors file", "truncated?", "a truncated adapter", uses=("para",),
         setup=truncated("para/adapter.safetensors")),
    case("export-out-suffix", "export", "{tmp}/para --out {tmp}/para.lora", 2, "is one .safetensors file",
         "<something>.safetensors", "a LoRA export named without .safetensors", uses=("para",)),
    case("export-out-exists", "export", "{tmp}/para --out {tmp}/para.safetensors", 2, "para.safetensors exists",
         "--overwrite", "a LoRA export over an existing file", uses=("para",),
         setup=file_at("para.safetensors", "mine")),
    case("export-folder-without-adapter", "export", "{tmp}/empty --out {tmp}/a.safetensors", 2,
         "holds no adapter.safetensors", "finished run folder", "a folder without an adapter",
         setup=folder_at("empty")),
    case("export-dtype", "export", "{tmp}/para --out {tmp}/a.safetensors --dtype fp8", 2, "invalid choice: 'fp8'",
         "'fp16'", "an unknown `--dtype`", uses=("para",)),
    case("export-format", "export", "{tmp}/para --out {tmp}/a.onnx --format onnx", 2, "invalid choice: 'onnx'",
         "'kohya'", "an unknown `--format`", uses=("para",)),
    # --- python -m eval -------------------------------------------------------------------------------------
    case("eval-file", "eval", "{tmp}/para/metrics.json", 2, "metrics.json is not a folder",
         "python -m eval runs/para/dog/steps200-seed0", "a file instead of a run folder (was a NotADirectoryError "
         "traceback)", uses=("para",)),
    case("eval-missing", "eval", "{tmp}/nowhere", 2, "nowhere does not exist", "takes a run folder",
         "a run folder that does not exist"),
    case("eval-lpips-size", "eval", "{tmp}/para --backbones random --lpips-size 3 --dry-run", 2,
         "eval.lpips_size=3 is out of range", ">= 64", "`--lpips-size 3` (was a conv traceback after loading)",
         uses=("para",)),
    case("eval-device-cuda", "eval", "{tmp}/para --backbones random --device cuda --dry-run", 2,
         "--device='cuda', but this machine has no usable CUDA GPU", "--device=cpu",
         "`--device cuda` without a GPU (was a traceback)", uses=("para",)),
    case("eval-batch-size", "eval", "{tmp}/para --backbones random --batch-size 0 --dry-run", 2,
         "eval.batch_size=0 is out of range", ">= 1", "`--batch-size 0`", uses=("para",)),
    case("eval-metrics-not-json", "eval", "{tmp}/para --backbones random --dry-run", 2,
         "metrics.json is not valid JSON", "metrics.json", "a run folder whose metrics.json is not JSON",
         uses=("para",), setup=file_at("para/metrics.json", "{half")),
    case("eval-prompts-not-json", "eval", "{tmp}/para --backbones random --dry-run", 2,
         "prompts.json is not valid JSON", "prompts.json", "a run folder whose samples/prompts.json is not JSON",
         uses=("para",), setup=file_at("para/samples/prompts.json", "[{")),
    case("eval-missing-image", "eval", "{tmp}/para --backbones random --dry-run", 2, "names missing images",
         "p00_i00.png", "a sample image named in prompts.json but gone", uses=("para",),
         setup=removed("para/samples/p00_i00.png")),
    case("eval-backbones", "eval", "{tmp}/para --backbones imagenet", 2, "invalid choice: 'imagenet'", "'random'",
         "an unknown `--backbones`", uses=("para",)),
    # --- python -m para.run.plan (make plan) ----------------------------------------------------------------
    case("plan-unknown-method", "plan", "--methods nope --out {tmp}/plan", 2, "--methods nope: no such method",
         "choose from dreambooth", "`make plan` with an unknown method (was a traceback)"),
    case("plan-method-cannot-attach", "plan", "method.block_size=32 --model world --methods oft --out {tmp}/plan", 2,
         ("method=oft on model=world", "does not divide the input dimension 48"), "choose a divisor",
         "`make plan` for a method whose settings the model's layers cannot take (was a traceback)"),
    case("plan-unknown-model", "plan", "--model sdxl2 --out {tmp}/plan", 2, "Could not find 'model/sdxl2'",
         "small", "`make plan` with an unknown model (was a traceback)", absent=("model_schema",)),
    case("plan-unknown-key", "plan", "train.optimzer=adamw --out {tmp}/plan", 2,
         "train.optimzer is not a setting of the harness", "check its spelling",
         "`make plan` with an unknown config key (was a traceback)"),
    case("plan-plus-key", "plan", "+train.lr=1 --out {tmp}/plan", 2, "train.lr is not a setting", "spelling",
         "`make plan` with `+train.lr=1`"),
    case("plan-resolution-zero", "plan", "--resolution 0 --out {tmp}/plan", 2, "model.resolution=0 is out of range",
         "a positive multiple of 8", "`make plan` with `--resolution 0` (counted SDXL at 1024 for minutes instead)"),
    case("plan-resolution-odd", "plan", "--resolution 1020 --model tiny --out {tmp}/plan", 2,
         "model.resolution=1020 is out of range", "multiple of 8", "`--resolution 1020`"),
    case("plan-cards", "plan", "--cards 0 -24 --out {tmp}/plan", 2, "--cards 0: a card size", "GiB > 0",
         "card sizes of 0 and below"),
    case("plan-override-range", "plan", "train.batch_size=0 --methods para --out {tmp}/plan", 2,
         "train.batch_size=0 is out of range", "an integer > 0", "`make plan` with an out-of-range override"),
    case("plan-resolution-word", "plan", "--resolution big", 2, "invalid int value: 'big'", "--resolution",
         "`--resolution big`"),
    # --- python -m para.run.preflight -----------------------------------------------------------------------
    case("preflight-unbalanced-quote", "preflight", "model=tiny --cell 'method=\"para'", 2, "No closing quotation",
         "quote each cell's overrides as one argument", "a `--cell` with an unbalanced quote (was a traceback)"),
    case("preflight-unknown-method", "preflight", "model=tiny --cell method=nope", 2, "Could not find 'method/nope'",
         "para_authors", "a cell with an unknown method", absent=("lora_schema",)),
    case("preflight-misspelt-key", "preflight", "model=tiny method.rnak=3", 2, "method.rnak is not a setting",
         "check its spelling", "a misspelt key (Hydra's hint said to add it with +)", absent=("+method.rnak",)),
    case("preflight-skip-unknown", "preflight", "model=tiny --skip photoz", 2, "unknown check(s) ['photoz']",
         "--skip", "`--skip` naming no check"),
    case("preflight-rank-capped", "preflight", "model=sdxl device=cpu method.rank=64 plan.check=false "
         "eval.backbones=random "
         "hydra.run.dir={tmp}/run --skip weights", 0, "method.rank=64 is above γ's cap on every layer",
         "method.gamma=null",
         "a PaRa rank that γ caps on every SDXL layer: said, loudly"),
]
# fmt: on
