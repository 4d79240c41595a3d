"""Table 1 as the paper ran it (issue 25): the composed protocol of every row, DreamBooth's AdamW and what a run
that cannot fit it is told, the two LoRA layer sets, unwatermarked samples, subjects that are never mirrored, prior
preservation end to end, and the table showing every row's optimizer."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import FAST, QUICK, REPO, compose_config

from para.run import plan
from para.run.preflight import problems
from para.run.runner import execute, flip_p

TABLE1 = {  # method: (steps, lr, layers); every row: AdamW, batch 1, DDIM 50 steps, guidance 5, 25 prompts x 4 images
    "para": (200, 1e-4, "noxattn"),
    "lora": (1000, 1e-4, "noxattn"),
    "lora_attn": (1000, 1e-4, "attn"),
    "dreambooth": (1000, 5e-6, None),
}
NO_FLIP = {"backpack", "backpack_dog", "bear_plushie", "berry_bowl", "can", "clock", "rc_car"}


@pytest.mark.parametrize("method", list(TABLE1))
def test_the_composed_table1_protocol_of_every_row(method):
    cfg = compose_config("+experiment=table1", f"method={method}", "run_dir=unused")
    steps, lr, layers = TABLE1[method]
    assert (cfg.steps, cfg.method.lr, cfg.method.get("subset")) == (steps, lr, layers)
    assert (cfg.train.optimizer, cfg.train.batch_size, cfg.train.prior_loss_weight) == ("adamw", 1, 0.0)
    assert not cfg.train.gradient_checkpointing  # a memory option, named by the preflight where AdamW does not fit
    sample = cfg.sample
    assert (sample.scheduler, sample.steps, sample.guidance, sample.num_prompts, sample.images_per_prompt) == (
        "ddim",
        50,
        5.0,
        None,
        4,
    )
    assert (cfg.model.name, cfg.model.resolution, cfg.eval.enabled) == ("sdxl", 1024, True)
    if method.startswith("lora"):
        assert (cfg.method.rank, cfg.method.alpha, cfg.method.scale) == (16, None, 2.2)
    if method == "para":
        assert (cfg.method.rank, cfg.method.gamma) == (16, 0.025)


def test_lora_attn_trains_diffusers_attention_layers_and_lora_the_exca_layers():
    """`lora_attn` = diffusers' train_dreambooth_lora_sdxl.py targets (to_k, to_q, to_v, to_out.0, matched as peft
    matches a string list: by name suffix), cross-attention included; `lora` = PaRa's ExCA layers, no attn2."""
    from para.core.sdxl_architecture import build_sdxl_unet_meta
    from para.run.registry import METHODS

    unet = build_sdxl_unet_meta()
    diffusers_targets = ("to_k", "to_q", "to_v", "to_out.0")
    expected = {
        name
        for name, module in unet.named_modules()
        if isinstance(module, torch.nn.Linear) and any(name.endswith(f".{t}") for t in diffusers_targets)
    }
    lora_attn = METHODS["lora_attn"](compose_config("method=lora_attn", "run_dir=x").method, "sdxl")
    params = lora_attn.attach(unet)
    assert set(lora_attn.targets) == expected and len(expected) == 560
    assert any(".attn2.to_k" in name for name in lora_attn.targets)  # where the identifier token is read
    assert sum(p.numel() for p in params) == 23_224_320  # docs/methods.md
    lora = METHODS["lora"](compose_config("method=lora", "run_dir=x").method, "sdxl")
    lora.attach(build_sdxl_unet_meta())
    assert len(lora.targets) == 346 and not any("attn2" in name for name in lora.targets)


