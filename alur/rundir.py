"""One `alur up` per data dir: an OS lock held for the run, and what a crashed run left behind.

The lock (`<data_dir>/alur.lock`, `flock`) is released by the kernel however `alur up` dies, so a
crash never leaves the data dir locked, and a run file is trusted only while its lock is held: a stale
`run.json` never hides a live stack, and never sends a command to a dead one. The run file also lists
the processes the run started, so the next `alur up` can stop what a crashed one left behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import time
from pathlib import Path

from runtime.locate import LOCK_FILE, RunInfo

OURS = ("nats-server", "alur.serve")
"""What the command line of a process this project started contains: a recorded pid that runs anything
else was reused by the system and is left alone."""


class DataDirBusy(RuntimeError):
    """Another `alur up` holds the data dir; the message names it."""


class DataDirLock:
    """The exclusive lock of one data dir, held from `acquire` until `release` or the process ends."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise `DataDirBusy` naming the running `alur up`."""
        fd = os.open(self.data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            info = RunInfo.load(self.data_dir)
            who = f"pid {info.pid}, NATS {info.nats_url}" if info else "its run file is not written yet"
            raise DataDirBusy(
                f"another `alur up` is running on data dir {self.data_dir} ({who}); stop it first, "
                "or give this one its own ALUR_DATA_DIR"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _command_line(pid: int) -> str | None:
    """The command line of a running process (None if it is gone or a zombie, or there is no /proc)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, IndexError):
        return None
    return None if state in ("Z", "X") else command.replace(b"\0", b" ").decode(errors="replace")


def running(pid: int) -> bool:
    """Whether `pid` runs (neither gone nor a zombie)."""
    return _command_line(pid) is not None if Path("/proc").is_dir() else _alive(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def leftovers(info: RunInfo) -> dict[str, int]:
    """The processes a stale run file names that still run and are ours (name → pid)."""
    found = {}
    for name, pid in info.children.items():
        command = _command_line(pid)
        if command is not None and any(mark in command for mark in OURS):
            found[name] = pid
        elif command is None and _alive(pid) and not Path("/proc").is_dir():
            found[name] = pid  # no /proc to tell: assume ours, the caller refuses rather than kill
    return found


def stop_leftovers(found: dict[str, int], grace: float = 10.0) -> list[int]:
    """SIGTERM the leftovers, SIGKILL what still runs after `grace`; returns the pids that would not die."""
    for pid in found.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(running(p) for p in found.values()):
        time.sleep(0.1)
    for pid in found.values():
        if running(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    return [pid for pid in found.values() if running(pid)]
