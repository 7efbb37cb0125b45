// @ts-check
// The client (quicbus.js) against a fake WebTransport and a scripted server.
import { test } from "node:test";
import assert from "node:assert/strict";

import { connect, QuicbusError } from "../quicbus.js";
import { FakeServer, within } from "./fake-webtransport.js";

const enc = new TextEncoder();

/**
 * A fetch that answers GET /cert-hash.
 * @param {any} body
 */
function certHashFetch(body) {
  /** @type {string[]} */
  const urls = [];
  /** @param {string} url */
  const fetch = async (url) => {
    urls.push(url);
    return { ok: true, status: 200, json: async () => body };
  };
  return { fetch, urls };
}

/**
 * @param {any} session
 * @param {{ epoch?: bigint, token?: string, resumed?: any, maxFrame?: number }} [w]
 */
function welcome(session, w = {}) {
  session.send({
    type: "Welcome",
    session_id: 1n,
    max_datagram_payload: 1162,
    max_frame: w.maxFrame ?? 1048576,
    epoch: w.epoch ?? 5n,
    resume_token: w.token ?? "tok1",
    resumed: w.resumed ?? "New",
  });
}

/**
 * Connects a client to a fresh fake server; returns both and the first session's Hello.
 * @param {any} [options]
 */
async function setup(options = {}) {
  const server = new FakeServer();
  const { fetch } = certHashFetch({ url: "https://127.0.0.1:4433/quicbus", hashes: [] });
  const connecting = connect({
    certHashUrl: "http://page.test/cert-hash",
    webTransport: server.WebTransport,
    fetch,
    pingInterval: 0,
    reconnect: { initialDelay: 1, maxDelay: 5 },
    ...options,
  });
  const session = await within(server.sessions.next(), "a session");
  const hello = await within(session.next(), "Hello");
  welcome(session);
  const bus = await within(connecting, "connect");
  return { server, session, hello, bus };
}

/**
 * Answers the next control frame, which must be a Join, with Joined.
 * @param {any} session
 * @param {{ roomId?: number, offset?: bigint, recovery?: any }} [j]
 */
async function answerJoin(session, j = {}) {
  const join = await within(session.next(), "Join");
  assert.equal(join.type, "Join");
  session.send({
    type: "Joined",
    request: join.request,
    room_id: j.roomId ?? 0,
    offset: j.offset ?? 0n,
    recovery: j.recovery ?? "Live",
  });
  return join;
}

/**
 * Events from `bus.events()`, one at a time.
 * @param {any} bus
 */
function eventReader(bus) {
  const it = bus.events();
  return {
    next: async () => (await within(it.next(), "an event")).value,
    it,
  };
}

/**
 * The next `connection` notice with this state.
 * @param {any} bus
 * @param {string} state
 */
function connectionNotice(bus, state) {
  return new Promise((resolve) => {
    /** @param {any} n */
    const fn = (n) => {
      if (n.state === state) {
        bus.off("connection", fn);
        resolve(n);
      }
    };
    bus.on("connection", fn);
  });
}

test("handshake: Hello carries every field, cert hashes are pinned, the URL comes from /cert-hash", async () => {
  const server = new FakeServer();
  const hash = Buffer.alloc(32, 7).toString("base64");
  const { fetch, urls } = certHashFetch({ url: "https://10.0.0.1:9999/quicbus", hashes: [hash] });
  const connecting = connect({
    token: "secret",
    clientName: "page",
    certHashUrl: "http://page.test/cert-hash",
    webTransport: server.WebTransport,
    fetch,
    pingInterval: 0,
  });
  const session = await within(server.sessions.next(), "a session");
  assert.deepEqual(urls, ["http://page.test/cert-hash"]);
  assert.equal(session.url, "https://10.0.0.1:9999/quicbus");
  assert.deepEqual(session.options.serverCertificateHashes, [
    { algorithm: "sha-256", value: new Uint8Array(32).fill(7) },
  ]);
  const hello = await within(session.next(), "Hello");
  assert.deepEqual(hello, {
    type: "Hello",
    version: 2,
    token: "secret",
    client_name: "page",
    resume: null,
    copies: false,
  });
  welcome(session);
  const bus = await within(connecting, "connect");
  assert.equal(bus.connected, true);
  bus.close();
  assert.deepEqual(await within(session.clientClosed, "close"), { closeCode: 0, reason: "client closed" });
});

