"""The pretrained loading path, on the tiny model saved the way real SDXL ships: a diffusers folder with fp16 variant
files (`model.path` + `model.variant=fp16`), a VAE from `model.vae_path`, and a single-file checkpoint with
`model.config_path`, all offline. diffusers' own loaders read them back; every weight is compared."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import tomllib
import torch
from conftest import QUICK, REPO, compose_config
from safetensors.torch import load_file, save_file
from sdxl_single_file import to_single_file
from transformers import CLIPTokenizer

from para.core import sdxl_layout
from para.core.models import (
    MIN_DIFFUSERS,
    ModelLoadError,
    build_random_models,
    check_diffusers_version,
    clip_tokenizer,
    load_pipeline,
)
from para.core.sdxl_architecture import MODELS
from para.core.sdxl_layout import write_random_sdxl
from para.run.plan import estimate

CPU = torch.device("cpu")
PROMPT = "a photo of sks dog"


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_pipe_template):
    """<root>/folder: the tiny pipeline in fp16 as `*.fp16.safetensors` only; <root>/tiny.safetensors: one file."""
    root = tmp_path_factory.mktemp("pretrained")
    fp16 = copy.deepcopy(tiny_pipe_template).to(torch.float16)
    fp16.save_pretrained(root / "folder", variant="fp16")
    save_file(to_single_file(tiny_pipe_template), str(root / "tiny.safetensors"))
    return root, fp16


def _model(*overrides: str):
    return compose_config("model=sdxl", "run_dir=unused", *overrides).model


def _assert_same_weights(pipe, reference, dtype: torch.dtype) -> None:
    for name in MODELS:
        loaded, expected = getattr(pipe, name).state_dict(), getattr(reference, name).state_dict()
        assert loaded.keys() == expected.keys(), name
        for key, value in expected.items():
            if value.is_floating_point():
                assert loaded[key].dtype == dtype, (name, key)
                torch.testing.assert_close(loaded[key], value.to(dtype), rtol=0, atol=0, msg=f"{name}.{key}")


def test_fp16_variant_folder_loads_in_the_configured_dtype_as_planned(saved):
    """Every weight arrives in bf16 from the fp16 files; the plan, which reads only the folder's configs, counts
    exactly the loaded components' bytes."""
    root, fp16 = saved
    assert not list((root / "folder" / "unet").glob("diffusion_pytorch_model.safetensors"))  # variant files only
    overrides = [f"model.path={root / 'folder'}", "model.variant=fp16", "model.weights_dtype=bf16"]
    pipe = load_pipeline(_model(*overrides), CPU)
    _assert_same_weights(pipe, fp16, torch.bfloat16)
    assert pipe.tokenizer_2(PROMPT).input_ids == fp16.tokenizer_2(PROMPT).input_ids
    cfg = compose_config(*QUICK, "model=sdxl", "model.resolution=64", "plan.cache_dir=null", *overrides)
    plan = estimate(cfg, CPU)
    assert plan["architecture"] == str((root / "folder").resolve())
    for name in MODELS:
        module = getattr(pipe, name)
        actual = sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))
        assert plan["components_gb"][name] * 2**30 == actual, name


def test_without_the_variant_the_fp32_files_are_missing(saved):
    root, _ = saved
    with pytest.raises(ModelLoadError, match="Ways out"):
        load_pipeline(_model(f"model.path={root / 'folder'}", "model.variant=null"), CPU)


def test_vae_path_replaces_the_base_vae_which_is_never_read(saved, tmp_path, tiny_pipe_template):
    """`make weights` skips the base VAE when model.vae_path is set, so loading must not need it."""
    root, fp16 = saved
    folder = tmp_path / "no-vae"
    shutil.copytree(root / "folder", folder)
    for weights in (folder / "vae").glob("*.safetensors"):
        weights.unlink()
    vae = copy.deepcopy(tiny_pipe_template.vae)
    torch.nn.init.normal_(vae.decoder.conv_out.weight)  # distinguishable from the base VAE
    vae.save_pretrained(tmp_path / "other-vae")
    model = _model(f"model.path={folder}", "model.variant=fp16", f"model.vae_path={tmp_path / 'other-vae'}")
    pipe = load_pipeline(model, CPU)
    torch.testing.assert_close(pipe.vae.decoder.conv_out.weight, vae.decoder.conv_out.weight, rtol=0, atol=0)
    torch.testing.assert_close(pipe.unet.conv_in.weight, fp16.unet.conv_in.weight.float(), rtol=0, atol=0)


def test_single_file_with_config_path_offline(saved, tiny_pipe_template):
    root, _ = saved
    model = _model(f"model.path={root / 'tiny.safetensors'}", f"model.config_path={root / 'folder'}")
    pipe = load_pipeline(model, CPU)
    _assert_same_weights(pipe, tiny_pipe_template, torch.float32)
    assert pipe.tokenizer(PROMPT).input_ids == tiny_pipe_template.tokenizer(PROMPT).input_ids


