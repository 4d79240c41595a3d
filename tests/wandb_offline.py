"""Read what an offline W&B run recorded, so tests check the logged items themselves, not only "no crash".

wandb 0.30 keeps an offline run in `<dir>/wandb/offline-run-*/run-<id>.wandb`: a 7-byte header (`:W&B`, magic
0xBEE1, version 0), then 32 KiB blocks of records, each with a 7-byte header (CRC-32 of type byte + payload,
length, type: 1 full, 2 first, 3 middle, 4 last) and a payload that is a serialized `wandb.proto` `Record`.
The media (images, table JSON) sit next to it under `files/`. The Python `DataStore` reader that older wandb
versions shipped is gone in 0.30, hence this small reader.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BLOCK = 32768
HEADER = struct.Struct("<4sHB")  # ident, magic, version
RECORD = struct.Struct("<IHB")  # crc32, length, type
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> Iterator[Any]:
    """The `wandb_internal_pb2.Record`s of a `.wandb` file, in order; raises on a corrupt file."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    ident, magic, version = HEADER.unpack_from(data)
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), f"{path}: not a W&B run file"
    pos, payload = HEADER.size, b""
    while pos + RECORD.size <= len(data):
        if BLOCK - pos % BLOCK < RECORD.size:  # the rest of a block too small for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        crc, length, kind = RECORD.unpack_from(data, pos)
        chunk = data[pos + RECORD.size : pos + RECORD.size + length]
        pos += RECORD.size + length
        if kind == 0 and length == 0:  # zero padding at the end of the file
            continue
        assert zlib.crc32(bytes([kind]) + chunk) == crc, f"{path}: bad checksum at byte {pos}"
        payload = chunk if kind in (FULL, FIRST) else payload + chunk
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(payload)
            yield record


def _set(target: dict, item: Any) -> None:
    """Apply one `key`/`nested_key` + `value_json` item to a nested dict."""
    keys = list(item.nested_key) or [item.key]
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    target[keys[-1]] = json.loads(item.value_json)


@dataclass
class OfflineRun:
    """Everything a test needs from one offline run folder (`<run_dir>/wandb/offline-run-*`)."""

    folder: Path
    run_id: str = ""
    name: str = ""
    group: str = ""
    started: float = 0.0  # the run's start time (seconds since the epoch)
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    exit_code: int | None = None  # None: the run was never finished

    def media(self, pattern: str) -> list[Path]:
        return sorted((self.folder / "files" / "media").glob(pattern))

    def history_of(self, key: str) -> list[tuple[int, Any]]:
        return [(row["_step"], row[key]) for row in self.history if key in row]


def read_offline_run(run_dir: Path, timeout: float = 30.0) -> OfflineRun:
    """The single offline W&B run under `run_dir/wandb/` (fails if there is none or several)."""
    runs = read_offline_runs(run_dir, timeout)
    assert len(runs) == 1, f"expected one offline W&B run under {run_dir}, found {[r.folder for r in runs]}"
    return runs[0]


def read_offline_runs(run_dir: Path, timeout: float = 30.0) -> list[OfflineRun]:
    """Every offline W&B run under `run_dir/wandb/`, oldest first (a resumed run folder holds several).

    `run.finish()` returns before wandb-core has flushed the run file (checked with wandb 0.30: the file holds
    only its header for ~0.1 s), so each run is re-read until its exit record is there or `timeout` passes.
    """
    folders = Path(run_dir).glob("wandb/offline-run-*")
    return sorted((_read_finished(folder, timeout) for folder in folders), key=lambda r: r.started)


def _read_finished(folder: Path, timeout: float) -> OfflineRun:
    deadline = time.monotonic() + timeout
    while (run := _read(folder)).exit_code is None and time.monotonic() < deadline:
        time.sleep(0.1)
    return run


def _read(folder: Path) -> OfflineRun:
    (file,) = folder.glob("run-*.wandb")
    run = OfflineRun(folder)
    for record in records(file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.run_id, run.name, run.group, run.tags = r.run_id, r.display_name, r.run_group, list(r.tags)
            run.started = r.start_time.seconds + r.start_time.nanos / 1e9
            for item in r.config.update:
                _set(run.config, item)
        elif kind == "config":
            for item in record.config.update:
                _set(run.config, item)
        elif kind == "summary":
            for item in record.summary.update:
                _set(run.summary, item)
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                _set(row, item)
            run.history.append(row)
        elif kind == "artifact":
            a = record.artifact
            run.artifacts.append({
                "name": a.name, "type": a.type, "metadata": json.loads(a.metadata or "{}"),
                "files": {c.path: {"size": c.size, "digest": c.digest, "ref": c.ref} for c in a.manifest.contents},
            })  # fmt: skip
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    return run