test("options.url wins over /cert-hash's url; empty hashes pin nothing", async () => {
  const server = new FakeServer();
  const { fetch } = certHashFetch({ url: "https://elsewhere:1/quicbus", hashes: [] });
  const connecting = connect({
    url: "https://bus.example:4433/quicbus",
    certHashUrl: "http://page.test/cert-hash",
    webTransport: server.WebTransport,
    fetch,
    pingInterval: 0,
  });
  const session = await within(server.sessions.next(), "a session");
  assert.equal(session.url, "https://bus.example:4433/quicbus");
  assert.equal(session.options.serverCertificateHashes, undefined);
  await session.next();
  welcome(session);
  (await within(connecting, "connect")).close();
});

test("a Reject fails connect with a typed error, without retrying", async () => {
  const server = new FakeServer();
  const connecting = connect({ url: "https://x/quicbus", certHashUrl: null, webTransport: server.WebTransport, pingInterval: 0 });
  const session = await within(server.sessions.next(), "a session");
  await session.next();
  session.send({ type: "Reject", code: "Unauthorized", reason: "missing or wrong token", server_version: 2 });
  await assert.rejects(within(connecting, "connect"), (e) => {
    assert.ok(e instanceof QuicbusError);
    assert.equal(e.code, "rejected");
    assert.equal(e.serverCode, "Unauthorized");
    assert.equal(e.reason, "missing or wrong token");
    return true;
  });
  assert.equal(server.all.length, 1, "no second session");
});

test("join: events arrive with room, name, offset and payload, on events() and on(name)", async () => {
  const { session, bus } = await setup();
  const events = eventReader(bus);
  /** @type {any[]} */
  const said = [];
  bus.on("say", (/** @type {Uint8Array} */ payload, /** @type {any} */ event) => said.push([payload, event]));
  const joining = bus.join("chat");
  const join = await within(session.next(), "Join");
  assert.deepEqual(join, { type: "Join", request: join.request, room: "chat", echo: null, since: null });
  // The stream and an event may overtake the Joined reply.
  const stream = session.eventStream(3, "chat");
  stream.event(8, "say", "early");
  session.send({ type: "Joined", request: join.request, room_id: 3, offset: 7n, recovery: "Live" });
  assert.deepEqual(await within(joining, "join"), { offset: 7, recovery: "live" });
  stream.event(9, "say", JSON.stringify({ n: 1 }));
  stream.event(9, "say", "duplicate");
  stream.event(12, "move", new Uint8Array([1, 2]));

  const first = await events.next();
  assert.equal(first.room, "chat");
  assert.equal(first.name, "say");
  assert.equal(first.delivery, "reliable");
  assert.equal(first.offset, 8);
  assert.equal(first.seq, undefined);
  assert.equal(first.text(), "early");
  const second = await events.next();
  assert.equal(second.offset, 9);
  assert.deepEqual(second.json(), { n: 1 });
  const third = await events.next();
  assert.equal(third.offset, 12, "the duplicate of 9 is dropped");
  assert.equal(third.name, "move");
  assert.deepEqual(third.payload, new Uint8Array([1, 2]));
  assert.equal(said.length, 2);
  assert.deepEqual(said[0][0], enc.encode("early"));
  assert.equal(said[0][1].offset, 8);
  assert.equal(bus.stats().reliableReceived, 3);
  bus.close();
});

test("join with since: the recovery shape", async () => {
  const { session, bus } = await setup();
  const joining = bus.join("chat", { since: 300, echo: true });
  const join = await answerJoin(session, { offset: 310n, recovery: { Recovered: { replayed: 10n } } });
  assert.equal(join.since, 300n);
  assert.equal(join.echo, true);
  assert.deepEqual(await joining, { offset: 310, recovery: { recovered: 10 } });
  const again = bus.join("news", { since: 3 });
  await answerJoin(session, { roomId: 1, offset: 50n, recovery: { NotRecovered: { reason: "HistoryTooShort" } } });
  assert.deepEqual(await again, { offset: 50, recovery: { notRecovered: "HistoryTooShort" } });
  bus.close();
});

