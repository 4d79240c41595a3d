"""`eval.backbones=world`: the world's scoring protocol, registered under the entry-point group `para.scorers`.

Reads a run folder's samples with the world's evaluator (world.evaluator) and scores what the harness's
DreamBench protocol scores, with exact readers instead of CLIP and DINO:

- subject_identity: probability that the subject is in the image (max over slots of present x identity), over
  the images of prompts that name the identifier;
- subject_similarity: cosine of the evaluator's embedding of each image to each of the subject's photos (the
  DINO-like column), same images;
- prompt_fidelity: the share of the prompt's attributes the image shows (background, the subject's slot, a
  second object's shape, colour and slot), same images;
- leak: the share of images of ordinary class prompts (no identifier) that show the subject (language drift).

The prompts are parsed with the world's grammar (world.render.caption): the harness only passes the texts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from eval.protocols import Protocol
from para.core.data import load_rgb, subject_photos
from world.evaluator import BACKGROUND_NAMES, COLOUR_NAMES, SUBJECT_NAMES, Evaluator
from world.gate import read_attributes
from world.render import BACKGROUNDS, COLOURS, POSITION_PHRASE, POSITIONS, SHAPES, SIZE

ASSETS = Path(__file__).resolve().parent / "assets"
EVALUATOR_FILE = ASSETS / "evaluator.safetensors"
SCORE_KEYS = ("subject_identity", "subject_similarity", "prompt_fidelity", "leak")
BANNER = (
    "WORLD: numbers from the project's synthetic world (model=world, eval.backbones=world): exact evaluators, real "
    "signal — but neither SDXL's nor the paper's numbers"
)
PRESENT_AT = 0.5  # an image shows the subject when its identity probability passes this


@dataclass
class ThingSpec:
    subject: bool  # named with the identifier
    shape: str | None
    colour: str | None
    position: str | None


def parse_prompt(prompt: str, token: str | Sequence[str]) -> tuple[str | None, list[ThingSpec]]:
    """(background, things) named by a world prompt, e.g. "a photo of sks circle on the left and a red square on
    the right on a black background"; a thing is a subject when it names `token` (or one of several)."""
    tokens = {token} if isinstance(token, str) else set(token)
    text = prompt.lower().strip()
    background = None
    match = re.search(r" on an? (\w+) background$", text)
    if match and match.group(1) in BACKGROUNDS:
        background = match.group(1)
        text = text[: match.start()]
    text = re.sub(r"^a photo of ", "", text)
    things = []
    for part in text.split(" and "):
        position = next((p for p, phrase in POSITION_PHRASE.items() if part.endswith(" " + phrase)), None)
        words = part.split()
        things.append(
            ThingSpec(
                subject=bool(tokens & set(words)),
                shape=next((w for w in words if w in SHAPES), None),
                colour=next((w for w in words if w in COLOURS), None),
                position=position,
            )
        )
    return background, things


def load_evaluator(path: Path = EVALUATOR_FILE) -> Evaluator:
    return _load_evaluator(str(path))


@lru_cache(maxsize=2)
def _load_evaluator(path: str) -> Evaluator:
    model = Evaluator()
    model.load_state_dict(load_file(path))
    return model.eval().requires_grad_(False)


