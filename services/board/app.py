"""The coordinator's board (read-only, for the task-force secretariat) and the agencies' web inbox (for
offices without a system of their own, `channel: inbox`).

It folds CASES, REFERRALS and routing's case records into a read model (`model.py`) on start and keeps
it current live (`feed.py`). It writes nothing; the one thing it publishes is an inbox agency's answer,
stored in REPORTS as that agency's system would store it and decided by notify (`runtime.answers`).
Sign-in takes an agency's `http_token` once and answers with a session cookie (`sessions.py`): the
secretariat lands on the board, an inbox agency in its inbox, any other agency is refused; the API also
takes the token as `Authorization: Bearer`. Run alone: `alur serve board`, or
`faststream run services.board.app:create_app --factory`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from contracts import subjects
from contracts.catalog import REFERRAL_RESPONSE
from contracts.vocab import Channel
from domain.escalation_policy import EscalationPolicy, load_policy
from domain.regions import MIN_GROUP
from runtime.answers import carry
from runtime.app import ServiceApp, ServiceAsgi, bearer, read_body
from runtime.profile import profile_dir
from runtime.ratelimit import RateLimiter, retry_after
from runtime.security import response_inbox, token_digest
from runtime.settings import Settings
from services.board import inbox_pages, pages, views
from services.board.feed import Changes, Feed
from services.board.i18n import pick, text
from services.board.inbox import inbox_rows
from services.board.model import BoardModel
from services.board.sessions import COOKIE, Sessions, Viewer

STATIC = Path(__file__).parent / "static"
LANG_COOKIE = "alur_board_lang"
LOGIN_BURST = 10
LOGIN_PER_SECOND = 0.2
"""Sign-in attempts per address: ten at once, then one every five seconds."""
CLOSING_CHECK = 0.5
"""How often an open event stream looks whether the server is stopping."""
KEEPALIVE = 15.0
"""Seconds between comments on an idle event stream, so proxies keep it open."""
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
View = Callable[[Request, Viewer, str], Awaitable[Response]]


class NotSignedIn(Exception):
    """No live session and no valid bearer token."""


class Board:
    """The board's routes over one `ServiceApp`, its read model and its feed."""

    def __init__(self, app: ServiceApp, policy: EscalationPolicy) -> None:
        self.app = app
        self.policy = policy
        self.model = BoardModel()
        self.changes = Changes()
        self.sessions = Sessions()
        self.logins = RateLimiter(LOGIN_BURST, LOGIN_PER_SECOND)
        self.feed: Feed | None = None

    def register(self) -> None:
        app = self.app
        app.on_started(self._start)
        app.on_stopping(self._stop)
        app.ready_checks.append(self._readiness)
        app.route("/login", ("GET", "POST"))(self.login)
        app.route("/logout", ("POST",))(self.logout)
        for path, view, title in (("/", self.page_referrals, "nav.referrals"),
                                  ("/agencies", self.page_agencies, "nav.agencies"),
                                  ("/duplicates", self.page_duplicates, "nav.duplicates"),
                                  ("/regions", self.page_regions, "nav.regions"),
                                  ("/cases/{case_id}", self.page_case, "case.timeline")):
            app.route(path, ("GET",))(self._page(view, title))
        for path, api in (("/api/referrals", self.api_referrals), ("/api/cases/{case_id}", self.api_case),
                          ("/api/agencies", self.api_agencies), ("/api/duplicates", self.api_duplicates),
                          ("/api/regions", self.api_regions)):
            app.route(path, ("GET",))(self._api(api))
        app.route("/api/stream", ("GET",))(self._api(self.api_stream, inbox=True))
        app.route("/inbox", ("GET",))(self.page_inbox)
        app.route("/api/inbox", ("GET",))(self._api(self.api_inbox, inbox=True, board=False))
        app.route("/api/inbox/{referral_id}", ("POST",))(self._api(self.api_answer, inbox=True, board=False))
        app.states(subjects.response(subjects.AGENCY_PARAM), REFERRAL_RESPONSE,
                   "An answer an officer of an inbox agency gave in its web inbox (`POST /api/inbox/{referral_id}`), "
                   "stored as that agency's; notify decides it like any other.")
        app.routes.append(Mount("/static", StaticFiles(directory=STATIC), name="static"))

    # ---------------------------------------------------------------- lifecycle

    async def _start(self) -> None:
        self.feed = Feed(self.app.js, self.model, self.changes)
        await self.feed.start()

    async def _stop(self) -> None:
        if self.feed is not None:
            await self.feed.stop()

    def _readiness(self) -> list[str]:
        return [] if self.feed is not None and self.feed.ready else ["read model still reading the streams"]

    # ---------------------------------------------------------------- who is asking

    async def signed_in(self, request: Request) -> Viewer:
        """Who asks: a live session cookie, else a bearer token (checked and rate-limited like every HTTP
        door), as the registry has the agency now (a disabled agency, or one whose channel changed, loses
        what it could see at once); a session ends once the token it was opened with is rotated. Raises
        `NotSignedIn`."""
        cookie = request.cookies.get(COOKIE)
        session = self.sessions.viewer(cookie)
        viewer = None
        if session is not None:
            assert self.app.credentials is not None
            credential = await self.app.credentials.credential(session.agency)
            if credential is not None and hmac.compare_digest(credential.token_sha256, session.token_sha256):
                viewer = self._viewer_of(session.agency)
            else:  # the token it signed in with was rotated (leaked, an officer left): this session is over
                self.sessions.close(cookie)
        if viewer is None and bearer(request):
            viewer = self._viewer_of(await self.app.caller(request))
        if viewer is None:
            raise NotSignedIn()
        return viewer

    async def viewer(self, request: Request, *, board: bool = True, inbox: bool = False) -> Viewer:
        """The signed-in viewer, if it may see the board (the secretariat) or, with `inbox`, an inbox (an
        inbox agency); raises `NotSignedIn`, or `PermissionError` for any other agency."""
        viewer = await self.signed_in(request)
        if not ((board and viewer.coordinator) or (inbox and viewer.inbox)):
            raise PermissionError(viewer.agency)
        return viewer

    def _viewer_of(self, agency_id: str) -> Viewer | None:
        assert self.app.registry_store is not None
        agency = self.app.registry_store.current.get(agency_id)
        if agency is None or not agency.enabled:
            return None
        return Viewer(agency.id, agency.type, inbox=agency.channel is Channel.INBOX)

    @staticmethod
    def lang(request: Request) -> str:
        return pick(request.query_params.get("lang"), request.cookies.get(LANG_COOKIE))

    # ---------------------------------------------------------------- sign-in

    async def login(self, request: Request) -> Response:
        lang = self.lang(request)
        if request.method == "GET":
            return self._html(pages.login(lang), request, lang)
        address = f"login:{request.client.host if request.client else 'unknown'}"
        if (wait := self.logins.take(address)) is not None:
            return self._html(pages.login(lang, text("signin.slow", lang)), request, lang, status=429,
                              headers={"Retry-After": retry_after(wait)})
        form = parse_qs((await read_body(request, limit=4096)).decode("utf-8", "replace"))
        token = (form.get("token") or [""])[0].strip()
        assert self.app.credentials is not None and self.app.registry_store is not None
        agency = await self.app.credentials.agency_for_token(token, self.app.registry_store.current) if token else None
        viewer = self._viewer_of(agency) if agency else None
        if viewer is None:
            return self._html(pages.login(lang, text("signin.wrong", lang)), request, lang, status=401)
        if not (viewer.coordinator or viewer.inbox):
            return self._html(pages.login(lang, text("signin.forbidden", lang)), request, lang, status=403)
        response = RedirectResponse("/" if viewer.coordinator else "/inbox", status_code=303)
        # Secure whenever the browser speaks HTTPS, directly or to the TLS proxy in front (a forged header
        # only makes the cookie stricter); plain http is for loopback and tests.
        https = request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"
        session = dataclasses.replace(viewer, token_sha256=token_digest(token))
        response.set_cookie(COOKIE, self.sessions.open(session), httponly=True, samesite="strict", path="/",
                            secure=https)
        self.app.log.info("signed in", agency=viewer.agency)
        return response

    async def logout(self, request: Request) -> Response:
        self.sessions.close(request.cookies.get(COOKIE))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    # ---------------------------------------------------------------- pages

    def _page(self, view: Callable[[Request, str], str], title_key: str) -> Callable[[Request], Awaitable[Response]]:
        async def handle(request: Request) -> Response:
            lang = self.lang(request)
            try:
                viewer = await self.viewer(request, inbox=True)
            except NotSignedIn:
                return RedirectResponse("/login", status_code=303)
            except PermissionError:
                return self._html(pages.login(lang, text("signin.forbidden", lang)), request, lang, status=403)
            if not viewer.coordinator:
                return RedirectResponse("/inbox", status_code=303)
            body = view(request, lang)
            if request.headers.get("x-board-part") == "live":
                return self._html(body, request, lang)
            title = " ".join(filter(None, (text(title_key, lang), request.path_params.get("case_id"))))
            return self._html(pages.layout(lang, title, body, path=request.url.path), request, lang)
        return handle

    def page_referrals(self, request: Request, lang: str) -> str:
        now = datetime.now(UTC)
        return pages.referrals(lang, views.open_referrals(self.model, self.policy, now), now)

    def page_case(self, request: Request, lang: str) -> str:
        case_id = request.path_params["case_id"]
        return pages.case(lang, views.timeline(self.model, case_id), case_id)

    def page_agencies(self, request: Request, lang: str) -> str:
        return pages.agencies(lang, views.agency_records(self.model))

    def page_duplicates(self, request: Request, lang: str) -> str:
        return pages.duplicates(lang, self.model.duplicates())

    def page_regions(self, request: Request, lang: str) -> str:
        return pages.regions(lang, self._regions(), MIN_GROUP, self._flags())

    def _flags(self) -> list[dict[str, Any]]:
        return [self.model.region_flags[k] for k in sorted(self.model.region_flags, reverse=True)]

    def _regions(self) -> list[dict[str, Any]]:
        return views.region_rows(self.model, MIN_GROUP)

    def _html(self, body: str, request: Request, lang: str, *, status: int = 200,
              headers: dict[str, str] | None = None) -> Response:
        response = HTMLResponse(body, status_code=status, headers={**SECURITY_HEADERS, **(headers or {})})
        if request.query_params.get("lang") == lang:
            response.set_cookie(LANG_COOKIE, lang, samesite="strict", path="/", max_age=365 * 86400)
        return response

    # ---------------------------------------------------------------- API

    def _api(self, handler: Callable[[Request, Viewer], Awaitable[Response]], *, board: bool = True,
             inbox: bool = False) -> Callable[[Request], Awaitable[Response]]:
        async def handle(request: Request) -> Response:
            try:
                viewer = await self.viewer(request, board=board, inbox=inbox)
            except NotSignedIn:
                return JSONResponse({"error": "sign in at /login, or send Authorization: Bearer <your agency's "
                                              "http_token>"}, status_code=401, headers=SECURITY_HEADERS)
            except PermissionError:
                refusal = ("the inbox is for agencies with `channel: inbox`" if not board else
                           "the board is for the task-force secretariat only")
                return JSONResponse({"error": refusal}, status_code=403, headers=SECURITY_HEADERS)
            response = await handler(request, viewer)
            response.headers.update(SECURITY_HEADERS)
            return response
        return handle

    async def api_referrals(self, request: Request, viewer: Viewer) -> Response:
        return JSONResponse(views.open_referrals(self.model, self.policy, datetime.now(UTC)))

    async def api_case(self, request: Request, viewer: Viewer) -> Response:
        case = views.timeline(self.model, request.path_params["case_id"])
        return JSONResponse(case) if case else JSONResponse({"error": "unknown case"}, status_code=404)

    async def api_agencies(self, request: Request, viewer: Viewer) -> Response:
        return JSONResponse(views.agency_records(self.model))

    async def api_duplicates(self, request: Request, viewer: Viewer) -> Response:
        return JSONResponse(self.model.duplicates())

    async def api_regions(self, request: Request, viewer: Viewer) -> Response:
        return JSONResponse({"min_group": MIN_GROUP, "rows": self._regions(), "flags": self._flags()})

    # ---------------------------------------------------------------- the inbox

    async def _inbox(self, viewer: Viewer) -> list[dict[str, Any]]:
        """The viewer's open referrals, each with its agency's view of the case read from its stored request."""
        rows = inbox_rows(self.model, self.policy, viewer.agency, datetime.now(UTC))
        views_ = await asyncio.gather(*(self._case_view(row["referral_id"]) for row in rows))
        for row, case in zip(rows, views_, strict=True):
            row["case"] = case
        return rows

    async def _case_view(self, referral_id: str) -> dict[str, Any] | None:
        """The `case` routing put in the request for the holding agency (its need-to-know view), or None if
        it cannot be read now; read when asked for, never kept."""
        ref = self.model.referrals.get(referral_id)
        if ref is None or ref.request_seq is None:
            return None
        try:
            stored = await self.app.js.get_msg(subjects.REFERRALS_STREAM, ref.request_seq)
            event = json.loads(stored.data or b"{}")
            case = event["data"]["case"]
            assert self.app.registry_store is not None
            holder = self.app.registry_store.current.get(ref.agency)
            if (event["data"]["referral_id"] != referral_id or event["data"]["agency"] != ref.agency
                    or holder is None or event["data"]["agency_type"] != holder.type.value):
                return None  # not this referral's request, or made for a type the agency no longer is
        except Exception as exc:  # noqa: BLE001 - the page still shows the referral and its deadlines
            self.app.log.warning("case view not read", referral_id=referral_id, error_type=type(exc).__name__)
            return None
        return case if isinstance(case, dict) else None

    def _redirect_targets(self, viewer: Viewer) -> list[tuple[str, str]]:
        """The agencies an answer may redirect to: every enabled one but the viewer's own."""
        assert self.app.registry_store is not None
        agencies = sorted((a for a in self.app.registry_store.current.agencies.values()
                           if a.enabled and a.id != viewer.agency), key=lambda a: (a.type.value, a.id))
        return [(a.id, f"{a.name or a.id} ({a.id})") for a in agencies]

    async def page_inbox(self, request: Request) -> Response:
        lang = self.lang(request)
        try:
            viewer = await self.viewer(request, board=False, inbox=True)
        except NotSignedIn:
            return RedirectResponse("/login", status_code=303)
        except PermissionError:
            return self._html(pages.login(lang, text("signin.forbidden", lang)), request, lang, status=403)
        body = inbox_pages.inbox(lang, viewer.agency, await self._inbox(viewer), self._redirect_targets(viewer),
                                 datetime.now(UTC))
        if request.headers.get("x-board-part") == "live":
            return self._html(body, request, lang)
        return self._html(pages.layout(lang, text("nav.inbox", lang), body, path="/inbox", nav=inbox_pages.INBOX_NAV,
                                       brand="inbox.brand", scripts=("board.js", "inbox.js")), request, lang)

    async def api_inbox(self, request: Request, viewer: Viewer) -> Response:
        return JSONResponse(await self._inbox(viewer))

    async def api_answer(self, request: Request, viewer: Viewer) -> Response:
        """An officer's answer: stored as the agency's own (`alur.response.<agency>`), decided by notify,
        answered as notify's HTTP door answers. JSON only: with the SameSite=Strict cookie, no other site
        can make a browser send it."""
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            return JSONResponse({"error": "send the answer as application/json"}, status_code=415)
        if (wait := self.app.limiter.take(f"inbox:{viewer.agency}")) is not None:
            return JSONResponse({"error": "too many answers at once; wait a moment"}, status_code=429,
                                headers={"Retry-After": retry_after(wait)})
        referral_id = request.path_params["referral_id"]
        answer = await carry(self.app.broker.connection, self.app.js, response_inbox(self.app.name), viewer.agency,
                             referral_id, await read_body(request))
        self.app.log.info("inbox answer", agency=viewer.agency, referral_id=referral_id, http_status=answer.status_code)
        return answer

    async def api_stream(self, request: Request, viewer: Viewer) -> Response:
        """Server-sent events: `change` (with the model's version) whenever the model moves, and whenever a
        running deadline passes (a referral turns overdue before any event says so)."""

        async def events() -> AsyncIterator[str]:
            version = self.changes.version
            yield f"retry: 2000\nevent: hello\ndata: {json.dumps({'version': version})}\n\n"
            while not (self.app.closing.is_set() or await request.is_disconnected()):
                wait = min(KEEPALIVE, self._until_next_deadline())
                current = await self._next_change(version, max(0.05, wait))
                if self.app.closing.is_set():
                    return
                if current != version or wait < KEEPALIVE:
                    version = current
                    yield f"event: change\ndata: {json.dumps({'version': version})}\n\n"
                else:
                    yield ": idle\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"X-Accel-Buffering": "no"})

    async def _next_change(self, version: int, timeout: float) -> int:
        """The model's version once it passed `version`, or after `timeout`; in short waits, so a stopping
        server ends the stream within a second."""
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout
        while (left := until - loop.time()) > 0 and not self.app.closing.is_set():
            current = await self.changes.after(version, min(CLOSING_CHECK, left))
            if current != version:
                return current
        return self.changes.version

    def _until_next_deadline(self) -> float:
        now = datetime.now(UTC)
        upcoming = [(d.due - now).total_seconds() for r in self.model.referrals.values() if r.open
                    for d in views.running_deadlines(r, self.policy) if d.due > now]
        return min(upcoming, default=KEEPALIVE) + 0.05


def create_app(settings: Settings | None = None) -> ServiceAsgi:
    """The board, built and wired: the profile's escalation policy gives the deadlines it shows."""
    app = ServiceApp("board", settings)
    policy = load_policy(profile_dir(app.settings) / "escalation.yaml", scale=app.settings.sla_scale)
    Board(app, policy).register()
    return app.asgi()

