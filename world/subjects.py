"""The world's subjects as the harness sees DreamBooth's: a folder of photos each, and a `conf/subject/` file.

Each subject's config sets its class word, its kind (object: rigid; live: changes pose), the folder its photos are
in (`data.root`), no mirroring (the patterns are not symmetric), and its evaluation prompts: the world's
DreamBench — new backgrounds and places for the subject, a second object beside it, and ordinary class prompts
without the identifier, whose images show whether the subject leaks into the class word.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from world.render import BACKGROUNDS, COLOURS, POSITION_PHRASE, SHAPES, SUBJECTS, render, subject_photo_scenes

NEW_BACKGROUNDS = ("black", "purple")  # the photos show white and gray only


def write_photos(folder: Path, n: int, seed: int) -> None:
    """`<folder>/<subject>/00.png ...`: the DreamBooth dataset's layout, read by the harness's photo loader."""
    for name in SUBJECTS:
        target = folder / name
        target.mkdir(parents=True, exist_ok=True)
        for i, scene in enumerate(subject_photo_scenes(name, n, seed)):
            Image.fromarray(render(scene)).save(target / f"{i:02d}.png")


def evaluation_templates(name: str) -> list[str]:
    """Prompt templates ({token}, {cls}) of a subject, in the order the harness samples them."""
    subject = SUBJECTS[name]
    other = [s for s in SHAPES if s != subject.class_word]
    colours = list(COLOURS)
    base = "a photo of {token} {cls}"
    prompts = [base]
    prompts += [f"{base} on a {bg} background" for bg in BACKGROUNDS]
    prompts += [f"{base} {phrase}" for phrase in POSITION_PHRASE.values()]
    prompts += [
        f"{base} {phrase} on a {bg} background" for bg in NEW_BACKGROUNDS for phrase in POSITION_PHRASE.values()
    ]
    k = sorted(SUBJECTS).index(name)
    prompts += [
        f"{base} on the left and a {colours[k % 4]} {other[0]} on the right on a white background",
        f"a photo of a {colours[(k + 1) % 4]} {other[1]} on the left and {{token}} {{cls}} on the right "
        "on a black background",
    ]
    leak = [f"a photo of a {{cls}} on a {bg} background" for bg in BACKGROUNDS]  # no identifier
    # one leak prompt after every four of the subject's, so that `sample.num_prompts=5` (or 10) measures both
    return [p for i in range(0, len(prompts), 4) for p in (*prompts[i : i + 4], *leak[i // 4 : i // 4 + 1])]
