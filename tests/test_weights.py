"""`make weights` fetches what the configured runs load, nothing else; `--dry-run` lists it, offline from the cache."""

from __future__ import annotations

import re
from pathlib import Path

import huggingface_hub.constants
import pytest
from conftest import compose_config
from huggingface_hub.utils import filter_repo_objects

from para.run import weights

# stabilityai/stable-diffusion-xl-base-1.0 as the hub lists it (file names; the weights in 4 formats and 2 VAEs)
SDXL_REPO = """
.gitattributes LICENSE.md README.md 01.png comparison.png pipeline.png model_index.json
sd_xl_base_1.0.safetensors sd_xl_base_1.0_0.9vae.safetensors sd_xl_offset_example-lora_1.0.safetensors
scheduler/scheduler_config.json
text_encoder/config.json text_encoder/flax_model.msgpack text_encoder/model.fp16.safetensors text_encoder/model.onnx
text_encoder/model.safetensors text_encoder/openvino_model.bin text_encoder/openvino_model.xml
text_encoder_2/config.json text_encoder_2/flax_model.msgpack text_encoder_2/model.fp16.safetensors
text_encoder_2/model.onnx text_encoder_2/model.onnx_data text_encoder_2/model.safetensors
text_encoder_2/openvino_model.bin text_encoder_2/openvino_model.xml
tokenizer/merges.txt tokenizer/special_tokens_map.json tokenizer/tokenizer_config.json tokenizer/vocab.json
tokenizer_2/merges.txt tokenizer_2/special_tokens_map.json tokenizer_2/tokenizer_config.json tokenizer_2/vocab.json
unet/config.json unet/diffusion_flax_model.msgpack unet/diffusion_pytorch_model.fp16.safetensors
unet/diffusion_pytorch_model.safetensors unet/model.onnx unet/model.onnx_data unet/openvino_model.bin
unet/openvino_model.xml
vae/config.json vae/diffusion_flax_model.msgpack vae/diffusion_pytorch_model.fp16.safetensors
vae/diffusion_pytorch_model.safetensors
vae_1_0/config.json vae_1_0/diffusion_pytorch_model.fp16.safetensors vae_1_0/diffusion_pytorch_model.safetensors
vae_decoder/config.json vae_decoder/model.onnx vae_decoder/openvino_model.bin vae_decoder/openvino_model.xml
vae_encoder/config.json vae_encoder/model.onnx vae_encoder/openvino_model.bin vae_encoder/openvino_model.xml
""".split()
TOKENIZER = ("merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json")
ALWAYS = {"model_index.json", "scheduler/scheduler_config.json"} | {
    f"{folder}/{name}" for folder in ("tokenizer", "tokenizer_2") for name in TOKENIZER
}
MODELS = {
    "unet": "diffusion_pytorch_model",
    "vae": "diffusion_pytorch_model",
    "text_encoder": "model",
    "text_encoder_2": "model",
}


def expected(variant: str | None, models=tuple(MODELS)) -> set[str]:
    suffix = f".{variant}" if variant else ""
    return ALWAYS | {f"{m}/config.json" for m in models} | {f"{m}/{MODELS[m]}{suffix}.safetensors" for m in models}


def selected(item: weights.HubItem, files: list[str] = SDXL_REPO) -> set[str]:
    return set(filter_repo_objects(files, allow_patterns=item.patterns))


def items(*overrides: str) -> list[weights.HubItem]:
    return weights.hub_items(compose_config("run_dir=x", *overrides))


def base_item(*overrides: str) -> weights.HubItem:
    (item,) = [i for i in items(*overrides) if i.label.startswith("base")]
    return item


@pytest.mark.parametrize("variant", [None, "fp16"])
def test_exactly_the_files_from_pretrained_loads(variant):
    """Not the other weight formats, the single files, the duplicate precision or the unused vae_1_0/."""
    item = base_item(f"model.variant={variant or 'null'}")
    assert selected(item) == expected(variant)


