#!/usr/bin/env node
// An agency's side of Alur in Node.js: pull your referrals over NATS JetStream and answer them.
//
//   alur agency creds uptd-ppa-banjarmasin --json > creds.json
//   node agency.mjs creds.json                       # acknowledge and accept each referral, until Ctrl-C
//   node agency.mjs creds.json --once 1 --timeout 60 # stop after answering one referral (exit 1 if none came)
//
// It connects as the agency's own NKey user with exactly what `alur agency creds ID --json` prints.
// That user may only:
//   - publish alur.report.<id> and alur.response.<id>,
//   - pull (MSG.NEXT) and ACK on its own durable consumer agency-<id> on stream REFERRALS,
//   - receive replies under `inbox_prefix` (so the connection must use it as its inbox prefix).
// So: never create, bind, look up or list consumers or streams; pull from the existing consumer by name.
// Agencies live in their own NATS account, which imports only those subjects from Alur's: the JetStream
// API answers a CONSUMER.INFO made through that import with 503 "JetStream not enabled for account", so
// `js.consumers.get()` (which asks for INFO first) cannot work here. `js.fetch(stream, durable)` sends
// the pull request straight to the consumer, which is what an agency may do.
//
// Output: one line per referral event, with the referral id, the case id and routing facts only.
// The event's `case` view can hold victim data (need-to-know): never print or log it.

import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { connect, nkeyAuthenticator } from "nats";

const STREAM = "REFERRALS";
const BATCH = 10;
const FETCH_EXPIRES_MS = 5000;

const USAGE = `usage: node agency.mjs CREDS.json [--once N] [--timeout SECONDS]

  CREDS.json        the output of \`alur agency creds ID --json\`
  --once N          stop after answering N referrals (exit 1 if the timeout comes first)
  --timeout SECONDS stop after this long (default: run until SIGINT/SIGTERM)`;

function fail(message, code = 2) {
  console.error(`agency: ${message}`);
  process.exit(code);
}

