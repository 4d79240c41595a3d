"""The world's subjects' `conf/subject/<subject>.yaml` files, written by `make world` beside the photos.

Apart from world.subjects (whose photos and prompts the build's digest covers): the wording of a config file does
not change what the build makes.
"""

from __future__ import annotations

from pathlib import Path

from world.render import SUBJECTS
from world.subjects import evaluation_templates


def subject_yaml(name: str, photos_root: str) -> str:
    subject = SUBJECTS[name]
    lines = [
        "# @package _global_",
        f"# World subject '{name}': {subject.description} (world/render.py). Written by `make world`; never",
        "# seen in the world model's pretraining. Photos and prompts: docs/world.md.",
        "defaults:",
        "  - /schema/subject@subject",
        "  - _self_",
        "",
        "subject:",
        f"  name: {name}",
        f"  class_word: {subject.class_word}",
        f"  kind: {subject.kind}",
        "  flip: false  # never mirrored: the patterns are not mirror-symmetric",
        "  prompts:",
        *[f'    - "{p}"' for p in evaluation_templates(name)],
        "data:",
        f"  root: {photos_root}  # the subject's photos: <root>/{name}/00.png ...",
        "",
    ]
    return "\n".join(lines)


def write_configs(conf_dir: Path, photos_root: str) -> list[Path]:
    written = []
    for name in sorted(SUBJECTS):
        path = conf_dir / f"{name}.yaml"
        path.write_text(subject_yaml(name, photos_root))
        written.append(path)
    return written
