"""One job per quality table at a time, and no commit from a job that lost the table.

The lock is a folder ``<table>/_lock/`` of generation files ``<generation>.json`` (owner,
host, boot id, pid, since, heartbeat). The holder is the newest generation. Taking the lock is
creating the next generation's file *exclusively* — ``os.link`` of a written temporary file on a
local disk, a conditional PUT (``If-None-Match: *``) on object stores that offer it — so of any
number of jobs racing for a free or stale lock exactly one wins. The owner renews its lease
(rewrites its own file) every :data:`HEARTBEAT_S`.

A holder is presumed gone when its lease is older than :data:`STALE_S` — except a process on
this same host (same host name and boot id), which holds the lock for as long as it exists
(the same PID and process start time), paused or not (Ctrl-Z, SIGSTOP). A job presumed gone
that comes back (a paused VM, a node cut off for minutes) is *fenced*: every commit first
checks that its owner still holds the newest generation (:class:`Fence`), and one that lost it
stops with :class:`LostLockError`, committing nothing more. On stores without a conditional
create, taking the lock writes the file, waits :data:`SETTLE_S` and reads the owner back; two
jobs racing inside that window is the one case it cannot rule out there.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import fsspec

from vqpipe.errors import JobError, UserError
from vqpipe.io.fs import is_local, url_to_fs
from vqpipe.storage.names import LOCK as LOCK_NAME

STALE_S = float(os.environ.get("VQPIPE_LOCK_STALE_S", 90.0))
"""A lease not renewed for this long is presumed dead (the environment variable shortens it
for tests of pauses)."""
HEARTBEAT_S = min(15.0, STALE_S / 6)
SETTLE_S = 1.0
_GENERATION = re.compile(r"^(\d{12})\.json$")


class LostLockError(JobError):
    """This job's lock was taken over (it was presumed dead): it commits nothing more."""


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _host() -> dict[str, str]:
    """This machine's identity in a lock: the host name and the kernel's boot id (containers
    on two machines may share a host name)."""
    return {"host": os.environ.get("VQPIPE_LOCK_HOST") or socket.gethostname(), "boot": _boot_id()}


def _on_this_host(held: dict[str, Any]) -> bool:
    me = _host()
    return held.get("host") == me["host"] and held.get("boot", "") == me["boot"]


def _started(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from /proc), to tell a holder from
    a later process that got its PID; None where /proc does not say."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _process_exists(pid: int, started: str | None = None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        pass
    now = _started(pid)
    return started is None or now is None or now == started


def alive(held: dict[str, Any], now: float | None = None) -> bool:
    """Whether a lock record's holder may still run: a process of this host that exists
    (however old its lease: a paused job keeps its lock), else a lease renewed within
    :data:`STALE_S`."""
    if not held or held.get("released"):
        return False
    if _on_this_host(held) and isinstance(held.get("pid"), int):
        return _process_exists(held["pid"], held.get("started"))
    return (now or time.time()) - float(held.get("heartbeat", 0)) < STALE_S


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _generation_file(folder: str, generation: int) -> str:
    return f"{folder}/{generation:012d}.json"


def holder(fs: fsspec.AbstractFileSystem, folder: str) -> tuple[int, dict[str, Any] | None]:
    """The newest generation in the lock folder and its record (``(0, None)``: no lock; a
    record that does not parse is ``{}``, a dead holder)."""
    for _ in range(3):
        with contextlib.suppress(AttributeError):  # object stores cache listings
            fs.invalidate_cache(folder)
        try:
            names = [p.rsplit("/", 1)[-1] for p in fs.ls(folder, detail=False)]
        except FileNotFoundError:
            return 0, None
        generations = [int(m[1]) for m in map(_GENERATION.match, names) if m]
        if not generations:
            return 0, None
        newest = max(generations)
        try:
            return newest, json.loads(fs.cat_file(_generation_file(folder, newest)))
        except FileNotFoundError:  # released between the listing and the read: look again
            continue
        except (ValueError, OSError):
            return newest, {}
    return 0, None


