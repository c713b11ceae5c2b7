"""Output folders: can this path be used, who is using it (a lock), and writes that are never seen half done.

A build holds ``OUT/.edgeprune/lock`` while it runs. The lock records the process id, the host and the process's
start time (Linux ``/proc/<pid>/stat``), so a lock left by a killed build is recognised as stale (no such process, a
zombie, or the pid reused by another process) and taken over, while a live build on the same folder is refused.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Union

from ..errors import OutputFolderError, SystemRefusedError, arg

LOCK_NAME = "lock"

# errno values that mean "the system refused" rather than "edgeprune has a bug".
SYSTEM_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EMFILE,
                           errno.ENFILE, errno.EFBIG, errno.EIO})


def describe_os_error(exc: OSError, doing: str = "") -> str:
    """One line for an OSError: the path, the system's reason and, when given, what was being done."""
    reason = exc.strerror or str(exc)
    text = f"{exc.filename}: {reason}" if exc.filename is not None else reason
    return text + (f" (while {doing})" if doing else "")


def is_system_refusal(exc: BaseException) -> Optional[OSError]:
    """The OSError (this exception or one in its cause/context chain) that means no space, permission or I/O."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in SYSTEM_ERRNOS:
            return exc
        if "No space left on device" in str(exc):
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def check_out_path(path: Union[str, Path], name: str = "out", *, want_dir: bool = True) -> Path:
    """Fail early, and without leaving anything behind, if ``path`` cannot become an output folder (or file).

    The nearest existing ancestor must be a writable folder, and a probe folder must be creatable in it (this catches
    ``/proc``, read-only mounts and missing permissions, which ``os.access`` does not for root).

    Args:
        path: the output path.
        name: the option's Python name, for the message (``--out`` / ``out``).
        want_dir: the output is a folder (else a file: an existing folder there is refused).

    Returns:
        The path, as a :class:`Path`.

    Raises:
        OutputFolderError: the path cannot be created or written.
    """
    p = Path(path).expanduser()
    flag = f"{arg(name)} {path}"
    if p.exists():
        if want_dir and not p.is_dir():
            raise OutputFolderError(f"{flag}: exists and is not a folder")
        if not want_dir and p.is_dir():
            raise OutputFolderError(f"{flag}: is a folder; give a file name")
    anchor = p if (p.is_dir()) else p.parent
    while not anchor.exists():
        anchor = anchor.parent
    if not anchor.is_dir():
        raise OutputFolderError(f"{flag}: cannot be created ({anchor} is not a folder)")
    try:
        probe = tempfile.mkdtemp(prefix=".edgeprune-probe-", dir=anchor)
    except OSError as exc:
        raise OutputFolderError(f"{flag}: cannot be created or written ({exc.strerror or exc} in {anchor})") from None
    os.rmdir(probe)
    return p


def atomic_write_text(path: Union[str, Path], text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename: readers see the old file
    or the whole new one, never a part. Returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def _start_ticks(pid: int) -> Optional[int]:
    """The process's start time in clock ticks since boot (Linux), or None where /proc is not available."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after its closing parenthesis.
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[19])  # field 22 of stat = index 19 after the state (field 3)


def _state(pid: int) -> Optional[str]:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()[0]


def process_alive(pid: int, start_ticks: Optional[int] = None) -> bool:
    """Whether process ``pid`` runs (not a zombie) and, if ``start_ticks`` is known, is the same process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    if _state(pid) == "Z":
        return False  # killed, not yet reaped by its parent
    if start_ticks is not None:
        now = _start_ticks(pid)
        if now is not None and now != start_ticks:
            return False  # the pid was reused by another process
    return True


class FolderLock:
    """An exclusive, stale-aware lock file for one output folder.

    Args:
        path: the lock file (``OUT/.edgeprune/lock``).
        folder: the output folder, for messages.
    """

    def __init__(self, path: Union[str, Path], folder: Union[str, Path]):
        self.path = Path(path)
        self.folder = Path(folder)
        self.held = False
        self.recovered: Optional[dict[str, Any]] = None  # the stale lock's record, if one was taken over

    def _record(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "host": socket.gethostname(), "start_ticks": _start_ticks(os.getpid()),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}

    def holder(self) -> Optional[dict[str, Any]]:
        """The lock's record, or None when there is no lock. A lock being written right now is waited for briefly;
        an unreadable one (its writer was killed mid-write) reads as ``{}``."""
        for _ in range(10):
            try:
                text = self.path.read_text()
            except FileNotFoundError:
                return None
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                time.sleep(0.05)
        return {}

    def holder_alive(self, rec: Optional[dict[str, Any]]) -> bool:
        """Whether the process named by a lock record still runs (a lock from another host counts as alive)."""
        if not rec or "pid" not in rec:
            return False
        if rec.get("host") not in (None, socket.gethostname()):
            return True
        return process_alive(int(rec["pid"]), rec.get("start_ticks"))

    def refuse_if_held(self) -> None:
        """Raise when a live build holds the lock (a stale lock is left for :meth:`acquire` to take over)."""
        rec = self.holder()
        if rec is not None and self.holder_alive(rec) and rec.get("pid") != os.getpid():
            raise OutputFolderError(self._busy_message(rec))

    def _busy_message(self, rec: dict[str, Any]) -> str:
        host = rec.get("host")
        where = "" if host == socket.gethostname() else f" on host {host}"
        return (f"{self.folder} is in use by another edgeprune build (pid {rec.get('pid')}{where}, started "
                f"{rec.get('started', '?')}); wait for it to finish or choose another {arg('out')}. If no build "
                f"runs there, delete {self.path}")

    def acquire(self) -> "FolderLock":
        """Take the lock, taking over a stale one.

        Raises:
            OutputFolderError: a live build holds it.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                rec = self.holder()
                if rec is None:
                    continue  # released meanwhile: try again
                if self.holder_alive(rec):
                    raise OutputFolderError(self._busy_message(rec)) from None
                # Stale: move it aside atomically, so of two builds recovering it at once only one succeeds.
                aside = self.path.with_name(f"{LOCK_NAME}.stale-{os.getpid()}")
                try:
                    os.replace(self.path, aside)
                except FileNotFoundError:
                    continue
                aside.unlink(missing_ok=True)
                self.recovered = rec
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps(self._record()))
                fh.flush()
                os.fsync(fh.fileno())
            self.held = True
            return self
        raise OutputFolderError(f"{self.folder}: cannot take the build lock {self.path} (it keeps changing)")

    def release(self) -> None:
        """Remove the lock if this process holds it."""
        if self.held:
            rec = self.holder()
            if rec is not None and rec.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def remove_tree(path: Union[str, Path]) -> None:
    """Remove a file or folder if it exists (no error if it does not)."""
    p = Path(path)
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink(missing_ok=True)


def system_refused(exc: OSError, doing: str, freed: str = "") -> SystemRefusedError:
    """The :class:`SystemRefusedError` for an OSError (message: path, reason, what was being done, what was freed)."""
    msg = describe_os_error(exc, doing)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        msg += "; free some space"
    return SystemRefusedError(msg + (f"; {freed}" if freed else ""))


__all__ = ["FolderLock", "LOCK_NAME", "atomic_write_text", "check_out_path", "describe_os_error",
           "is_system_refusal", "process_alive", "remove_tree", "system_refused"]