test("emit: one publish stream per room, ids 1, 2…, resolves with the acked offset", async () => {
  const { session, bus } = await setup();
  const first = bus.emit("chat", "say", "hello");
  const stream = await within(session.publishStreams.next(), "a publish stream");
  assert.deepEqual(await within(stream.frames.next(), "header"), { type: "PublishStream", room: "chat" });
  const p1 = await within(stream.frames.next(), "Publish 1");
  assert.equal(p1.type, "Publish");
  assert.equal(p1.id, 1n);
  assert.equal(p1.event, "say");
  assert.deepEqual(p1.payload, enc.encode("hello"));
  assert.notEqual(p1.ack, null);
  const second = bus.emit("chat", "move", { x: 1 });
  const p2 = await within(stream.frames.next(), "Publish 2");
  assert.equal(p2.id, 2n);
  assert.deepEqual(JSON.parse(new TextDecoder().decode(p2.payload)), { x: 1 });
  assert.notEqual(p2.ack, p1.ack, "distinct ack ids");
  session.send({ type: "Ack", request: p1.ack, offset: 41n });
  session.send({ type: "Ack", request: p2.ack, offset: 42n });
  assert.equal(await within(first, "ack 1"), 41);
  assert.equal(await within(second, "ack 2"), 42);
  assert.equal(bus.stats().outbox, 2, "kept until Progress");
  session.send({ type: "Progress", room: "chat", through: 2n });
  // Progress is handled in order with a later reply: wait on a Ping round trip.
  const pinging = bus.ping();
  const ping = await within(session.next(), "Ping");
  session.send({ type: "Pong", request: ping.request });
  await within(pinging, "pong");
  assert.equal(bus.stats().outbox, 0);
  assert.equal(typeof bus.stats().rtt, "number");
  // Without ack: resolves once queued, the frame says ack None.
  assert.equal(await bus.emit("chat", "say", new Uint8Array([9]), { ack: false }), undefined);
  const p3 = await within(stream.frames.next(), "Publish 3");
  assert.equal(p3.id, 3n);
  assert.equal(p3.ack, null);
  bus.close();
});

test("an ack that does not come fails with code timeout", async () => {
  const { session, bus } = await setup({ requestTimeout: 50 });
  const emitting = bus.emit("chat", "say", "x");
  const stream = await within(session.publishStreams.next(), "a publish stream");
  await stream.frames.next();
  await stream.frames.next();
  await assert.rejects(within(emitting, "the timeout"), (e) => {
    assert.ok(e instanceof QuicbusError);
    assert.equal(e.code, "timeout");
    return true;
  });
  bus.close();
});

test("Forbidden answers: join and emit fail with code forbidden, room and action", async () => {
  const { session, bus } = await setup();
  const joining = bus.join("secret");
  const join = await within(session.next(), "Join");
  session.send({ type: "Forbidden", request: join.request, room: "secret", action: "Subscribe" });
  await assert.rejects(within(joining, "join"), (e) => {
    assert.ok(e instanceof QuicbusError);
    assert.equal(e.code, "forbidden");
    assert.equal(e.room, "secret");
    assert.equal(e.action, "Subscribe");
    return true;
  });
  const emitting = bus.emit("secret", "say", "x");
  const stream = await within(session.publishStreams.next(), "a publish stream");
  await stream.frames.next();
  const publish = await stream.frames.next();
  session.send({ type: "Forbidden", request: publish.ack, room: "secret", action: "Publish" });
  await assert.rejects(within(emitting, "emit"), (e) => e.code === "forbidden" && e.action === "Publish");
  // A refusal no request waits for is a notice.
  const notice = new Promise((resolve) => bus.on("forbidden", resolve));
  session.send({ type: "Forbidden", request: null, room: "secret", action: "Publish" });
  assert.deepEqual(await within(notice, "notice"), { room: "secret", action: "Publish" });
  bus.close();
});

