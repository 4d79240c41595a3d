"""Evaluation backbones: the API adapter, seeded random weights, fast offline failure, a transformers CLIP folder."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from eval import backbones, hub
from eval.backbones import as_embedding, load_backbones, load_clip, load_dino
from eval.hub import BackboneUnavailable
from eval.options import EvalOptions

DATA_ROOT = Path(__file__).resolve().parent.parent.parent / "shared" / "dreambooth" / "dataset"
RANDOM = EvalOptions(backbones="random")  # the options other eval tests use: one in-process load


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return Image.open(DATA_ROOT / "dog" / "00.jpg").convert("RGB").resize((256, 256))


def test_as_embedding_takes_tensors_and_output_objects():
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    emb, hidden = torch.randn(2, 8), torch.randn(2, 5, 8)
    assert as_embedding(emb) is emb  # open_clip, transformers < 5
    # transformers 5: get_image_features returns the projected embedding in `pooler_output`
    assert as_embedding(BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=emb)) is emb
    assert as_embedding(SimpleNamespace(pooler_output=emb)) is emb  # any object with the field
    assert as_embedding({"pooler_output": emb}) is emb
    assert as_embedding((hidden, emb)) is emb  # return_dict=False keeps field order
    assert as_embedding((hidden, emb), "last_hidden_state") is hidden
    with pytest.raises(TypeError, match="pooler_output"):
        as_embedding(SimpleNamespace(logits=emb))


def test_options_from_objects_mappings_and_overrides():
    cfg = SimpleNamespace(enabled=True, backbones="random", dino="x/y", clip_arch=None, batch_size=4)
    opts = EvalOptions.from_any(cfg, batch_size=2)
    assert (opts.backbones, opts.dino, opts.clip_arch, opts.batch_size) == ("random", "x/y", "ViT-B-32", 2)
    assert EvalOptions.from_any({"lpips_net": "vgg"}).lpips_net == "vgg"
    assert EvalOptions.from_any(None) == EvalOptions()
    with pytest.raises(ValueError, match="eval.backbones='fake'"):
        EvalOptions(backbones="fake")


def test_options_accept_the_trainers_hydra_node():
    """The lead's `para.run.config.EvalConfig` (a struct-mode DictConfig at run time) must read as is."""
    from omegaconf import OmegaConf

    from para.run.config import EvalConfig

    node = OmegaConf.structured(EvalConfig(backbones="random", batch_size=3))
    OmegaConf.set_struct(node, True)
    opts = EvalOptions.from_any(node)
    assert (opts.backbones, opts.batch_size, opts.lpips_size) == ("random", 3, EvalOptions().lpips_size)


def test_random_backbones_are_deterministic_and_leave_the_global_rng_alone(photo):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = load_dino(RANDOM)
    assert torch.equal(torch.rand(3), expected)
    second = load_dino(RANDOM)
    for (name, a), b in zip(first.model.state_dict().items(), second.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert first([photo]).shape == (1, 384) and not first.pretrained
    # ViT-S/16 shape: 12 layers, width 384, 6 heads, patch 16
    config = first.model.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.patch_size) == (
        12,
        384,
        6,
        16,
    )


def test_random_clip_embeds_images_and_texts_in_one_space(photo):
    models = load_backbones(RANDOM)
    assert models.pretrained == {"dino": False, "clip": False, "lpips": models.lpips.pretrained}
    images = models.clip.embed_images([photo])
    texts = models.clip.embed_texts(["a dog", "a dog in the jungle"])
    assert images.shape == (1, 512) and texts.shape == (2, 512)
    assert images.dtype == torch.float32 and texts.device.type == "cpu"


