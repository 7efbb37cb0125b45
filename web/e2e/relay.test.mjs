// The page-side relay round trip, the browser's counterpart of
// `quicbus bench latency`'s relay: page A emits into room `ping`, page B
// (another tab of the same browser) bounces each event into `pong`, and A
// times the round trip, one in flight, reliable and datagram. Reports
// p50/p99 (and writes them to $RELAY_JSON if set); asserts nothing about
// speed, only that every reliable round trip completes in order.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { chromium } from "playwright-core";
import { chromiumPath, scratch, startServer, WAIT } from "./harness.mjs";

const SAMPLES = Number(process.env.RELAY_SAMPLES ?? 300);
const WARMUP = 30;

let browser;
let server;
let tmp;

before(async () => {
  browser = await chromium.launch({ executablePath: chromiumPath(), args: ["--no-sandbox"] });
  tmp = scratch("relay");
  server = await startServer({ dir: tmp.dir, args: ["--memory"] });
});

after(async () => {
  await browser?.close();
  await server?.kill();
  tmp?.remove();
});

async function page() {
  const p = await browser.newPage();
  await p.goto(server.webUrl);
  await p.waitForSelector('#state[data-state="connected"]', { timeout: WAIT });
  return p;
}

function percentile(sorted, q) {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

test("page-side relay round trip, reliable and datagram", async () => {
  const [a, b] = [await page(), await page()];
  await b.evaluate(async () => {
    await window.bus.join("ping");
    (async () => {
      for await (const e of window.bus.events()) {
        if (e.room !== "ping") continue;
        if (e.delivery === "reliable") window.bus.emit("pong", "pong", e.payload, { ack: false });
        else window.bus.emitDatagram("pong", "pong", e.payload);
      }
    })();
  });
  await a.evaluate(async () => {
    await window.bus.join("pong");
    // The room id for datagrams, looked up before the clock starts.
    window.bus.emitDatagram("ping", "warm", "x");
  });
  const results = {};
  for (const kind of ["reliable", "datagram"]) {
    const run = await a.evaluate(
      async ({ kind, samples, warmup }) => {
        const events = window.bus.events()[Symbol.asyncIterator]();
        const rtts = [];
        let lost = 0;
        let misordered = 0;
        for (let i = 0; i < warmup + samples; i++) {
          const mark = `${kind}-${i}`;
          const t0 = performance.now();
          if (kind === "reliable") window.bus.emit("ping", "ping", mark, { ack: false });
          else window.bus.emitDatagram("ping", "ping", mark);
          // Datagrams may be lost: a round trip not back in 500 ms counts as lost.
          const deadline = new Promise((resolve) => setTimeout(() => resolve(null), kind === "reliable" ? 10_000 : 500));
          for (;;) {
            const next = await Promise.race([events.next(), deadline]);
            if (next === null) {
              lost++;
              break;
            }
            const e = next.value;
            if (e.room !== "pong" || e.delivery !== kind) continue;
            const text = e.text();
            if (text !== mark) {
              misordered++;
              continue;
            }
            if (i >= warmup) rtts.push(performance.now() - t0);
            break;
          }
        }
        events.return?.();
        return { rtts, lost, misordered };
      },
      { kind, samples: SAMPLES, warmup: WARMUP },
    );
    const sorted = [...run.rtts].sort((x, y) => x - y);
    results[kind] = {
      samples: SAMPLES,
      returned: run.rtts.length,
      lost: run.lost,
      p50_ms: percentile(sorted, 0.5),
      p99_ms: percentile(sorted, 0.99),
      max_ms: sorted[sorted.length - 1],
    };
    if (kind === "reliable") {
      assert.equal(run.lost, 0, "no reliable round trip lost");
      assert.equal(run.misordered, 0, "reliable events come back in order");
      assert.equal(run.rtts.length, SAMPLES);
    } else {
      assert.ok(run.rtts.length > 0, "some datagram round trips complete");
    }
  }
  const line = (k, r) =>
    `${k.padEnd(9)} ${String(r.returned).padStart(5)}/${r.samples}  p50 ${r.p50_ms.toFixed(2)} ms  p99 ${r.p99_ms.toFixed(2)} ms  max ${r.max_ms.toFixed(2)} ms`;
  console.log(`page-side relay (page A → server → page B → server → page A), one in flight:`);
  for (const [k, r] of Object.entries(results)) console.log(line(k, r));
  if (process.env.RELAY_JSON) writeFileSync(process.env.RELAY_JSON, JSON.stringify(results, null, 2) + "\n");
  await a.close();
  await b.close();
});