test("a server Error answer fails with code server and the ErrorCode name", async () => {
  const { session, bus } = await setup();
  const joining = bus.join("chat");
  const join = await within(session.next(), "Join");
  session.send({ type: "Error", request: join.request, code: "TooManyRooms", message: "full" });
  await assert.rejects(within(joining, "join"), (e) => e.code === "server" && e.serverCode === "TooManyRooms");
  assert.throws(() => bus.emitDatagram("", "x"), (e) => e instanceof QuicbusError && e.code === "invalid-name");
  await assert.rejects(bus.join("x".repeat(256)), (e) => e.code === "invalid-name");
  bus.close();
});

test("datagrams: stale ones are dropped and counted, gaps counted as lost; emitDatagram resolves the room id", async () => {
  const { session, bus } = await setup();
  const events = eventReader(bus);
  const joining = bus.join("cursors");
  await answerJoin(session, { roomId: 4 });
  await joining;
  for (const seq of [1n, 4n, 3n, 4n, 5n]) {
    session.datagram({ type: "Datagram", room_id: 4, seq, event: "pos", payload: new Uint8Array([Number(seq)]) });
  }
  const got = [];
  for (let i = 0; i < 3; i++) got.push(await events.next());
  assert.deepEqual(got.map((e) => [e.delivery, e.seq, e.room, e.name]), [
    ["datagram", 1, "cursors", "pos"],
    ["datagram", 4, "cursors", "pos"],
    ["datagram", 5, "cursors", "pos"],
  ]);
  const stats = bus.stats();
  assert.equal(stats.datagramsReceived, 3);
  assert.equal(stats.datagramsStale, 2);
  assert.equal(stats.datagramsLost, 2);

  // A joined room's id is known: sent at once.
  bus.emitDatagram("cursors", "pos", new Uint8Array([1, 2]));
  assert.deepEqual(await within(session.datagrams.next(), "a datagram"), {
    type: "PublishDatagram", room_id: 4, event: "pos", payload: new Uint8Array([1, 2]),
  });
  // Another room: Resolve first, then the newest datagram waiting.
  bus.emitDatagram("aim", "at", "one");
  bus.emitDatagram("aim", "at", "two");
  const resolve = await within(session.next(), "Resolve");
  assert.equal(resolve.type, "Resolve");
  assert.equal(resolve.room, "aim");
  session.send({ type: "Resolved", request: resolve.request, room_id: 9 });
  const sent = await within(session.datagrams.next(), "the resolved datagram");
  assert.equal(sent.room_id, 9);
  assert.deepEqual(sent.payload, enc.encode("two"));
  // Too large: typed error with the limit (1200 − Datagram overhead − 2).
  const limit = bus.maxDatagramPayload("cursors", "pos");
  assert.equal(limit, 1200 - (1 + 1 + 10 + 4 + 1) - 2);
  assert.throws(() => bus.emitDatagram("cursors", "pos", new Uint8Array(limit + 1)), (e) => {
    assert.ok(e instanceof QuicbusError);
    assert.equal(e.code, "too-large");
    assert.equal(e.limit, limit);
    assert.equal(e.size, limit + 1);
    return true;
  });
  bus.emitDatagram("cursors", "pos", new Uint8Array(limit));
  assert.equal((await within(session.datagrams.next(), "a full datagram")).payload.length, limit);
  bus.close();
});

