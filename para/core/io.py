"""Atomic file writes: a kill mid-write must never leave a truncated file that a later step trusts.

Everything is written to a temporary file in the same folder, flushed to disk, then renamed over the target
(rename is atomic on POSIX within one file system).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import Tensor


class DiskFull(RuntimeError):
    """A write failed for want of space (ENOSPC, EDQUOT); the message names the folder and the ways out."""


def is_disk_full(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full_message(folder: Path, err: OSError, way_on: str) -> str:
    """What ran out, how much is free now (after our partial files went), and the ways out."""
    try:
        free = f"{shutil.disk_usage(folder).free / 2**30:.2f} GiB free there now"
    except OSError:
        free = "free space unknown"
    where = f" writing {err.filename}" if err.filename else ""
    return (
        f"the disk of {folder} is full ({err.strerror or err}{where}; {free}). No partial file was left. Free "
        f"some space, then {way_on}"
    )


def _atomic_write(path: Path, write: Callable[[str], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return _atomic_write(path, write)


def atomic_write_bytes(path: Path, write: Callable[[Any], None]) -> Path:
    """`write(f)` into a binary file object, then renamed over `path` (e.g. `image.save(f, format="PNG")`)."""

    def write_file(tmp: str) -> None:
        with open(tmp, "wb") as f:
            write(f)

    return _atomic_write(path, write_file)


def atomic_write_json(path: Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_results(out: Path | str, stem: str, records: list[dict], markdown: str) -> None:
    """`<out>/<stem>.json` (the records) and `<out>/<stem>.md` (their table), both atomic; prints the table."""
    out = Path(out)
    atomic_write_json(out / f"{stem}.json", records)
    atomic_write_text(out / f"{stem}.md", markdown)
    print(markdown)
    print(f"wrote {out / f'{stem}.json'} and {out / f'{stem}.md'}")


def atomic_save_safetensors(tensors: dict[str, Tensor], path: Path, metadata: dict[str, str] | None = None) -> Path:
    return _atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