def _create_exclusive(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> bool:
    """Create ``path`` holding ``data`` unless it exists (FileExistsError); returns whether the
    store did it atomically (False: written plainly, to be read back)."""
    if is_local(fs):
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(data)
        try:
            os.link(tmp, path)  # fails if path exists: an exclusive create with its content
        finally:
            os.remove(tmp)
        return True
    try:
        fs.pipe_file(path, data, mode="create")
        return True
    except (TypeError, NotImplementedError, ValueError):  # the store has no conditional create
        if fs.exists(path):
            raise FileExistsError(path) from None
        fs.pipe_file(path, data)
        return False


@dataclass(frozen=True)
class Fence:
    """What a writer checks right before each commit (picklable: Ray tasks get it): the lock
    folder of the table it writes and the owner it writes for."""

    lock: str
    owner: str
    storage_options: dict[str, Any]

    def check(self) -> None:
        """Raise :class:`LostLockError` unless ``owner`` still holds the newest generation."""
        fs, folder = url_to_fs(self.lock, self.storage_options)
        _, held = holder(fs, folder)
        if (held or {}).get("owner") != self.owner:
            raise LostLockError(lost_message(self.lock, held))


def lost_message(lock: str, held: dict[str, Any] | None) -> str:
    table = lock.rstrip("/").rsplit("/", 1)[0]
    by = (
        f"job on host {held.get('host', '?')}, pid {held.get('pid', '?')}"
        if held
        else "no job (the lock was deleted)"
    )
    return (
        f"lost the lock on {table} to {by} while this job was paused or unreachable for "
        f"longer than its {STALE_S:.0f} s lease; it commits nothing more (rerun to resume)"
    )


class TableLock:
    """``with TableLock(fs, folder, uri, storage_options):`` holds a table's lock, or raises
    :class:`UserError` naming the job that holds it. :attr:`fence` is what this job's writers
    check before each commit; :attr:`lost` is set when the heartbeat finds the lock taken."""

    def __init__(
        self,
        fs: fsspec.AbstractFileSystem,
        folder: str,
        uri: str,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        self.fs, self.folder, self.uri = fs, folder.rstrip("/"), uri
        self.storage_options = dict(storage_options or {})
        self.owner = uuid.uuid4().hex
        self.generation = 0
        self.since = time.time()
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def path(self) -> str:
        """This job's generation file (once held)."""
        return _generation_file(self.folder, self.generation)

    @property
    def fence(self) -> Fence:
        return Fence(self.uri, self.owner, self.storage_options)

    def _record(self) -> bytes:
        return json.dumps(
            {
                "owner": self.owner,
                "generation": self.generation,
                **_host(),
                "pid": os.getpid(),
                "started": _started(os.getpid()),
                "since": _stamp(self.since),
                "heartbeat": time.time(),
            }
        ).encode()

    def _refuse(self, held: dict[str, Any]) -> UserError:
        return UserError(
            f"another job holds {self.folder} since {held.get('since', '?')} "
            f"(host {held.get('host', '?')}, pid {held.get('pid', '?')}); wait for it to "
            f"finish, or delete the lock if that job is gone (it expires {STALE_S:.0f} s "
            "after its last heartbeat)"
        )

    def _legacy(self) -> None:
        """A lock file of vqpipe before generations (``_lock`` a file): refuse while its job
        lives, else remove it."""
        try:
            if not self.fs.isfile(self.folder):
                return
            held = json.loads(self.fs.cat_file(self.folder))
        except (ValueError, OSError):
            held = {}
        if alive(held):
            raise self._refuse(held)
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.folder)

    def _take(self) -> None:
        self._legacy()
        self.fs.makedirs(self.folder, exist_ok=True)
        held: dict[str, Any] | None = None
        for _ in range(8):
            newest, held = holder(self.fs, self.folder)
            if held is not None and alive(held):
                raise self._refuse(held)
            self.generation = newest + 1
            try:
                atomic = _create_exclusive(self.fs, self.path, self._record())
            except FileExistsError:  # another job took this generation: look again
                continue
            except FileNotFoundError:  # a job releasing the lock removed the empty folder
                self.fs.makedirs(self.folder, exist_ok=True)
                continue
            if not atomic:
                time.sleep(SETTLE_S)
                _, held = holder(self.fs, self.folder)
                if (held or {}).get("owner") != self.owner:
                    raise self._refuse(held or {})
            for older in range(max(1, newest - 16), self.generation):  # best effort
                with contextlib.suppress(Exception):
                    self.fs.rm(_generation_file(self.folder, older))
            return
        raise self._refuse(held or {})

    def held(self) -> bool:
        """Whether this job still holds the newest generation (reads the store)."""
        _, held = holder(self.fs, self.folder)
        return (held or {}).get("owner") == self.owner

    def check(self) -> None:
        """Raise :class:`LostLockError` when the lock was taken over."""
        if self.lost.is_set() or not self.held():
            self.lost.set()
            raise LostLockError(lost_message(self.uri, holder(self.fs, self.folder)[1]))

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                if not self.held():
                    self.lost.set()  # taken over (we were presumed dead): stop touching it
                    return
                self.fs.pipe_file(self.path, self._record())
            except Exception:  # a missed beat is retried at the next one
                continue

    def __enter__(self) -> TableLock:
        self._take()
        self._thread = threading.Thread(target=self._beat, name="vqpipe-lock", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if not self.lost.is_set() and self.held():
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(self.path)
            with contextlib.suppress(Exception):
                if not self.fs.ls(self.folder, detail=False):
                    self.fs.rmdir(self.folder)


__all__ = ["LOCK_NAME", "Fence", "LostLockError", "TableLock", "alive", "holder"]
