"""Child processes that cannot outlive the process that started them, however it dies.

`alur up` runs the embedded nats-server and the services in sessions of their own (so a Ctrl-C in the
terminal reaches only `alur up`, which stops them in order). A `kill -9`, an OOM kill or a closed
terminal skips that orderly stop; on Linux the kernel then sends each child its *parent-death signal*
(`PR_SET_PDEATHSIG`, set in the child between fork and exec). Elsewhere, and for the instant between
fork and `prctl`, the child checks its parent itself (`ParentWatch`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

PR_SET_PDEATHSIG = 1
PARENT_PID_ENV = "ALUR_PARENT_PID"


def _libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


_LIBC = _libc()


def _die_with(parent: int, sig: signal.Signals) -> Callable[[], None]:
    """The `preexec_fn` of a tied child: owner-only files, `sig` when the parent dies, and death now if it
    already has."""

    def preexec() -> None:
        os.umask(0o077)  # whatever the child writes (nats-server's store, its log) is the owner's alone
        if _LIBC is not None:
            _LIBC.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def spawn_tied(
    args: Sequence[str], *, on_parent_death: signal.Signals = signal.SIGKILL, env: dict[str, str] | None = None,
    **popen: Any,
) -> subprocess.Popen[bytes]:
    """`subprocess.Popen` in a new session, tied to this process: `on_parent_death` reaches it if we die.

    Call it from the main thread: Linux sends the signal when the *thread* that forked the child ends.
    """
    parent = os.getpid()
    environment = {**(env if env is not None else os.environ), PARENT_PID_ENV: str(parent)}
    return subprocess.Popen(  # noqa: S603 - argv lists only, never a shell
        list(args), env=environment, start_new_session=True, preexec_fn=_die_with(parent, on_parent_death), **popen
    )


class ParentWatch:
    """In a tied child: exit soon after the parent that started us is gone (where no PDEATHSIG exists).

    Started by `alur serve` when `ALUR_PARENT_PID` is set; a no-op otherwise. It first asks for a clean
    stop (SIGTERM) and exits hard after `grace` seconds.
    """

    def __init__(self, parent: int | None, *, every: float = 1.0, grace: float = 3.0) -> None:
        self.parent = parent
        self.every = every
        self.grace = grace

    @classmethod
    def from_env(cls) -> ParentWatch:
        raw = os.environ.get(PARENT_PID_ENV, "")
        return cls(int(raw) if raw.isdigit() else None)

    def start(self) -> None:
        if self.parent is not None:
            threading.Thread(target=self._watch, name="alur-parent-watch", daemon=True).start()

    def _watch(self) -> None:
        while os.getppid() == self.parent:
            time.sleep(self.every)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(self.grace)
        os._exit(1)
