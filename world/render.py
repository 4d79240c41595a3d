"""The world's renderer: captioned scenes of flat shapes, and the subjects that pretraining never shows.

A scene is a background colour and one or two objects, each in one of three horizontal slots (left, center, right).
An ordinary object has a shape and one of four colours; a *subject* is a specific, never-seen object of a known
shape class (its "class word", as "dog" is the class of DreamBooth's dog) with colours and a pattern of its own.
Rigid subjects look the same in every photo; posed subjects (the world's "live" subjects) change pose (rotation,
articulation, squash) from photo to photo. Every image is a pure function of its scene, and every scene a pure
function of a seed, so renders, captions and labels are reproducible.

Rendering is numpy on a 4x supersampled grid, box-filtered down: about a millisecond per 32 px image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

SIZE = 32  # pixels per side of every render
SUPERSAMPLE = 4

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (235, 210, 40)}
BACKGROUNDS = {"white": (245, 245, 245), "gray": (128, 128, 128), "black": (15, 15, 15), "purple": (110, 40, 150)}
POSITIONS = ("left", "center", "right")
SLOT_X = {"left": 0.22, "center": 0.5, "right": 0.78}  # object centres, as a fraction of the width
POSITION_PHRASE = {"left": "on the left", "center": "in the center", "right": "on the right"}
RADIUS = 0.22  # object half-size, as a fraction of the width

# Colours that only subjects wear: pretraining never shows them, so the base model cannot draw a subject by chance.
SUBJECT_COLOURS = {
    "orange": (245, 140, 20),
    "cyan": (40, 220, 230),
    "pink": (250, 150, 200),
    "teal": (0, 120, 120),
    "magenta": (210, 30, 160),
    "brown": (120, 70, 30),
    "lime": (170, 240, 60),
    "navy": (20, 30, 90),
}


@dataclass(frozen=True)
class Subject:
    """A never-seen object: a shape class and a pattern (a function of the object's own coordinates)."""

    name: str
    class_word: str  # one of SHAPES: the outline, and the word DreamBooth prompts pair with the identifier
    kind: str  # object (rigid: one pose) | live (changes pose from photo to photo)
    colours: tuple[str, ...]  # SUBJECT_COLOURS names, in the order the pattern uses them
    pattern: str  # how the colours are laid out (see _pattern)
    description: str


SUBJECTS = {
    s.name: s
    for s in (
        Subject("sun_disc", "circle", "object", ("orange", "cyan"), "centre_dot", "an orange disc with a cyan centre"),
        Subject(
            "split_tile", "square", "object", ("lime", "navy"), "diagonal", "a square split lime/navy on its diagonal"
        ),
        Subject(
            "stripe_flag", "triangle", "object", ("pink", "brown"), "stripes", "a triangle of pink and brown stripes"
        ),
        Subject("dot_ring", "circle", "live", ("magenta", "lime"), "ring_dot", "a magenta ring whose lime bead moves"),
        Subject(
            "check_box", "square", "live", ("teal", "orange"), "checker", "a teal/orange checked square that turns"
        ),
        Subject("eye_tri", "triangle", "live", ("cyan", "brown"), "eye", "a cyan triangle with a brown eye, turning"),
    )
}


@dataclass(frozen=True)
class Thing:
    """One object in a scene. `colour` is a COLOURS name for ordinary objects; subjects carry their own."""

    shape: str
    position: str
    colour: str | None = None
    subject: str | None = None
    dx: float = 0.0  # jitter of the centre, fraction of the width
    dy: float = 0.0
    scale: float = 1.0
    angle: float = 0.0  # radians
    pose: float = 0.0  # articulation of live subjects, in [0, 1)
    squash: float = 1.0  # aspect ratio of live subjects
    # hard negatives (evaluator training only): a subject with one property broken
    variant: str | None = None


@dataclass(frozen=True)
class Scene:
    background: str
    things: tuple[Thing, ...] = field(default_factory=tuple)


# ------------------------------------------------------------------------------------------------ drawing


def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(n) + 0.5) / n
    return np.meshgrid(c, c)  # x (columns), y (rows), in [0, 1]


_X, _Y = _grid(SIZE * SUPERSAMPLE)


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Mask of a unit shape in its own coordinates (u right, v down; about [-1, 1])."""
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.95  # corners well outside the circle: 34 % further out
    if shape == "triangle":  # equilateral, pointing up, centroid at the origin, circumradius 1.35
        return (v <= 0.675) & (v >= -1.35 + 1.732 * np.abs(u))
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _pattern(subject: Subject, u: np.ndarray, v: np.ndarray, pose: float, variant: str | None) -> np.ndarray:
    """Index into the subject's colours (0, 1) for each point, or 2 for "not painted" (the background shows)."""
    a, b = 0, 1
    if variant == "one_colour":  # the outline and the first colour only: the pattern is missing
        return np.zeros(u.shape, dtype=np.int8)
    if subject.pattern == "centre_dot":
        return np.where(u * u + v * v <= 0.42**2, b, a).astype(np.int8)
    if subject.pattern == "diagonal":
        return np.where(u + v < 0, a, b).astype(np.int8)
    if subject.pattern == "stripes":
        return np.where(np.floor((v + 2.0) / 0.7).astype(int) % 2 == 0, a, b).astype(np.int8)
    if subject.pattern == "checker":
        return np.where((u < 0) ^ (v < 0), a, b).astype(np.int8)
    if subject.pattern == "ring_dot":
        r2 = u * u + v * v
        theta = 2 * math.pi * pose
        bead = (u - 0.72 * math.cos(theta)) ** 2 + (v - 0.72 * math.sin(theta)) ** 2 <= 0.4**2
        out = np.where(r2 <= 0.45**2, 2, a).astype(np.int8)  # the hole shows the background
        return np.where(bead, b, out).astype(np.int8)
    if subject.pattern == "eye":
        return np.where(u * u + (v + 0.1) ** 2 <= 0.45**2, b, a).astype(np.int8)
    raise ValueError(f"unknown pattern {subject.pattern!r}")


