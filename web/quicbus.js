// @ts-check
/**
 * The quicbus client for browsers: WebTransport (HTTP/3) to a quicbus
 * server, speaking docs/PROTOCOL.md exactly as the Rust client does
 * (src/client). No runtime dependencies besides `./codec.js`.
 *
 * ```js
 * import { connect } from "/quicbus.js";
 * const bus = await connect({ token });
 * const { offset, recovery } = await bus.join("chat", { since });
 * bus.on("say", (payload, event) => console.log(event.text()));
 * for await (const event of bus.events()) { … }
 * const at = await bus.emit("chat", "say", "hello");
 * bus.emitDatagram("cursors", "pos", new Uint8Array([1, 2]));
 * await bus.leave("chat");
 * bus.close();
 * ```
 *
 * Guarantees (as the Rust client's, see web/README.md):
 * - reliable events of a room arrive in offset order, never twice, and
 *   across a reconnect the missed ones are replayed when the server's
 *   history still holds them (each room reports its `recovery`);
 * - reliable emits are kept in an outbox until the server's `Progress`
 *   confirms them and are resent, with their ids, after a reconnect: the
 *   server publishes each once when the session was resumed;
 * - nothing waits without bound: requests and acks time out.
 *
 * @module quicbus
 */

import {
  CloseCode,
  DEFAULT_MAX_FRAME,
  FrameDecoder,
  MAX_NAME_LEN,
  PROTOCOL_VERSION,
  WireError,
  encodeFrame,
  encodeFramed,
  eventFrameLen,
  text as decodeUtf8,
  utf8,
  decodeFrame,
} from "./codec.js";

export { CloseCode, PROTOCOL_VERSION } from "./codec.js";

// ---------------------------------------------------------------------------
// Types

/**
 * @typedef {"timeout" | "closed" | "forbidden" | "rejected" | "too-large" | "invalid-name"
 *   | "server" | "protocol" | "outbox-full" | "unsupported"} QuicbusErrorCode
 */

/**
 * `"live"`: no `since` was given (or the room was joined already);
 * `{ recovered: n }`: the `n` events after `since` are replayed first, no gap;
 * `{ notRecovered: reason }`: they could not be (a `RecoveryFailure` name of
 * PROTOCOL.md 3.1: `"HistoryTooShort"`, `"UnknownPosition"`, `"EpochChanged"`,
 * `"TokenExpired"`, `"JoinRefused"`, `"HistoryBudget"`, `"HistoryForbidden"`):
 * the room goes on live, the application resynchronizes.
 * @typedef {"live" | { recovered: number } | { notRecovered: string }} Recovery
 */

/**
 * @typedef {object} ReconnectOptions
 * @property {number} [initialDelay=100] ms, upper bound of the first wait
 * @property {number} [maxDelay=5000] ms, the waits never exceed this
 * @property {number} [maxAttempts=Infinity] failed attempts in a row before giving up
 */

/**
 * @typedef {object} ConnectOptions
 * @property {string} [url] the session URL, `https://HOST:PORT/quicbus`
 *   (default: the `url` of `certHashUrl`'s answer, else `https://127.0.0.1:4433/quicbus`)
 * @property {string | null} [certHashUrl="/cert-hash"] where to GET
 *   `{ url, hashes }` (relative to the page); `null`: never fetch (a real certificate)
 * @property {string | null} [token] sent in `Hello` (signed or shared token)
 * @property {string} [clientName="quicbus-js"] only logged by the server
 * @property {number} [requestTimeout=5000] ms for join/leave/resolve/ping/refresh and acks
 * @property {number} [connectTimeout=5000] ms for the WebTransport session plus Hello/Welcome
 * @property {ReconnectOptions | false} [reconnect] `false`: never reconnect
 * @property {number} [eventQueue=4096] events buffered per `events()` iterator
 * @property {number} [outboxEvents=4096] reliable emits kept until confirmed
 * @property {number} [outboxBytes=16777216] bytes of reliable emits kept until confirmed
 * @property {number} [maxFrame=1048576] largest stream frame accepted from the server
 * @property {number} [pingInterval=10000] ms between automatic pings (for `stats().rtt`); 0: none
 * @property {any} [webTransport] the WebTransport constructor (default `globalThis.WebTransport`)
 * @property {any} [fetch] the fetch function (default `globalThis.fetch`)
 */

/**
 * @typedef {object} ConnectionNotice
 * @property {"connected" | "disconnected" | "reconnecting" | "closed"} state
 * @property {boolean} [resumed] (connected) whether the session was resumed
 * @property {string} [notResumed] (connected) why not, a `RecoveryFailure` name
 * @property {number} [attempt] (reconnecting) 1, 2, …
 * @property {number} [delay] (reconnecting) ms waited before this attempt
 * @property {QuicbusError} [error] (disconnected, closed) why
 */

const RESERVED = new Set(["connection", "recovery", "forbidden", "server-error", "token-expired"]);
const DEFAULT_URL = "https://127.0.0.1:4433/quicbus";
const CLOSE_NAMES = Object.fromEntries(Object.entries(CloseCode).map(([k, v]) => [v, k]));

// ---------------------------------------------------------------------------
// Errors

/** Every failure of this client. `code` says what kind; other fields say more. */
export class QuicbusError extends Error {
  /**
   * @param {QuicbusErrorCode} code
   * @param {string} message
   * @param {{ room?: string, action?: string, closeCode?: number, reason?: string,
   *   serverCode?: string, size?: number, limit?: number, cause?: unknown }} [fields]
   */
  constructor(code, message, fields = {}) {
    super(message, fields.cause === undefined ? undefined : { cause: fields.cause });
    this.name = "QuicbusError";
    /** @type {QuicbusErrorCode} */
    this.code = code;
    /** @type {string | undefined} the room concerned (forbidden) */
    this.room = fields.room;
    /** @type {string | undefined} `"Publish" | "Subscribe" | "History"` (forbidden) */
    this.action = fields.action;
    /** @type {number | undefined} the session close code (closed; PROTOCOL.md 6.1) */
    this.closeCode = fields.closeCode;
    /** @type {string | undefined} the close or refusal reason from the server */
    this.reason = fields.reason;
    /** @type {string | undefined} the `ErrorCode` name (server, rejected) */
    this.serverCode = fields.serverCode;
    /** @type {number | undefined} (too-large) */
    this.size = fields.size;
    /** @type {number | undefined} (too-large, outbox-full) */
    this.limit = fields.limit;
  }
}

/**
 * @param {string} what
 * @param {number} ms
 */
function timeoutError(what, ms) {
  return new QuicbusError("timeout", `${what} timed out after ${ms} ms`);
}

/** @param {unknown} e */
function message(e) {
  return e instanceof Error ? e.message : String(e);
}

// ---------------------------------------------------------------------------
// Events

/** One received event. */
export class QuicbusEvent {
  /**
   * @param {string} room
   * @param {string} name
   * @param {"reliable" | "datagram"} delivery
   * @param {bigint} position offset or seq
   * @param {Uint8Array} payload
   */
  constructor(room, name, delivery, position, payload) {
    /** The room it was published to. */
    this.room = room;
    /** The event name given by the publisher. */
    this.name = name;
    /** How it travelled. */
    this.delivery = delivery;
    /** @type {number | undefined} the server's offset (reliable events) */
    this.offset = delivery === "reliable" ? Number(position) : undefined;
    /** @type {number | undefined} the room's datagram sequence number (datagrams) */
    this.seq = delivery === "datagram" ? Number(position) : undefined;
    /** The payload, as published. */
    this.payload = payload;
  }

  /** The payload as UTF-8 text (throws on invalid UTF-8). */
  text() {
    return decodeUtf8(this.payload);
  }