def test_vae_path_replaces_the_base_vae_and_revision_is_kept():
    found = items("model.variant=fp16", "model.revision=abc123", "model.vae_path=me/vae")
    base, vae = found[0], next(i for i in found if i.repo == "me/vae")
    assert base.revision == "abc123"
    assert selected(base) == expected("fp16", ("unet", "text_encoder", "text_encoder_2"))
    vae_repo = ["config.json", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin", "README.md"]
    assert selected(vae, vae_repo) == {"config.json", "diffusion_pytorch_model.safetensors"}


def test_local_weights_are_not_fetched_and_single_files_get_their_configs(tmp_path):
    single = tmp_path / "sdxl.safetensors"
    single.touch()
    (configs,) = [i for i in items(f"model.path={single}", "model.config_path=org/c") if i.repo == "org/c"]
    assert selected(configs) == ALWAYS | {f"{m}/config.json" for m in MODELS} | {
        f"{folder}/config.json" for folder in ("vae_1_0", "vae_decoder", "vae_encoder")
    }
    assert not [i for i in items(f"model.path={tmp_path}") if i.label.startswith("base")]


def test_dry_run_offline_lists_the_cached_files_and_sizes(tmp_path, monkeypatch, capsys):
    """A fake HF cache holding the whole SDXL repo (1 byte per file, 10 for the fp16 UNet): the dry run lists
    the variant's files with their sizes and downloads nothing."""
    repo = tmp_path / "hub" / "models--stabilityai--stable-diffusion-xl-base-1.0"
    snapshot = repo / "snapshots" / ("0" * 40)
    for name in SDXL_REPO:
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).write_bytes(b"x" * (10 if name == "unet/diffusion_pytorch_model.fp16.safetensors" else 1))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    local = [f"eval.dino={tmp_path}", f"eval.clip_score_model={tmp_path}", f"eval.clip_pretrained={tmp_path}"]
    assert weights.main(["--dry-run", "model.variant=fp16", *local]) == 0
    out = capsys.readouterr().out
    listed = set(re.findall(r"^ +\S+ B  (\S+)  \(cached\)$", out, flags=re.M))
    assert listed == expected("fp16")
    assert "10 B  unet/diffusion_pytorch_model.fp16.safetensors" in out
    assert "27 B  in 18 files" in out  # 17 one-byte files + the 10-byte UNet
    assert not (tmp_path / "hub" / "models--stabilityai--stable-diffusion-xl-base-1.0" / "blobs").exists()


def _fake_cache(hub: Path, repo: str, files: dict[str, int]) -> None:
    """`repo` in a Hugging Face cache at `hub`, with `files` (name → size in bytes)."""
    folder = hub / f"models--{repo.replace('/', '--')}"
    for name, size in files.items():
        (folder / "snapshots" / ("0" * 40) / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / "snapshots" / ("0" * 40) / name).write_bytes(b"x" * size)
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text("0" * 40)


def test_dry_run_names_the_clip_weights_and_each_weights_file_once(tmp_path, monkeypatch, capsys):
    """Issue 25 item 7: the CLIP B/32 weights are listed with their file and size (open_clip reads them from
    timm/vit_base_patch32_clip_224.openai), and a repository holding the same weights as .safetensors and .bin
    (DINO's) is listed, and fetched, with the safetensors file only, as the loaders read it."""
    dino = {"config.json": 1, "preprocessor_config.json": 1, "model.safetensors": 100, "pytorch_model.bin": 100}
    clip = {"open_clip_config.json": 1, "open_clip_model.safetensors": 300, "open_clip_pytorch_model.bin": 300}
    _fake_cache(tmp_path, "facebook/dino-vits16", dino)
    _fake_cache(tmp_path, "timm/vit_base_patch32_clip_224.openai", {**clip, "model.safetensors": 300})  # timm's own
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert weights.main(["--dry-run", "model=tiny", f"eval.clip_score_model={tmp_path}"]) == 0
    out = capsys.readouterr().out
    listed = re.findall(r"^ +(\d+) B  (\S+)  \(cached\)$", out, flags=re.M)
    assert listed == [("1", "config.json"), ("1", "preprocessor_config.json"), ("100", "model.safetensors"),
                      ("300", "open_clip_model.safetensors")]  # fmt: skip
    assert "CLIP (ViT-B-32, openai): timm/vit_base_patch32_clip_224.openai@main" in out and "total 402 B\n" in out

    fetched = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo, **kw: fetched.append(kw) or "here")
    dino = next(i for i in items("model=tiny") if i.repo == "facebook/dino-vits16")
    monkeypatch.setattr(weights, "listing", lambda item: [("config.json", 1, False), ("model.safetensors", 9, False)])
    weights._fetch_hub(dino)()
    assert fetched[-1]["allow_patterns"] == ["config.json", "model.safetensors"]
