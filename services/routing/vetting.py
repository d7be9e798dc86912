"""Vetting a candidate rule pack in a child process, with a deadline, before the rule book swaps it in.

Checking a pack runs its conditions: on sample facts (the type check) and on every case of its tests.
CEL runs in Rust and a thread cannot be stopped, so a runaway condition would hold routing's event loop
for as long as it runs. The load-time bounds (`limits`) make that unlikely; this makes it harmless: the
whole check (YAML, compile, samples, tests) runs in a child process that is killed when it takes longer
than the timeout, and the pack is then refused while the old one keeps running.

The child is `python -m services.routing.vetting`: it imports what it needs, says `ready` (so the
timeout measures the check, not the imports of a loaded machine), reads one `Candidate` as JSON on
stdin, writes one `Verdict` as JSON on stdout and exits. It dies with its parent (Linux).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import subprocess
import sys
import time
from typing import Any

import yaml
from pydantic import BaseModel, Field

from domain.registry import AgencyRegistry
from services.routing.pack_tests import PackTest, parse_pack_tests, run_pack_tests
from services.routing.rules import RulePack, RulePackError, pack_from_text
from services.routing.views import ViewCatalog, parse_views

STARTUP_TIMEOUT = 60.0
"""How long the child may take to import and say `ready` (not part of the validation timeout)."""

READY = b"ready\n"
PR_SET_PDEATHSIG = 1


class Candidate(BaseModel):
    """Everything the child needs to judge a pack, as plain data."""

    rules: str
    """The pack as YAML (or JSON) text."""
    tests: str | None = None
    """`rules_tests.yaml` as text, if there is one beside the pack."""
    test_cases: list[dict[str, Any]] = Field(default_factory=list)
    """The tests to run when `tests` is None or holds none (the active pack's, or those given)."""
    registry: dict[str, Any]
    views: dict[str, Any]
    active_version: str
    active_digest: str

    @classmethod
    def of(
        cls,
        rules: str,
        *,
        tests: str | None,
        test_cases: tuple[PackTest, ...],
        registry: AgencyRegistry,
        views: ViewCatalog,
        active: RulePack,
    ) -> Candidate:
        """A candidate judged against the active pack; the registry goes without URLs or webhook secrets."""
        agencies = [a.model_dump(mode="json", include={"id", "type", "regions", "enabled"})
                    for a in registry.agencies.values()]
        return cls(
            rules=rules, tests=tests, test_cases=[t.model_dump(mode="json") for t in test_cases],
            registry={"agencies": {a["id"]: a for a in agencies}}, views=views.model_dump(mode="json"),
            active_version=active.version, active_digest=active.digest,
        )


class Verdict(BaseModel):
    """What the check found: `ok` with the pack's digest, or the problems; `unchanged` when the candidate
    is the active pack itself."""

    ok: bool
    problems: list[str] = Field(default_factory=list)
    digest: str | None = None
    unchanged: bool = False


def judge(candidate: Candidate) -> Verdict:
    """The check itself (in the child): parse and compile the pack, type-check it on sample facts, refuse
    a new pack under the active version, and run the tests. Pure apart from CPU."""
    try:
        pack = pack_from_text(candidate.rules)
    except RulePackError as exc:
        return Verdict(ok=False, problems=list(exc.problems))
    if pack.digest == candidate.active_digest:
        return Verdict(ok=True, digest=pack.digest, unchanged=True)
    if pack.version == candidate.active_version:
        return Verdict(ok=False, problems=[f"version {pack.version} is already active with other rules: bump `version`"])
    try:
        beside = parse_pack_tests(yaml.safe_load(candidate.tests)) if candidate.tests is not None else []
        tests = beside or [PackTest.model_validate(t) for t in candidate.test_cases]
    except (ValueError, yaml.YAMLError) as exc:
        return Verdict(ok=False, problems=[f"tests: {str(exc)[:300]}"])
    registry = AgencyRegistry.model_validate(candidate.registry)
    report = run_pack_tests(pack, tests, registry, parse_views(candidate.views))
    if not report.ok:
        return Verdict(ok=False, problems=report.summary())
    return Verdict(ok=True, digest=pack.digest)


def _read(stream: Any, deadline: float, *, line: bool) -> bytes | None:
    """The child's output up to a newline (`line`) or its end; None when the deadline passes first."""
    fd = stream.fileno()
    chunks: list[bytes] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            return None
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        if line and b"\n" in chunk:
            return b"".join(chunks)


def vet(candidate: Candidate, *, timeout: float, startup: float = STARTUP_TIMEOUT) -> Verdict:
    """`judge` in a child process, killed if it takes longer than `timeout` seconds. Blocks the calling
    thread (call it off the event loop); never raises for what the child does."""
    child = subprocess.Popen(  # noqa: S603 - our own interpreter and module, no shell
        [sys.executable, "-m", "services.routing.vetting"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, env={**os.environ, "ALUR_VETTING_PARENT": str(os.getpid())},
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        if _read(child.stdout, time.monotonic() + startup, line=True) != READY:
            return Verdict(ok=False, problems=[f"the validation worker did not start within {startup:g} s"])
        started = time.monotonic()
        try:
            child.stdin.write(candidate.model_dump_json().encode())
            child.stdin.close()
        except BrokenPipeError:
            return Verdict(ok=False, problems=["the validation worker stopped before reading the pack"])
        output = _read(child.stdout, started + timeout, line=False)
        if output is None:
            return Verdict(ok=False, problems=[f"validation took longer than {timeout:g} s: the pack is refused"])
        try:
            return Verdict.model_validate_json(output)
        except ValueError:
            return Verdict(ok=False, problems=[f"the validation worker failed (exit code {child.wait()})"])
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        for pipe in (child.stdin, child.stdout):
            with contextlib.suppress(OSError):
                pipe.close()


def _die_with_parent() -> None:
    """A worker left running by a dead routing service would burn a CPU for as long as its pack runs."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if str(os.getppid()) != os.environ.get("ALUR_VETTING_PARENT", str(os.getppid())):
        os._exit(1)  # the parent died before prctl took effect


def _serve() -> None:
    _die_with_parent()
    sys.stdout.buffer.write(READY)
    sys.stdout.buffer.flush()
    try:
        verdict = judge(Candidate.model_validate_json(sys.stdin.buffer.read()))
    except Exception as exc:  # noqa: BLE001 - reported as a refusal, never as a traceback with pack data
        verdict = Verdict(ok=False, problems=[f"validation failed: {type(exc).__name__}: {str(exc)[:300]}"])
    sys.stdout.buffer.write(verdict.model_dump_json().encode())
    sys.stdout.buffer.flush()


if __name__ == "__main__":
    _serve()
