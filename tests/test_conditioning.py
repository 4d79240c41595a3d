"""SDXL training inputs (issue 18, items 10 and 11): the photos' own micro-conditioning, fp32 VAE encoding."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import DATA_ROOT, FAST, compose_config
from diffusers import UNet2DConditionModel
from PIL import Image

from para.core.conditioning import SubjectLatents, photo_time_ids
from para.core.data import load_subject_images, load_subject_photos
from para.run.runner import execute


@pytest.mark.parametrize("size", [(780, 780), (600, 1000), (1333, 901), (515, 512)])
def test_photo_time_ids_match_torchvision_resize_and_center_crop(size):
    """Oracle: torchvision's own Resize (short side) and CenterCrop, as diffusers' SDXL DreamBooth example uses
    them; the crop corner is read from the pixel that lands top-left (every pixel holds its own index)."""
    from torchvision import transforms as T

    height, width = size
    resolution = 256
    resized = T.Resize(resolution)(Image.new("L", (width, height)))
    index = np.arange(resized.height * resized.width, dtype=np.int32).reshape(resized.height, resized.width)
    corner = int(np.asarray(T.CenterCrop(resolution)(Image.fromarray(index, mode="I")))[0, 0])
    top, left = divmod(corner, resized.width)
    expected = [height, width, top, left, resolution, resolution]
    assert photo_time_ids([size], resolution).tolist() == [expected]


def test_load_subject_photos_reports_the_true_photo_sizes():
    pixels, sizes = load_subject_photos(DATA_ROOT, "dog", 32)
    assert pixels.shape == (5, 3, 32, 32) and sizes == [(780, 780), (781, 781), (780, 780), (780, 780), (687, 687)]


@pytest.mark.parametrize("mode", ["photo", "resolution"])
def test_training_conditions_on_the_configured_original_size(shared_tiny, tmp_path, monkeypatch, mode):
    seen = []
    forward = UNet2DConditionModel.forward

    def recording_forward(self, *args, added_cond_kwargs=None, **kwargs):
        if torch.is_grad_enabled():  # training steps, not sampling
            seen.append(added_cond_kwargs["time_ids"].float().tolist())
        return forward(self, *args, added_cond_kwargs=added_cond_kwargs, **kwargs)

    monkeypatch.setattr(UNet2DConditionModel, "forward", recording_forward)
    cfg = compose_config(*FAST, "sample.enabled=false", f"data.original_size={mode}", f"run_dir={tmp_path / 'r'}")
    execute(cfg)
    assert len(seen) == 2
    rows = {tuple(row) for batch in seen for row in batch}
    if mode == "photo":  # dog photos: 687-781 px squares; SDXL is told they were upscaled to 32 px
        assert rows <= {(side, side, 0.0, 0.0, 32.0, 32.0) for side in (780.0, 781.0, 687.0)}
    else:
        assert rows == {(32.0, 32.0, 0.0, 0.0, 32.0, 32.0)}


def test_photos_are_encoded_by_a_float32_vae(tiny_pipe):
    """bf16 weights: the cached latents are those of the VAE cast to fp32 (diffusers' SDXL examples), and the
    VAE is back in bf16 afterwards with its weights unchanged."""
    pipe = tiny_pipe.to(dtype=torch.bfloat16)
    weights = {k: v.clone() for k, v in pipe.vae.state_dict().items()}
    pixels = load_subject_images(DATA_ROOT, "dog", 32)
    latents = SubjectLatents(pipe, pixels, flip_p=0.5)
    vae32 = copy.deepcopy(pipe.vae).float()
    with torch.no_grad():
        oracle = torch.cat([vae32.encode(image[None]).latent_dist.mean for image in pixels])
        in_bf16 = torch.cat([pipe.vae.encode(image[None].bfloat16()).latent_dist.mean.float() for image in pixels])
    assert torch.equal(latents.cached[0][: len(pixels)], oracle)
    assert not torch.allclose(in_bf16, oracle, atol=1e-3)  # bf16 encoding would differ
    assert pipe.vae.dtype == torch.bfloat16
    assert all(torch.equal(v, weights[k]) for k, v in pipe.vae.state_dict().items())


def test_training_feeds_the_unet_diffusers_own_encoding_of_the_instance_prompt(
    shared_tiny, tiny_pipe_template, tmp_path, monkeypatch
):
    """Oracle: diffusers' `StableDiffusionXLPipeline.encode_prompt` of "a photo of sks dog" (the default template,
    written out here): both encoders' penultimate hidden states side by side and the second encoder's projected
    pooled output are what the UNet receives at every training step. Catches a conditioning the sampler would
    never give (the pooled embedding zeroed, one encoder's half lost, the identifier dropped), which random
    weights train through without a sign (tests/mutations.py)."""
    seen = []
    forward = UNet2DConditionModel.forward

    def recording_forward(self, *args, **kwargs):
        if torch.is_grad_enabled():  # training steps, not sampling
            seen.append((kwargs["encoder_hidden_states"].float(), kwargs["added_cond_kwargs"]["text_embeds"].float()))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(UNet2DConditionModel, "forward", recording_forward)
    execute(compose_config(*FAST, "subject=dog", "sample.enabled=false", f"run_dir={tmp_path / 'r'}"))
    with torch.no_grad():
        embeds, _, pooled, _ = tiny_pipe_template.encode_prompt(
            "a photo of sks dog", device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False
        )
    assert len(seen) == 2
    for hidden, text_embeds in seen:
        torch.testing.assert_close(hidden, embeds.float().expand_as(hidden))
        torch.testing.assert_close(text_embeds, pooled.float().expand_as(text_embeds))
