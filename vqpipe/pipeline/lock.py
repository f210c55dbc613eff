"""One job per output at a time: a lock object in the output store with an owner and a
heartbeat, so that a second run refuses in one line and a killed job blocks nobody for long.

The lock is ``<output>/_lock`` (JSON: owner, host, pid, since, heartbeat). A holder rewrites
its heartbeat every ``HEARTBEAT_S``; a lock whose heartbeat is older than ``STALE_S``, or whose
process on this same host is gone, belongs to a dead job and is taken over. Local outputs
create the lock with ``O_EXCL``; object stores have no portable create-if-absent, so the owner
is read back after a short settle time and the later writer backs off — two jobs racing inside
that window is the one case it cannot rule out.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from typing import Any

from vqpipe.errors import UserError
from vqpipe.io.artifacts import LOCK as LOCK_NAME
from vqpipe.io.fs import is_local, url_to_fs

HEARTBEAT_S = 15.0
STALE_S = 90.0
SETTLE_S = 1.0


def _now() -> float:
    return time.time()


def _alive(held: dict[str, Any]) -> bool:
    """Whether the lock's holder may still run: its heartbeat is fresh and, when it ran on
    this host, its process exists (a job killed with -9 here frees the output at once)."""
    if _now() - float(held.get("heartbeat", 0)) >= STALE_S:
        return False
    if held.get("host") == socket.gethostname() and isinstance(held.get("pid"), int):
        try:
            os.kill(held["pid"], 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # someone else's live process
            return True
    return True


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class OutputLock:
    """``with OutputLock(output, storage_options):`` holds the output's lock, or raises
    :class:`UserError` naming the job that holds it."""

    def __init__(self, output: str, storage_options: dict[str, Any] | None = None) -> None:
        self.fs, root = url_to_fs(output, storage_options)
        self.path = f"{root.rstrip('/')}/{LOCK_NAME}"
        self.owner = uuid.uuid4().hex
        self.since = _now()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> bytes:
        return json.dumps(
            {
                "owner": self.owner,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "since": _stamp(self.since),
                "heartbeat": _now(),
            }
        ).encode()

    def _read(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.fs.cat_file(self.path))
        except FileNotFoundError:
            return None
        except (ValueError, OSError):  # half-written or unreadable: treat as stale
            return {}

    def _refuse(self, held: dict[str, Any]) -> UserError:
        return UserError(
            f"another job holds {self.path} since {held.get('since', '?')} "
            f"(host {held.get('host', '?')}, pid {held.get('pid', '?')}); wait for it to "
            f"finish, or delete the lock if that job is gone (it expires {STALE_S:.0f} s "
            "after its last heartbeat)"
        )

    def _take_local(self) -> None:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                held = self._read() or {}
                if _alive(held):
                    raise self._refuse(held) from None
                # stale: remove it and try once more (another job may win that race)
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.path)
                continue
            with os.fdopen(fd, "wb") as fh:
                fh.write(self._record())
            return
        raise self._refuse(self._read() or {})

    def _take_remote(self) -> None:
        held = self._read()
        if held and _alive(held):
            raise self._refuse(held)
        self.fs.pipe(self.path, self._record())
        time.sleep(SETTLE_S)
        held = self._read() or {}
        if held.get("owner") != self.owner:
            raise self._refuse(held)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                held = self._read() or {}
                if held.get("owner") not in (None, self.owner):
                    return  # taken over (we were presumed dead): stop touching it
                self.fs.pipe(self.path, self._record())
            except Exception:  # a missed beat is retried at the next one
                continue

    def __enter__(self) -> OutputLock:
        self.fs.makedirs(self.path.rsplit("/", 1)[0], exist_ok=True)
        if is_local(self.fs):
            self._take_local()
        else:
            self._take_remote()
        self._thread = threading.Thread(target=self._beat, name="vqpipe-lock", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        held = self._read() or {}
        if held.get("owner") == self.owner:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(self.path)