def to_input(images: list) -> torch.Tensor:
    """PIL images → (N, 3, SIZE, SIZE) in [-1, 1], resized to the evaluator's input size."""
    arrays = [np.asarray(im.convert("RGB").resize((SIZE, SIZE))) for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def identity_probability(read: dict[str, torch.Tensor], subject: str) -> torch.Tensor:
    """(N,) probability that the image shows `subject` somewhere: max over slots of P(present) P(it is the subject)."""
    return identity_per_slot(read, subject).max(dim=-1).values


def identity_per_slot(read: dict[str, torch.Tensor], subject: str) -> torch.Tensor:
    """(N, slots): P(something is in the slot) P(it is `subject`)."""
    return read["present"] * read["identity"][..., 1 + SUBJECT_NAMES.index(subject)]


def fidelity_hits(
    read: dict[str, torch.Tensor], i: int, background: str | None, things: list[ThingSpec]
) -> list[bool]:
    """One bool per attribute the prompt names: whether image i shows it."""
    hits = []
    if background is not None:
        hits.append(int(read["background"][i]) == BACKGROUND_NAMES.index(background))
    present = read["present"][i]
    for thing in things:
        slot = POSITIONS.index(thing.position) if thing.position else int(present.argmax())
        if thing.position is not None:
            hits.append(bool(present[slot] > 0.5) if len(things) > 1 else int(present.argmax()) == slot)
        if thing.shape is not None and not thing.subject:
            hits.append(int(read["shape"][i, slot]) == SHAPES.index(thing.shape))
        if thing.colour is not None:
            hits.append(int(read["colour"][i, slot]) == COLOUR_NAMES.index(thing.colour))
    return hits


def score_world_run(run_dir: Path, run_info: dict, entries: list[dict], opts: Any, cache_dir: Any) -> dict[str, Any]:
    subject = run_info["subject"]["name"]
    if subject not in SUBJECT_NAMES:
        raise ValueError(
            f"eval.backbones=world reads the world's subjects {SUBJECT_NAMES}, not {subject!r}; score DreamBooth "
            "subjects with eval.backbones=pretrained"
        )
    token = run_info["data"]["token"]
    evaluator = load_evaluator()
    photos = [load_rgb(p) for p in subject_photos(run_info["data"]["root"], subject)]
    reference = read_attributes(evaluator, to_input(photos))["embedding"]  # (R, D)
    per_prompt, identity, similarity, fidelity, leak = [], [], [], [], []
    for entry in entries:
        read = read_attributes(evaluator, to_input([load_rgb(p) for p in entry["paths"]]))
        background, things = parse_prompt(entry["prompt"], token)
        names_subject = any(t.subject for t in things)
        p_id = identity_probability(read, subject)
        row = {"prompt_index": entry["prompt_index"], "prompt": entry["prompt"], "n_images": len(entry["paths"])}
        if names_subject:
            hits = [fidelity_hits(read, i, background, things) for i in range(len(entry["paths"]))]
            shares = [float(np.mean(h)) if h else None for h in hits]
            cos = (read["embedding"] @ reference.T).mean(dim=1)
            row.update(
                subject_identity=float(p_id.mean()),
                subject_similarity=float(cos.mean()),
                prompt_fidelity=None if None in shares else float(np.mean(shares)),
            )
            identity += p_id.tolist()
            similarity += cos.tolist()
            fidelity += [s for s in shares if s is not None]
        else:
            row.update(leak=float((p_id > PRESENT_AT).float().mean()))
            leak += (p_id > PRESENT_AT).float().tolist()
        per_prompt.append(row)
    if not identity:
        raise ValueError(f"{run_dir}: no sample prompt names the identifier {token!r}: nothing to score")

    def mean(values: list[float]) -> float | None:
        return float(np.mean(values)) if values else None

    return {
        "subject_identity": mean(identity),
        "subject_similarity": mean(similarity),
        "prompt_fidelity": mean(fidelity),
        "leak": mean(leak),
        "n_prompts": len(entries),
        "n_images": sum(r["n_images"] for r in per_prompt),
        "n_real": len(photos),
        "backbones": {"world_evaluator": str(EVALUATOR_FILE.relative_to(ASSETS.parent.parent))},
        # the evaluator is trained, exact in its world; the flag says the numbers carry real signal there
        "backbones_pretrained": {"world_evaluator": True},
        "backbones_pretrained_all": True,
        "note": BANNER,
        "per_prompt": per_prompt,
    }


def real_reference(data_root: str, subject: str, opts: Any, cache_dir: Any) -> dict[str, float]:
    """The subject's photos scored as if generated: identity of each, leave-one-out similarity among them."""
    evaluator = load_evaluator()
    read = read_attributes(evaluator, to_input([load_rgb(p) for p in subject_photos(data_root, subject)]))
    emb = read["embedding"]
    cos = emb @ emb.T
    off = ~torch.eye(len(emb), dtype=torch.bool)
    return {
        "subject_identity": float(identity_probability(read, subject).mean()),
        "subject_similarity": float(cos[off].mean()),
    }


class WorldImageScorer:
    """Per-image world scores for the paper's other experiments (eval.protocols.Protocol.image_scorer): for each
    subject asked about, `identity_<s>` (probability the image shows it) and `similarity_<s>` (cosine to its
    photos); with several subjects `identity_min` and `both_shown` (every subject present, each in a slot of its
    own: two subjects, not one hybrid read twice); and `prompt_fidelity`, the share of the prompt's attributes
    the image shows (the subjects' positions, the background, other objects' shape and colour)."""

    pretrained = True  # the evaluator is trained: exact in its world (the banner says whose numbers they are)

    def __init__(self, opts: Any, data_root: str | Path):
        self.evaluator = load_evaluator()
        self.data_root = data_root
        self._references: dict[str, torch.Tensor] = {}

    def reference(self, subject: str) -> torch.Tensor:
        if subject not in SUBJECT_NAMES:
            raise ValueError(
                f"eval.backbones=world reads the world's subjects {SUBJECT_NAMES}, not {subject!r}; score "
                "DreamBooth subjects with eval.backbones=pretrained"
            )
        if subject not in self._references:
            photos = [load_rgb(p) for p in subject_photos(self.data_root, subject)]
            self._references[subject] = read_attributes(self.evaluator, to_input(photos))["embedding"]
        return self._references[subject]

    def score_images(
        self,
        images: Sequence[Any],
        prompts: Sequence[str],
        clean_prompts: Sequence[str],
        subjects: Sequence[str],
        tokens: Sequence[str] = (),
    ) -> Any:
        import pandas as pd

        read = read_attributes(self.evaluator, to_input(list(images)))
        cols: dict[str, Any] = {}
        slots = []
        for subject in subjects:
            reference = self.reference(subject)  # refuses a subject of another world first
            per_slot = identity_per_slot(read, subject)
            cols[f"identity_{subject}"] = per_slot.max(dim=-1).values.tolist()
            cols[f"similarity_{subject}"] = (read["embedding"] @ reference.T).mean(dim=1).tolist()
            slots.append(per_slot)
        if len(subjects) > 1:
            cols["identity_min"] = [min(v) for v in zip(*(cols[f"identity_{s}"] for s in subjects), strict=True)]
            cols["both_shown"] = [float(_all_in_own_slots([p[i] for p in slots])) for i in range(len(images))]
        fidelity = []
        for i, prompt in enumerate(prompts):
            background, things = parse_prompt(prompt, list(tokens))
            hits = fidelity_hits(read, i, background, things)
            fidelity.append(float(np.mean(hits)) if hits else float("nan"))
        cols["prompt_fidelity"] = fidelity
        return pd.DataFrame(cols)


def _all_in_own_slots(per_slot: list[torch.Tensor]) -> bool:
    """Whether every subject is present (probability > PRESENT_AT) in a slot no other subject takes."""
    best = [int(p.argmax()) for p in per_slot]
    return all(float(p.max()) > PRESENT_AT for p in per_slot) and len(set(best)) == len(best)


def missing(opts: Any) -> list[str]:
    if EVALUATOR_FILE.is_file():
        return []
    return [f"the world's evaluator {EVALUATOR_FILE} is missing: build the world with `make world`"]


def build_info() -> dict[str, Any]:
    path = ASSETS / "build.json"
    return json.loads(path.read_text()) if path.is_file() else {}


PROTOCOL = Protocol(
    name="world",
    score_keys=SCORE_KEYS,
    labels={
        "subject_identity": "subject identity",
        "subject_similarity": "subject similarity",
        "prompt_fidelity": "prompt fidelity",
        "leak": "leak",
    },
    fidelity="subject_identity",
    alignment="prompt_fidelity",
    reference_keys=("subject_identity", "subject_similarity"),
    score_run=score_world_run,
    missing=missing,
    banner=BANNER,
    lower_is_better=frozenset({"leak"}),
    real_reference=real_reference,
    image_scorer=WorldImageScorer,
)
