"""Retention (issue 10): each stream keeps what the topology says, and a refused input is deleted from
REPORTS once its reporter has been told and its retention (`retention.refused_inputs`) has run out."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError

from runtime.settings import TOPOLOGY_FILE
from tests.conftest import (
    REFERENCE_REPORT,
    Running,
    alur_env,
    reference_report,
    start_alur,
    stop_alur,
)
from tests.support import next_matching, wait_for

DAY = 86400.0


@pytest.fixture
def short_lived(tmp_path: Path) -> Iterator[Running]:
    """`alur up` with the shipped topology, except that a refused input lives two seconds."""
    topology = yaml.safe_load(TOPOLOGY_FILE.read_text())
    topology["retention"]["refused_inputs"] = "2s"
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(topology))
    data_dir = tmp_path / "alur"
    running = start_alur(data_dir, env=alur_env(data_dir, ALUR_TOPOLOGY_FILE=str(path)))
    yield running
    if running.process.poll() is None:
        stop_alur(running)


async def test_streams_keep_what_the_topology_says_and_a_refused_input_is_deleted_after_its_retention(
    short_lived: Running,
) -> None:
    admin = await short_lived.admin()
    js = admin.jetstream()
    assert (await js.stream_info("REPORTS")).config.max_age == 90 * DAY
    assert (await js.stream_info("CASES")).config.max_age == 0 and (await js.stream_info("CASES")).config.deny_delete
    rejections = await js.subscribe("alur.case.rejected.*", stream="CASES", ordered_consumer=True,
                                    deliver_policy=DeliverPolicy.ALL)
    reporter = await short_lived.agency("bp3mi-kalsel")
    bad = reference_report(report_ref="RETENTION-BAD", victim={"age": "sixteen"}) | {"id": str(uuid.uuid4())}
    refused = await reporter.jetstream().publish("alur.report.bp3mi-kalsel", json.dumps(bad).encode(), timeout=5)
    kept = await reporter.jetstream().publish("alur.report.bp3mi-kalsel", json.dumps(REFERENCE_REPORT).encode(),
                                              timeout=5)
    told = json.loads((await next_matching(rejections, lambda m: True)).data)["data"]
    assert told["stream_seq"] == refused.seq, "the reporter is told first"

    async def forgotten() -> bool:
        try:
            await js.get_msg("REPORTS", refused.seq)
        except NotFoundError:
            return True
        return False
    await wait_for(forgotten, timeout=60)
    assert (await js.get_msg("REPORTS", kept.seq)).data, "an accepted input stays"
    await reporter.close()
    await admin.close()
