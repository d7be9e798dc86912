"""Nothing stops silently at max_deliver (issue 11): a message whose handler never reaches a verdict — killed
or hung past ack_wait on every delivery — becomes a dead letter from JetStream's max-deliveries advisory."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import nats
import yaml
from faststream import TestApp
from nats.aio.client import Client
from nats.js.api import DeliverPolicy

from runtime.app import ServiceApp
from runtime.deadletters import DeadLetterRelay
from runtime.provision import load_topology, provision
from runtime.settings import TOPOLOGY_FILE, Settings
from tests.support import next_matching


async def test_a_message_that_never_gets_a_verdict_becomes_a_dead_letter(
    nats_server: str, nc: Client, tmp_path: Path
) -> None:
    shipped = yaml.safe_load(TOPOLOGY_FILE.read_text())
    for consumer in shipped["consumers"]:
        if consumer["durable"] == "intake":
            consumer.update(ack_wait=1, max_deliver=2)
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(shipped))
    topology = load_topology(path)
    js = nc.jetstream()
    await provision(js, topology)
    dlq = await js.subscribe("alur.dlq.>", stream="DLQ", ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)

    settings = Settings(nats_url=nats_server, data_dir=tmp_path / "data", topology_file=path)
    app = ServiceApp("intake", settings, topology)
    DeadLetterRelay(app).register()
    async with TestApp(app.asgi()):
        ack = await js.publish("alur.report.polda-kalsel", b'{"never": "acknowledged"}', timeout=5)
        hung = await nats.connect(nats_server)
        pulls = await hung.jetstream().pull_subscribe_bind("intake", stream="REPORTS")
        for _ in range(2):  # two deliveries, neither acknowledged: a handler that hangs each time
            (await pulls.fetch(1, timeout=10))[0]
        with contextlib.suppress(nats.errors.TimeoutError):  # a service always has a pull waiting: the server
            await pulls.fetch(1, timeout=5)  # would deliver a third time, and says instead it may not
        letter = json.loads((await next_matching(dlq, lambda m: True)).data)["data"]
        await hung.close()
    assert (letter["stream"], letter["consumer"], letter["stream_seq"]) == ("REPORTS", "intake", ack.seq)
    assert letter["deliveries"] == 2 and "no verdict" in letter["error"]
    assert letter["subject"] == "alur.report.polda-kalsel" and "acknowledged" not in json.dumps(letter)