def _paint(canvas: np.ndarray, thing: Thing) -> None:
    cx, cy = SLOT_X[thing.position] + thing.dx, 0.5 + thing.dy
    r = RADIUS * thing.scale
    cos, sin = math.cos(thing.angle), math.sin(thing.angle)
    px, py = (_X - cx) / r, (_Y - cy) / r
    u, v = cos * px + sin * py, -sin * px + cos * py
    u = u / thing.squash
    v = v * thing.squash
    shape = thing.shape
    if thing.subject is None:
        mask = _inside(shape, u, v)
        canvas[mask] = COLOURS.get(thing.colour) or SUBJECT_COLOURS[thing.colour]  # odd colours: hard negatives
        return
    subject = SUBJECTS[thing.subject]
    if thing.variant == "wrong_shape":  # the subject's colours on another outline
        shape = thing.shape
    mask = _inside(shape, u, v)
    index = _pattern(subject, u, v, thing.pose, thing.variant)
    colours = [SUBJECT_COLOURS[c] for c in subject.colours]
    if thing.variant == "wrong_colours":
        colours = [COLOURS[thing.colour], SUBJECT_COLOURS[_other_colour(subject)]]
    if thing.variant == "swapped":
        colours = colours[::-1]
    for k, colour in enumerate(colours):
        canvas[mask & (index == k)] = colour


def _other_colour(subject: Subject) -> str:
    return next(c for c in SUBJECT_COLOURS if c not in subject.colours)


def render(scene: Scene) -> np.ndarray:
    """(SIZE, SIZE, 3) uint8 image of a scene."""
    n = SIZE * SUPERSAMPLE
    canvas = np.empty((n, n, 3), dtype=np.float32)
    canvas[:] = BACKGROUNDS[scene.background]
    for thing in scene.things:
        _paint(canvas, thing)
    small = canvas.reshape(SIZE, SUPERSAMPLE, SIZE, SUPERSAMPLE, 3).mean(axis=(1, 3))
    return np.clip(np.rint(small), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------ captions


def describe(thing: Thing, token: str | None = None, drop: frozenset[str] = frozenset()) -> str:
    """ "red circle", "sks circle"; `drop` leaves attributes out (colour, position)."""
    if thing.subject is not None:
        words = [token, thing.shape] if token else [thing.shape]
    else:
        words = [thing.shape] if "colour" in drop else [thing.colour, thing.shape]
    return " ".join(words)


def caption(scene: Scene, drop: frozenset[str] = frozenset(), token: str | None = None) -> str:
    """The scene's caption; `drop` ⊆ {colour, position, background} leaves those words out."""
    parts = []
    for thing in scene.things:
        phrase = "a " + describe(thing, token, drop) if thing.subject is None or not token else describe(thing, token)
        if "position" not in drop:
            phrase += " " + POSITION_PHRASE[thing.position]
        parts.append(phrase)
    text = "a photo of " + " and ".join(parts)
    if "background" not in drop:
        text += f" on a {scene.background} background"
    return text


# ------------------------------------------------------------------------------------------------ sampling


def jitter(rng: np.random.Generator, thing: Thing, live: bool = False) -> Thing:
    """Small changes of place, size and angle every render gets; live subjects also change pose."""
    angle = rng.uniform(-0.18, 0.18)
    pose, squash = 0.0, 1.0
    if live:
        angle = rng.uniform(-math.pi, math.pi)
        pose = rng.uniform(0, 1)
        squash = rng.uniform(0.8, 1.2)
    return replace(
        thing,
        dx=rng.uniform(-0.035, 0.035),
        dy=rng.uniform(-0.08, 0.08),
        scale=rng.uniform(0.88, 1.12),
        angle=angle,
        pose=pose,
        squash=squash,
    )


def random_scene(rng: np.random.Generator, two_p: float = 0.25) -> Scene:
    """An ordinary pretraining scene: one object (or two, with probability two_p, at left and right)."""
    background = str(rng.choice(list(BACKGROUNDS)))
    if rng.random() < two_p:
        positions = ["left", "right"]
    else:
        positions = [str(rng.choice(POSITIONS))]
    return Scene(background, tuple(ordinary_thing(rng, p) for p in positions))


def ordinary_thing(rng: np.random.Generator, position: str) -> Thing:
    """A shape in one of the four colours captions name, jittered."""
    return jitter(rng, Thing(shape=str(rng.choice(SHAPES)), position=position, colour=str(rng.choice(list(COLOURS)))))


def subject_thing(rng: np.random.Generator, name: str, position: str, variant: str | None = None) -> Thing:
    subject = SUBJECTS[name]
    shape = subject.class_word
    colour = None
    if variant == "wrong_shape":
        shape = str(rng.choice([s for s in SHAPES if s != subject.class_word]))
    if variant == "wrong_colours":
        colour = str(rng.choice(list(COLOURS)))
    thing = Thing(shape=shape, position=position, colour=colour, subject=name, variant=variant)
    return jitter(rng, thing, live=subject.kind == "live")


def subject_photo_scenes(name: str, n: int = 5, seed: int = 0) -> list[Scene]:
    """The subject's "photos": at random slots, on white or gray only (black and purple stay new contexts)."""
    rng = np.random.default_rng([seed, sorted(SUBJECTS).index(name)])
    slots = list(rng.permutation(POSITIONS * 2))[:n]
    return [Scene(str(rng.choice(["white", "gray"])), (subject_thing(rng, name, str(p)),)) for p in slots]
