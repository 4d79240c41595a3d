"""score_run on a fake run folder, its errors, the embedding cache, and `python -m eval` updating metrics.json."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from eval.__main__ import main, update_metrics
from eval.backbones import load_backbones
from eval.options import RANDOM_BANNER, EvalOptions
from eval.score import cached_embeddings, real_photo_paths, real_reference, score_run

REPO = Path(__file__).resolve().parent.parent
DATA_ROOT = REPO.parent / "shared" / "dreambooth" / "dataset"
SUBJECT = "duck_toy"  # 4 photos: the fewest in DreamBooth, so the fewest forward passes


def make_run(run_dir: Path, prompts: int = 2, images: int = 2, data_root: str | None = None) -> Path:
    """A run folder as the trainer writes it: metrics.json with run_info, samples/*.png, samples/prompts.json."""
    samples = run_dir / "samples"
    samples.mkdir(parents=True)
    photos = real_photo_paths(DATA_ROOT, SUBJECT)
    entries = []
    for p in range(prompts):
        names = []
        for i in range(images):
            name = f"p{p:02d}_i{i:02d}.png"
            Image.open(photos[(p + i) % len(photos)]).convert("RGB").resize((64, 64)).save(samples / name)
            names.append(name)
        place = ["in the jungle", "on the beach", "in the snow"][p % 3]
        entries.append({"prompt_index": p, "prompt": f"a sks toy {place}", "clean_prompt": f"a toy {place}",
                        "images": names})  # fmt: skip
    (samples / "prompts.json").write_text(json.dumps(entries))
    run_info = {
        "subject": {"name": SUBJECT, "class_word": "toy", "kind": "object"},
        "data": {"root": data_root or str(DATA_ROOT), "token": "sks"},
        "sample": {"images_per_prompt": images, "num_prompts": prompts},
        "eval": {"backbones": "random", "lpips_size": 64, "clip_score_model": "openai/clip-vit-base-patch32"},
    }
    metrics = {"status": "finished", "method": "para", "subject": SUBJECT, "run_info": run_info, "train_info": {}}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    return run_dir


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """One fake run scored once through the CLI (random backbones), shared by the tests below."""
    import contextlib
    import io

    root = tmp_path_factory.mktemp("scored")
    # data.root relative to the working directory, as in conf/ (`../shared/dreambooth/dataset` from the repo)
    run = make_run(root / "run", data_root=os.path.relpath(DATA_ROOT, REPO))
    out = io.StringIO()
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        with contextlib.redirect_stdout(out):
            main([str(run), "--backbones", "random", "--cache-dir", str(root / "cache")])
    finally:
        os.chdir(cwd)
    return run, out.getvalue(), root / "cache"


def test_score_run_returns_every_score_and_the_backbone_flags(scored):
    run, _, _ = scored
    scores = json.loads((run / "metrics.json").read_text())["scores"]
    for key in ("dino", "clip_i", "clip_t", "clip_score", "lpips", "ssim"):
        assert isinstance(scores[key], float), key
    assert scores["backbones_pretrained"] == {"dino": False, "clip": False, "lpips": True, "clip_score": False}
    assert scores["backbones_pretrained_all"] is False
    assert (scores["n_prompts"], scores["n_images"], scores["n_real"], scores["lpips_size"]) == (2, 4, 4, 64)
    # clip_score: torchmetrics' CLIPScore over all images, on the run's eval.clip_score_model (not CLIP-T's model)
    from torchmetrics.multimodal.clip_score import CLIPScore
    from torchvision.transforms.functional import pil_to_tensor

    from eval.clip_score import load_clip_score

    scorer = load_clip_score("openai/clip-vit-base-patch32", False, "auto")
    oracle = CLIPScore(model_name_or_path=lambda: (scorer.model, scorer.processor))
    for entry in json.loads((run / "samples" / "prompts.json").read_text()):
        images = [pil_to_tensor(Image.open(run / "samples" / name).convert("RGB")) for name in entry["images"]]
        oracle.update(images, [entry["clean_prompt"]] * len(images))
    assert scores["clip_score"] == pytest.approx(oracle.compute().item(), abs=1e-4)
    assert scores["backbones"]["clip_score"] == "clip_score:openai/clip-vit-base-patch32"
    assert -1 <= scores["dino"] <= 1 and 0 <= scores["lpips"] and -1 <= scores["ssim"] <= 1
    assert [p["prompt_index"] for p in scores["per_prompt"]] == [0, 1]
    assert scores["per_prompt"][0]["clean_prompt"] == "a toy in the jungle"
    assert scores["dino"] == pytest.approx(sum(p["dino"] for p in scores["per_prompt"]) / 2)


def test_cli_updates_metrics_json_and_prints_the_banner(scored):
    run, stdout, cache = scored
    data = json.loads((run / "metrics.json").read_text())
    assert data["status"] == "finished" and data["run_info"]["subject"]["name"] == SUBJECT  # the rest is kept
    assert RANDOM_BANNER in stdout and "dino" in stdout
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]  # atomic write leaves no temp file
    cached = sorted(p.name for p in cache.iterdir())
    assert len(cached) == 2 and all(n.startswith(f"{SUBJECT}-") and "-random-" in n for n in cached)


def test_real_reference_is_leave_one_out_over_the_cached_photo_embeddings(scored):
    """Reuses the cache `scored` filled: real photos against each other, the diagonal (self-pairs) left out."""
    _, _, cache = scored
    models = load_backbones(EvalOptions(backbones="random"))
    reference = real_reference(DATA_ROOT, SUBJECT, models, cache)
    paths = real_photo_paths(DATA_ROOT, SUBJECT)
    emb = cached_embeddings(paths, None, models.dino.id, models.dino.pretrained, SUBJECT, cache)  # from disk
    cos = torch.nn.functional.normalize(emb.double(), dim=-1) @ torch.nn.functional.normalize(emb.double(), dim=-1).T
    expected = (cos.sum() - cos.diagonal().sum()) / (len(paths) * (len(paths) - 1))
    assert reference["dino"] == pytest.approx(expected.item(), abs=1e-9)
    assert set(reference) == {"dino", "clip_i"} and reference["clip_i"] < 1.0


def test_update_metrics_replaces_only_scores(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"status": "finished", "scores": {"dino": 0.1}}))
    update_metrics(tmp_path, {"dino": 0.5})
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"status": "finished", "scores": {"dino": 0.5}}


def test_cache_is_keyed_by_backbone_and_weights_kind(tmp_path):
    calls = []

    def embed(images):
        calls.append(len(images))
        return torch.ones(len(images), 3)

    paths = real_photo_paths(DATA_ROOT, SUBJECT)[:2]
    first = cached_embeddings(paths, embed, "dino:x", False, SUBJECT, tmp_path)
    again = cached_embeddings(paths, embed, "dino:x", False, SUBJECT, tmp_path)
    assert calls == [2] and torch.equal(first, again)
    cached_embeddings(paths, embed, "dino:x", True, SUBJECT, tmp_path)  # pretrained: another entry
    cached_embeddings(paths, embed, "clip:y", False, SUBJECT, tmp_path)  # another backbone: another entry
    assert calls == [2, 2, 2] and len(list(tmp_path.iterdir())) == 3


def test_a_run_without_samples_is_refused(tmp_path):
    run = make_run(tmp_path / "run")
    (run / "samples" / "prompts.json").unlink()
    with pytest.raises(ValueError, match=r"has no samples .*prompts\.json"):
        score_run(run, {"backbones": "random"})


def test_missing_images_are_named(tmp_path):
    run = make_run(tmp_path / "run")
    (run / "samples" / "p01_i00.png").unlink()
    with pytest.raises(ValueError, match=r"prompts\.json: prompt 1 names missing images \['p01_i00.png'\]"):
        score_run(run, {"backbones": "random"})


def test_image_count_mismatch_is_refused(tmp_path):
    run = make_run(tmp_path / "run", images=2)
    entries = json.loads((run / "samples" / "prompts.json").read_text())
    entries[1]["images"] = entries[1]["images"][:1]
    (run / "samples" / "prompts.json").write_text(json.dumps(entries))
    with pytest.raises(ValueError, match="image count mismatch"):
        score_run(run, {"backbones": "random"})
    info = json.loads((run / "metrics.json").read_text())
    info["run_info"]["sample"]["images_per_prompt"] = 4  # all prompts agree, but not with the config
    (run / "metrics.json").write_text(json.dumps(info))
    entries[1]["images"] = entries[0]["images"]
    (run / "samples" / "prompts.json").write_text(json.dumps(entries))
    with pytest.raises(ValueError, match="expected 4"):
        score_run(run, {"backbones": "random"})


def test_cli_reports_setup_problems_without_a_traceback(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    (run / "samples" / "prompts.json").unlink()
    assert main([str(run), "--backbones", "random"]) == 2
    assert "has no samples" in capsys.readouterr().err


def test_a_folder_without_metrics_json_is_refused(tmp_path):
    with pytest.raises(ValueError, match="metrics.json is missing"):
        score_run(tmp_path, {"backbones": "random"})
