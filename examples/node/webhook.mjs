#!/usr/bin/env node
// An agency's webhook receiver for Alur in Node.js: verify each delivery, answer fast.
//
//   WEBHOOK_SECRET=whsec_... node webhook.mjs --port 8090
//   alur agency add dinkes-tala --type health --regions 6301 \
//        --channel webhook --url http://127.0.0.1:8090/ --secret whsec_... --allow-private-network
//
// Alur POSTs each referral event (a CloudEvent) signed per Standard Webhooks: headers webhook-id,
// webhook-timestamp and webhook-signature ("v1,<base64 HMAC-SHA256>" with the agency's whsec_ secret).
// This server verifies the signature over the raw body (never a re-serialised JSON object), answers
// 204 at once when it is valid (Alur publishes `delivered` on a 2xx, and retries anything else with
// backoff) and 401 when it is not. A retry carries the same webhook-id: use it to drop repeats.
//
// stdout: one JSON line per request: {"verified", "type", "referral_id", "webhook_id", "duplicate"}
// (never the case view: it can hold victim data), after a first line {"ready": true, "url": ...}.

import { createServer } from "node:http";
import { parseArgs } from "node:util";
import { Webhook } from "standardwebhooks";

const MAX_BODY = 1024 * 1024; // referral events are a few kB
const SEEN_MAX = 10000; // webhook-ids remembered to drop redeliveries

const USAGE = `usage: node webhook.mjs [--port PORT] [--host HOST] [--secret whsec_...]

  --port   port to listen on (env PORT, default 8090; 0 picks a free one, shown in the ready line)
  --host   address to listen on (env HOST, default 127.0.0.1)
  --secret the agency's webhook secret (env WEBHOOK_SECRET; prefer the environment: argv is visible to ps)`;

function fail(message) {
  console.error(`webhook: ${message}`);
  process.exit(2);
}

let parsed;
try {
  parsed = parseArgs({
    options: {
      port: { type: "string" },
      host: { type: "string" },
      secret: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
} catch (err) {
  fail(`${err.message}\n${USAGE}`);
}
const args = parsed.values;
if (args.help) {
  console.log(USAGE);
  process.exit(0);
}
const port = Number(args.port ?? process.env.PORT ?? 8090);
if (!Number.isInteger(port) || port < 0 || port > 65535) fail("--port takes a port number");
const host = args.host ?? process.env.HOST ?? "127.0.0.1";
const secret = args.secret ?? process.env.WEBHOOK_SECRET;
if (!secret || !secret.startsWith("whsec_")) fail(`a whsec_ secret is required\n${USAGE}`);

let webhook;
try {
  webhook = new Webhook(secret);
} catch (err) {
  fail(`the secret is not a valid whsec_ secret: ${err.message}`);
}

const seen = new Set();
function remember(id) {
  if (seen.has(id)) return true;
  seen.add(id);
  if (seen.size > SEEN_MAX) seen.delete(seen.values().next().value);
  return false;
}

function record(entry) {
  process.stdout.write(JSON.stringify(entry) + "\n");
}

const server = createServer((req, res) => {
  if (req.method !== "POST") {
    res.writeHead(405, { allow: "POST" }).end();
    record({ verified: false, type: null, referral_id: null, error: `method ${req.method}` });
    return;
  }
  const chunks = [];
  let size = 0;
  let tooLarge = false;
  req.on("data", (chunk) => {
    size += chunk.length;
    if (size > MAX_BODY) {
      tooLarge = true;
      req.pause();
      res.writeHead(413, { connection: "close" }).end();
      req.destroy();
      record({ verified: false, type: null, referral_id: null, error: "body too large" });
      return;
    }
    chunks.push(chunk);
  });
  req.on("end", () => {
    if (tooLarge) return;
    const body = Buffer.concat(chunks).toString("utf8");
    let event;
    try {
      // The raw body and the request's headers (node lower-cases their names, as the library expects).
      event = webhook.verify(body, req.headers);
    } catch (err) {
      res.writeHead(401).end();
      // Nothing from an unverified body is trusted or echoed.
      record({ verified: false, type: null, referral_id: null, error: err.message });
      return;
    }
    res.writeHead(204).end(); // answer first; do the work (queue it, hand it on) after
    const webhookId = req.headers["webhook-id"];
    record({
      verified: true,
      type: event?.type ?? null,
      referral_id: event?.data?.referral_id ?? null,
      webhook_id: webhookId,
      duplicate: remember(webhookId),
    });
  });
});

server.on("error", (err) => fail(`cannot listen on ${host}:${port}: ${err.message}`));
server.listen(port, host, () => {
  const address = server.address();
  const shown = address.family === "IPv6" ? `[${address.address}]` : address.address;
  record({ ready: true, url: `http://${shown}:${address.port}/` });
});

for (const signal of ["SIGINT", "SIGTERM"]) {
  process.once(signal, () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
  });
}
