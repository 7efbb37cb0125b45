// Browser end-to-end tests: headless Chromium loads the page a real
// `quicbus serve --web` serves and talks to that server over WebTransport,
// beside the native `quicbus pub` and `quicbus sub`.
//
//   npm run test:browser --prefix web     (after `cargo build`; needs chromium and playwright-core)

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";
import { chromiumPath, run, scratch, secretFile, startServer, startSub, WAIT, within } from "./harness.mjs";

let browser;

before(async () => {
  browser = await chromium.launch({ executablePath: chromiumPath(), args: ["--no-sandbox"] });
});

after(async () => {
  await browser?.close();
});

/** Opens the server's page and waits until it says it is connected. */
async function openPage(server, query = "") {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(server.webUrl + query);
  await page.waitForSelector('#state[data-state="connected"]', { timeout: WAIT }).catch((e) => {
    throw new Error(`the page did not connect: ${e.message}; page errors: ${errors.join("; ")}`);
  });
  return page;
}

/** Starts collecting every event of `bus` (a page global) into `window.got`. */
async function collect(page, bus = "bus") {
  await page.evaluate((name) => {
    window.got = [];
    (async () => {
      for await (const e of window[name].events()) {
        window.got.push({
          room: e.room,
          name: e.name,
          delivery: e.delivery,
          offset: e.offset ?? null,
          seq: e.seq ?? null,
          text: e.text(),
        });
      }
    })();
  }, bus);
}

/** Waits until `window.got` holds an event matching `filter`, and returns them all. */
async function waitForEvents(page, what, filter) {
  await page.waitForFunction(filter, null, { timeout: WAIT }).catch((e) => {
    throw new Error(`waiting for ${what}: ${e.message}`);
  });
  return page.evaluate(() => window.got);
}

/** The offset `quicbus pub --ack` prints (stdout: one line per acked event). */
function lastOffset(out) {
  const line = out.trim().split("\n").pop();
  assert.match(line ?? "", /^\d+$/, `pub prints its offset: ${out}`);
  return Number(line);
}

test("the page and the native CLI see each other's reliable events and datagrams", async () => {
  const tmp = scratch("both-ways");
  const server = await startServer({ dir: tmp.dir, args: ["--memory"] });
  const native = ["--server", server.quicAddr, "--ca", server.ca];
  let sub;
  try {
    const page = await openPage(server);
    await page.evaluate(async () => {
      await window.bus.join("news");
      await window.bus.join("game");
    });
    await collect(page);

    // Native → browser, reliable, two rooms.
    const first = lastOffset(await run(["pub", ...native, "--room", "news", "--event", "say", "--ack", "hello"]));
    const second = lastOffset(await run(["pub", ...native, "--room", "game", "--event", "spawn", "--ack", "ogre"]));
    let got = await waitForEvents(page, "two reliable events", () => window.got.filter((e) => e.delivery === "reliable").length >= 2);
    assert.deepEqual(
      got.filter((e) => e.delivery === "reliable"),
      [
        { room: "news", name: "say", delivery: "reliable", offset: first, seq: null, text: "hello" },
        { room: "game", name: "spawn", delivery: "reliable", offset: second, seq: null, text: "ogre" },
      ],
    );

    // Native → browser datagrams (may be lost: a burst, at least one arrives).
    await run(["pub", ...native, "--room", "game", "--event", "pos", "--datagram", "--count", "50", "--rate", "500", "xy"]);
    got = await waitForEvents(page, "a datagram", () => window.got.some((e) => e.delivery === "datagram"));
    const datagrams = got.filter((e) => e.delivery === "datagram");
    for (const d of datagrams) {
      assert.equal(d.room, "game");
      assert.equal(d.name, "pos");
      assert.equal(d.text, "xy");
      assert.equal(d.offset, null);
      assert.ok(d.seq >= 1 && d.seq <= 50, `seq ${d.seq}`);
    }
    const seqs = datagrams.map((d) => d.seq);
    assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b), "no stale datagram delivered");

    // Browser → native: a reliable emit, acknowledged with its offset…
    sub = await startSub(server, ["chat"]);
    const at = await page.evaluate(() => window.bus.emit("chat", "say", "from the browser"));
    assert.deepEqual(await sub.next("the browser's event"), {
      type: "event",
      room: "chat",
      event: "say",
      delivery: "reliable",
      offset: at,
      payload: "from the browser",
    });
    // …and datagrams, sent until one arrives (bounded by the timeout).
    await page.evaluate(() => {
      window.sending = setInterval(() => window.bus.emitDatagram("chat", "aim", "up"), 20);
    });
    const datagram = await sub.next("the browser's datagram");
    await page.evaluate(() => clearInterval(window.sending));
    assert.equal(datagram.room, "chat");
    assert.equal(datagram.event, "aim");
    assert.equal(datagram.delivery, "datagram");
    assert.equal(datagram.payload, "up");
    assert.ok(datagram.seq >= 1);
    await page.close();
  } finally {
    sub?.stop();
    await server.kill();
    tmp.remove();
  }
});

