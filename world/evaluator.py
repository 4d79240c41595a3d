"""The world's exact evaluator: a small CNN trained on the renderer's own labels, reading back every attribute.

Heads: the background; for each of the three slots (left, center, right) whether an object is there, its shape,
its colour (one of the four, or "other" for anything else) and which subject it is (or none). Trained with hard
negatives — each subject with its outline, colours or pattern broken, and objects in colours no caption names —
so that "anything orange" never passes as the orange disc (WORLD.md), and with noise, blur, colour jitter,
shifts and VAE round trips so that it reads generated images as it reads renders.

Its penultimate features (normalised) are the world's subject-similarity embedding (the DINO-like column).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from world.render import (
    BACKGROUNDS,
    COLOURS,
    POSITIONS,
    SHAPES,
    SUBJECT_COLOURS,
    SUBJECTS,
    Scene,
    Thing,
    jitter,
    ordinary_thing,
    random_scene,
    render,
    subject_thing,
)

SUBJECT_NAMES = sorted(SUBJECTS)
COLOUR_NAMES = [*COLOURS, "other"]
BACKGROUND_NAMES = list(BACKGROUNDS)
VARIANTS = ("wrong_shape", "wrong_colours", "one_colour", "swapped")
IGNORE = -100  # cross-entropy's ignore index: the attribute of an empty slot


class Evaluator(nn.Module):
    """(N, 3, 32, 32) images in [-1, 1] → logits of every head and a (N, D) embedding."""

    def __init__(self, width: int = 16, hidden: int = 192):
        super().__init__()
        w = width

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU())

        self.trunk = nn.Sequential(
            block(3, w, 1), block(w, 2 * w, 2), block(2 * w, 2 * w, 1), block(2 * w, 4 * w, 2), block(4 * w, 4 * w, 1)
        )
        self.project = nn.Sequential(nn.Flatten(), nn.Linear(4 * w * 64, hidden), nn.SiLU())
        n = len(POSITIONS)
        self.background = nn.Linear(hidden, len(BACKGROUND_NAMES))
        self.present = nn.Linear(hidden, n * 2)
        self.shape = nn.Linear(hidden, n * len(SHAPES))
        self.colour = nn.Linear(hidden, n * len(COLOUR_NAMES))
        self.identity = nn.Linear(hidden, n * (1 + len(SUBJECT_NAMES)))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = self.project(self.trunk(x))  # (N, hidden)
        n = len(POSITIONS)
        return {
            "background": self.background(h),
            "present": self.present(h).view(-1, n, 2),
            "shape": self.shape(h).view(-1, n, len(SHAPES)),
            "colour": self.colour(h).view(-1, n, len(COLOUR_NAMES)),
            "identity": self.identity(h).view(-1, n, 1 + len(SUBJECT_NAMES)),
            "embedding": F.normalize(h, dim=-1),
        }


# ------------------------------------------------------------------------------------------------ labels


@dataclass
class Labels:
    background: int
    present: list[int]  # per slot
    shape: list[int]
    colour: list[int]
    identity: list[int]  # 0 = no subject, 1 + SUBJECT_NAMES index otherwise


def labels_of(scene: Scene) -> Labels:
    n = len(POSITIONS)
    labels = Labels(BACKGROUND_NAMES.index(scene.background), [0] * n, [IGNORE] * n, [IGNORE] * n, [IGNORE] * n)
    for thing in scene.things:
        k = POSITIONS.index(thing.position)
        labels.present[k] = 1
        labels.shape[k] = SHAPES.index(thing.shape)
        plain = thing.subject is None and thing.colour in COLOURS
        labels.colour[k] = COLOUR_NAMES.index(thing.colour if plain else "other")
        real_subject = thing.subject is not None and thing.variant is None
        labels.identity[k] = 1 + SUBJECT_NAMES.index(thing.subject) if real_subject else 0
    return labels


def odd_colour_thing(rng: np.random.Generator, position: str) -> Thing:
    """An ordinary shape in a subject's colour (e.g. an orange circle): a hard negative for identity and colour."""
    thing = Thing(shape=str(rng.choice(SHAPES)), position=position, colour=str(rng.choice(list(SUBJECT_COLOURS))))
    return jitter(rng, thing)


def training_scene(rng: np.random.Generator) -> Scene:
    """A mix of ordinary scenes, subjects anywhere on any background, alone or with another object, and hard
    negatives (broken subjects, odd colours)."""
    r = rng.random()
    if r < 0.35:
        return random_scene(rng, two_p=0.3)
    background = str(rng.choice(BACKGROUND_NAMES))
    two = rng.random() < 0.3
    positions = ["left", "right"] if two else [str(rng.choice(POSITIONS))]
    things = []
    for position in positions:
        kind = rng.random()
        name = str(rng.choice(SUBJECT_NAMES))
        if kind < 0.5:
            things.append(subject_thing(rng, name, position))
        elif kind < 0.8:
            things.append(subject_thing(rng, name, position, variant=str(rng.choice(VARIANTS))))
        elif kind < 0.9:
            things.append(odd_colour_thing(rng, position))
        else:
            things.append(ordinary_thing(rng, position))
    return Scene(background, tuple(things))


