"""One writer per run folder: an advisory lock file `<folder>/.para-lock` holding the holder's host and PID.

The lock is a POSIX record lock (`fcntl.lockf`) on that file: the kernel (or the NFS lock manager, whose leases
expire when a client node dies) releases it when the holder's process ends, however it ends, so a lock can never
outlive its process on a file system with working locks. What the file says (host, PID, start time, command, a
heartbeat refreshed every `HEARTBEAT_S` seconds) names the holder to whoever waits, and when the file is found
unlocked but not removed (the holder was SIGKILLed), the new holder says whose lock it takes over.

On a file system without locks (`lockf` fails with ENOLCK/ENOSYS/EOPNOTSUPP, e.g. some Lustre mounts), the file's
contents are the lock, as a lease: taken when absent or stale (its heartbeat older than `LEASE_S`, or its holder
a dead PID on this host), written atomically and read back to see who won.

POSIX locks belong to a process, and closing any descriptor of the file drops them: a process never opens its
own lock file twice (a second `FolderLock` on a held folder in the same process is refused).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from para.core.io import atomic_write_text

log = logging.getLogger(__name__)

LOCK_NAME = ".para-lock"
HEARTBEAT_S = 30.0  # the holder rewrites its heartbeat this often
LEASE_S = 4 * HEARTBEAT_S  # lease mode: a heartbeat older than this is a dead holder's
_UNSUPPORTED = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}
_HELD_HERE: set[Path] = set()  # folders this process holds (POSIX locks cannot tell a process from itself)


class FolderBusy(RuntimeError):
    """Another process holds the folder; the message names it (host, PID, command) and the ways out."""


class NotALockFile(ValueError):
    """`.para-lock` in the folder is not a lock file (a folder, a socket, ...): not ours to open or remove."""


@dataclass
class Holder:
    host: str
    pid: int
    started_at: float
    command: str
    heartbeat: float = field(default_factory=time.time)

    @classmethod
    def me(cls) -> Holder:
        return cls(socket.gethostname(), os.getpid(), time.time(), " ".join(sys.argv)[:500])

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        try:
            data = json.loads(text)
            started = float(data["started_at"])
            heartbeat = float(data.get("heartbeat", started))
            return cls(str(data["host"]), int(data["pid"]), started, str(data.get("command", "")), heartbeat)
        except (ValueError, KeyError, TypeError, AttributeError):
            return None  # empty (being written) or foreign content

    def to_text(self) -> str:
        return json.dumps(asdict(self)) + "\n"

    def alive(self) -> bool | None:
        """Whether the holder process still runs: known on this host only (None elsewhere)."""
        if self.host != socket.gethostname():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # another user's live process
            return True
        return True

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started_at))
        beat = f", last heartbeat {time.time() - self.heartbeat:.0f} s ago"
        return f"PID {self.pid} on host {self.host} (since {since}{beat}; command: {self.command or '?'})"


def read_holder(folder: Path) -> Holder | None:
    try:
        return Holder.parse((Path(folder) / LOCK_NAME).read_text())
    except OSError:
        return None


class FolderLock:
    """`with FolderLock(folder, wait_s=120): ...` holds `folder` (created if missing) for this process.

    A held folder is waited for, up to `wait_s` seconds (0: refuse at once), then refused with `FolderBusy`.
    On release the lock file is removed; folders that `acquire` created are removed too when `remove_created`
    holds and they are empty (a run that never began leaves nothing behind).
    """

    def __init__(self, folder: str | Path, wait_s: float = 0.0, poll_s: float = 0.5):
        self.folder = Path(folder).absolute()
        self.path = self.folder / LOCK_NAME
        self.wait_s, self.poll_s = wait_s, poll_s
        self.fd: int | None = None
        self.lease = False  # True: the file system has no locks; the file's contents are the lock
        self.holder = Holder.me()
        self.created: list[Path] = []  # folders acquire() made, deepest first
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    # --- taking the lock --------------------------------------------------------------------------------
    def acquire(self) -> FolderLock:
        if self.folder in _HELD_HERE:
            raise FolderBusy(f"{self.folder} is already held by this process (PID {os.getpid()})")
        self.created = [p for p in (self.folder, *self.folder.parents) if not p.exists()]
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and not self.path.is_file():
            kind = "folder" if self.path.is_dir() else "special file"
            raise NotALockFile(
                f"{self.path} is not a lock file of the harness (it is a {kind}); "
                "nothing was touched. Remove it if it is yours or stale, or use another folder (hydra.run.dir=...)"
            )
        deadline, announced = time.monotonic() + self.wait_s, False
        while not self._try_acquire():
            other = read_holder(self.folder)
            if time.monotonic() >= deadline:
                self._remove_created()
                raise FolderBusy(self._busy_message(other))
            if not announced:
                who = other.describe() if other else "another process"
                log.warning("%s is in use by %s; waiting up to %.0f s (lock_wait)", self.folder, who, self.wait_s)
                announced = True
            time.sleep(self.poll_s)
        _HELD_HERE.add(self.folder)
        self._beat = threading.Thread(target=self._heartbeat, name="para-lock-heartbeat", daemon=True)
        self._beat.start()
        return self

    def _try_acquire(self) -> bool:
        if self.lease:
            return self._try_lease()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in _UNSUPPORTED:
                log.warning("%s: the file system has no file locks (%s); using a lease file", self.folder, err)
                self.lease = True
                return self._try_lease()
            if err.errno in (errno.EACCES, errno.EAGAIN):
                return False
            raise
        try:  # the file we locked must still be the lock file (a releasing holder unlinks it)
            same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            return False
        self._say_taken_over(Holder.parse(os.pread(fd, 4096, 0).decode("utf-8", "replace")))
        self.fd = fd
        self._write()
        return True

    def _try_lease(self) -> bool:
        other = read_holder(self.folder)
        if other is not None and other.pid != os.getpid() and not self._stale(other):
            return False
        self._say_taken_over(other)
        self._write()
        time.sleep(min(1.0, self.poll_s))  # a racing writer renames its own file meanwhile: read back who won
        mine = read_holder(self.folder)
        return mine is not None and (mine.host, mine.pid) == (self.holder.host, self.holder.pid)

    @staticmethod
    def _stale(other: Holder) -> bool:
        return other.alive() is False or time.time() - other.heartbeat > LEASE_S

    def _say_taken_over(self, previous: Holder | None) -> None:
        if previous is None or (previous.host, previous.pid) == (self.holder.host, self.holder.pid):
            return
        alive = previous.alive()
        if alive is False:
            why = "that process is gone"
        elif alive is None:
            why = "its lock was released (the process ended, or its node's lock lease expired)"
        else:
            why = f"its heartbeat is {time.time() - previous.heartbeat:.0f} s old"
        log.warning("%s: taking over the lock left by %s: %s", self.folder, previous.describe(), why)

    def _busy_message(self, other: Holder | None) -> str:
        if other is None:
            who, stop = "another process (it has not written its name yet)", "stop it"
        else:
            here = other.host == socket.gethostname()
            who, stop = other.describe(), f"stop it (kill {other.pid}{'' if here else f' on {other.host}'})"
        return (
            f"{self.folder} is in use by {who}; waited {self.wait_s:.0f} s. Ways out: wait for it to end and re-run "
            f"(a finished run is then kept, an unfinished one continued), {stop}, use another folder "
            "(hydra.run.dir=...), or wait longer (lock_wait=SECONDS)"
        )

    # --- holding ------------------------------------------------------------------------------------------
    def _write(self) -> None:
        self.holder.heartbeat = time.time()
        text = self.holder.to_text()
        if self.lease or self.fd is None:
            atomic_write_text(self.path, text)
            return
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, text.encode(), 0)
        os.fsync(self.fd)

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._write()
            except OSError as err:  # a full disk must not kill the run; waiters then see an old heartbeat
                log.debug("lock heartbeat failed: %s", err)

    # --- letting go -----------------------------------------------------------------------------------------
    def release(self, remove_created: bool = False) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        if self.folder in _HELD_HERE:
            mine = read_holder(self.folder) if self.lease else self.holder
            if mine is not None and (mine.host, mine.pid) == (self.holder.host, self.holder.pid):
                self.path.unlink(missing_ok=True)  # before unlocking: a waiter that locks the old file then retries
            _HELD_HERE.discard(self.folder)
        if self.fd is not None:
            os.close(self.fd)  # drops the lock
            self.fd = None
        if remove_created:
            self._remove_created()

    def _remove_created(self) -> None:
        for folder in self.created:
            try:
                folder.rmdir()  # only when empty
            except OSError:
                break

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
