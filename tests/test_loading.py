"""The pretrained loading path, on the tiny model saved the way real SDXL ships: a diffusers folder with fp16 variant
files (`model.path` + `model.variant=fp16`), a VAE from `model.vae_path`, and a single-file checkpoint with
`model.config_path`, all offline. diffusers' own loaders read them back; every weight is compared."""

from __future__ import annotations

import copy
import shutil

import pytest
import tomllib
import torch
from conftest import QUICK, REPO, compose_config
from safetensors.torch import save_file
from sdxl_single_file import to_single_file

from para.core.models import MIN_DIFFUSERS, ModelLoadError, check_diffusers_version, load_pipeline
from para.core.sdxl_architecture import MODELS
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


def test_fp16_variant_folder_loads_in_the_configured_dtype(saved):
    root, fp16 = saved
    assert not list((root / "folder" / "unet").glob("diffusion_pytorch_model.safetensors"))  # variant files only
    model = _model(f"model.path={root / 'folder'}", "model.variant=fp16", "model.weights_dtype=bf16")
    pipe = load_pipeline(model, CPU)
    _assert_same_weights(pipe, fp16, torch.bfloat16)
    assert pipe.tokenizer_2(PROMPT).input_ids == fp16.tokenizer_2(PROMPT).input_ids


def test_without_the_variant_the_fp32_files_are_missing(saved):
    root, _ = saved
    with pytest.raises(ModelLoadError, match="Ways out"):
        load_pipeline(_model(f"model.path={root / 'folder'}", "model.variant=null"), CPU)


def test_the_plan_counts_the_folders_architecture(saved):
    """The plan reads the folder's configs (no weights): its resident bytes are the loaded pipeline's."""
    root, _ = saved
    overrides = [f"model.path={root / 'folder'}", "model.variant=fp16", "model.weights_dtype=bf16"]
    pipe = load_pipeline(_model(*overrides), CPU)
    cfg = compose_config(*QUICK, "model=sdxl", "model.resolution=64", "plan.cache_dir=null", *overrides)
    plan = estimate(cfg, CPU)
    assert plan["architecture"] == str((root / "folder").resolve())
    for name in MODELS:
        module = getattr(pipe, name)
        actual = sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))
        assert plan["components_gb"][name] * 2**30 == pytest.approx(actual, abs=0), name


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