  /** The payload parsed as JSON. */
  json() {
    return JSON.parse(this.text());
  }
}

// ---------------------------------------------------------------------------
// Helpers

/**
 * @param {"room" | "event"} kind
 * @param {unknown} name
 * @returns {string}
 */
function checkName(kind, name) {
  if (typeof name !== "string") {
    throw new QuicbusError("invalid-name", `${kind} name must be a string`);
  }
  if (name.length === 0) {
    throw new QuicbusError("invalid-name", `${kind} name is empty`);
  }
  let bytes;
  try {
    bytes = utf8(name).length;
  } catch {
    throw new QuicbusError("invalid-name", `${kind} name is not valid Unicode`);
  }
  if (bytes > MAX_NAME_LEN) {
    throw new QuicbusError(
      "invalid-name",
      `${kind} name is ${bytes} bytes, over the limit of ${MAX_NAME_LEN}`,
    );
  }
  return name;
}

/**
 * string → UTF-8; Uint8Array as is; other bytes views/ArrayBuffer → bytes;
 * `undefined` → empty; anything else → JSON.
 * @param {unknown} payload
 * @returns {Uint8Array}
 */
export function encodePayload(payload) {
  if (payload instanceof Uint8Array) return payload;
  if (typeof payload === "string") return utf8(payload);
  if (payload === undefined) return new Uint8Array(0);
  if (payload instanceof ArrayBuffer) return new Uint8Array(payload);
  if (ArrayBuffer.isView(payload)) {
    return new Uint8Array(payload.buffer, payload.byteOffset, payload.byteLength);
  }
  return utf8(JSON.stringify(payload));
}

