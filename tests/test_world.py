"""The world's parts (docs/world.md): renderer, labels, tokenizer, prompts, the protocol's registration and parsing.

Fast, no model: the world model's own known-answer tests are in tests/test_world_known_answers.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from para.run.config import compose_config
from world.components import IDENTIFIERS, vocabulary, write_tokenizer
from world.evaluator import IGNORE, labels_of, training_scene
from world.render import (
    COLOURS,
    SUBJECT_COLOURS,
    SUBJECTS,
    Scene,
    caption,
    random_scene,
    render,
    subject_photo_scenes,
    subject_thing,
)
from world.scorer import parse_prompt
from world.subject_configs import subject_yaml
from world.subjects import evaluation_templates


def test_renders_are_a_pure_function_of_the_seed():
    a = [render(random_scene(np.random.default_rng(3))) for _ in range(2)]
    assert np.array_equal(a[0], a[1])
    other = render(random_scene(np.random.default_rng(4)))
    assert not np.array_equal(a[0], other)


def test_pretraining_scenes_never_show_a_subject_or_its_colours():
    rng = np.random.default_rng(0)
    subject_rgb = {tuple(c) for c in SUBJECT_COLOURS.values()}
    for _ in range(50):
        scene = random_scene(rng)
        assert all(t.subject is None and t.colour in COLOURS for t in scene.things)
        pixels = {tuple(p) for p in render(scene).reshape(-1, 3)}
        assert not pixels & subject_rgb


def test_subject_photos_show_the_subject_on_white_or_gray_only():
    for name in SUBJECTS:
        scenes = subject_photo_scenes(name, 5)
        assert len(scenes) == 5 and {s.background for s in scenes} <= {"white", "gray"}
        assert all(s.things[0].subject == name for s in scenes)
        live = SUBJECTS[name].kind == "live"
        poses = {round(s.things[0].angle, 5) for s in scenes}
        assert (len(poses) == 5) if live else max(abs(a) for a in poses) < 0.2  # live subjects change pose


def test_labels_mark_hard_negatives_as_no_subject():
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(400):
        scene = training_scene(rng)
        labels = labels_of(scene)
        for thing in scene.things:
            k = ["left", "center", "right"].index(thing.position)
            assert labels.present[k] == 1
            if thing.subject is not None and thing.variant is not None:
                assert labels.identity[k] == 0
                seen.add(thing.variant)
        empty = [k for k in range(3) if labels.present[k] == 0]
        assert all(labels.identity[k] == IGNORE for k in empty)
    assert seen == {"wrong_shape", "wrong_colours", "one_colour", "swapped"}


def test_every_world_word_and_identifier_is_one_token(tmp_path):
    tokenizer = write_tokenizer(tmp_path)
    for word in vocabulary():
        assert len(tokenizer(word).input_ids) == 3  # start, the word, end
    assert set(IDENTIFIERS) <= set(vocabulary())
    ids = tokenizer("a photo of sks circle").input_ids
    assert len(ids) == 7 and len(tokenizer("a photo of a dog").input_ids) > 7  # unknown words: characters


def test_captions_parse_back_to_their_scene():
    rng = np.random.default_rng(2)
    for _ in range(30):
        scene = random_scene(rng, two_p=0.5)
        background, things = parse_prompt(caption(scene), "sks")
        assert background == scene.background
        assert [(t.shape, t.colour, t.position) for t in things] == [
            (t.shape, t.colour, t.position) for t in scene.things
        ]


@pytest.mark.parametrize("name", sorted(SUBJECTS))
def test_world_prompts_name_the_subject_or_ask_for_its_class(name):
    cls = SUBJECTS[name].class_word
    templates = evaluation_templates(name)
    with_token = [t for t in templates if "{token}" in t]
    assert len(with_token) >= 12 and len(templates) - len(with_token) == 4  # four leak prompts
    for template in templates:
        background, things = parse_prompt(template.format(token="sks", cls=cls), "sks")
        assert any(t.shape == cls for t in things)
        assert sum(t.subject for t in things) == ("{token}" in template)
    assert "{token} {cls}" in subject_yaml(name, "world/assets/subjects")


def test_model_world_composes_with_a_world_subject_and_the_world_protocol():
    cfg = compose_config("model=world", "subject=sun_disc", "method=lora")
    assert cfg.model.kind == "pretrained" and cfg.model.path == "world/assets/model"
    assert cfg.eval.backbones == "world" and cfg.sample.steps == 20
    assert cfg.data.root == "world/assets/subjects" and cfg.subject.flip is False  # never mirrored
    assert cfg.subject.prompts == evaluation_templates("sun_disc")
    assert cfg.run_dir.startswith("runs/world/lora/sun_disc/")


def test_the_world_protocol_is_found_through_its_entry_point():
    from eval.options import EvalOptions, backbone_modes
    from eval.score import protocol_named

    assert "world" in backbone_modes()
    protocol = protocol_named("world")
    assert protocol.fidelity == "subject_identity" and "leak" in protocol.lower_is_better
    assert EvalOptions(backbones="world").backbones == "world"
    with pytest.raises(ValueError, match="no such scoring protocol"):
        protocol_named("worlds")


def test_an_empty_scene_renders_its_background():
    image = render(Scene("purple"))
    assert (image == image[0, 0]).all()


def test_the_world_image_scorer_reads_two_subjects_from_one_render():
    """Oracle: the renderer. Two world subjects drawn side by side are both read back (each in its own slot); one
    subject drawn twice shows only one of them; a prompt's background and slots decide prompt fidelity. What
    `make multi-subject MODEL=world` and `make para-lora MODEL=world` score their images with."""
    from PIL import Image

    from world.scorer import PROTOCOL

    rng = np.random.default_rng(0)
    two = Scene("black", (subject_thing(rng, "sun_disc", "left"), subject_thing(rng, "eye_tri", "right")))
    twice = Scene("black", (subject_thing(rng, "sun_disc", "left"), subject_thing(rng, "sun_disc", "right")))
    images = [Image.fromarray(render(scene)) for scene in (two, twice)]
    prompt = "a photo of sks circle on the left and zwx triangle on the right on a black background"
    wrong = prompt.replace("black", "white")
    scorer = PROTOCOL.image_scorer(None, "world/assets/subjects")
    frame = scorer.score_images(images, [prompt, wrong], ["", ""], ["sun_disc", "eye_tri"], ["sks", "zwx"])
    assert frame["identity_sun_disc"].tolist()[0] > 0.9 and frame["identity_eye_tri"].tolist()[0] > 0.9
    assert frame["both_shown"].tolist() == [1.0, 0.0] and frame["identity_min"].tolist()[1] < 0.1
    assert frame["prompt_fidelity"].tolist()[0] == 1.0 and frame["prompt_fidelity"].tolist()[1] < 1.0
    assert scorer.pretrained
    with pytest.raises(ValueError, match="world's subjects"):
        scorer.score_images(images, [prompt] * 2, ["", ""], ["dog"], ["sks"])


def test_world_subjects_fill_the_experiments_prompts():
    """A world subject's config is a global package (`subject:` beside its `data:`): the experiments read its class
    word all the same (it once failed with "Missing key class_word")."""
    from experiments.common import compose, load_experiment, multi_subject_prompts
    from experiments.multi_subject import Params

    exp = load_experiment("multi_subject", Params, ["model=world", "run_dir=unused"])
    (spec, *_) = multi_subject_prompts(exp.params.prompts, exp.params.subjects, exp.params.tokens)
    assert spec.prompt == "a photo of sks circle on the left and zwx triangle on the right"
    assert spec.clean_prompt == "a photo of circle on the left and triangle on the right"
    assert exp.cfg.experiment.gamma is None and exp.cfg.eval.backbones == "world"
    assert exp.cfg.data.root == "world/assets/subjects"  # where the scorer finds both subjects' photos
    assert compose(["+experiment=multi_subject"]).experiment.subjects == ["dog", "pink_sunglasses"]  # SDXL's own


def test_experiment_claims_read_paired_images(tmp_path):
    """The claims table's experiment rows: condition a minus b over images with the same prompt and seed, a BCa
    interval over those pairs, and the verdict it implies (independent check: the pairs' mean by hand)."""
    import pandas as pd

    from world import claims

    rows = []
    for prompt in range(5):
        for image in range(4):
            shown = float((prompt + image) % 4 != 0)  # PaRa shows both in 15 of 20 images
            pair = {"prompt_index": prompt, "image": f"p{prompt}_i{image}"}
            rows += [
                {"condition": "para-concat", **pair, "both_shown": shown},
                {"condition": "lora-together", **pair, "both_shown": 0.0},
            ]
    (tmp_path / "multi_subject" / "a+b").mkdir(parents=True)
    pd.DataFrame(rows).to_csv(tmp_path / "multi_subject" / "a+b" / "per_image.csv", index=False)
    (row,) = claims.multi_subject_claims(tmp_path / "multi_subject")
    assert "para-concat 0.750 vs lora-together 0.000 (+0.750)" in row["world's figure"]
    assert "(20 paired images)" in row["95 % interval"] and row["verdict"] == "**holds**"
    table = claims.claims(tmp_path / "none", tmp_path / "none", tmp_path)
    not_measured = (table["verdict"] == "not measured in the world yet").sum()
    assert not_measured == 5  # PaRa + LoRA (2 rows), the rank trade-off, the two edit rows


@pytest.mark.parametrize("name", sorted(__import__("mutations").MUTATIONS))
def test_every_planted_bug_can_be_planted(name):
    """Each planted bug of tests/mutations.py still finds what it patches (a refactor that moves the seam must
    move the bug with it: `make mutation-check` once errored on all 605 tests when one did not)."""
    from mutations import MUTATIONS

    with MUTATIONS[name]():
        pass
