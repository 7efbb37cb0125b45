// The trade-off page of `quicbus demo --web` in headless Chromium: the
// same world drawn from reliable events and from datagrams while the
// page's own path (netsim) loses packets. Takes two screenshots
// (tradeoff-0pct.png, tradeoff-5pct.png, in web/e2e/output/ or
// $SCREENSHOTS; the README's are refreshed with SCREENSHOTS=../docs and a
// release binary) and checks what they show.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { mkdirSync } from "node:fs";
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { chromiumPath, quicbusBin, WAIT, within } from "./harness.mjs";

const shots = process.env.SCREENSHOTS ?? resolve(fileURLToPath(new URL(".", import.meta.url)), "output");
/** One way's delay on the page's path in both screenshots: a typical internet path, so a retransmission costs what it costs there. */
const DELAY_MS = 40;
const JITTER_MS = 5;
/** Seconds each setting runs before its screenshot. */
const SETTLE_S = 6;

let browser;
let demo;

before(async () => {
  browser = await chromium.launch({ executablePath: chromiumPath(), args: ["--no-sandbox"] });
  const child = spawn(quicbusBin(), ["demo", "--web", "127.0.0.1:0"], { stdio: ["ignore", "ignore", "pipe"] });
  const lines = createInterface({ input: child.stderr });
  const url = await within(
    "the demo's page address",
    new Promise((resolve, reject) => {
      lines.on("line", (line) => {
        const m = line.match(/open (http:\/\/\S+) in a browser/);
        if (m) resolve(m[1]);
      });
      child.on("exit", (code) => reject(new Error(`quicbus demo exited with ${code}`)));
    }),
  );
  demo = { child, url };
});

after(async () => {
  await browser?.close();
  demo?.child.kill("SIGKILL");
});

/** Sets the page's path from the page itself, as its sliders do, and waits `SETTLE_S` seconds of the page's own clock. */
async function runWith(page, impairment) {
  const answer = await page.evaluate((i) => window.tradeoff.setImpairment(i), impairment);
  assert.deepEqual(answer, impairment, "the demo took the setting");
  await page.waitForFunction((s) => window.tradeoff.sinceChange >= s, SETTLE_S, {
    timeout: WAIT + SETTLE_S * 1000,
  });
  return page.evaluate(() => ({
    reliable: { ...window.tradeoff.reliable },
    datagram: { ...window.tradeoff.datagram },
  }));
}

test("the trade-off page: the reliable view stutters under loss, the datagram view drops frames", async () => {
  mkdirSync(shots, { recursive: true });
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(demo.url);
  await page.waitForSelector('body[data-ready="1"]', { timeout: WAIT }).catch((e) => {
    throw new Error(`the page never got both views going: ${e.message}; ${errors.join("; ")}`);
  });

  const clean = await runWith(page, { loss: 0, delay_ms: DELAY_MS, jitter_ms: JITTER_MS });
  await page.screenshot({ path: `${shots}/tradeoff-0pct.png` });
  // Nothing lost on a clean path: both views see (nearly) every tick.
  for (const side of ["reliable", "datagram"]) {
    assert.ok(clean[side].perSecond >= 30, `${side} at 0%: ${JSON.stringify(clean[side])}`);
  }
  assert.equal(clean.reliable.lost, 0);

  const lossy = await runWith(page, { loss: 5, delay_ms: DELAY_MS, jitter_ms: JITTER_MS });
  await page.screenshot({ path: `${shots}/tradeoff-5pct.png` });
  const { reliable, datagram } = lossy;
  const said = JSON.stringify(lossy);
  // Reliable: nothing lost, but every loss holds back what follows it.
  assert.equal(reliable.lost, 0, said);
  assert.ok(reliable.stalls > datagram.stalls, `the reliable view stalls more: ${said}`);
  assert.ok(reliable.ageP99 > datagram.ageP99, `reliable snapshots are older at p99: ${said}`);
  // Datagrams: smooth, and some frames are simply gone.
  assert.ok(datagram.lost > 0, `datagrams were lost: ${said}`);
  assert.ok(datagram.perSecond >= 30, `the datagram view keeps moving: ${said}`);
  assert.deepEqual(errors, []);
  await page.close();
});
