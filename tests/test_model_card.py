"""Model cards of finished runs (para/run/model_card.py) and `--push-to-hub` (para/export/hub.py, para/api.py).

Oracle for the card: huggingface_hub's own ModelCard parser. The hub is never reached: offline mode, an unreachable
endpoint, and a recorded upload stand in for it.
"""

from __future__ import annotations

import pytest
from huggingface_hub import ModelCard, constants

from para import api
from para.export.__main__ import main as export_main
from para.export.hub import HubError
from para.run.model_card import load_run, render_model_card, run_command


@pytest.fixture(scope="module")
def run_dir(export_runs):
    return export_runs["para"]


def test_a_finished_run_writes_a_model_card_the_hub_parser_reads(run_dir):
    card = ModelCard.load(run_dir / "README.md")
    data = card.data
    assert data.base_model == "random-tiny-seed0" and data.license == "apache-2.0"
    assert {"text-to-image", "diffusers", "sdxl", "para"} <= set(data.tags)
    assert data.instance_prompt == "a photo of sks dog"
    assert data.widget and all((run_dir / w["output"]["url"]).is_file() for w in data.widget)
    text = card.text
    assert "Random weights" in text and "RANDOM weights" in text and "Not scored" in text
    assert "para.load_adapter(pipe" in text and "--format kohya" in text
    assert "python run.py method=para subject=dog model=tiny steps=4 seed=0" in text


def test_the_card_shows_the_scores_and_which_models_behind_them_were_pretrained(run_dir):
    cfg, metrics = load_run(run_dir)
    scores = {"dino": 0.61, "clip_i": 0.8, "clip_t": 0.3, "n_images": 100, "n_prompts": 25}
    scores["backbones_pretrained"] = {"dino": True, "clip": False}
    text = render_model_card(run_dir, cfg, {**metrics, "scores": scores})
    assert "| dino | clip_i | clip_t |" in text and "| 0.6100 | 0.8000 | 0.3000 |" in text
    assert "base model **no**; evaluation backbones dino yes, clip **no**" in text


def test_the_card_quotes_the_exact_command_of_a_hydra_run():
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from para.run.config import CONF_DIR, register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        overrides = ["model=tiny", "steps=7", "method.rank=4", "run_dir=x"]
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    try:
        assert run_command(cfg) == "python run.py model=tiny steps=7 method.rank=4 run_dir=x"
    finally:
        HydraConfig.instance().cfg = None


def test_push_offline_stops_before_anything_is_written(run_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    out = tmp_path / "a.safetensors"
    assert export_main([str(run_dir), "--out", str(out), "--push-to-hub", "me/para-dog"]) == 2
    assert "offline" in capsys.readouterr().err and not out.exists()


def test_push_to_an_unreachable_hub_says_so_and_writes_nothing(run_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    out = tmp_path / "a.safetensors"
    with pytest.raises(HubError, match="cannot upload to me/para-dog on http://127.0.0.1:9"):
        api.export_lora(run_dir, out, push_to_hub="me/para-dog", hub_endpoint="http://127.0.0.1:9", hub_token="hf_x")
    assert not out.exists()


def test_push_uploads_the_file_its_card_and_the_widget_images_in_one_commit(run_dir, tmp_path, monkeypatch):
    commits = []
    monkeypatch.setattr(api, "check_hub", lambda *a: "me")
    monkeypatch.setattr(api, "push_files", lambda repo, files, message, *a: commits.append((repo, files)) or "url")
    out = api.export_lora(run_dir, tmp_path / "dog.safetensors", "kohya", push_to_hub="me/para-dog")
    ((repo, files),) = commits
    assert repo == "me/para-dog" and files["dog.safetensors"] == out
    card = ModelCard(files["README.md"].decode())
    assert 'pipe.load_lora_weights("me/para-dog", weight_name="dog.safetensors")' in card.text
    assert {w["output"]["url"] for w in card.data.widget} <= files.keys()