test("reconnect: resume, rejoin from the last offset, outbox resent with the same ids, no duplicates", async () => {
  const { server, session, bus, hello } = await setup();
  assert.equal(hello.resume, null);
  const events = eventReader(bus);
  const joining = bus.join("chat");
  await answerJoin(session, { roomId: 2, offset: 10n });
  await joining;
  const stream = session.eventStream(2, "chat");
  stream.event(11, "say", "a");
  stream.event(12, "say", "b");
  assert.equal((await events.next()).offset, 11);
  assert.equal((await events.next()).offset, 12);

  // Two emits: the first acked and confirmed, the second never answered.
  const acked = bus.emit("chat", "say", "one");
  const publishes = await within(session.publishStreams.next(), "a publish stream");
  await publishes.frames.next();
  const p1 = await within(publishes.frames.next(), "Publish 1");
  session.send({ type: "Ack", request: p1.ack, offset: 13n });
  session.send({ type: "Progress", room: "chat", through: 1n });
  assert.equal(await within(acked, "ack 1"), 13);
  const unanswered = bus.emit("chat", "say", "two");
  const p2 = await within(publishes.frames.next(), "Publish 2");
  assert.equal(p2.id, 2n);

  /** @type {any[]} */
  const notices = [];
  bus.on("connection", (/** @type {any} */ n) => notices.push(n.state));
  /** @type {any[]} */
  const recoveries = [];
  bus.on("recovery", (/** @type {any} */ r) => recoveries.push(r));
  const reconnected = connectionNotice(bus, "connected");
  session.kill(1, "server shutting down");

  const second = await within(server.sessions.next(), "a second session");
  const hello2 = await within(second.next(), "Hello with resume");
  assert.deepEqual(hello2.resume, { token: "tok1", epoch: 5n });
  assert.equal(hello2.copies, false);
  welcome(second, { token: "tok2", resumed: "Resumed" });
  const rejoin = await within(second.next(), "the rejoin");
  assert.equal(rejoin.type, "Join");
  assert.equal(rejoin.room, "chat");
  assert.equal(rejoin.since, 12n, "since = the newest offset delivered");
  // The replay: 12 again (a duplicate, dropped), then 13 and 14.
  const stream2 = second.eventStream(6, "chat");
  stream2.event(12, "say", "b again");
  stream2.event(13, "say", "one");
  stream2.event(14, "say", "two");
  second.send({ type: "Joined", request: rejoin.request, room_id: 6, offset: 14n, recovery: { Recovered: { replayed: 2n } } });
  const notice = /** @type {any} */ (await within(reconnected, "connected"));
  assert.equal(notice.resumed, true);
  assert.deepEqual(recoveries, [{ room: "chat", recovery: { recovered: 2 } }]);
  assert.deepEqual(notices.slice(0, 2), ["disconnected", "reconnecting"]);
  assert.equal((await events.next()).offset, 13);
  assert.equal((await events.next()).offset, 14);

  // The outbox: publish id 2 again, with its ack id; the server answers it as the first time.
  const resent = await within(second.publishStreams.next(), "a new publish stream");
  assert.deepEqual(await resent.frames.next(), { type: "PublishStream", room: "chat" });
  const again = await within(resent.frames.next(), "the resent Publish");
  assert.equal(again.id, 2n);
  assert.equal(again.ack, p2.ack);
  assert.deepEqual(again.payload, enc.encode("two"));
  second.send({ type: "Ack", request: again.ack, offset: 14n });
  assert.equal(await within(unanswered, "the resent ack"), 14);
  // A new emit continues the room's ids.
  const third = bus.emit("chat", "say", "three");
  assert.equal((await within(resent.frames.next(), "Publish 3")).id, 3n);
  second.send({ type: "Ack", request: again.ack + 100n, offset: 0n }); // answers nothing: ignored
  bus.close();
  await assert.rejects(third, (e) => e.code === "closed");
  assert.equal(bus.stats().reconnects, 1);
  // The next reconnect would present the new token.
  assert.deepEqual(await within(second.clientClosed, "close"), { closeCode: 0, reason: "client closed" });
});

test("NotResumed: the outbox is resent all the same (at-least-once for the unconfirmed)", async () => {
  const { server, session, bus } = await setup();
  const emitting = bus.emit("chat", "say", "x");
  const ps = await within(session.publishStreams.next(), "a publish stream");
  await ps.frames.next();
  const p1 = await ps.frames.next();
  const connected = connectionNotice(bus, "connected");
  session.kill(2, "slow consumer");
  const second = await within(server.sessions.next(), "a second session");
  await second.next();
  welcome(second, { token: "fresh", resumed: { NotResumed: { reason: "TokenExpired" } } });
  const n = /** @type {any} */ (await within(connected, "connected"));
  assert.equal(n.resumed, false);
  assert.equal(n.notResumed, "TokenExpired");
  const ps2 = await within(second.publishStreams.next(), "a new publish stream");
  await ps2.frames.next();
  const again = await ps2.frames.next();
  assert.equal(again.id, p1.id);
  second.send({ type: "Ack", request: again.ack, offset: 1n });
  assert.equal(await within(emitting, "ack"), 1);
  bus.close();
});