def test_every_pipeline_the_harness_builds_is_unwatermarked(stand_in_watermarker, tiny_pipe_template):
    """With `invisible_watermark` installed diffusers stamps every sample (issue 25 item 4). The stand-in fails on
    any image it is asked to stamp; a run samples through it and records that it was not."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    from para.bench.parts import with_unet
    from para.bench.sdxl import build_sdxl_random_pipeline
    from para.core.models import RANDOM_SHAPES, build_random_pipeline
    from para.core.sampling import sampling_pipeline

    assert StableDiffusionXLPipeline(**tiny_pipe_template.components).watermark is not None  # diffusers' default
    pipe = build_random_pipeline("tiny")
    with torch.device("meta"):
        meta = UNet2DConditionModel.from_config(pipe.unet.config)
    text = tuple(dict(hidden_size=h, intermediate_size=h, num_attention_heads=4, num_hidden_layers=1, projection_dim=h)
                 for h in RANDOM_SHAPES["tiny"]["text"])  # fmt: skip
    vae = dict(block_out_channels=[16], layers_per_block=1, latent_channels=4, norm_num_groups=16)
    built = [
        pipe,
        sampling_pipeline(pipe, "ddim"),
        sampling_pipeline(pipe, "default"),
        with_unet(pipe, pipe.unet),
        build_sdxl_random_pipeline("cpu", torch.float32, unet=meta, text_encoders=text, vae=vae),
    ]
    assert [p.watermark for p in built] == [None] * len(built)


def test_a_run_samples_unwatermarked_and_records_it(stand_in_watermarker, shared_tiny, tmp_path):
    metrics = execute(compose_config(*FAST, "eval.enabled=false", f"run_dir={tmp_path / 'run'}"))
    assert metrics["status"] == "finished" and metrics["meta_info"]["watermarked"] is False
    assert (tmp_path / "run" / "samples" / "p00_i00.png").is_file()  # sampled through the stand-in's pipeline


def test_subjects_with_text_or_logos_are_never_mirrored():
    """Decided from the photos (docs/methods.md): lettering, numerals, logos and asymmetric print would be learnt
    mirrored; every other subject keeps data.flip_p."""
    from omegaconf import OmegaConf

    files = [f for f in (REPO / "conf" / "subject").glob("*.yaml") if "name" in OmegaConf.load(f)]  # not the world's
    assert len(files) == 30 and {f.stem for f in files if OmegaConf.load(f).get("flip", True) is False} == NO_FLIP
    for subject in (*sorted(NO_FLIP), "dog", "teapot"):
        cfg = compose_config("+experiment=table1", f"subject={subject}", "run_dir=unused")
        assert cfg.subject.flip == (subject not in NO_FLIP), subject
        assert flip_p(cfg) == (0.0 if subject in NO_FLIP else 0.5), subject


def test_a_subject_that_must_not_be_mirrored_trains_on_its_photos_as_taken(shared_tiny, tmp_path, monkeypatch):
    from para.core import conditioning
    from para.run import runner

    drawn = []

    class Recording(conditioning.SubjectLatents):
        def __init__(self, pipe, pixels, flip_p, **kwargs):
            super().__init__(pipe, pixels, flip_p, **kwargs)
            drawn.append((flip_p, self.cached[0].shape[0], pixels.shape[0]))

    monkeypatch.setattr(runner, "SubjectLatents", Recording)
    for subject in ("can", "dog"):
        run = compose_config(*FAST, f"subject={subject}", "sample.enabled=false", f"run_dir={tmp_path / subject}")
        assert execute(run)["status"] == "finished"
    (can, can_cached, can_photos), (dog, dog_cached, dog_photos) = drawn
    assert can == 0.0 and can_cached == can_photos  # no mirror image is even encoded
    assert dog == 0.5 and dog_cached == 2 * dog_photos


def _dreambooth_on_a_card(tmp_path: Path, *overrides: str):
    """DreamBooth on the tiny model at 32 px, planned for a pretend card (nothing touches CUDA). Checkpointing and
    sample.batch_size=1 already, so that the plan counts one setting only (on the tiny model the optimizer step
    is the peak; options that change only the optimizer share that count). Not scored: beside the tiny model the
    evaluation nets would be the peak."""
    return compose_config(*FAST, "method=dreambooth", "device=cuda", "plan.reserve_gb=0", "plan.cache_dir=null",
                          "train.gradient_checkpointing=true", "sample.batch_size=1", f"run_dir={tmp_path / 'run'}",
                          "eval.enabled=false", *overrides)  # fmt: skip


def test_dreambooth_that_cannot_fit_adamw_is_refused_naming_the_options(tmp_path, monkeypatch):
    """AdamW is the reading; where it does not fit, the refusal names what would, and what each option changes
    (another optimizer is recorded; 8-bit AdamW needs the `gpu` extra when bitsandbytes is missing)."""
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "bitsandbytes" else real_find_spec(n))
    adamw = plan.estimate(_dreambooth_on_a_card(tmp_path))["total_gb"]
    budget = max(plan.estimate(_dreambooth_on_a_card(tmp_path, f"train.optimizer={o}"))["total_gb"]
                 for o in ("adafactor", "adamw8bit"))  # fmt: skip
    assert budget < adamw
    cfg = _dreambooth_on_a_card(tmp_path, f"plan.gpu_memory_gb={budget}")
    memory = plan.memory_problem(cfg, plan.estimate(cfg))  # the preflight's `memory` check
    assert "train.optimizer=adafactor (Adafactor instead of AdamW: another optimizer, recorded" in memory
    assert "train.optimizer=adamw8bit (AdamW with 8-bit moments" in memory
    assert "bitsandbytes, which is not installed: pip install 'para-repro[gpu]'" in memory
    assert plan.option_note("train.gradient_checkpointing=true").endswith("(the same training, activations "
                                                                          "recomputed: slower)")  # fmt: skip


def test_8bit_adamw_without_bitsandbytes_is_refused_naming_the_gpu_extra(tmp_path, monkeypatch):
    import importlib.util

    import tomllib

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "bitsandbytes" else real_find_spec(n))
    cfg = compose_config(*QUICK, "train.optimizer=adamw8bit", f"run_dir={tmp_path / 'run'}")
    (found,) = [(name, text) for name, text in problems(cfg, tmp_path / "run") if name == "optimizer"]
    assert "pip install 'para-repro[gpu]'" in found[1] and "train.optimizer=adamw" in found[1]
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(req.startswith("bitsandbytes") for req in extras["gpu"])


def test_prior_preservation_runs_end_to_end_and_makes_the_class_images_once(shared_tiny, tmp_path):
    """The DreamBooth paper's protocol as an option: class images from the base model, cached for every later run
    of the class; the prior term changes the loss."""
    prior = ["method=dreambooth", "sample.enabled=false", "train.prior_loss_weight=1", "train.num_class_images=2",
             f"train.class_images_dir={tmp_path / 'classes'}"]  # fmt: skip
    first = execute(compose_config(*FAST, *prior, f"run_dir={tmp_path / 'a'}"))
    (made,) = (tmp_path / "classes" / "tiny" / "dog").iterdir()
    assert sorted(p.name for p in made.glob("*.png")) == ["p00_i00.png", "p00_i01.png"]

    stamps = {p.name: p.stat().st_mtime_ns for p in made.glob("*.png")}
    again = execute(compose_config(*FAST, *prior, f"run_dir={tmp_path / 'b'}"))
    assert {p.name: p.stat().st_mtime_ns for p in made.glob("*.png")} == stamps  # the cache's, not made again
    without = execute(compose_config(*FAST, *prior[:2], f"run_dir={tmp_path / 'c'}"))
    assert first["train_info"]["losses"] == again["train_info"]["losses"] != without["train_info"]["losses"]


def test_the_table_shows_the_optimizer_and_learning_rate_of_every_row(tmp_path):
    """A method whose cells did not all train alike lists every optimizer and rate (e.g. cells kept from before a
    preset changed) instead of averaging them silently."""
    from eval.table import build

    rates = {("para", "dog"): 1e-3, ("para", "cat"): 1e-3, ("dreambooth", "dog"): 5e-6, ("dreambooth", "cat"): 2e-4}
    for method, optimizer in (("para", "adamw"), ("dreambooth", "adafactor")):
        for subject in ("dog", "cat"):
            folder = tmp_path / "runs" / method / subject / "steps1-seed0"
            folder.mkdir(parents=True)
            metrics = {"status": "finished", "method": method, "subject": subject, "steps": 1, "seed": 0,
                       "scores": {"dino": 0.5, "backbones_pretrained_all": True},
                       "run_info": {"subject": {"kind": "live"}, "train": {"optimizer": optimizer},
                                    "method": {"name": method, "lr": rates[method, subject]}}}  # fmt: skip
            (folder / "metrics.json").write_text(json.dumps(metrics))
    result = build(tmp_path / "runs", tmp_path / "out", ["para", "dreambooth"], ("para", "dreambooth"), real=False)
    assert list(result["table"]["optimizer"]) == ["adamw", "adafactor"]
    assert list(result["table"]["lr"]) == ["0.001", "5e-06, 0.0002"]
    rows = [line for line in result["markdown"].splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| method | optimizer | lr |")
    assert rows[1].startswith("| para | adamw | 0.001 |")
    assert rows[2].startswith("| dreambooth | adafactor | 5e-06, 0.0002 |")


def test_the_evaluation_docs_state_the_dino_transform_the_code_applies():
    from torchvision import transforms as T

    from eval.embedders import dino_transform

    steps = {type(step): step for step in dino_transform().transforms}
    resize, crop, norm = steps[T.Resize], steps[T.CenterCrop], steps[T.Normalize]
    docs = re.sub(r"\s+", " ", (REPO / "docs" / "evaluation.md").read_text())
    assert f"shorter side resized to {resize.size} px ({resize.interpolation.value}, antialiased" in docs
    assert f"a {crop.size[0]} × {crop.size[1]} centre crop" in docs
    assert f"(mean {', '.join(map(str, norm.mean))}; std {', '.join(map(str, norm.std))})" in docs