def test_single_file_without_configs_offline_names_config_path(saved, monkeypatch):
    root, _ = saved
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="model.config_path="):
        load_pipeline(_model(f"model.path={root / 'tiny.safetensors'}"), CPU)


def test_diffusers_minimum_is_what_the_loader_needs_and_pinned():
    """`dtype=` in from_pretrained exists from diffusers 0.40.0; pyproject must not allow older versions."""
    check_diffusers_version()  # the installed one
    with pytest.raises(ModelLoadError, match="diffusers 0.39.0 is too old"):
        check_diffusers_version("0.39.0")
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"diffusers>={MIN_DIFFUSERS.rsplit('.', 1)[0]}" in deps or f"diffusers>={MIN_DIFFUSERS}" in deps


def test_rehearsal_layout_loads_through_the_real_path(tmp_path):
    """`make rehearsal`'s folder writer (SDXL's layout, fp16 variant files, the hub's key names and tokenizers),
    here with the tiny architecture: diffusers loads it with model.variant=fp16 and the tokenizers are SDXL's."""
    with torch.device("meta"):
        tiny = build_random_models("tiny")
    configs = {"unet": dict(tiny["unet"].config), "vae": dict(tiny["vae"].config)}
    configs |= {name: tiny[name].config.to_dict() for name in ("text_encoder", "text_encoder_2")}
    folder = write_random_sdxl(tmp_path / "sdxl-random", configs=configs)
    assert write_random_sdxl(folder) == folder  # built once
    pipe = load_pipeline(_model(f"model.path={folder}", "model.variant=fp16", "model.weights_dtype=bf16"), CPU)
    assert {p.dtype for name in MODELS for p in getattr(pipe, name).parameters()} == {torch.bfloat16}
    saved = load_file(str(folder / "text_encoder" / "model.fp16.safetensors"))
    assert all(k.startswith("text_model.") for k in saved)  # the hub's names, converted on load
    loaded = pipe.text_encoder.state_dict()
    for key, value in saved.items():
        torch.testing.assert_close(loaded[key.removeprefix("text_model.")], value.to(torch.bfloat16), rtol=0, atol=0)
    reference = clip_tokenizer()
    ids = reference(PROMPT, padding="max_length", max_length=77).input_ids
    assert pipe.tokenizer(PROMPT, padding="max_length", max_length=77).input_ids == ids
    assert pipe.tokenizer_2(PROMPT, padding="max_length", max_length=77).input_ids[-1] == 0  # SDXL pads with "!"


def test_configs_folder_for_single_files_offline(tmp_path):
    """`python -m para.core.sdxl_layout DIR`: SDXL 1.0's configs and tokenizers, what model.config_path needs."""
    assert sdxl_layout.main([str(tmp_path / "sdxl")]) == 0
    index = json.loads((tmp_path / "sdxl" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline" and index["unet"] == [
        "diffusers",
        "UNet2DConditionModel",
    ]
    for name in MODELS:
        assert (tmp_path / "sdxl" / name / "config.json").is_file()
    assert CLIPTokenizer.from_pretrained(tmp_path / "sdxl" / "tokenizer_2").pad_token == "!"


def test_no_loading_path_builds_a_watermarker(saved, stand_in_watermarker, tiny_pipe_template):
    """With `invisible_watermark` installed diffusers stamps every sample by default (issue 25 item 4): the folder and
    the single-file paths are built with add_watermarker=False."""
    from diffusers import StableDiffusionXLPipeline

    root, _ = saved
    assert StableDiffusionXLPipeline(**tiny_pipe_template.components).watermark is not None  # diffusers' default
    folder = _model(f"model.path={root / 'folder'}", "model.variant=fp16")
    single = _model(f"model.path={root / 'tiny.safetensors'}", f"model.config_path={root / 'folder'}")
    for model in (folder, single):
        assert load_pipeline(model, CPU).watermark is None


def test_the_unet_alone_loads_from_a_folder_and_a_single_file(saved, monkeypatch, tiny_pipe_template):
    """What the export needs (issue 25 item 7): the UNet, in the dtype asked for, and nothing else constructed."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from para.core.base_unet import load_unet

    def not_needed(*_args, **_kwargs):
        raise AssertionError("a text encoder or the VAE was built")

    for cls in (CLIPTextModel, CLIPTextModelWithProjection, AutoencoderKL):
        monkeypatch.setattr(cls, "__init__", not_needed)
    root, fp16 = saved
    unet = load_unet(_model(f"model.path={root / 'folder'}", "model.variant=fp16"), CPU, torch.bfloat16)
    expected = fp16.unet.state_dict()
    for key, value in unet.state_dict().items():
        assert value.dtype == torch.bfloat16 and torch.equal(value, expected[key].to(torch.bfloat16)), key
    single = _model(f"model.path={root / 'tiny.safetensors'}", f"model.config_path={root / 'folder'}")
    unet = load_unet(single, CPU)  # weights_dtype auto on a CPU: float32
    expected = tiny_pipe_template.unet.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in unet.state_dict().items())
