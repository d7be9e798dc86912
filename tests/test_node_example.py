"""The Node.js agency example (examples/node) against a real `alur up`, as an integrator would run it.

- `agency.mjs` connects with exactly what `alur agency creds ID --json` prints, pulls the agency's own
  consumer, answers a referral of the reference report with `acknowledged` then `accepted`, and notify
  turns both into facts on REFERRALS; it prints no victim data;
- `webhook.mjs` receives Alur's signed delivery for a webhook agency added while the system runs,
  verifies it with the `standardwebhooks` npm package and answers 204 (so notify publishes `delivered`);
  a request with a bad signature gets 401 and is logged as not verified; `alur agency check` passes on it;
- `agency.mjs` prints the agency's own rejected report (`report_rejected`) with its reasons.

Skipped when `node` is missing or `npm ci` was not run in examples/node.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

from tests.conftest import (
    REFERENCE_REPORT,
    Running,
    alur_stack,
    reference_report,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "node"
AGENCY = "uptd-ppa-banjarmasin"  # gets referrals for the reference report (regency 6371)
REPORTER = "bp3mi-kalsel"
DEADLINE = 30.0  # generous: a loaded CI machine is slow, and nothing here waits for a fixed time
VICTIM_DATA = (*REFERENCE_REPORT["data"]["victim"]["identity"].values(), REFERENCE_REPORT["data"]["narrative"])


@pytest.fixture(scope="module")
def node() -> str:
    path = shutil.which("node")
    if path is None:
        pytest.skip("node not found: install Node.js 20 to run the Node.js example tests")
    if not (EXAMPLE / "node_modules").is_dir():
        pytest.skip("run npm ci in examples/node (CI does)")
    return path


@pytest.fixture(scope="module")
def stack(node: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """One `alur up` for the module, at real SLA scale: no reminder or escalation races the example."""
    yield from alur_stack(tmp_path_factory.mktemp("node-example") / "alur", ALUR_SLA_SCALE="1")


# ---------------------------------------------------------------------------------------------- helpers


async def publish_report(running: Running, report: dict[str, Any]) -> None:
    reporter = await running.agency(REPORTER)
    try:
        ack = await reporter.jetstream().publish(f"alur.report.{REPORTER}", json.dumps(report).encode(),
                                                 headers={"Nats-Msg-Id": report["id"]}, timeout=10)
        assert ack.stream == "REPORTS"
    finally:
        await reporter.close()


class Referrals:
    """REFERRALS events for one agency from the start (admin connection, ordered consumer)."""

    def __init__(self, sub: Any) -> None:
        self.sub = sub
        self.seen: list[tuple[str, dict[str, Any]]] = []  # (verb, data)

    @classmethod
    @contextlib.asynccontextmanager
    async def of(cls, running: Running, agency: str) -> AsyncIterator[Referrals]:
        admin = await running.admin()
        try:
            js: JetStreamContext = admin.jetstream()
            sub = await js.subscribe(f"alur.referral.*.{agency}", stream="REFERRALS", ordered_consumer=True,
                                     deliver_policy=DeliverPolicy.ALL)
            yield cls(sub)
        finally:
            await admin.close()

    async def seek(self, verb: str, referral_id: str | None = None, timeout: float = DEADLINE) -> dict[str, Any]:
        """The data of the first `verb` event (about `referral_id`, if given), waiting up to `timeout`."""
        def matches(v: str, d: dict[str, Any]) -> bool:
            return v == verb and (referral_id is None or d.get("referral_id") == referral_id)

        for v, d in self.seen:
            if matches(v, d):
                return d
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                msg = await self.sub.next_msg(timeout=remaining)
            except TimeoutError:
                break
            v, d = msg.subject.split(".")[2], json.loads(msg.data)["data"]
            self.seen.append((v, d))
            if matches(v, d):
                return d
        raise AssertionError(f"no {verb} event{' about ' + referral_id if referral_id else ''} within {timeout} s; "
                             f"seen: {[(v, d.get('referral_id')) for v, d in self.seen]}")


class Lines:
    """A child process's output lines as they come, read by a background task."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self.lines: list[str] = []
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._read(stream))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self.lines.append(line.decode(errors="replace").rstrip("\n"))
            self._changed.set()
        self._changed.set()

    async def wait(self, predicate: Callable[[str], bool], timeout: float = DEADLINE, after: int = 0) -> str:
        """The first line at index >= `after` for which `predicate` holds, waiting up to `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines[after:]:
                if predicate(line):
                    return line
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._task.done():
                raise AssertionError(f"no matching line within {timeout} s; got:\n" + "\n".join(self.lines))
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=remaining)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._task, timeout=5)


async def kill(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.kill()
        await process.wait()


def json_lines(lines: list[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines if line.startswith("{")]


# ------------------------------------------------------------------------------ 1. agency.mjs over NATS


async def test_agency_example_acknowledges_and_accepts_its_referral(node: str, stack: Running,
                                                                    tmp_path: Path) -> None:
    creds = json.loads(stack.cli("agency", "creds", AGENCY, "--json").stdout)
    assert creds["agency"] == AGENCY and creds["inbox_prefix"]
    creds_file = tmp_path / "creds.json"
    creds_file.write_text(json.dumps(creds))
    creds_file.chmod(0o600)

    async with Referrals.of(stack, AGENCY) as referrals:
        # one of the agency's own reports is refused: it hears so on its consumer, before its referral
        bad = reference_report(report_ref="UPTD-BJM-BAD-1", risk="extreme") | {"id": str(uuid.uuid4())}
        own = await stack.agency(AGENCY)
        try:
            await own.jetstream().publish(f"alur.report.{AGENCY}", json.dumps(bad).encode(),
                                          headers={"Nats-Msg-Id": bad["id"]}, timeout=10)
        finally:
            await own.close()
        await referrals.seek("report_rejected")
        await publish_report(stack, REFERENCE_REPORT)
        process = await asyncio.create_subprocess_exec(
            node, str(EXAMPLE / "agency.mjs"), str(creds_file), "--once", "1", "--timeout", str(2 * DEADLINE),
            cwd=EXAMPLE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(process.communicate(), timeout=3 * DEADLINE)
        finally:
            await kill(process)
        stdout, stderr = out.decode(), err.decode()
        assert process.returncode == 0, f"agency.mjs exited {process.returncode}\n{stdout}\n{stderr}"

        # It printed the referral it answered: status, referral id, case id.
        requested = [line.split() for line in stdout.splitlines() if line.startswith("requested")]
        assert len(requested) == 1, stdout
        _, referral_id, case_word, case_id, *_ = requested[0]
        assert case_word == "case"

        # Notify took both answers from the agency's own user and made them facts.
        request = await referrals.seek("requested", referral_id)
        assert request["case_id"] == case_id and request["agency"] == AGENCY
        acknowledged = await referrals.seek("acknowledged", referral_id)
        accepted = await referrals.seek("accepted", referral_id)
        assert acknowledged["status"] == "acknowledged" and accepted["status"] == "accepted"
        assert not [d for v, d in referrals.seen if v == "response_refused" and d.get("referral_id") == referral_id]
    rejected = [line for line in stdout.splitlines() if line.startswith("report_rejected")]
    assert rejected and "UPTD-BJM-BAD-1" in rejected[0] and "data.risk" in rejected[0], stdout

    for secret in (*VICTIM_DATA, creds["nkey_seed"]):
        assert secret not in stdout and secret not in stderr


# --------------------------------------------------------------------------- 2. webhook.mjs over HTTP

WEBHOOK_AGENCY = "dinkes-tala"  # health, Tanah Laut (6301): added live, as a webhook agency
TANAH_LAUT = {"regency": "6301", "exploitation_location": "abroad", "country": "MY"}


async def add_agency_live(running: Running, *args: str) -> None:
    """`alur agency add ...` while the stack runs, then wait until notify's live registry holds it.

    Registry changes reach notify in order, and notify provisions a consumer for each new NATS agency:
    once the consumer of a NATS agency added after this one exists, notify knows this one too.
    """
    await asyncio.to_thread(running.cli, "agency", "add", *args)
    sentinel = f"polres-sentinel-{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(running.cli, "agency", "add", sentinel, "--type", "police", "--regions", "6305")
    admin = await running.admin()
    try:
        js = admin.jetstream()
        deadline = time.monotonic() + DEADLINE
        while True:
            try:
                await js.consumer_info("REFERRALS", f"agency-{sentinel}")
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise AssertionError("notify did not pick up the registry change in time") from None
            await asyncio.sleep(0.1)  # polling interval, not a wait for a fixed time
    finally:
        await admin.close()


async def test_webhook_example_verifies_alurs_delivery_and_refuses_a_bad_signature(node: str,
                                                                                    stack: Running) -> None:
    secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    process = await asyncio.create_subprocess_exec(
        node, str(EXAMPLE / "webhook.mjs"), "--port", "0", cwd=EXAMPLE,
        env={**os.environ, "WEBHOOK_SECRET": secret},  # not in argv: visible to ps
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    out, err = Lines(process.stdout), Lines(process.stderr)
    try:
        ready = json.loads(await out.wait(lambda line: '"ready"' in line))
        url = ready["url"]
        assert url.startswith("http://127.0.0.1:")

        await add_agency_live(stack, WEBHOOK_AGENCY, "--type", "health", "--regions", "6301",
                              "--channel", "webhook", "--url", url, "--secret", secret,
                              "--allow-private-network")  # the example listens on 127.0.0.1
        async with Referrals.of(stack, WEBHOOK_AGENCY) as referrals:
            report = reference_report(report_ref="BP3MI-KS-2026-0413", location=TANAH_LAUT)
            report["id"] = str(uuid.uuid4())
            assert "medical" in report["data"]["needs"]
            await publish_report(stack, report)

            request = await referrals.seek("requested")
            assert request["service"] in ("medical", "psychological") and request["agency"] == WEBHOOK_AGENCY
            delivery = json.loads(await out.wait(lambda line: request["referral_id"] in line))
            assert delivery["verified"] is True
            assert delivery["type"] == "alur.referral.requested.v1"
            assert delivery["referral_id"] == request["referral_id"]
            # The 204 counted as a delivery.
            await referrals.seek("delivered", request["referral_id"])

        # A request that is not signed with the agency's secret: 401, logged as not verified.
        before = len(out.lines)
        forged = json.dumps({"specversion": "1.0", "id": str(uuid.uuid4()), "type": "alur.referral.requested.v1",
                             "data": {"referral_id": request["referral_id"]}})
        bad_key = base64.b64encode(os.urandom(32)).decode()
        async with httpx.AsyncClient(timeout=DEADLINE) as client:
            answer = await client.post(url, content=forged, headers={
                "content-type": "application/json", "webhook-id": "msg_forged",
                "webhook-timestamp": str(int(time.time())), "webhook-signature": f"v1,{bad_key}"})
        assert answer.status_code == 401
        refused = json.loads(await out.wait(lambda line: '"verified":false' in line, after=before))
        assert refused["verified"] is False and refused["referral_id"] is None

        assert all(entry["verified"] for entry in json_lines(out.lines[:before]) if "ready" not in entry), \
            "every delivery from Alur verified"

        # The example passes Alur's conformance check: a signed test event 204, a forged one 401.
        check = await asyncio.to_thread(stack.cli, "agency", "check", WEBHOOK_AGENCY, "--json", check=False)
        assert check.returncode == 0 and json.loads(check.stdout)["passed"] is True, check.stdout
    finally:
        await kill(process)
        await out.close()
        await err.close()
    for text in (*VICTIM_DATA, secret):
        assert all(text not in line for line in out.lines + err.lines)
    assert secret not in stack.logs()