test("an epoch change rejoins without since and reports EpochChanged", async () => {
  const { server, session, bus } = await setup();
  const joining = bus.join("chat");
  await answerJoin(session, { offset: 3n });
  await joining;
  const recovery = new Promise((resolve) => bus.on("recovery", resolve));
  session.kill(1, "restart");
  const second = await within(server.sessions.next(), "a second session");
  await second.next();
  welcome(second, { epoch: 99n, resumed: { NotResumed: { reason: "EpochChanged" } } });
  const rejoin = await within(second.next(), "rejoin");
  assert.equal(rejoin.since, null);
  second.send({ type: "Joined", request: rejoin.request, room_id: 0, offset: 0n, recovery: "Live" });
  assert.deepEqual(await within(recovery, "recovery"), { room: "chat", recovery: { notRecovered: "EpochChanged" } });
  bus.close();
});

test("leave: Leave by room id; nothing of the room is delivered afterwards", async () => {
  const { session, bus } = await setup();
  const events = eventReader(bus);
  const joining = bus.join("a");
  await answerJoin(session, { roomId: 1 });
  await joining;
  const joiningB = bus.join("b");
  await answerJoin(session, { roomId: 2 });
  await joiningB;
  const a = session.eventStream(1, "a");
  const b = session.eventStream(2, "b");
  a.event(1, "x", "1");
  assert.equal((await events.next()).room, "a");
  const leaving = bus.leave("a");
  const leave = await within(session.next(), "Leave");
  assert.deepEqual(leave, { type: "Leave", request: leave.request, room_id: 1 });
  a.event(2, "x", "late");
  session.send({ type: "Left", request: leave.request, room_id: 1 });
  await within(leaving, "leave");
  b.event(1, "y", "2");
  const next = await events.next();
  assert.equal(next.room, "b", "the late event of a is dropped");
  await assert.rejects(bus.leave("a"), (e) => e.serverCode === "NotJoined");
  bus.close();
});

test("close(): code 0, no reconnect, pending requests fail with closed, events() ends", async () => {
  const { server, session, bus } = await setup();
  const it = bus.events();
  const waiting = it.next();
  const joining = bus.join("chat");
  await within(session.next(), "Join");
  bus.close();
  await assert.rejects(within(joining, "join"), (e) => e instanceof QuicbusError && e.code === "closed");
  assert.deepEqual(await within(waiting, "the end of events()"), { value: undefined, done: true });
  assert.deepEqual(await within(session.clientClosed, "close"), { closeCode: 0, reason: "client closed" });
  assert.equal(await within(bus.closed, "closed"), null);
  assert.equal(server.all.length, 1, "no reconnect");
  await assert.rejects(bus.emit("chat", "say", "x"), (e) => e.code === "closed");
  assert.throws(() => bus.emitDatagram("chat", "say", "x"), (e) => e.code === "closed");
});

test("a fatal close (UNAUTHORIZED) is not retried", async () => {
  const { server, session, bus } = await setup();
  const closed = connectionNotice(bus, "closed");
  session.kill(8, "invalid token: bad signature");
  const notice = /** @type {any} */ (await within(closed, "closed"));
  assert.equal(notice.error.code, "closed");
  assert.equal(notice.error.closeCode, 8);
  assert.equal(notice.error.reason, "invalid token: bad signature");
  const why = await within(bus.closed, "closed");
  assert.equal(why?.closeCode, 8);
  assert.equal(server.all.length, 1);
});