def _record_connections(monkeypatch) -> list[tuple]:
    """Every TCP connection attempted from now on (address, timeout): failing fast is a matter of how many are
    tried and how long each may wait, not of this machine's speed."""
    import socket

    tried, connect = [], socket.create_connection

    def recorded(address, timeout=None, *args, **kwargs):
        tried.append((address, timeout))
        return connect(address, timeout, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", recorded)
    return tried


def test_pretrained_dino_fails_fast_and_clearly_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tried = _record_connections(monkeypatch)
    with pytest.raises(BackboneUnavailable, match=r"eval\.backbones=random") as info:
        load_dino(EvalOptions(dino="para-test/no-such-dino"))
    assert tried == [], "offline: no connection may be attempted"
    assert "HF_HUB_OFFLINE" in str(info.value) and "eval.dino" in str(info.value)


def test_pretrained_clip_fails_fast_when_the_hub_is_unreachable(monkeypatch, tmp_path):
    """Not offline by flag, but the endpoint refuses connections: the probe answers in well under a second."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.cache/clip either
    monkeypatch.setattr(backbones, "cached_hub_file", lambda *args: None)
    tried = _record_connections(monkeypatch)
    with pytest.raises(BackboneUnavailable, match="127.0.0.1:9 is unreachable") as info:
        load_clip(EvalOptions(clip_pretrained="openai"))
    assert tried == [(("127.0.0.1", 9), hub.PROBE_TIMEOUT_S)], "one probe, bounded, and no download retries"
    assert "eval.clip_pretrained" in str(info.value) and "timm/vit_base_patch32_clip_224.openai" in str(info.value)


def test_unknown_clip_tag_lists_the_known_ones():
    with pytest.raises(ValueError, match="openai"):
        load_clip(EvalOptions(clip_pretrained="no-such-tag"))


def _tiny_hf_clip(folder: Path) -> None:
    """A tiny transformers CLIP folder with a real CLIP BPE tokenizer built from open_clip's vocabulary."""
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    bpe = SimpleTokenizer()
    rename = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    (folder / "vocab.json").write_text(json.dumps({rename.get(k, k): v for k, v in bpe.encoder.items()}))
    merges = sorted(bpe.bpe_ranks, key=bpe.bpe_ranks.get)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))  # positional, see DESIGN.md
    tokenizer.model_max_length = 77
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    text = dict(small, vocab_size=len(bpe.encoder), max_position_embeddings=77, eos_token_id=tokenizer.eos_token_id,
                bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    config = CLIPConfig(text_config=text, vision_config=dict(small, image_size=32, patch_size=8), projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)


def test_transformers_clip_folder_goes_through_the_adapter(tmp_path, photo):
    """transformers 5's get_*_features return output objects; the embedder must still yield (N, D) tensors."""
    from transformers import CLIPModel

    _tiny_hf_clip(tmp_path)
    clip = load_clip(EvalOptions(clip_pretrained=str(tmp_path), device="cpu"))
    assert clip.pretrained and clip.id == f"clip:ViT-B-32/{tmp_path}"
    images, texts = clip.embed_images([photo, photo]), clip.embed_texts(["a dog", "a photo of a cat"])
    assert images.shape == (2, 16) and texts.shape == (2, 16)
    model = CLIPModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        out = model.get_text_features(**clip.tokenize(["a dog"]))
    torch.testing.assert_close(texts[:1], as_embedding(out))


def test_open_clip_checkpoint_file_loads_as_pretrained(tmp_path, photo, monkeypatch):
    """A local checkpoint path (the offline route for real CLIP weights), shown on a tiny registered arch."""
    import open_clip

    config = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    }
    (tmp_path / "ParaEvalTiny.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "ParaEvalTiny.json")
    torch.manual_seed(0)
    reference = open_clip.create_model("ParaEvalTiny").eval()
    torch.save(reference.state_dict(), tmp_path / "tiny.pt")

    clip = load_clip(EvalOptions(clip_arch="ParaEvalTiny", clip_pretrained=str(tmp_path / "tiny.pt")))
    assert clip.pretrained
    with torch.no_grad():
        expected_text = reference.encode_text(open_clip.get_tokenizer("ParaEvalTiny")(["a dog"]))
        expected_image = reference.encode_image(clip.preprocess(photo)[None])
    torch.testing.assert_close(clip.embed_texts(["a dog"]), expected_text)
    torch.testing.assert_close(clip.embed_images([photo]), expected_image)

    # The same file found in the Hugging Face cache under an open_clip tag (how `openai` loads offline).
    tag_cfg = {"hf_hub": "para-test/tiny/", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "quick_gelu": False}
    # (the table open_clip's tags are read from without importing open_clip: backbones.open_clip_tags)
    tags = backbones.open_clip_tags()
    monkeypatch.setattr(tags, "get_pretrained_cfg", lambda arch, tag: tag_cfg if tag == "paratag" else {})
    monkeypatch.setattr(backbones, "cached_hub_file", lambda repo, names: str(tmp_path / "tiny.pt"))
    tagged = load_clip(EvalOptions(clip_arch="ParaEvalTiny", clip_pretrained="paratag"))
    assert tagged.pretrained and tagged.preprocess.transforms[-1].mean == (0.5, 0.5, 0.5)  # the tag's normalisation
    torch.testing.assert_close(tagged.embed_texts(["a dog"]), expected_text)


def test_dino_preprocessing_is_resize_256_crop_224_imagenet_norm():
    from eval.embedders import IMAGENET_MEAN, IMAGENET_STD, dino_transform

    wide = Image.new("RGB", (512, 256), (124, 116, 104))  # ~ the ImageNet mean colour
    x = dino_transform()(wide)
    assert x.shape == (3, 224, 224)
    expected = [(c / 255 - m) / s for c, m, s in zip((124, 116, 104), IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    torch.testing.assert_close(x.mean(dim=(1, 2)), torch.tensor(expected), atol=1e-3, rtol=0)


def test_open_clip_tags_are_open_clips_own_table():
    """The preflight reads open_clip's pretrained tags without importing open_clip (timm and W&B with it): the
    table it reads is open_clip's, tag for tag."""
    import subprocess
    import sys

    code = (
        "import sys, json; from eval.backbones import open_clip_tags; t = open_clip_tags(); "
        "print(json.dumps([t.get_pretrained_cfg('ViT-B-32', 'openai'), t.list_pretrained_tags_by_model('ViT-B-32'), "
        "sorted(m for m in ('open_clip', 'timm', 'wandb') if m in sys.modules)], default=list))"
    )
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, check=True)
    light = json.loads(proc.stdout)
    import open_clip

    expected = json.loads(
        json.dumps(
            [open_clip.get_pretrained_cfg("ViT-B-32", "openai"), open_clip.list_pretrained_tags_by_model("ViT-B-32")],
            default=list,
        )
    )
    assert light[:2] == expected and light[0]["hf_hub"]
    assert light[2] == [], f"reading the tags imported {light[2]}"