test("the page survives a kill -9 of the server and recovers what it missed", async () => {
  const tmp = scratch("restart");
  const data = `${tmp.dir}/data`;
  let server = await startServer({ dir: tmp.dir, args: ["--data", data] });
  const native = () => ["--server", server.quicAddr, "--ca", server.ca];
  try {
    const page = await openPage(server);
    await page.evaluate(async () => {
      window.notices = [];
      window.bus.on("connection", (c) => window.notices.push({ kind: "connection", state: c.state, resumed: c.resumed ?? null }));
      window.bus.on("recovery", (r) => window.notices.push({ kind: "recovery", room: r.room, recovery: r.recovery }));
      await window.bus.join("chat");
    });
    await collect(page);
    const one = lastOffset(await run(["pub", ...native(), "--room", "chat", "--event", "say", "--ack", "one"]));
    await waitForEvents(page, "the first event", () => window.got.length >= 1);

    // The server dies without a word, and comes back on the same ports
    // and data directory; an event is published before the page notices.
    await server.kill("SIGKILL");
    const quicPort = server.quicAddr.split(":").pop();
    const webPort = new URL(server.webUrl).port;
    server = await startServer({
      dir: tmp.dir,
      quic: `127.0.0.1:${quicPort}`,
      web: `127.0.0.1:${webPort}`,
      args: ["--data", data],
    });
    const two = lastOffset(await run(["pub", ...native(), "--room", "chat", "--event", "say", "--ack", "two"]));
    assert.ok(two > one);
    // The page's next packet meets the new server, which resets the old
    // connection: the page reconnects, resumes and replays what it missed.
    await page.evaluate(() => window.bus.ping().catch(() => {}));
    const got = await waitForEvents(page, "the missed event", () => window.got.length >= 2);
    assert.deepEqual(got, [
      { room: "chat", name: "say", delivery: "reliable", offset: one, seq: null, text: "one" },
      { room: "chat", name: "say", delivery: "reliable", offset: two, seq: null, text: "two" },
    ]);
    const notices = await page.evaluate(() => window.notices);
    assert.deepEqual(
      notices.filter((n) => n.kind === "recovery"),
      [{ kind: "recovery", room: "chat", recovery: { recovered: 1 } }],
    );
    assert.ok(
      notices.some((n) => n.kind === "connection" && n.state === "connected" && n.resumed === true),
      `resumed: ${JSON.stringify(notices)}`,
    );
    // Nothing twice: still exactly those two after a round trip.
    await page.evaluate(() => window.bus.ping());
    assert.equal((await page.evaluate(() => window.got)).length, 2);
    await page.close();
  } finally {
    await server.kill();
    tmp.remove();
  }
});

test("a token decides what the page may do: a forbidden room is refused, others carry on", async () => {
  const tmp = scratch("forbidden");
  const secret = secretFile(tmp.dir);
  const server = await startServer({ dir: tmp.dir, args: ["--memory", "--auth-secret-file", secret] });
  try {
    const token = (
      await run(["token", "--secret-file", secret, "--user", "ada", "--subscribe", "chat", "--publish", "chat"])
    ).trim();

    // No token, no session: the page says so.
    const anonymous = await browser.newPage();
    await anonymous.goto(server.webUrl);
    await anonymous.waitForSelector('#state[data-state="closed"]', { timeout: WAIT });
    assert.match(await anonymous.textContent("#state"), /cannot connect/);
    await anonymous.close();

    const page = await openPage(server, `?token=${encodeURIComponent(token)}`);
    const refused = await page.evaluate(async () => {
      try {
        await window.bus.join("secret");
        return null;
      } catch (e) {
        return { name: e.name, code: e.code, room: e.room, action: e.action };
      }
    });
    assert.deepEqual(refused, { name: "QuicbusError", code: "forbidden", room: "secret", action: "Subscribe" });
    const emitted = await page.evaluate(async () => {
      try {
        await window.bus.emit("secret", "say", "no");
        return null;
      } catch (e) {
        return { code: e.code, room: e.room, action: e.action };
      }
    });
    assert.deepEqual(emitted, { code: "forbidden", room: "secret", action: "Publish" });
    // The same session still works where the token allows.
    const joined = await page.evaluate(() => window.bus.join("chat"));
    assert.equal(joined.recovery, "live");
    const at = await page.evaluate(() => window.bus.emit("chat", "say", "allowed"));
    assert.ok(at >= 1);
    await page.close();
  } finally {
    await server.kill();
    tmp.remove();
  }
});

test("a page loaded from localhost dials the server's loopback address and connects", async () => {
  // Chromium dials [::1] for localhost over QUIC; the server listens on
  // 127.0.0.1, and /cert-hash names that address for localhost pages.
  const tmp = scratch("localhost");
  const server = await startServer({ dir: tmp.dir, args: ["--memory"] });
  try {
    const page = await openPage({ webUrl: server.webUrl.replace("127.0.0.1", "localhost") });
    const joined = await page.evaluate(() => window.bus.join("chat"));
    assert.deepEqual(joined, { offset: 0, recovery: "live" });
    await page.close();
  } finally {
    await server.kill();
    tmp.remove();
  }
});

test("the page's own signals are bounded: a server that is not there is a clear error", async () => {
  const page = await browser.newPage();
  try {
    // A page of its own origin is needed for the module; a server that
    // does not listen on the session URL it is given.
    const tmp = scratch("absent");
    const server = await startServer({ dir: tmp.dir, args: ["--memory"] });
    await page.goto(server.webUrl);
    const error = await within(
      "a refused connect",
      page.evaluate(async () => {
        const { connect } = await import("/quicbus.js");
        try {
          await connect({ url: "https://127.0.0.1:9/quicbus", connectTimeout: 3000, reconnect: false });
          return null;
        } catch (e) {
          return { name: e.name, code: e.code };
        }
      }),
    );
    assert.equal(error?.name, "QuicbusError", JSON.stringify(error));
    await server.kill();
    tmp.remove();
  } finally {
    await page.close();
  }
});
