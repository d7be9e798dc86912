"""Signing in to the board: an agency's `http_token` once, then a session cookie.

The token is checked once, at sign-in (`ServiceApp.credentials`, constant time); the browser then holds
only a random session id in an HttpOnly, SameSite=Strict cookie. A `Viewer` says who is signed in
(agency id and type), so a view scoped to one agency (its inbox) can be served from the same sessions.
Sessions live in this process's memory: a restart signs everyone out, which is the safe direction.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from contracts.vocab import AgencyType

COOKIE = "alur_board_session"
SESSION_TTL = 12 * 3600.0
"""A working day: the secretariat keeps the page open, and signs in again the next morning."""
MAX_SESSIONS = 10_000


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who is signed in: an agency of the registry."""

    agency: str
    agency_type: AgencyType
    inbox: bool = False
    """An agency with `channel: inbox`: it sees its own web inbox, and nothing else."""
    token_sha256: str = ""
    """The digest of the token it signed in with: once the agency's token is rotated, its sessions end."""

    @property
    def coordinator(self) -> bool:
        """The task-force secretariat: it sees every referral."""
        return self.agency_type is AgencyType.GT_SECRETARIAT


class Sessions:
    """Session ids → viewers, each valid for `ttl` seconds from sign-in."""

    def __init__(self, ttl: float = SESSION_TTL, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.clock = clock
        self._open: dict[str, tuple[Viewer, float]] = {}

    def open(self, viewer: Viewer) -> str:
        """A new session for `viewer`; returns its id (the cookie's value)."""
        self._expire()
        if len(self._open) >= MAX_SESSIONS:
            self._open.pop(next(iter(self._open)))
        session_id = secrets.token_urlsafe(32)
        self._open[session_id] = (viewer, self.clock() + self.ttl)
        return session_id

    def viewer(self, session_id: str | None) -> Viewer | None:
        """The viewer of a live session, or None."""
        if not session_id:
            return None
        entry = self._open.get(session_id)
        if entry is None:
            return None
        if entry[1] <= self.clock():
            self._open.pop(session_id, None)
            return None
        return entry[0]

    def close(self, session_id: str | None) -> None:
        if session_id:
            self._open.pop(session_id, None)

    def _expire(self) -> None:
        now = self.clock()
        for sid in [s for s, (_, until) in self._open.items() if until <= now]:
            del self._open[sid]