function options() {
  let parsed;
  try {
    parsed = parseArgs({
      allowPositionals: true,
      options: {
        once: { type: "string" },
        timeout: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
    });
  } catch (err) {
    fail(`${err.message}\n${USAGE}`);
  }
  const { values, positionals } = parsed;
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  if (positionals.length !== 1) fail(USAGE);
  const once = values.once === undefined ? null : Number(values.once);
  if (once !== null && !(Number.isInteger(once) && once > 0)) fail("--once takes a positive integer");
  const timeout = values.timeout === undefined ? null : Number(values.timeout);
  if (timeout !== null && !(timeout > 0)) fail("--timeout takes a positive number of seconds");

  let creds;
  try {
    creds = JSON.parse(readFileSync(positionals[0], "utf8"));
  } catch (err) {
    fail(`cannot read credentials from ${positionals[0]}: ${err.message}`);
  }
  for (const field of ["agency", "nats_url", "nkey_seed", "inbox_prefix"]) {
    if (typeof creds[field] !== "string" || !creds[field]) {
      fail(`${positionals[0]} has no "${field}": is it the output of \`alur agency creds ID --json\`?`);
    }
  }
  return { creds, once, timeout };
}

// A response's event id derived from the referral event it answers and its status (a name-based,
// version 5 style UUID). If this process dies after publishing but before acking, the referral is
// redelivered and the same ids are published again: JetStream drops them as duplicates (Nats-Msg-Id).
const NAMESPACE = Buffer.from("3c1f0f0e6a2b4d0e9c1e2d5a8b7f6e01", "hex");
function responseId(agency, eventId, status) {
  const h = createHash("sha1").update(NAMESPACE).update(`${agency}/${eventId}/${status}`).digest();
  h[6] = (h[6] & 0x0f) | 0x50;
  h[8] = (h[8] & 0x3f) | 0x80;
  const x = h.subarray(0, 16).toString("hex");
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}`;
}

// What this agency answers to a new referral: seen, then taken on.
const ANSWERS = ["acknowledged", "accepted"];

async function respond(js, agency, requestEvent, status) {
  const referralId = requestEvent.data.referral_id;
  const event = {
    specversion: "1.0",
    id: responseId(agency, requestEvent.id, status),
    source: agency,
    type: "alur.referral.response.v1",
    time: new Date().toISOString(),
    subject: referralId,
    datacontenttype: "application/json",
    data: { referral_id: referralId, status },
  };
  // msgID sets the Nats-Msg-Id header; the PubAck means it is stored in REPORTS.
  await js.publish(`alur.response.${agency}`, JSON.stringify(event), { msgID: event.id, timeout: 10000 });
}

function describe(status, data) {
  const line = [status.padEnd(13), data.referral_id ?? "-", "case", data.case_id ?? "-"];
  if (status === "requested") {
    line.push("service", data.service ?? "-", "priority", data.priority ?? "-", "due", data.due ?? "-");
  }
  if (data.reason) line.push("reason", data.reason);
  if (status === "report_rejected") {
    // one of your reports was refused: fix what each reason names and send it again (a new event id)
    return [status.padEnd(13), "report", data.report_ref ?? "-", "reasons", (data.reasons ?? []).join("; ")].join(" ");
  }
  if (status === "response_refused") line.push("code", data.code ?? "-", "of response", data.response_id ?? "-");
  return line.join(" ");
}

async function main() {
  const { creds, once, timeout } = options();
  const agency = creds.agency;
  const durable = `agency-${agency}`;

  const nc = await connect({
    servers: creds.nats_url.split(",").map((s) => s.trim()),
    authenticator: nkeyAuthenticator(new TextEncoder().encode(creds.nkey_seed)),
    inboxPrefix: creds.inbox_prefix, // replies (PubAcks, pulled messages) arrive only here
    name: durable,
    maxReconnectAttempts: -1,
  }).catch((err) => fail(`cannot connect to ${creds.nats_url} as ${agency}: ${err.message}`, 1));

  (async () => {
    for await (const s of nc.status()) {
      if (["error", "disconnect", "reconnect", "ldm"].includes(s.type)) {
        console.error(`agency: nats ${s.type}${s.data ? ` ${s.data}` : ""}`);
      }
    }
  })();

  const js = nc.jetstream();

  let answered = 0;
  let stopping = false;
  let current = null;
  const stop = () => {
    stopping = true;
    current?.stop();
  };
  process.once("SIGINT", stop);
  process.once("SIGTERM", stop);
  const timer = timeout === null ? null : setTimeout(stop, timeout * 1000);

  while (!stopping) {
    const want = once === null ? BATCH : Math.min(BATCH, once - answered);
    try {
      current = js.fetch(STREAM, durable, { batch: want, expires: FETCH_EXPIRES_MS });
      for await (const m of current) {
        if (stopping) {
          m.nak(); // fetched but not handled: back to the consumer at once, for the next run
          continue;
        }
        const status = m.subject.split(".")[2];
        let event;
        try {
          event = JSON.parse(new TextDecoder().decode(m.data));
        } catch {
          console.error(`agency: message ${m.seq} on ${m.subject} is not JSON; terminated`);
          m.term();
          continue;
        }
        const data = event.data ?? {};
        console.log(describe(status, data));
        if (status === "requested") {
          try {
            for (const answer of ANSWERS) await respond(js, agency, event, answer);
          } catch (err) {
            console.error(`agency: answering ${data.referral_id} failed (${err.message}); redelivered in 5 s`);
            m.nak(5000);
            continue;
          }
          answered += 1;
          if (once !== null && answered >= once) stop();
        }
        m.ack();
      }
    } catch (err) {
      if (stopping) break;
      const hint = /permissions violation/i.test(err.message)
        ? `connect with inboxPrefix "${creds.inbox_prefix}" and pull only ${durable}`
        : `is ${agency} registered with channel nats, and is Alur up?`;
      console.error(`agency: pulling ${durable} on ${STREAM} failed: ${err.message} (${hint}); retrying`);
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }

  if (timer) clearTimeout(timer);
  await nc.drain(); // flushes the acks before closing
  if (once !== null && answered < once) {
    console.error(`agency: answered ${answered} of ${once} referrals before the timeout`);
    process.exit(1);
  }
}

main().catch((err) => fail(err.stack ?? String(err), 1));
