"""The world model's parts, SDXL-shaped: a UNet with SDXL's `text_time` conditioning, two CLIP text encoders (the
second with projection, whose pooled output is SDXL's `text_embeds`), a 4x VAE, a word-level CLIP tokenizer.

Built from these configs with fresh weights, then trained by `world.pretrain`; saved as an ordinary
`StableDiffusionXLPipeline` folder, which the harness loads like SDXL (`model=world`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from world.render import BACKGROUNDS, COLOURS, POSITION_PHRASE, SHAPES, SUBJECTS

TEXT_HIDDEN = (64, 64)  # encoder 1, encoder 2 (SDXL: 768, 1280); the UNet attends to their concatenation
TIME_DIM = 16  # SDXL: 256 per time id
LATENT_CHANNELS = 8
IDENTIFIERS = ("sks", "zwx")  # rare tokens: in the vocabulary, never in a pretraining caption
# Tokens per prompt (SDXL: 77). The longest world prompt has 22 tokens with its start and end; the pipeline pads
# every prompt to this length, so a short one makes every cross-attention 2.4x cheaper than 77 would.
MAX_TOKENS = 32


def unet_config(width: int = 48, layers: int = 1) -> dict:
    """Cross-attention at both latent levels (8x8 and 4x4) and in the mid block: WORLD.md found attention only at
    4x4 too coarse to bind words to outlines and places."""
    return dict(
        sample_size=8,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        block_out_channels=(width, 2 * width),
        layers_per_block=layers,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=(width // 16, 2 * width // 16),  # diffusers: the number of heads
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_DIM,
        transformer_layers_per_block=1,
        projection_class_embeddings_input_dim=6 * TIME_DIM + TEXT_HIDDEN[1],
        cross_attention_dim=sum(TEXT_HIDDEN),
        norm_num_groups=16,
    )


def vae_config() -> dict:
    return dict(
        # three blocks, two downsamplings: 4x (SDXL: 8x) on 32 px renders, 8x8 latents of 8 channels, 6x fewer
        # numbers than pixels (SDXL: 48x), so a small VAE trained for minutes keeps the subjects' patterns
        block_out_channels=[32, 64, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 3,
        up_block_types=["UpDecoderBlock2D"] * 3,
        latent_channels=LATENT_CHANNELS,
        layers_per_block=1,
        norm_num_groups=16,
        mid_block_add_attention=False,
        sample_size=32,
        scaling_factor=1.0,  # set from the encoded renders after training (SDXL: 0.13025)
        force_upcast=False,
    )


def text_config(hidden: int, vocab_size: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_attention_heads=4,
        num_hidden_layers=3,  # SDXL reads the penultimate layer's states
        vocab_size=vocab_size,
        max_position_embeddings=MAX_TOKENS,
        projection_dim=hidden,
        hidden_act="gelu",
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )


def scheduler() -> DDIMScheduler:
    """Cosine noise schedule and v-prediction (WORLD.md: better than epsilon at this size), trailing spacing."""
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="v_prediction",
        timestep_spacing="trailing",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=0,
    )


def vocabulary() -> list[str]:
    """Every word a world caption or prompt uses, and the identifiers."""
    words = {"a", "photo", "of", "and", "on", "background", *SHAPES, *COLOURS, *BACKGROUNDS, *IDENTIFIERS}
    for phrase in POSITION_PHRASE.values():
        words.update(phrase.split())
    for subject in SUBJECTS.values():
        words.add(subject.class_word)
    return sorted(words)


def write_tokenizer(folder: Path) -> CLIPTokenizer:
    """A CLIP BPE tokenizer whose merges make every world word one token (other words fall back to characters).

    CLIP's byte-level alphabet is kept whole, so any text tokenizes; the merges are learnt by the `tokenizers`
    BPE trainer on the vocabulary, which guarantees each word ends as a single token.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from para.core.models import _bytes_to_unicode

    byte_chars = _bytes_to_unicode()
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=100_000,
        min_frequency=1,
        initial_alphabet=byte_chars,
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    bpe.train_from_iterator([" ".join(vocabulary())], trainer)
    merges = [m if isinstance(m, list) else m.split() for m in json.loads(bpe.to_str())["model"]["merges"]]
    vocab = byte_chars + [c + "</w>" for c in byte_chars]
    vocab += [a + b for a, b in merges if a + b not in vocab]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    tokenizer.model_max_length = MAX_TOKENS
    for word in vocabulary():  # the promise: one token per world word
        assert len(tokenizer(word).input_ids) == 3, word
    return tokenizer


def build_models(vocab_size: int, seed: int, width: int = 48, layers: int = 1) -> dict[str, torch.nn.Module]:
    torch.manual_seed(seed)
    return {
        "unet": UNet2DConditionModel(**unet_config(width, layers)),
        "vae": AutoencoderKL(**vae_config()),
        "text_encoder": CLIPTextModel(text_config(TEXT_HIDDEN[0], vocab_size)),
        "text_encoder_2": CLIPTextModelWithProjection(text_config(TEXT_HIDDEN[1], vocab_size)),
    }
