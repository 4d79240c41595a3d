"""One writer per run folder, and shared caches that parallel writers cannot corrupt (issue 21)."""

from __future__ import annotations

import errno
import json
import logging
import multiprocessing
import os
import socket
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from para.core import lock as locking
from para.core.lock import LOCK_NAME, FolderBusy, FolderLock, Holder, read_holder

FORK = multiprocessing.get_context("fork")  # cheap children: torch is already imported here


def _hold(folder: str, ready, release) -> None:
    with FolderLock(folder):
        ready.set()
        release.wait(30)


@pytest.fixture
def held(tmp_path):
    """A child process holding `tmp_path/run` until the test sets the event it yields."""
    ready, release = FORK.Event(), FORK.Event()
    child = FORK.Process(target=_hold, args=(str(tmp_path / "run"), ready, release))
    child.start()
    assert ready.wait(30)
    yield tmp_path / "run", child, release
    release.set()
    child.join(30)


def test_a_held_folder_is_refused_naming_host_pid_and_the_ways_out(held):
    folder, child, _ = held
    with pytest.raises(FolderBusy) as info:
        FolderLock(folder, wait_s=0).acquire()
    message = str(info.value)
    assert f"PID {child.pid} on host {socket.gethostname()}" in message
    assert f"kill {child.pid}" in message and "lock_wait=" in message and "hydra.run.dir=" in message


def test_a_second_process_waits_for_the_holder_then_takes_the_folder(held, caplog):
    folder, child, release = held
    threading.Timer(0.5, release.set).start()
    with caplog.at_level(logging.WARNING), FolderLock(folder, wait_s=60, poll_s=0.05):
        child.join(30)
        assert read_holder(folder).pid == os.getpid()
    assert f"in use by PID {child.pid}" in caplog.text
    assert not (folder / LOCK_NAME).exists()  # released: the lock file goes with it


def test_a_lock_left_by_a_killed_process_is_taken_over_and_said_so(tmp_path, caplog):
    dead = FORK.Process(target=time.sleep, args=(0,))
    dead.start()
    dead.join()
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / LOCK_NAME).write_text(Holder(socket.gethostname(), dead.pid, time.time() - 60, "run.py").to_text())
    with caplog.at_level(logging.WARNING), FolderLock(folder):
        assert read_holder(folder).pid == os.getpid()
    assert f"taking over the lock left by PID {dead.pid}" in caplog.text and "process is gone" in caplog.text


def test_one_process_cannot_hold_a_folder_twice(tmp_path):
    with FolderLock(tmp_path / "run"), pytest.raises(FolderBusy, match="already held by this process"):
        FolderLock(tmp_path / "run").acquire()


def test_release_removes_the_folders_a_run_that_never_began_made(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    FolderLock(mine / "a" / "b").acquire().release(remove_created=True)
    assert mine.is_dir() and not (mine / "a").exists()


def test_without_file_locks_a_lease_decides(tmp_path, monkeypatch):
    """File systems without locks (some Lustre mounts): the lock file's heartbeat is a lease."""

    def no_locks(*_args):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(locking.fcntl, "lockf", no_locks)
    monkeypatch.setattr(locking.time, "sleep", lambda _s: None)
    folder = tmp_path / "run"
    folder.mkdir()
    other = Holder("node7", 4242, time.time(), "run.py")  # alive on another node: its heartbeat is fresh
    (folder / LOCK_NAME).write_text(other.to_text())
    with pytest.raises(FolderBusy, match="PID 4242 on host node7"):
        FolderLock(folder, wait_s=0).acquire()
    other.heartbeat = time.time() - locking.LEASE_S - 1  # that node died: its lease ran out
    (folder / LOCK_NAME).write_text(other.to_text())
    with FolderLock(folder) as taken:
        assert taken.lease and read_holder(folder).pid == os.getpid()
    assert not (folder / LOCK_NAME).exists()


# --- shared caches ----------------------------------------------------------------------------------------------


def _embed(images) -> torch.Tensor:
    time.sleep(0.2)  # long enough for every writer to be inside at once
    pixels = [torch.tensor(list(im.resize((2, 2)).getdata()), dtype=torch.float32).flatten() for im in images]
    return torch.stack(pixels)


def _cache_writer(paths, cache, out, barrier) -> None:
    from eval.score import cached_embeddings

    barrier.wait()
    out.put(cached_embeddings(paths, _embed, "test/embed", True, "dog", cache).tolist())


def test_parallel_writers_of_one_cache_entry_leave_one_valid_file(tmp_path):
    from conftest import DATA_ROOT
    from safetensors.torch import load_file

    from eval.score import real_photo_paths

    paths, cache, n = real_photo_paths(DATA_ROOT, "dog")[:2], tmp_path / "cache", 4
    out, barrier = FORK.Queue(), FORK.Barrier(n)
    writers = [FORK.Process(target=_cache_writer, args=(paths, cache, out, barrier)) for _ in range(n)]
    for w in writers:
        w.start()
    results = [out.get(timeout=120) for _ in writers]
    for w in writers:
        w.join(30)
    assert all(r == results[0] for r in results)
    (entry,) = list(cache.iterdir())  # one file, no temp files left behind
    assert load_file(entry)["embeddings"].tolist() == results[0]


def test_a_broken_cache_entry_is_recomputed_not_trusted(tmp_path, caplog):
    from conftest import DATA_ROOT

    from eval.score import cached_embeddings, real_photo_paths

    paths, cache = real_photo_paths(DATA_ROOT, "dog")[:2], tmp_path / "cache"
    good = cached_embeddings(paths, _embed, "test/embed", True, "dog", cache)
    (entry,) = list(cache.iterdir())
    for broken in (entry.read_bytes()[:40], json.dumps({"not": "safetensors"}).encode()):
        entry.write_bytes(broken)
        with caplog.at_level(logging.WARNING):
            assert torch.equal(cached_embeddings(paths, _embed, "test/embed", True, "dog", cache), good)
        assert "recomputing" in caplog.text
    assert torch.equal(cached_embeddings(paths, _embed, "test/embed", True, "dog", cache), good)  # rewritten whole


def test_a_broken_class_image_is_made_again(quick_cfg, tiny_pipe, tmp_path):
    """Prior-preservation class images are a cache shared by every run of a class: a truncated one (a writer
    killed in the middle) is regenerated, not trained on."""
    from para.run.runner import Run

    cfg = quick_cfg("train.prior_loss_weight=1", "train.num_class_images=2", f"train.class_images_dir={tmp_path}")
    Run(cfg)._prior(tiny_pipe)
    (folder,) = (tmp_path / "tiny" / "dog").iterdir()
    assert folder.name.startswith("seed0-")  # named by how the images are made: another seed, another folder
    made = (folder / "p00_i00.png").read_bytes()
    pixels = np.asarray(Image.open(folder / "p00_i00.png"), dtype=np.int16)
    (folder / "p00_i00.png").write_bytes(made[: len(made) // 2])
    (folder / "notes.txt").write_text("not a class image: never read")
    latents, prompt = Run(cfg)._prior(tiny_pipe)
    assert prompt == "a photo of dog"
    # the same image: made alone now, in a batch of two before (batched matmuls may round 1/255 differently)
    assert np.abs(np.asarray(Image.open(folder / "p00_i00.png"), dtype=np.int16) - pixels).max() <= 1
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt", "p00_i00.png", "p00_i01.png", "prompts.json"]
