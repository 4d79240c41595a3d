"""What a case puts in its folder before the command runs (each returns a `Setup`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

DATA_ROOT = (Path(__file__).resolve().parents[2].parent / "shared" / "dreambooth" / "dataset").resolve()


def file_at(rel: str, data: bytes | str = b"") -> callable:
    def setup(tmp: Path) -> None:
        path = tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)

    return setup


def folder_at(rel: str) -> callable:
    return lambda tmp: (tmp / rel).mkdir(parents=True, exist_ok=True)


def link_at(rel: str, target: str) -> callable:
    def setup(tmp: Path) -> None:
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).symlink_to(target)

    return setup


def truncated(rel: str, keep: float = 0.5) -> callable:
    def setup(tmp: Path) -> None:
        data = (tmp / rel).read_bytes()
        (tmp / rel).write_bytes(data[: int(len(data) * keep)])

    return setup


def removed(rel: str) -> callable:
    def setup(tmp: Path) -> None:
        path = tmp / rel
        shutil.rmtree(path) if path.is_dir() else path.unlink()

    return setup


def dog_photos(rel: str = "data/dog", count: int = 2) -> callable:
    """A subject folder `rel` with the first `count` real photos of the dog."""

    def setup(tmp: Path) -> None:
        (tmp / rel).mkdir(parents=True, exist_ok=True)
        for photo in sorted((DATA_ROOT / "dog").iterdir())[:count]:
            shutil.copy(photo, tmp / rel / photo.name)

    return setup


def json_at(rel: str, value) -> callable:
    return file_at(rel, json.dumps(value))


def all_of(*setups) -> callable:
    def setup(tmp: Path) -> None:
        for one in setups:
            one(tmp)

    return setup