/** @param {string} b64 */
function base64Bytes(b64) {
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

/**
 * A recovery from the wire, in this module's shape.
 * @param {any} r
 * @returns {Recovery}
 */
function recoveryOf(r) {
  if (r === "Live") return "live";
  if (r && r.Recovered) return { recovered: Number(r.Recovered.replayed) };
  return { notRecovered: r.NotRecovered.reason };
}

/**
 * @template T
 * @returns {{ promise: Promise<T>, resolve: (v: T) => void, reject: (e: unknown) => void }}
 */
function deferred() {
  /** @type {any} */
  let resolve;
  /** @type {any} */
  let reject;
  const promise = new Promise((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/** Reads frames from one incoming stream. */
class StreamFrames {
  /**
   * @param {ReadableStream<Uint8Array>} readable
   * @param {number} maxFrame
   */
  constructor(readable, maxFrame) {
    this.reader = readable.getReader();
    this.decoder = new FrameDecoder(maxFrame);
  }

  /** The next frame, or `null` at a clean end. Throws WireError, or the stream's error. */
  async next() {
    for (;;) {
      const frame = this.decoder.next();
      if (frame) return frame;
      const { value, done } = await this.reader.read();
      if (done) {
        this.decoder.finish();
        return null;
      }
      this.decoder.push(value instanceof Uint8Array ? value : new Uint8Array(value));
    }
  }

  cancel() {
    this.reader.cancel().catch(() => {});
  }
}

// ---------------------------------------------------------------------------
// One session (connection): the room ids it was given die with it.

class Link {
  /**
   * @param {number} id
   * @param {any} transport a WebTransport
   */
  constructor(id, transport) {
    this.id = id;
    this.transport = transport;
    /** @type {WritableStreamDefaultWriter<Uint8Array> | null} */
    this.control = null;
    /** @type {StreamFrames | null} */
    this.controlReader = null;
    /** @type {any} */
    this.welcome = null;
    /** @type {Map<string, number>} */
    this.ids = new Map();
    /** @type {Map<number, string>} */
    this.names = new Map();
    /** @type {Map<number, bigint>} newest datagram seq per room id */
    this.datagramNewest = new Map();
    /** @type {Map<string, () => void>} wakes the outbox writer of a room */
    this.writers = new Map();
    /** @type {Map<string, { event: string, payload: Uint8Array }>} datagrams awaiting a room id */
    this.unresolved = new Map();
    /** @type {Set<string>} rooms whose Resolve was refused on this link */
    this.refused = new Set();
    /** @type {WritableStreamDefaultWriter<Uint8Array> | null} */
    this.datagrams = null;
    this.dead = false;
    this.closedHere = false;
    /** @type {Error | null} why this client closed it (a protocol violation) */
    this.error = null;
    /** @type {ReturnType<typeof deferred<void>>} */
    this.ready = deferred();
    /** @type {ReturnType<typeof deferred<void>>} */
    this.gone = deferred();
  }

  /**
   * @param {number} roomId
   * @param {string} name
   */
  learn(roomId, name) {
    const existing = this.names.get(roomId);
    if (existing !== undefined && existing !== name) this.ids.delete(existing);
    this.ids.set(name, roomId);
    this.names.set(roomId, name);
  }

  /**
   * Sends one frame on the control stream (in order; errors surface as the session's loss).
   * @param {any} frame
   */
  send(frame) {
    this.control?.write(encodeFramed(frame)).catch(() => {});
  }

  /**
   * @param {number} code
   * @param {string} reason
   */
  close(code, reason) {
    this.closedHere = true;
    try {
      this.transport.close({ closeCode: code, reason });
    } catch {
      // already closed
    }
  }
}

// ---------------------------------------------------------------------------
// The client

/**
 * Connects to a quicbus server over WebTransport. Rejects (no retry) if the
 * first session cannot be opened or is refused; later losses are retried.
 * @param {ConnectOptions} [options]
 * @returns {Promise<Quicbus>}
 */
export async function connect(options = {}) {
  const bus = new Quicbus(options);
  await bus._start();
  return bus;
}

/** A connected client; see `connect`. */
/**
 * Reads a link's stream of streams or datagrams until it ends, fails, the
 * link is gone or `each` says stop (returns false).
 * @template T
 * @param {{ gone: { promise: Promise<unknown> }, dead: boolean }} link
 * @param {() => ReadableStreamDefaultReader<T>} open
 * @param {(value: T) => boolean} each
 */
async function readEach(link, open, each) {
  let reader;
  try {
    reader = open();
  } catch {
    return;
  }
  link.gone.promise.then(() => reader.cancel().catch(() => {}));
  for (;;) {
    let next;
    try {
      next = await reader.read();
    } catch {
      return;
    }
    if (next.done || link.dead || !each(next.value)) return;
  }
}

export class Quicbus {
  #o;
  /** @type {any} */
  #WT;
  /** @type {any} */
  #fetch;
  /** @type {Link | null} the current session; null while reconnecting */
  #link = null;
  #nextLink = 1;
  /** @type {string | null} */
  #token;
  #session = { resumeToken: "", epoch: 0n, maxFrame: DEFAULT_MAX_FRAME, maxDatagram: 0 };
  #closing = false;
  #finished = false;
  /** @type {QuicbusError | null} why the last session ended */
  #lastLoss = null;
  /** @type {Map<bigint, { resolve: (f: any) => void, reject: (e: unknown) => void,
   *   timer: any, link: Link | null, survives: boolean }>} */
  #pending = new Map();
  #nextRequest = 1n;
  /** Joined (or being joined) rooms: echo, and the newest reliable event delivered.
   * @type {Map<string, { echo: boolean | null, pos: { link: number, offset: bigint } | null }>} */
  #rooms = new Map();
  /** @type {Map<string, { nextId: bigint, entries: { id: bigint, frame: Uint8Array }[] }>} */
  #outbox = new Map();
  #outboxEvents = 0;
  #outboxBytes = 0;
  /** @type {(() => void)[]} */
  #outboxWaiters = [];
  /** @type {Map<string, Set<Function>>} */
  #handlers = new Map();
  /** @type {Set<{ queue: QuicbusEvent[], wake: (() => void) | null, done: boolean }>} */
  #subs = new Set();
  /** @type {(() => void)[]} */
  #spaceWaiters = [];
  /** @type {(() => void)[]} */
  #linkWaiters = [];
  /** @type {(() => void)[]} */
  #tokenWaiters = [];
  /** @type {Set<any>} */
  #timers = new Set();
  /** @type {(() => void) | null} */
  #cancelSleep = null;
  #reconnecting = false;
  #stats = {
    rtt: /** @type {number | null} */ (null),
    reliableReceived: 0,
    datagramsReceived: 0,
    datagramsLost: 0,
    datagramsStale: 0,
    datagramsDroppedQueueFull: 0,
    datagramsNotSent: 0,
    serverErrors: 0,
    forbidden: 0,
    reconnects: 0,
  };
  /** @type {ReturnType<typeof deferred<QuicbusError | null>>} */
  #closed = deferred();

  /**
   * Use `connect()`.
   * @param {ConnectOptions} options
   */
  constructor(options) {
    const reconnect = options.reconnect === false
      ? null
      : { initialDelay: 100, maxDelay: 5000, maxAttempts: Infinity, ...(options.reconnect ?? {}) };
    this.#o = {
      url: options.url ?? null,
      certHashUrl: options.certHashUrl === undefined ? "/cert-hash" : options.certHashUrl,
      clientName: options.clientName ?? "quicbus-js",
      requestTimeout: options.requestTimeout ?? 5000,
      connectTimeout: options.connectTimeout ?? options.requestTimeout ?? 5000,
      reconnect,
      eventQueue: Math.max(1, options.eventQueue ?? 4096),
      outboxEvents: Math.max(1, options.outboxEvents ?? 4096),
      outboxBytes: options.outboxBytes ?? 16 * 1024 * 1024,
      maxFrame: options.maxFrame ?? DEFAULT_MAX_FRAME,
      pingInterval: options.pingInterval ?? 10000,
    };
    this.#token = options.token ?? null;
    this.#WT = options.webTransport ?? /** @type {any} */ (globalThis).WebTransport;
    this.#fetch = options.fetch ?? /** @type {any} */ (globalThis).fetch?.bind(globalThis);
    // Never an unhandled rejection: `closed` resolves, it does not reject.
  }

  /** @internal */
  async _start() {
    if (typeof this.#WT !== "function") {
      throw new QuicbusError("unsupported", "this environment has no WebTransport");
    }
    const link = await this.#open(null);
    this.#adopt(link);
    link.ready.resolve();
    if (this.#o.pingInterval > 0) {
      const timer = setInterval(() => {
        this.ping().catch(() => {});
      }, this.#o.pingInterval);
      this.#timers.add(timer);
    }
  }

  // -------------------------------------------------------------------------
  // Public API

  /** Whether a session is up right now (false while reconnecting). */
  get connected() {
    return this.#link !== null;
  }

  /** Resolves once the client is closed for good: `null` after `close()`, else why. */
  get closed() {
    return this.#closed.promise;
  }

  /**
   * Joins a room. Its events arrive on `on(name)` handlers and `events()`;
   * with `since`, the events after that offset are replayed first
   * (`recovery` says whether that was possible). A joined room is rejoined
   * by itself after a reconnect, from the newest event delivered.
   * @param {string} room
   * @param {{ since?: number | bigint | null, echo?: boolean | null }} [options]
   * @returns {Promise<{ offset: number, recovery: Recovery }>}
   */
  async join(room, options = {}) {
    checkName("room", room);
    const since = options.since === undefined || options.since === null ? null : BigInt(options.since);
    const echo = options.echo ?? null;
    const already = this.#rooms.has(room);
    // The room counts as joined from now: its stream may overtake `Joined`.
    if (!already) this.#rooms.set(room, { echo, pos: null });
    else /** @type {any} */ (this.#rooms.get(room)).echo = echo;
    try {
      const deadline = Date.now() + this.#o.requestTimeout;
      const link = await this.#waitLink("join", deadline);
      const reply = await this.#request(link, "join", deadline, (request) => ({
        type: "Join", request, room, echo, since,
      }));
      link.learn(reply.room_id, room);
      const entry = this.#rooms.get(room);
      if (!already && entry) {
        link.datagramNewest.delete(reply.room_id);
        this.#settle(room, link, reply.offset, since, reply.recovery);
      }
      return { offset: Number(reply.offset), recovery: recoveryOf(reply.recovery) };
    } catch (e) {
      if (!already) this.#rooms.delete(room);
      throw e;
    }
  }

  /**
   * Leaves a room; no event of it is delivered after this is called.
   * @param {string} room
   * @returns {Promise<void>}
   */
  async leave(room) {
    if (!this.#rooms.delete(room)) {
      throw new QuicbusError("server", `room ${room} is not joined`, { serverCode: "NotJoined" });
    }
    const deadline = Date.now() + this.#o.requestTimeout;
    const link = await this.#waitLink("leave", deadline);
    let roomId;
    try {
      roomId = await this.#resolveOn(link, room, deadline);
    } catch (e) {
      if (e instanceof QuicbusError && e.code === "forbidden") return;
      throw e;
    }
    try {
      await this.#request(link, "leave", deadline, (request) => ({
        type: "Leave", request, room_id: roomId,
      }));
    } catch (e) {
      if (e instanceof QuicbusError && e.serverCode === "NotJoined") return;
      throw e;
    }
  }

  /**
   * Publishes a reliable event. It goes into the outbox and is sent in
   * order on the room's publish stream (kept across reconnects). With
   * `ack` (the default) resolves with the offset the server gave it; with
   * `{ ack: false }` resolves once queued (refusals then arrive as
   * `forbidden` / `server-error` notices).
   * @param {string} room
   * @param {string} name
   * @param {unknown} [payload] string → UTF-8; Uint8Array as is; other values → JSON
   * @param {{ ack?: boolean }} [options]
   * @returns {Promise<number | undefined>}
   */
  async emit(room, name, payload, options = {}) {
    checkName("room", room);
    checkName("event", name);
    const bytes = encodePayload(payload);
    if (this.#finished || this.#closing) throw this.#gone();
    const size = eventFrameLen(utf8(name).length, bytes.length);
    if (size > this.#session.maxFrame) {
      throw new QuicbusError(
        "too-large",
        `event of ${size} bytes (as a frame) is over the server's frame limit of ${this.#session.maxFrame} bytes`,
        { size, limit: this.#session.maxFrame },
      );
    }
    const deadline = Date.now() + this.#o.requestTimeout;
    const wantAck = options.ack !== false;
    /** @type {Promise<any> | null} */
    let answer = null;
    /** @type {bigint | null} */
    let ack = null;
    if (wantAck) {
      const registered = this.#register(null, true, "ack", deadline);
      ack = registered.request;
      answer = registered.promise;
      answer.catch(() => {});
    }
    try {
      await this.#outboxPush(room, name, bytes, ack, deadline);
    } catch (e) {
      if (ack !== null) this.#unregister(ack);
      throw e;
    }
    if (this.#link) this.#ensureWriter(this.#link, room);
    if (!answer) return undefined;
    const reply = await answer;
    return Number(reply.offset);
  }

  /**
   * Publishes an unreliable event as one datagram, to the room's subscribers
   * that are connected now. Never throws for loss (nor while reconnecting:
   * the datagram is dropped and counted in `stats().datagramsNotSent`).
   * The first datagram to a room on a session waits for the room's id
   * (asked of the server); a newer one to the same room replaces it.
   * @param {string} room
   * @param {string} name
   * @param {unknown} [payload] as for `emit`
   * @throws {QuicbusError} `invalid-name`, `too-large` (with `size` and
   *   `limit`), `unsupported` (no datagrams on this session), `forbidden`
   *   (the server refused this room to this session), `closed` (closed for good)
   */
  emitDatagram(room, name, payload) {
    checkName("room", room);
    checkName("event", name);
    const bytes = encodePayload(payload);
    if (this.#finished || this.#closing) throw this.#gone();
    const link = this.#link;
    if (!link) {
      this.#stats.datagramsNotSent += 1;
      return;
    }
    if (link.refused.has(room)) {
      throw new QuicbusError("forbidden", `forbidden: the token does not allow Publish on room ${room}`, {
        room, action: "Publish",
      });
    }
    const limit = this.maxDatagramPayload(room, name);
    if (limit === 0 && !this.#datagramBase(link)) {
      throw new QuicbusError("unsupported", "datagrams are not supported on this session");
    }
    if (bytes.length > limit) {
      throw new QuicbusError(
        "too-large",
        `datagram payload of ${bytes.length} bytes is over the current limit of ${limit} bytes`,
        { size: bytes.length, limit },
      );
    }
    const roomId = link.ids.get(room);
    if (roomId === undefined) {
      const waiting = link.unresolved.has(room);
      link.unresolved.set(room, { event: name, payload: bytes });
      if (!waiting) this.#resolveForDatagram(link, room);
      return;
    }
    this.#sendDatagram(link, roomId, name, bytes);
  }

  /**
   * The largest datagram payload `emitDatagram(room, event, …)` accepts now
   * (0: no datagrams). Before the room has an id on this session, 5 bytes
   * are counted for it (the largest).
   * @param {string} room
   * @param {string} event
   * @returns {number}
   */
  maxDatagramPayload(room, event) {
    const link = this.#link;
    if (!link) return 0;
    const base = this.#datagramBase(link);
    const roomId = link.ids.get(room);
    const overhead = encodeFrame({
      type: "Datagram",
      room_id: roomId ?? 0xffffffff,
      seq: (1n << 64n) - 1n,
      event,
      payload: new Uint8Array(0),
    }).length;
    return Math.max(0, base - overhead - 2);
  }

  /**
   * A round trip on the control stream; resolves with its duration in ms
   * (also `stats().rtt`).
   * @returns {Promise<number>}
   */
  async ping() {
    const started = now();
    const deadline = Date.now() + this.#o.requestTimeout;
    const link = await this.#waitLink("ping", deadline);
    await this.#request(link, "ping", deadline, (request) => ({ type: "Ping", request }));
    const rtt = now() - started;
    this.#stats.rtt = rtt;
    return rtt;
  }

  /**
   * Gives the live session a new token before the current one expires
   * (same user; its permissions apply at once). Resolves with the new
   * expiry in seconds since the Unix epoch (0: never). Later reconnects
   * present this token.
   * @param {string} token
   * @returns {Promise<number>}
   */
  async refreshToken(token) {
    const deadline = Date.now() + this.#o.requestTimeout;
    const link = await this.#waitLink("refresh", deadline);
    const reply = await this.#request(link, "refresh", deadline, (request) => ({
      type: "Refresh", request, token,
    }));
    this.setToken(token);
    return Number(reply.expires);
  }

  /**
   * The token the next session presents, without telling the current one:
   * after a `token-expired` notice, reconnecting resumes once this is called.
   * @param {string | null} token
   */
  setToken(token) {
    this.#token = token;
    const waiters = this.#tokenWaiters.splice(0);
    for (const wake of waiters) wake();
  }

  /**
   * Adds a handler. Event names get `(payload: Uint8Array, event: QuicbusEvent)`.
   * Reserved names get notices instead: `"connection"` (ConnectionNotice),
   * `"recovery"` (`{ room, recovery }` per room after a reconnect, before
   * its replayed events), `"forbidden"` (`{ room, action }`: a refusal no
   * request waited for; `Subscribe`: the room was left by the server),
   * `"server-error"` (`{ code, message }`), `"token-expired"` (`{ reason }`).
   * Events with these names still arrive on `events()`.
   * @param {string} name
   * @param {Function} fn
   * @returns {this}
   */
  on(name, fn) {
    let set = this.#handlers.get(name);
    if (!set) this.#handlers.set(name, (set = new Set()));
    set.add(fn);
    return this;
  }

  /**
   * Removes a handler (or, without `fn`, every handler of `name`).
   * @param {string} name
   * @param {Function} [fn]
   * @returns {this}
   */
  off(name, fn) {
    if (fn === undefined) this.#handlers.delete(name);
    else this.#handlers.get(name)?.delete(fn);
    return this;
  }

  /**
   * Every event of every joined room, in arrival order (reliable events in
   * offset order within their room). Each call gives its own iterator with
   * its own queue of `eventQueue` events: when it is full, reliable events
   * wait (the server's streams are not read: back-pressure through
   * WebTransport flow control, as the Rust client does) and datagrams are
   * dropped for it (`stats().datagramsDroppedQueueFull`). Ends when the
   * client is closed for good; `break` unsubscribes.
   * @returns {AsyncIterableIterator<QuicbusEvent>}
   */
  events() {
    /** @type {{ queue: QuicbusEvent[], wake: (() => void) | null, done: boolean }} */
    const sub = { queue: [], wake: null, done: this.#finished };
    // `next()` calls that overlap (a `Promise.race` with a timeout, say)
    // are served one after another, in the order they were made.
    let turn = Promise.resolve();
    this.#subs.add(sub);
    const release = () => {
      sub.done = true;
      sub.queue.length = 0;
      this.#subs.delete(sub);
      this.#wakeSpace();
    };
    /** @type {AsyncIterableIterator<QuicbusEvent>} */
    const iterator = {
      [Symbol.asyncIterator]() {
        return iterator;
      },
      next: () => {
        const mine = turn.then(() => nextEvent());
        turn = mine.then(
          () => {},
          () => {},
        );
        return mine;
      },
      return: async () => {
        release();
        return { value: undefined, done: true };
      },
    };
    /** @returns {Promise<IteratorResult<QuicbusEvent>>} */
    const nextEvent = async () => {
        for (;;) {
          while (sub.queue.length > 0) {
            const event = /** @type {QuicbusEvent} */ (sub.queue.shift());
            this.#wakeSpace();
            // Nothing of a room arrives once `leave` was called.
            if (this.#rooms.has(event.room)) return { value: event, done: false };
          }
          if (sub.done) {
            release();
            return { value: undefined, done: true };
          }
          await new Promise((resolve) => {
            sub.wake = () => resolve(undefined);
          });
          sub.wake = null;
        }
    };
    return iterator;
  }

  /**
   * Statistics: `rtt` (ms, of the newest ping; null before one),
   * `reliableReceived`, `datagramsReceived`, `datagramsLost` (sequence
   * gaps), `datagramsStale` (dropped, older than one delivered),
   * `datagramsDroppedQueueFull`, `datagramsNotSent` (emitted while
   * reconnecting, or before a room id came), `serverErrors`, `forbidden`,
   * `reconnects`, `outbox` (reliable emits not yet confirmed),
   * `outboxBytes`, `connected`.
   */
  stats() {
    return {
      ...this.#stats,
      outbox: this.#outboxEvents,
      outboxBytes: this.#outboxBytes,
      connected: this.connected,
    };
  }

  /**
   * Closes the client for good (session close code 0, which also ends the
   * session on the server: it is not resumable). Pending requests and acks
   * fail with `closed`; `events()` iterators end. Emits still in the outbox
   * are not sent.
   */
  close() {
    if (this.#closing) return;
    this.#closing = true;
    const link = this.#link;
    if (link) link.close(CloseCode.NORMAL, "client closed");
    this.#finish(null);
  }

  // -------------------------------------------------------------------------
  // Sessions

  /** Where to connect and which certificate hashes to pin (fetched anew each time). */
  async #target() {
    let url = this.#o.url;
    /** @type {string[]} */
    let hashes = [];
    const certUrl = this.#o.certHashUrl;
    if (certUrl !== null && this.#fetch) {
      const base = /** @type {any} */ (globalThis).location?.href;
      let resolved = null;
      try {
        resolved = new URL(certUrl, base).href;
      } catch {
        // A relative URL without a page: nothing to fetch.
      }
      if (resolved) {
        try {
          const response = await this.#fetch(resolved, { cache: "no-store" });
          if (!response.ok) throw new Error(`HTTP ${response.status}`);
          const body = await response.json();
          if (!url && typeof body.url === "string") url = body.url;
          if (Array.isArray(body.hashes)) hashes = body.hashes.filter((h) => typeof h === "string");
        } catch (e) {
          if (!this.#o.url) {
            throw new QuicbusError("closed", `cannot fetch ${resolved}: ${message(e)}`, { cause: e });
          }
        }
      }
    }
    return { url: url ?? DEFAULT_URL, hashes };
  }

  /**
   * Opens a session and completes Hello/Welcome within connectTimeout.
   * @param {{ token: string, epoch: bigint } | null} resume
   * @returns {Promise<Link>}
   */
  async #open(resume) {
    /** @type {Link | null} */
    let link = null;
    let abandoned = false;
    const attempt = async () => {
      const { url, hashes } = await this.#target();
      /** @type {any} */
      const wtOptions = { requireUnreliable: true };
      if (hashes.length > 0) {
        wtOptions.serverCertificateHashes = hashes.map((h) => ({
          algorithm: "sha-256",
          value: base64Bytes(h),
        }));
      }
      let transport;
      try {
        transport = new this.#WT(url, wtOptions);
      } catch (e) {
        throw new QuicbusError("closed", `cannot open a WebTransport session to ${url}: ${message(e)}`, { cause: e });
      }
      link = new Link(this.#nextLink++, transport);
      transport.closed.catch(() => {});
      if (abandoned) throw timeoutError("connecting", this.#o.connectTimeout);
      try {
        await transport.ready;
      } catch (e) {
        throw await this.#lossOf(transport, e, `cannot open a WebTransport session to ${url}`);
      }
      const bidi = await transport.createBidirectionalStream();
      link.control = bidi.writable.getWriter();
      link.controlReader = new StreamFrames(bidi.readable, this.#o.maxFrame);
      await link.control.write(encodeFramed({
        type: "Hello",
        version: PROTOCOL_VERSION,
        token: this.#token,
        client_name: this.#o.clientName,
        resume,
        copies: false,
      }));
      let first;
      try {
        first = await link.controlReader.next();
      } catch (e) {
        if (e instanceof WireError) {
          link.close(e.closeCode, `control stream: ${e.message}`);
          throw new QuicbusError("protocol", `protocol error from server: ${e.message}`);
        }
        throw await this.#lossOf(transport, e, "session lost during the handshake");
      }
      if (first === null) throw await this.#lossOf(transport, null, "session lost during the handshake");
      if (first.type === "Reject") {
        throw new QuicbusError("rejected", `rejected by the server (${first.code}): ${first.reason}`, {
          serverCode: first.code,
          reason: first.reason,
        });
      }
      if (first.type !== "Welcome") {
        link.close(CloseCode.PROTOCOL_VIOLATION, `expected Welcome, got ${first.type}`);
        throw new QuicbusError("protocol", `protocol error from server: expected Welcome, got ${first.type}`);
      }
      link.welcome = first;
      if (abandoned) throw timeoutError("connecting", this.#o.connectTimeout);
      return link;
    };
    /** @type {any} */
    let timer;
    const expired = new Promise((_, reject) => {
      timer = setTimeout(
        () => reject(timeoutError("connecting", this.#o.connectTimeout)),
        this.#o.connectTimeout,
      );
    });
    const attempted = attempt();
    attempted.catch(() => {});
    expired.catch(() => {});
    try {
      const opened = await Promise.race([attempted, expired]);
      this.#startReading(opened);
      return opened;
    } catch (e) {
      abandoned = true;
      const failed = /** @type {Link | null} */ (link);
      if (failed) {
        failed.dead = true;
        failed.close(CloseCode.NORMAL, "handshake abandoned");
      }
      throw e;
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Why a transport is gone, as a QuicbusError (waits briefly for its close info).
   * @param {any} transport
   * @param {unknown} error
   * @param {string} what
   */
  async #lossOf(transport, error, what) {
    const info = await Promise.race([
      transport.closed.then((/** @type {any} */ i) => i, (/** @type {any} */ e) => e),
      new Promise((resolve) => setTimeout(() => resolve(error), 50)),
    ]);
    return closeError(info, what);
  }

  /** @param {Link} link */
  #startReading(link) {
    link.transport.closed.then(
      (/** @type {any} */ info) => this.#lost(link, info),
      (/** @type {any} */ e) => this.#lost(link, e),
    );
    this.#readControl(link);
    this.#acceptStreams(link);
    this.#readDatagrams(link);
    try {
      link.datagrams = link.transport.datagrams.writable.getWriter();
    } catch {
      link.datagrams = null;
    }
  }

  /** @param {Link} link */
  #adopt(link) {
    const w = link.welcome;
    this.#session = {
      resumeToken: w.resume_token,
      epoch: w.epoch,
      maxFrame: w.max_frame,
      maxDatagram: w.max_datagram_payload,
    };
    this.#link = link;
    const waiters = this.#linkWaiters.splice(0);
    for (const wake of waiters) wake();
  }

  /**
   * A session ended (closed by either side, or lost).
   * @param {Link} link
   * @param {any} info WebTransportCloseInfo or an error
   */
  #lost(link, info) {
    if (link.dead && link !== this.#link) return;
    link.dead = true;
    link.gone.resolve();
    for (const wake of link.writers.values()) wake();
    link.controlReader?.cancel();
    const lost = link.error instanceof QuicbusError ? link.error : closeError(info, "disconnected");
    // Requests of this session fail (acks survive: their events are resent).
    for (const [request, waiter] of this.#pending) {
      if (!waiter.survives && waiter.link === link) {
        this.#pending.delete(request);
        clearTimeout(waiter.timer);
        this.#timers.delete(waiter.timer);
        waiter.reject(lost);
      }
    }
    if (link !== this.#link) return;
    this.#link = null;
    this.#lastLoss = lost;
    if (this.#closing || this.#finished) return;
    this.#notify("connection", { state: "disconnected", error: lost });
    if (!this.#o.reconnect || link.closedHere || (fatal(lost) && !tokenExpired(lost))) {
      this.#finish(lost);
      return;
    }
    this.#reconnect(lost);
  }

  /** @param {QuicbusError} lost */
  async #reconnect(lost) {
    if (this.#reconnecting) return;
    this.#reconnecting = true;
    const policy = /** @type {{ initialDelay: number, maxDelay: number, maxAttempts: number }} */ (this.#o.reconnect);
    let error = lost;
    let attempt = 0;
    try {
      for (;;) {
        if (this.#closing) return;
        if (tokenExpired(error)) {
          this.#notify("token-expired", { reason: error.message });
          await new Promise((resolve) => this.#tokenWaiters.push(() => resolve(undefined)));
          if (this.#closing) return;
        }
        if (attempt >= policy.maxAttempts) {
          this.#finish(error);
          return;
        }
        const ceiling = Math.min(policy.initialDelay * 2 ** Math.min(attempt, 30), Math.max(policy.maxDelay, policy.initialDelay));
        const delay = Math.random() * ceiling;
        attempt += 1;
        this.#notify("connection", { state: "reconnecting", attempt, delay, error });
        await this.#sleep(delay);
        if (this.#closing) return;
        try {
          await this.#reconnectOnce();
          return;
        } catch (e) {
          const err = e instanceof QuicbusError ? e : new QuicbusError("closed", message(e), { cause: e });
          if (this.#closing) return;
          if (fatal(err) && !tokenExpired(err)) {
            this.#finish(err);
            return;
          }
          error = err;
        }
      }
    } finally {
      this.#reconnecting = false;
    }
  }

  /** @param {number} ms */
  #sleep(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.#timers.delete(timer);
        resolve(undefined);
      }, ms);
      this.#timers.add(timer);
      this.#cancelSleep = () => {
        clearTimeout(timer);
        resolve(undefined);
      };
    }).finally(() => {
      this.#cancelSleep = null;
    });
  }

  /** One attempt: connect, resume, rejoin, resend. */
  async #reconnectOnce() {
    const oldEpoch = this.#session.epoch;
    const link = await this.#open({ token: this.#session.resumeToken, epoch: oldEpoch });
    if (this.#closing) {
      link.close(CloseCode.NORMAL, "client closed");
      throw this.#gone();
    }
    try {
      await this.#rejoin(link, oldEpoch);
    } catch (e) {
      link.close(CloseCode.NORMAL, "reconnect abandoned");
      throw e;
    }
    if (this.#closing) {
      link.close(CloseCode.NORMAL, "client closed");
      throw this.#gone();
    }
    if (link.dead) throw closeError(null, "disconnected");
    this.#adopt(link);
    this.#stats.reconnects += 1;
    for (const [room, box] of this.#outbox) {
      if (box.entries.length > 0) this.#ensureWriter(link, room);
    }
    /** @type {ConnectionNotice} */
    const notice = { state: "connected", resumed: link.welcome.resumed === "Resumed" };
    const outcome = link.welcome.resumed;
    if (outcome && typeof outcome === "object" && outcome.NotResumed) {
      notice.notResumed = outcome.NotResumed.reason;
    }
    this.#notify("connection", notice);
    link.ready.resolve();
  }

  /**
   * Rejoins every joined room on `link` from the newest event delivered,
   * reporting each room's recovery.
   * @param {Link} link
   * @param {bigint} oldEpoch
   */
  async #rejoin(link, oldEpoch) {
    const epochChanged = link.welcome.epoch !== oldEpoch;
    // A room without a position is one whose own join is in flight: it runs on the new session.
    const rooms = [...this.#rooms].filter(([, r]) => r.pos !== null);
    if (epochChanged) for (const [, r] of this.#rooms) r.pos = null;
    for (const [room, entry] of rooms) {
      const since = epochChanged ? null : /** @type {{ offset: bigint }} */ (entry.pos).offset;
      /** @type {Recovery} */
      let recovery;
      try {
        const deadline = Date.now() + this.#o.requestTimeout;
        const reply = await this.#request(link, "rejoin", deadline, (request) => ({
          type: "Join", request, room, echo: entry.echo, since,
        }));
        link.learn(reply.room_id, room);
        if (this.#rooms.get(room) === entry) {
          this.#settle(room, link, reply.offset, since, reply.recovery);
        }
        recovery = epochChanged ? { notRecovered: "EpochChanged" } : recoveryOf(reply.recovery);
      } catch (e) {
        if (e instanceof QuicbusError && (e.code === "server" || e.code === "forbidden")) {
          if (this.#rooms.get(room) === entry) this.#rooms.delete(room);
          recovery = { notRecovered: "JoinRefused" };
        } else {
          throw e;
        }
      }
      if (this.#closing) throw this.#gone();
      this.#notify("recovery", { room, recovery });
    }
  }

  /**
   * After `Joined`: where delivery goes on (PROTOCOL.md 4.3, rooms.rs `settle`).
   * @param {string} room
   * @param {Link} link
   * @param {bigint} offset
   * @param {bigint | null} since
   * @param {any} recovery
   */
  #settle(room, link, offset, since, recovery) {
    const entry = this.#rooms.get(room);
    if (!entry) return;
    const base = recovery && recovery.Recovered && since !== null ? since : offset;
    if (entry.pos && entry.pos.link === link.id) {
      if (base > entry.pos.offset) entry.pos.offset = base;
    } else {
      entry.pos = { link: link.id, offset: base };
    }
  }

  /**
   * Closed for good: fail whatever waits and end the iterators.
   * @param {QuicbusError | null} error
   */
  #finish(error) {
    if (this.#finished) return;
    this.#finished = true;
    if (error) this.#lastLoss = error;
    this.#cancelSleep?.();
    for (const timer of this.#timers) {
      clearTimeout(timer);
      clearInterval(timer);
    }
    this.#timers.clear();
    const gone = this.#gone();
    for (const [, waiter] of this.#pending) waiter.reject(gone);
    this.#pending.clear();
    for (const wake of this.#outboxWaiters.splice(0)) wake();
    for (const wake of this.#linkWaiters.splice(0)) wake();
    for (const wake of this.#tokenWaiters.splice(0)) wake();
    for (const sub of this.#subs) {
      sub.done = true;
      sub.wake?.();
    }
    this.#wakeSpace();
    if (!this.#closing) this.#notify("connection", { state: "closed", error });
    this.#closed.resolve(error);
  }

  /** Why there is no session. */
  #gone() {
    if (this.#closing) return new QuicbusError("closed", "the client is closed");
    return this.#lastLoss ?? new QuicbusError("closed", "the client is closed");
  }

  /**
   * The current session, waiting for a reconnect until `deadline`.
   * @param {string} what
   * @param {number} deadline
   * @returns {Promise<Link>}
   */
  async #waitLink(what, deadline) {
    for (;;) {
      if (this.#closing || this.#finished) throw this.#gone();
      if (this.#link) return this.#link;
      const left = deadline - Date.now();
      if (left <= 0) throw timeoutError(what, this.#o.requestTimeout);
      /** @type {any} */
      let timer;
      await new Promise((resolve) => {
        timer = setTimeout(resolve, left);
        this.#timers.add(timer);
        this.#linkWaiters.push(() => resolve(undefined));
      });
      clearTimeout(timer);
      this.#timers.delete(timer);
    }
  }

  // -------------------------------------------------------------------------
  // Requests

  /**
   * @param {Link | null} link the session it was sent on (null: an ack, which survives)
   * @param {boolean} survives
   * @param {string} what
   * @param {number} deadline
   */
  #register(link, survives, what, deadline) {
    const request = this.#nextRequest++;
    /** @type {ReturnType<typeof deferred<any>>} */
    const d = deferred();
    const ms = Math.max(0, deadline - Date.now());
    const timer = setTimeout(() => {
      if (this.#pending.delete(request)) d.reject(timeoutError(what, this.#o.requestTimeout));
      this.#timers.delete(timer);
    }, ms);
    this.#timers.add(timer);
    this.#pending.set(request, { resolve: d.resolve, reject: d.reject, timer, link, survives });
    return { request, promise: d.promise };
  }

  /** @param {bigint} request */
  #unregister(request) {
    const waiter = this.#pending.get(request);
    if (!waiter) return;
    this.#pending.delete(request);
    clearTimeout(waiter.timer);
    this.#timers.delete(waiter.timer);
  }

  /**
   * Sends a control request on `link` and waits for its reply.
   * @param {Link} link
   * @param {string} what
   * @param {number} deadline
   * @param {(request: bigint) => any} frame
   * @returns {Promise<any>}
   */
  async #request(link, what, deadline, frame) {
    if (this.#finished) throw this.#gone();
    if (link.dead) throw this.#lastLoss ?? closeError(null, "disconnected");
    const { request, promise } = this.#register(link, false, what, deadline);
    link.send(frame(request));
    return promise;
  }

  /**
   * A reply by request id; Error and Forbidden become rejections.
   * @param {bigint} request
   * @param {any} frame
   */
  #reply(request, frame) {
    const waiter = this.#pending.get(request);
    if (!waiter) return; // timed out: dropped
    this.#pending.delete(request);
    clearTimeout(waiter.timer);
    this.#timers.delete(waiter.timer);
    if (frame.type === "Error") {
      waiter.reject(new QuicbusError("server", `refused by the server (${frame.code}): ${frame.message}`, {
        serverCode: frame.code,
        reason: frame.message,
      }));
    } else if (frame.type === "Forbidden") {
      waiter.reject(new QuicbusError(
        "forbidden",
        `forbidden: the token does not allow ${frame.action} on room ${frame.room}`,
        { room: frame.room, action: frame.action },
      ));
    } else {
      waiter.resolve(frame);
    }
  }

  /**
   * This session's id for `room`: known, or asked of the server.
   * @param {Link} link
   * @param {string} room
   * @param {number} deadline
   * @returns {Promise<number>}
   */
  async #resolveOn(link, room, deadline) {
    const known = link.ids.get(room);
    if (known !== undefined) return known;
    const reply = await this.#request(link, "resolve", deadline, (request) => ({
      type: "Resolve", request, room,
    }));
    link.learn(reply.room_id, room);
    return reply.room_id;
  }

  // -------------------------------------------------------------------------
  // Reading

  /**
   * @param {Link} link
   * @param {string} reason
   * @param {number} [code]
   */
  #violation(link, reason, code = CloseCode.PROTOCOL_VIOLATION) {
    if (link.dead || link.closedHere) return;
    link.error = new QuicbusError("protocol", `protocol error from server: ${reason}`);
    link.close(code, reason);
  }

  /** @param {Link} link */
  async #readControl(link) {
    const reader = /** @type {StreamFrames} */ (link.controlReader);
    for (;;) {
      let frame;
      try {
        frame = await reader.next();
      } catch (e) {
        if (e instanceof WireError) this.#violation(link, `control stream: ${e.message}`, e.closeCode);
        return;
      }
      if (frame === null) return;
      switch (frame.type) {
        case "Joined":
        case "Left":
        case "Resolved":
        case "Ack":
        case "Pong":
        case "Refreshed":
          this.#reply(frame.request, frame);
          break;
        case "Forbidden":
          if (frame.request !== null) {
            this.#reply(frame.request, frame);
          } else {
            this.#stats.forbidden += 1;
            if (frame.action === "Subscribe") this.#rooms.delete(frame.room);
            this.#notify("forbidden", { room: frame.room, action: frame.action });
          }
          break;
        case "Error":
          if (frame.request !== null) {
            this.#reply(frame.request, frame);
          } else {
            this.#stats.serverErrors += 1;
            this.#notify("server-error", { code: frame.code, message: frame.message });
          }
          break;
        case "Progress":
          this.#confirm(frame.room, frame.through);
          break;
        default:
          this.#violation(link, `${frame.type} is not a server control frame`);
          return;
      }
    }
  }

  /** @param {Link} link */
  async #acceptStreams(link) {
    await readEach(
      link,
      () => link.transport.incomingUnidirectionalStreams.getReader(),
      (stream) => {
        this.#readRoomStream(link, stream);
        return true;
      },
    );
  }

  /**
   * @param {Link} link
   * @param {ReadableStream<Uint8Array>} stream
   */
  async #readRoomStream(link, stream) {
    const limit = Math.max(this.#o.maxFrame, link.welcome?.max_frame ?? 0);
    const reader = new StreamFrames(stream, limit);
    link.gone.promise.then(() => reader.cancel());
    /** @param {unknown} e */
    const failed = (e) => {
      if (e instanceof WireError) this.#violation(link, `event stream: ${e.message}`, e.closeCode);
    };
    let room;
    try {
      const header = await reader.next();
      if (header === null) return;
      if (header.type !== "EventStream") {
        this.#violation(link, `an event stream must start with EventStream, not ${header.type}`);
        return;
      }
      link.learn(header.room_id, header.room);
      room = header.room;
    } catch (e) {
      failed(e);
      return;
    }
    // Held until this session's rejoins are reported, or until the
    // session is gone (a reconnect that failed while rejoining).
    await Promise.race([link.ready.promise, link.gone.promise]);
    if (link.dead) return;
    for (;;) {
      let frame;
      try {
        frame = await reader.next();
      } catch (e) {
        failed(e);
        return;
      }
      if (frame === null || link.dead) return;
      if (frame.type !== "Event") {
        this.#violation(link, `${frame.type} is not allowed on an event stream`);
        return;
      }
      // Waiting here pushes back on the server through flow control.
      await this.#spaceForReliable();
      if (link.dead || this.#finished) return;
      if (!this.#acceptReliable(room, link, frame.offset)) continue;
      this.#stats.reliableReceived += 1;
      this.#deliver(new QuicbusEvent(room, frame.event, "reliable", frame.offset, frame.payload.slice()), false);
    }
  }

  /**
   * Whether the reliable event at `offset` should reach the application.
   * @param {string} room
   * @param {Link} link
   * @param {bigint} offset
   */
  #acceptReliable(room, link, offset) {
    const entry = this.#rooms.get(room);
    if (!entry) return false;
    if (entry.pos) {
      if (offset <= entry.pos.offset) return false;
    }
    entry.pos = { link: link.id, offset };
    return true;
  }

  /** @param {Link} link */
  async #readDatagrams(link) {
    await readEach(
      link,
      () => link.transport.datagrams.readable.getReader(),
      (value) => this.#onDatagram(link, value),
    );
  }

  /**
   * One datagram from the server; false after a protocol violation.
   * @param {Link} link
   * @param {Uint8Array | ArrayBuffer} value
   * @returns {boolean}
   */
  #onDatagram(link, value) {
    const bytes = value instanceof Uint8Array ? value : new Uint8Array(value);
    let frame;
    try {
      frame = decodeFrame(bytes);
    } catch (e) {
      this.#violation(link, `malformed datagram: ${message(e)}`);
      return false;
    }
    if (frame.type === "EventCopy") return true; // never asked for (Hello.copies = false)
    if (frame.type !== "Datagram") {
      this.#violation(link, `${frame.type} is not a server datagram`);
      return false;
    }
    const room = link.names.get(frame.room_id);
    if (room === undefined || !this.#rooms.has(room)) return true;
    const newest = link.datagramNewest.get(frame.room_id);
    if (newest !== undefined && frame.seq <= newest) {
      this.#stats.datagramsStale += 1;
      return true;
    }
    if (newest !== undefined) this.#stats.datagramsLost += Number(frame.seq - newest - 1n);
    link.datagramNewest.set(frame.room_id, frame.seq);
    this.#stats.datagramsReceived += 1;
    this.#deliver(new QuicbusEvent(room, frame.event, "datagram", frame.seq, frame.payload.slice()), true);
    return true;
  }

  /** Resolves when every iterator has room for one more event. */
  async #spaceForReliable() {
    const max = this.#o.eventQueue;
    for (;;) {
      let full = false;
      for (const sub of this.#subs) if (!sub.done && sub.queue.length >= max) full = true;
      if (!full || this.#finished) return;
      await new Promise((resolve) => this.#spaceWaiters.push(() => resolve(undefined)));
    }
  }

  #wakeSpace() {
    for (const wake of this.#spaceWaiters.splice(0)) wake();
  }

  /**
   * @param {QuicbusEvent} event
   * @param {boolean} droppable a datagram: dropped for a full iterator
   */
  #deliver(event, droppable) {
    for (const sub of this.#subs) {
      if (sub.done) continue;
      if (droppable && sub.queue.length >= this.#o.eventQueue) {
        this.#stats.datagramsDroppedQueueFull += 1;
        continue;
      }
      sub.queue.push(event);
      sub.wake?.();
    }
    if (!RESERVED.has(event.name)) this.#call(event.name, [event.payload, event]);
  }

  /**
   * @param {string} name a reserved name
   * @param {object} notice
   */
  #notify(name, notice) {
    this.#call(name, [notice]);
  }

  /**
   * @param {string} name
   * @param {unknown[]} args
   */
  #call(name, args) {
    const set = this.#handlers.get(name);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(...args);
      } catch (e) {
        report(e);
      }
    }
  }

  // -------------------------------------------------------------------------
  // Publishing

  /**
   * Queues a Publish in the room's outbox (ids 1, 2, 3… per room, PROTOCOL.md 4.2).
   * @param {string} room
   * @param {string} event
   * @param {Uint8Array} payload
   * @param {bigint | null} ack
   * @param {number} deadline
   */
  async #outboxPush(room, event, payload, ack, deadline) {
    for (;;) {
      if (this.#finished || this.#closing) throw this.#gone();
      const full = this.#outboxEvents >= this.#o.outboxEvents
        || (this.#outboxEvents > 0 && this.#outboxBytes >= this.#o.outboxBytes);
      if (!full) break;
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new QuicbusError(
          "outbox-full",
          `outbox full: ${this.#outboxEvents} reliable emits await confirmation from the server`,
          { limit: this.#o.outboxEvents },
        );
      }
      /** @type {any} */
      let timer;
      await new Promise((resolve) => {
        timer = setTimeout(resolve, left);
        this.#timers.add(timer);
        this.#outboxWaiters.push(() => resolve(undefined));
      });
      clearTimeout(timer);
      this.#timers.delete(timer);
    }
    let box = this.#outbox.get(room);
    if (!box) this.#outbox.set(room, (box = { nextId: 0n, entries: [] }));
    box.nextId += 1n;
    const frame = encodeFramed({ type: "Publish", id: box.nextId, event, payload, ack });
    box.entries.push({ id: box.nextId, frame });
    this.#outboxEvents += 1;
    this.#outboxBytes += frame.length;
    this.#link?.writers.get(room)?.();
  }

  /**
   * `Progress`: the server has handled every id of `room` up to `through`.
   * @param {string} room
   * @param {bigint} through
   */
  #confirm(room, through) {
    const box = this.#outbox.get(room);
    if (!box) return;
    let freed = 0;
    while (box.entries.length > freed && box.entries[freed].id <= through) {
      this.#outboxBytes -= box.entries[freed].frame.length;
      freed += 1;
    }
    if (freed === 0) return;
    box.entries.splice(0, freed);
    this.#outboxEvents -= freed;
    for (const wake of this.#outboxWaiters.splice(0)) wake();
  }

  /**
   * Makes sure a writer sends `room`'s outbox on this session.
   * @param {Link} link
   * @param {string} room
   */
  #ensureWriter(link, room) {
    if (link.dead || link.writers.has(room)) return;
    link.writers.set(room, () => {});
    this.#writeOutbox(link, room);
  }

  /**
   * One publish stream per room and session: everything unconfirmed first
   * (after a reconnect, the server answers the ids it had without
   * publishing them again), then each new emit, until the session ends.
   * @param {Link} link
   * @param {string} room
   */
  async #writeOutbox(link, room) {
    let writer;
    try {
      const stream = await link.transport.createUnidirectionalStream();
      writer = stream.getWriter();
      await writer.write(encodeFramed({ type: "PublishStream", room }));
      let lastSent = 0n;
      for (;;) {
        if (link.dead) return;
        const box = this.#outbox.get(room);
        const entries = box ? box.entries.filter((e) => e.id > lastSent) : [];
        if (entries.length === 0) {
          await new Promise((resolve) => link.writers.set(room, () => resolve(undefined)));
          continue;
        }
        for (const entry of entries) {
          if (link.dead) return;
          await writer.write(entry.frame);
          lastSent = entry.id;
        }
      }
    } catch {
      // The session is gone; the next one resends.
    }
  }

  /**
   * @param {Link} link
   * @returns {number} the largest datagram (a frame body) this session sends
   */
  #datagramBase(link) {
    if (!link.welcome || link.welcome.max_datagram_payload === 0) return 0;
    const local = link.transport.datagrams?.maxDatagramSize;
    return typeof local === "number" && local > 0 ? local : link.welcome.max_datagram_payload;
  }

  /**
   * @param {Link} link
   * @param {number} roomId
   * @param {string} event
   * @param {Uint8Array} payload
   */
  #sendDatagram(link, roomId, event, payload) {
    if (!link.datagrams || link.dead) {
      this.#stats.datagramsNotSent += 1;
      return;
    }
    const frame = encodeFrame({ type: "PublishDatagram", room_id: roomId, event, payload });
    link.datagrams.write(frame).catch(() => {});
  }

  /**
   * Asks for a room id, then sends the newest datagram that waited for it.
   * @param {Link} link
   * @param {string} room
   */
  async #resolveForDatagram(link, room) {
    try {
      const roomId = await this.#resolveOn(link, room, Date.now() + this.#o.requestTimeout);
      const waiting = link.unresolved.get(room);
      link.unresolved.delete(room);
      if (waiting) this.#sendDatagram(link, roomId, waiting.event, waiting.payload);
    } catch (e) {
      link.unresolved.delete(room);
      this.#stats.datagramsNotSent += 1;
      if (e instanceof QuicbusError && e.code === "forbidden") {
        link.refused.add(room);
        this.#stats.forbidden += 1;
        this.#notify("forbidden", { room, action: "Publish" });
      } else if (e instanceof QuicbusError && e.code === "server") {
        this.#stats.serverErrors += 1;
        this.#notify("server-error", { code: e.serverCode, message: e.reason });
      }
    }
  }
}

