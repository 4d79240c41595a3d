"""The experiments package: configuration, the logic of each experiment on synthetic run folders (fast), and one
tiny end-to-end run per `make` target (slow: real training through the harness, sampling and scoring)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from conftest import DATA_ROOT, SMALL_CLIP_SCORE, compose_config
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError
from PIL import Image

from experiments import ablations, edit, multi_subject, para_lora, study_sheet
from experiments.common import load_experiment, merge_overrides, multi_subject_prompts
from experiments.report import label_grid, reset_if_changed, to_markdown, write_table
from para.core.data import DataError, load_subject_images

# --- configuration ------------------------------------------------------------------------------------------------


def test_run_overrides_replace_the_users_same_keys():
    merged = merge_overrides(["model=tiny", "steps=3", "+x.y=1"], ["steps=200", "x.y=2", "method=lora"])
    assert merged == ["model=tiny", "steps=200", "x.y=2", "method=lora"]


def test_experiment_parameters_are_typed_and_checked():
    exp = load_experiment("multi_subject", multi_subject.Params, ["model=tiny", "experiment.modes=[additive]"])
    assert exp.params.modes == ["additive"] and exp.out == Path("runs/tiny/multi_subject")
    with pytest.raises(ValidationError):
        load_experiment("multi_subject", multi_subject.Params, ["model=tiny", "experiment.para_steps=abc"])
    with pytest.raises(HydraException):
        load_experiment("multi_subject", multi_subject.Params, ["model=tiny", "experiment.modez=[concat]"])
    params = multi_subject.Params(modes=["concat", "average"], prompts=["{} {}"])
    with pytest.raises(ValueError, match=r"'average'.*concat.*sequential.*additive"):
        multi_subject.check(params)
    with pytest.raises(ValueError, match="one entry per subject"):
        multi_subject.check(multi_subject.Params(tokens=["sks"], prompts=["{} {}"]))


def test_every_preset_composes_for_run_py():
    for name in ("multi_subject", "para_lora", "edit", "ablations", "study_sheet"):
        cfg = compose_config(f"+experiment={name}", "model=tiny")
        OmegaConf.to_container(cfg, resolve=True)  # every interpolation (run_dir, data.images, ...) resolves
        assert cfg.experiment.name == name


def test_multi_subject_prompts_name_every_subject():
    specs = multi_subject_prompts(["A {} wearing a {} in the snow"], ["dog", "pink_sunglasses"], ["sks", "zwx"])
    assert specs[0].prompt == "A sks dog wearing a zwx glasses in the snow"
    assert specs[0].clean_prompt == "A dog wearing a glasses in the snow"
    with pytest.raises(ValueError, match="slots"):
        multi_subject_prompts(["A {}"], ["dog", "cat"], ["sks", "zwx"])
    with pytest.raises(ValueError, match="unknown subject"):
        multi_subject_prompts(["A {}"], ["dgo"], ["sks"])


def test_a_finished_run_with_other_training_settings_is_not_reused(tmp_path):
    """experiments.common.train() relies on the runner's check (para.run.folder.plan): sampling settings may
    differ when the folder holds no samples, training settings may not."""
    from para.run.folder import FolderRefused, plan, write_marker

    cfg = compose_config("model=tiny", "method=para", "method.rank=2", f"run_dir={tmp_path}")
    write_marker(tmp_path)
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    (tmp_path / "metrics.json").write_text(json.dumps({"status": "finished", "stage": "trained"}))
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(tmp_path / "adapter.safetensors"))  # whole (a truncated one is refused)
    reuse = compose_config(
        "model=tiny",
        "method.rank=2",
        "sample.steps=3",
        "sample.enabled=false",
        f"run_dir={tmp_path}",
    )
    assert plan(tmp_path, reuse).action == "skip"
    with pytest.raises(FolderRefused, match="method.rank: 2 there, 8 here"):
        plan(tmp_path, compose_config("model=tiny", "method.rank=8", f"run_dir={tmp_path}"))


def test_samples_of_another_adapter_are_cleared(tmp_path):
    folder = tmp_path / "cond"
    reset_if_changed(folder, {"adapter": "a"})
    (folder / "samples").mkdir()
    (folder / "samples" / "p00_i00.png").write_bytes(b"x")
    reset_if_changed(folder, {"adapter": "a"})
    assert (folder / "samples" / "p00_i00.png").exists()
    reset_if_changed(folder, {"adapter": "b"})
    assert not (folder / "samples").exists()


def test_tables_and_grids(tmp_path):
    frame = pd.DataFrame({"a": ["x|y", "z"], "b": [0.12345, float("nan")], "n": pd.array([1, None], dtype="Int64")})
    assert to_markdown(frame).splitlines()[2] == "| x\\|y | 0.123 | 1 |"
    assert to_markdown(frame).splitlines()[3] == "| z | – | – |"
    md = write_table(frame, tmp_path, "t", "Title", ["WARNING: random"])
    assert "> WARNING: random" in md.read_text() and (tmp_path / "t.csv").is_file()
    red = Image.new("RGB", (8, 8), "red")
    grid = label_grid([("row one", [red, red]), ("row two", [red])], ["c0", "c1"], cell=32)
    assert grid.size == (150 + 2 * 32, 18 + 2 * 32)


# --- edit ---------------------------------------------------------------------------------------------------------


def test_training_can_be_restricted_to_one_photo():
    assert load_subject_images(DATA_ROOT, "dog", 32, images=["01.jpg"]).shape == (1, 3, 32, 32)
    with pytest.raises(DataError, match="07.jpg"):
        load_subject_images(DATA_ROOT, "dog", 32, images=["07.jpg"])


def test_edit_prompts_and_means_over_edits():
    p = edit.Params(edits=["a {token} {class_word} in the snow"])
    specs = edit.edit_prompts(p)
    assert [s.prompt for s in specs] == ["a photo of sks dog", "a sks dog in the snow"]
    assert specs[1].clean_prompt == "a dog in the snow"
    with pytest.raises(ValueError, match="token"):
        edit.edit_prompts(edit.Params(edits=["a {subject}"]))
    rows = pd.DataFrame(
        {
            "method": ["para"] * 3,
            "prompt_index": [0, 1, 2],
            "prompt": ["c", "e1", "e2"],
            "kind": ["caption", "edit", "edit"],
            "n_seeds": [4, 4, 4],
            "ssim": [0.9, 0.5, 0.3],
            "lpips_source": [0.1, 0.2, 0.4],
        }
    )
    table = edit.with_edit_means(rows)
    mean = table[table["kind"] == "edits"].iloc[0]
    assert mean["ssim"] == pytest.approx(0.4) and mean["lpips_source"] == pytest.approx(0.3)  # caption excluded


# --- ablations ----------------------------------------------------------------------------------------------------


def _fake_run(
    root: Path, method: str, subject: str, steps: int, rank: int, gamma, subset: str, dino: float,
    init: str = "gaussian", lr: float = 1e-4,
) -> None:  # fmt: skip
    folder = root / method / subject / f"r{rank}-gamma{gamma}-{subset}-{init}-lr{lr}-steps{steps}"
    (folder / "samples").mkdir(parents=True)
    Image.new("RGB", (8, 8), "blue").save(folder / "samples" / "p00_i00.png")
    scores = {k: 0.5 for k in ("clip_i", "clip_t", "clip_score", "lpips", "ssim")}
    metrics = {
        "status": "finished",
        "method": method,
        "subject": subject,
        "steps": steps,
        "seed": 0,
        "scores": {**scores, "dino": dino, "backbones_pretrained_all": False},
        "run_info": {
            "method": {"name": method, "rank": rank, "gamma": gamma, "subset": subset, "init": init, "lr": lr},
            "subject": {"kind": "live"},
            "data": {"root": "x"},
        },
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_ablation_sweeps_and_table(tmp_path):
    p = ablations.Params(
        subjects=["dog", "cat"],
        ranks=[1, 4],
        gammas=[0.025, None],
        subsets=["noxattn", "attn"],
        steps_curve=[2, 4],
        para_steps=4,
        inits=["gaussian", "weakest"],
        lrs=[1e-4, 1e-3],
    )
    plan = ablations.sweeps(p)
    assert "method.gamma=0.025,null" in plan["rank"] and "method=para,lora" in plan["steps"]
    assert "method.init=gaussian,weakest" in plan["init"] and "method.lr=0.0001,0.001" in plan["init"]
    assert "subject=dog,cat" in plan["subset"] and ablations.sweeps(ablations.Params(subsets=[], lrs=[])).keys() == {
        "rank",
        "steps",
    }
    for subject, shift in (("dog", 0.0), ("cat", 0.2)):
        for rank in (1, 4):
            for gamma in (0.025, None):
                _fake_run(tmp_path, "para", subject, 4, rank, gamma, "noxattn", rank / 10 + shift)
        _fake_run(tmp_path, "para", subject, 4, 4, 0.025, "attn", 0.9)
        _fake_run(tmp_path, "para", subject, 2, 4, 0.025, "noxattn", 0.05 + shift)
        for init, lr in (("gaussian", 1e-3), ("weakest", 1e-4), ("weakest", 1e-3)):  # (gaussian, 1e-4): the base
            _fake_run(tmp_path, "para", subject, 4, 4, 0.025, "noxattn", 0.6 + lr * 100 + shift, init, lr)
        for steps in (2, 4):
            _fake_run(tmp_path, "lora", subject, steps, 16, None, "noxattn", steps / 100 + shift)
    _fake_run(tmp_path, "para", "teapot", 4, 1, 0.025, "noxattn", 9.0)  # not an ablation subject: ignored
    base = {
        "para": {"rank": 4, "gamma": "0.025", "subset": "noxattn", "init": "gaussian", "lr": 1e-4},
        "lora": {"rank": 16, "gamma": "n/a", "subset": "noxattn", "init": "gaussian", "lr": 1e-4},
    }
    dreambench = ablations.protocol_named("dreambench")
    table = ablations.summarize(ablations.select(ablations.collect(tmp_path), p, base), dreambench.score_keys)
    cells = ["ablation", "method", "rank", "gamma", "subset", "init", "lr", "steps"]
    by = {tuple(None if pd.isna(v) else v for v in r[cells]): r for _, r in table.iterrows()}
    # (init and lr are None where an ablation does not vary them)
    assert by["rank", "para", 1, "off", None, None, None, None].dino == pytest.approx(0.2)  # mean over subjects
    assert by["rank", "para", 4, "0.025", None, None, None, None].n_subjects == 2  # the init sweep's cells stay out
    assert by["rank", "para", 4, "0.025", None, None, None, None].dino == pytest.approx(0.5)
    assert by["subset", "para", None, None, "attn", None, None, None].dino == pytest.approx(0.9)
    assert by["init", "para", None, None, None, "weakest", 1e-3, None].dino == pytest.approx(0.8)
    assert by["init", "para", None, None, None, "gaussian", 1e-4, None].dino == pytest.approx(0.5)  # the base cell
    assert by["steps", "para", None, None, None, None, None, 2].dino == pytest.approx(0.15)
    assert by["steps", "lora", None, None, None, None, None, 4].dino == pytest.approx(0.14)
    assert len(table) == 4 + 2 + 4 + 4
    for ablation in ("rank", "init"):
        ablations.plot(table, ablation, tmp_path / f"{ablation}.png", "RANDOM", dreambench)
        assert (tmp_path / f"{ablation}.png").stat().st_size > 0
    assert ablations.grid(ablations.select(ablations.collect(tmp_path), p, base), "dog", 0) is not None


# --- study sheet -------------------------------------------------------------------------------------------------


def _fake_samples(folder: Path, colour: str, prompts: int = 3, images: int = 2) -> Path:
    samples = folder / "samples"
    samples.mkdir(parents=True)
    index = []
    for p in range(prompts):
        names = [f"p{p:02d}_i{i:02d}.png" for i in range(images)]
        for name in names:
            Image.new("RGB", (8, 8), colour).save(samples / name)
        index.append({"prompt_index": p, "prompt": f"a sks dog {p}", "clean_prompt": f"a dog {p}", "images": names})
    (samples / "prompts.json").write_text(json.dumps(index))
    return folder


def test_study_sheet_is_seeded_balanced_and_anonymous(tmp_path):
    folders = {
        ("para", "dog"): _fake_samples(tmp_path / "para", "red"),
        ("lora", "dog"): _fake_samples(tmp_path / "lora", "blue"),
    }

    def exp(seed: int):
        params = study_sheet.Params(subjects=["dog"], images_per_prompt=2, shuffle_seed=seed)
        return SimpleNamespace(params=params, cfg=OmegaConf.create({"data": {"root": str(DATA_ROOT)}}))

    key = study_sheet.questions(exp(0), folders)
    assert len(key) == 6 and set(key["left"]) == {"para", "lora"}  # both placements occur
    assert key.equals(study_sheet.questions(exp(0), folders))
    assert not key.equals(study_sheet.questions(exp(1), folders))
    for row in key.itertuples():
        assert f"/{row.left}/" in row.left_source and f"/{row.right}/" in row.right_source
        assert Path(row.left_source).name == Path(row.right_source).name == row.image  # same noise on both sides
    page = study_sheet.write_sheet(exp(0), key, tmp_path / "sheet").read_text()
    assert "para" not in page.lower() and "lora" not in page.lower()
    first = key.iloc[0]
    shown = Image.open(tmp_path / "sheet" / "images" / f"{first.question}_L.png").getpixel((0, 0))
    assert shown == ((255, 0, 0) if first.left == "para" else (0, 0, 255))
    answers = pd.DataFrame({"question": key["question"], "choice": ["L", "R", "none", "L", "L", "R"]})
    expected_para = sum(
        (c == "L" and left == "para") or (c == "R" and left == "lora")
        for c, left in zip(answers["choice"], key["left"], strict=True)
    )
    prefs = study_sheet.tally(key, answers)
    overall = prefs[prefs["subject"] == "all"].set_index("preferred")["answers"]
    assert overall.get("para", 0) == expected_para and overall["no preference"] == 1
    with pytest.raises(ValueError, match="q999"):
        study_sheet.tally(key, pd.DataFrame({"question": ["q999"], "choice": ["L"]}))


# --- one tiny end-to-end run per make target ----------------------------------------------------------------------

TINY = [
    "model=tiny",
    "eval.backbones=random",
    SMALL_CLIP_SCORE,
    f"data.root={DATA_ROOT}",
    "sample.num_prompts=1",
    "sample.images_per_prompt=2",
    "sample.steps=2",
    "logger=none",
]


@pytest.mark.slow
def test_make_multi_subject_end_to_end(tmp_path):
    summary = multi_subject.run(
        [
            *TINY,
            f"experiment.out={tmp_path}",
            "experiment.para_steps=2",
            "experiment.lora_steps=2",
            "experiment.modes=[concat,additive]",
        ]
    )
    assert list(summary["condition"]) == ["para-concat", "para-additive", "lora-together"]
    out = tmp_path / "dog+pink_sunglasses"
    for name in (
        "multi_subject.csv",
        "multi_subject.md",
        "per_image.csv",
        "grid.png",
        "provenance.json",
        "para-concat/adapter.safetensors",
        "para-additive/samples/p00_i01.png",
    ):
        assert (out / name).is_file(), name
    assert {"dino_dog", "dino_pink_sunglasses", "dino_min", "clip_t"} <= set(summary.columns)
    assert "random backbones" in (out / "multi_subject.md").read_text()


@pytest.mark.slow
def test_make_para_lora_end_to_end(tmp_path):
    summary = para_lora.run(
        [*TINY, f"experiment.out={tmp_path}", "experiment.para_steps=2", "experiment.lora_steps=2"]
    )
    assert list(summary["condition"]) == ["para", "lora", "para_then_lora", "lora_then_para"]
    assert (tmp_path / "dog+pink_sunglasses" / "grid.png").is_file()


@pytest.mark.slow
def test_make_edit_end_to_end(tmp_path):
    table = edit.run(
        [
            *TINY,
            f"experiment.out={tmp_path}",
            "experiment.steps=2",
            'experiment.edits=["a photo of {token} {class_word} in the snow"]',
        ]
    )
    assert set(table["method"]) == {"para", "lora"} and table["ssim"].notna().all()
    config = OmegaConf.load(next((tmp_path / "train" / "para" / "dog").glob("*/config.yaml")))
    assert list(config.data.images) == ["00.jpg"] and config.data.flip_p == 0.0


@pytest.mark.slow
def test_make_ablations_end_to_end(tmp_path):
    table = ablations.run(
        [
            *TINY,
            f"experiment.out={tmp_path}",
            "experiment.subjects=[dog]",
            "experiment.ranks=[1]",
            "experiment.gammas=[0.025]",
            "experiment.subsets=[selfattn]",
            "experiment.inits=[weakest]",
            "experiment.lrs=[1.0e-4]",
            "experiment.steps_curve=[2]",
            "experiment.para_steps=2",
            "sample.num_prompts=1",
        ]
    )
    assert set(table["ablation"]) == {"rank", "subset", "init", "steps"}
    assert (tmp_path / "ablations.md").is_file() and (tmp_path / "steps.png").is_file()


@pytest.mark.slow
def test_make_study_sheet_end_to_end(tmp_path):
    key = study_sheet.run(
        [
            *TINY,
            f"experiment.out={tmp_path}",
            "experiment.subjects=[dog]",
            "experiment.steps=[2,2]",
            "run_dir=" + str(tmp_path) + "/runs/${method.name}/${subject.name}/steps${steps}",
        ]
    )
    assert len(key) == 1 and (tmp_path / "sheet" / "index.html").is_file()
    assert (tmp_path / "answer_key.json").is_file() and (tmp_path / "grid.png").is_file()


def test_an_experiment_stopped_by_sigterm_exits_like_a_run(monkeypatch, caplog):
    """SIGTERM mid-training (a scheduler's preemption, `kill`) ends `python -m experiments.<name>` with 143 and the
    way on, not a RunInterrupted traceback (found stopping `make multi-subject MODEL=world`)."""
    import signal

    from experiments.common import main_entry
    from para.core.interrupts import RunInterrupted

    def interrupted(_argv):
        raise RunInterrupted(signal.SIGTERM, at_boundary=True)

    monkeypatch.setattr("sys.argv", ["experiments.multi_subject"])
    with pytest.raises(SystemExit) as stop:
        main_entry(interrupted)
    assert stop.value.code == 143
    assert "stopped by SIGTERM; re-run the same command to continue" in caplog.text