# --------------------------------------------------------------------------------------------- augmentation


def augment(x: Tensor, generator: torch.Generator) -> Tensor:
    """Noise, blur, colour jitter and a shift of up to 2 px: the ways generated images differ from renders."""
    n = x.shape[0]

    def u(lo: float, hi: float, *shape: int) -> Tensor:
        return lo + (hi - lo) * torch.rand(n, *shape, generator=generator)

    x = x * u(0.85, 1.1, 1, 1, 1) + u(-0.1, 0.1, 3, 1, 1)  # contrast, per-channel offset
    blur = torch.rand(n, generator=generator) < 0.5
    if blur.any():
        kernel = torch.tensor([0.25, 0.5, 0.25])
        k2 = (kernel[:, None] * kernel[None, :]).expand(3, 1, 3, 3)
        x = torch.where(blur[:, None, None, None], F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k2, groups=3), x)
    x = x + u(0.0, 0.12, 1, 1, 1) * torch.randn(x.shape, generator=generator)
    shifts = torch.randint(-2, 3, (2,), generator=generator).tolist()
    x = torch.roll(x, shifts=shifts, dims=(2, 3))
    return x.clamp(-1.2, 1.2)


def batch_of(rng: np.random.Generator, size: int) -> tuple[Tensor, dict[str, Tensor]]:
    scenes = [training_scene(rng) for _ in range(size)]
    x = torch.from_numpy(np.stack([render(s) for s in scenes])).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    labels = [labels_of(s) for s in scenes]
    target = {
        "background": torch.tensor([lab.background for lab in labels]),
        "present": torch.tensor([lab.present for lab in labels]),
        "shape": torch.tensor([lab.shape for lab in labels]),
        "colour": torch.tensor([lab.colour for lab in labels]),
        "identity": torch.tensor([lab.identity for lab in labels]),
    }
    return x, target


def loss_of(out: dict[str, Tensor], target: dict[str, Tensor]) -> Tensor:
    loss = F.cross_entropy(out["background"], target["background"])
    for head in ("present", "shape", "colour", "identity"):
        logits = out[head]
        loss = loss + F.cross_entropy(logits.flatten(0, 1), target[head].flatten(), ignore_index=IGNORE)
    return loss


def accuracy(out: dict[str, Tensor], target: dict[str, Tensor]) -> dict[str, float]:
    acc = {"background": (out["background"].argmax(-1) == target["background"]).float().mean().item()}
    for head in ("present", "shape", "colour", "identity"):
        mask = target[head] != IGNORE
        hit = out[head].argmax(-1) == target[head]
        acc[head] = hit[mask].float().mean().item()
    return acc


# ------------------------------------------------------------------------------------------------- training


def round_trip(vae, x: Tensor) -> Tensor:
    """x through the VAE and back (encoder mean), as every generated image has been."""
    with torch.no_grad():
        return vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)


def train_evaluator(
    steps: int, batch: int, seed: int, vae=None, lr: float = 2e-3, progress: bool = True
) -> tuple[Evaluator, list[float]]:
    """A fresh evaluator trained for `steps` on new renders each step (no render is seen twice)."""
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 2])
    generator = torch.Generator().manual_seed(seed)
    model = Evaluator()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    losses = []
    for _ in tqdm(range(steps), desc="world: evaluator", disable=not progress, dynamic_ncols=True):
        x, target = batch_of(rng, batch)
        if vae is not None:  # a quarter of every batch as the VAE gives it back
            k = batch // 4
            x = torch.cat([round_trip(vae, x[:k]), x[k:]])
        loss = loss_of(model(augment(x, generator)), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return model.eval().requires_grad_(False), losses


def held_out_accuracy(model: Evaluator, n: int, seed: int, vae=None) -> dict[str, float]:
    """Accuracy of every head on `n` new renders (another seed than training), augmented as in training."""
    rng = np.random.default_rng([seed, 3])
    generator = torch.Generator().manual_seed(seed + 1)
    outs, targets = [], []
    with torch.no_grad():
        for start in range(0, n, 256):
            x, target = batch_of(rng, min(256, n - start))
            if vae is not None:
                x = round_trip(vae, x)
            outs.append(model(augment(x, generator)))
            targets.append(target)
    out = {k: torch.cat([o[k] for o in outs]) for k in outs[0]}
    target = {k: torch.cat([t[k] for t in targets]) for k in targets[0]}
    return accuracy(out, target)