// ---------------------------------------------------------------------------

function now() {
  return typeof performance !== "undefined" ? performance.now() : Date.now();
}

/** @param {unknown} e */
function report(e) {
  const g = /** @type {any} */ (globalThis);
  if (typeof g.reportError === "function") g.reportError(e);
  else queueMicrotask(() => {
    throw e;
  });
}

/**
 * A session's end as a QuicbusError.
 * @param {any} info WebTransportCloseInfo, an error, or null
 * @param {string} what
 */
function closeError(info, what) {
  if (info instanceof QuicbusError) return info;
  if (info && typeof info === "object" && typeof info.closeCode === "number" && !(info instanceof Error)) {
    const name = CLOSE_NAMES[info.closeCode] ?? "unknown";
    return new QuicbusError(
      "closed",
      `session closed: ${name} (code ${info.closeCode}): ${info.reason ?? ""}`,
      { closeCode: info.closeCode, reason: info.reason ?? "" },
    );
  }
  if (info instanceof Error) {
    return new QuicbusError("closed", `${what}: ${info.message}`, { cause: info });
  }
  return new QuicbusError("closed", `${what}: the session ended`);
}

/**
 * Whether losing the session this way rules out reconnecting (reconnect.rs `fatal`).
 * @param {QuicbusError} e
 */
function fatal(e) {
  if (e.code === "closed") {
    return e.closeCode === CloseCode.UNSUPPORTED_VERSION || e.closeCode === CloseCode.UNAUTHORIZED;
  }
  return e.code === "rejected" || e.code === "protocol" || e.code === "unsupported";
}

/**
 * Whether the token was refused as expired: reconnecting waits for `setToken`.
 * @param {QuicbusError} e
 */
function tokenExpired(e) {
  return (e.code === "closed" && e.closeCode === CloseCode.TOKEN_EXPIRED)
    || (e.code === "rejected" && e.serverCode === "TokenExpired");
}