test("reconnect gives up after maxAttempts failed attempts", async () => {
  const { server, session, bus } = await setup({ reconnect: { initialDelay: 1, maxDelay: 2, maxAttempts: 3 } });
  const closed = connectionNotice(bus, "closed");
  /** @type {number[]} */
  const attempts = [];
  bus.on("connection", (/** @type {any} */ n) => n.state === "reconnecting" && attempts.push(n.attempt));
  server.refuse = 3;
  session.kill(1, "bye");
  const notice = /** @type {any} */ (await within(closed, "closed"));
  assert.equal(notice.error.code, "closed");
  assert.deepEqual(attempts, [1, 2, 3]);
  assert.equal(server.refused, 3);
  assert.equal(server.all.length, 1, "no session opened");
  assert.equal(bus.connected, false);
  await assert.rejects(bus.join("x"), (e) => e.code === "closed");
});

test("a Reject while reconnecting is fatal", async () => {
  const { server, session, bus } = await setup();
  const closed = connectionNotice(bus, "closed");
  server.refuse = 1;
  session.kill(1, "bye");
  // Attempt 1 fails to open; attempt 2 opens and gets a Reject.
  const second = await within(server.sessions.next(), "attempt 2");
  await second.next();
  second.send({ type: "Reject", code: "InvalidToken", reason: "invalid token: bad signature", server_version: 2 });
  const notice = /** @type {any} */ (await within(closed, "closed"));
  assert.equal(notice.error.code, "rejected");
  assert.equal(notice.error.serverCode, "InvalidToken");
  assert.equal(server.all.length, 2);
});

test("an expired token: reconnecting waits for setToken, then presents the new token", async () => {
  const { server, session, bus } = await setup({ token: "old" });
  const expired = new Promise((resolve) => bus.on("token-expired", resolve));
  session.kill(13, "token expired at 1764201600 (Unix time) and was not refreshed");
  await within(expired, "token-expired");
  assert.equal(server.all.length, 1, "no attempt before a new token");
  const connected = connectionNotice(bus, "connected");
  bus.setToken("new");
  const second = await within(server.sessions.next(), "a second session");
  const hello = await within(second.next(), "Hello");
  assert.equal(hello.token, "new");
  welcome(second, { resumed: "Resumed" });
  await within(connected, "connected");
  bus.close();
});

test("events() applies back-pressure: with a queue of 2, four reliable events all arrive, in order", async () => {
  const { session, bus } = await setup({ eventQueue: 2 });
  const it = bus.events();
  const joining = bus.join("r");
  await answerJoin(session, { roomId: 1 });
  await joining;
  const stream = session.eventStream(1, "r");
  for (let i = 1; i <= 4; i++) stream.event(i, "e", String(i));
  const offsets = [];
  for (let i = 0; i < 4; i++) offsets.push((await within(it.next(), "an event")).value.offset);
  assert.deepEqual(offsets, [1, 2, 3, 4], "reliable events wait, none is dropped");
  bus.close();
});

test("a protocol violation by the server closes with code 3 and does not reconnect", async () => {
  const { server, session, bus } = await setup();
  const closed = connectionNotice(bus, "closed");
  session.send({ type: "Event", offset: 1n, event: "x", payload: new Uint8Array(0) });
  assert.equal((/** @type {any} */ (await within(session.clientClosed, "close"))).closeCode, 3);
  const notice = /** @type {any} */ (await within(closed, "closed"));
  assert.equal(notice.error.code, "protocol");
  assert.equal(server.all.length, 1);
});

test("events(): next() calls that overlap are each answered, in order", async () => {
  const { session, bus } = await setup();
  const joining = bus.join("chat");
  const join = await within(session.next(), "Join");
  session.send({ type: "Joined", request: join.request, room_id: 1, offset: 0n, recovery: "Live" });
  await within(joining, "join");
  const it = bus.events()[Symbol.asyncIterator]();
  // Two waits at once, as `Promise.race([it.next(), timeout])` leaves them.
  const first = it.next();
  const second = it.next();
  const stream = session.eventStream(1, "chat");
  stream.event(1, "say", "one");
  stream.event(2, "say", "two");
  const [a, b] = await within(Promise.all([first, second]), "both next() calls");
  assert.deepEqual([a.value.text(), a.value.offset], ["one", 1]);
  assert.deepEqual([b.value.text(), b.value.offset], ["two", 2]);
  bus.close();
});
