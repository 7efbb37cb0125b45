// @ts-check
/**
 * The trade-off page of `quicbus demo --web ADDR`: the same moving world
 * drawn twice, once from reliable events (a QUIC stream: ordered, nothing
 * lost, but a lost packet holds back everything behind it) and once from
 * datagrams (newest wins, may be lost), with live numbers, sliders that
 * impair the page's own network path, and a chat panel.
 *
 * The statistics and the snapshot codec are pure functions and classes that
 * take the time as an argument (tested with `node --test`, see
 * test/tradeoff.test.js); only `start()` touches the DOM, so importing this
 * module in Node is harmless.
 *
 * Server contract (the demo):
 * - `GET /demo` → `{ room, event, tick_hz, world_size, entities, chat_room }`
 *   (404: not a demo server);
 * - every tick the same snapshot is published twice into `room`/`event`,
 *   once reliable and once as a datagram;
 * - snapshot payload, little-endian: `u32 tick`, `f64 sent_at_ms` (Unix ms),
 *   `u16 n`, then n × `{ u32 id, f32 x, f32 y }`: 14 + 12n bytes;
 * - `GET /netsim` → `{ loss, delay_ms, jitter_ms }`;
 *   `POST /netsim?loss=&delay_ms=&jitter_ms=` → the same shape, or 400 `{ error }`.
 *
 * @module tradeoff
 */

import { connect } from "./quicbus.js";

// ---------------------------------------------------------------------------
// Snapshots

/** Bytes before the entities: u32 tick, f64 sent_at_ms, u16 n. */
export const SNAPSHOT_HEADER = 14;
/** Bytes per entity: u32 id, f32 x, f32 y. */
export const ENTITY_SIZE = 12;

/**
 * @typedef {object} Entity
 * @property {number} id
 * @property {number} x world coordinate, 0..world_size
 * @property {number} y world coordinate, 0..world_size
 */

/**
 * @typedef {object} Snapshot
 * @property {number} tick the publisher's tick counter (u32)
 * @property {number} sentAt the publisher's wall clock at publishing, ms since the Unix epoch
 * @property {Entity[]} entities
 */

/**
 * Decodes a snapshot payload; `null` when it is malformed (too short, or
 * its length is not 14 + 12n). Never throws.
 * @param {Uint8Array} bytes
 * @returns {Snapshot | null}
 */
export function decodeSnapshot(bytes) {
  if (!(bytes instanceof Uint8Array) || bytes.length < SNAPSHOT_HEADER) return null;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const tick = view.getUint32(0, true);
  const sentAt = view.getFloat64(4, true);
  const n = view.getUint16(12, true);
  if (bytes.length !== SNAPSHOT_HEADER + ENTITY_SIZE * n) return null;
  if (!Number.isFinite(sentAt)) return null;
  /** @type {Entity[]} */
  const entities = new Array(n);
  for (let i = 0, at = SNAPSHOT_HEADER; i < n; i++, at += ENTITY_SIZE) {
    entities[i] = {
      id: view.getUint32(at, true),
      x: view.getFloat32(at + 4, true),
      y: view.getFloat32(at + 8, true),
    };
  }
  return { tick, sentAt, entities };
}

/**
 * Encodes a snapshot as the demo publishes it (for tests and tools).
 * @param {Snapshot} snapshot
 * @returns {Uint8Array}
 */
export function encodeSnapshot({ tick, sentAt, entities }) {
  const bytes = new Uint8Array(SNAPSHOT_HEADER + ENTITY_SIZE * entities.length);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, tick, true);
  view.setFloat64(4, sentAt, true);
  view.setUint16(12, entities.length, true);
  entities.forEach((e, i) => {
    const at = SNAPSHOT_HEADER + ENTITY_SIZE * i;
    view.setUint32(at, e.id, true);
    view.setFloat32(at + 4, e.x, true);
    view.setFloat32(at + 8, e.y, true);
  });
  return bytes;
}

// ---------------------------------------------------------------------------
// Statistics

/**
 * The `p`-th percentile (0..100) by nearest rank: the smallest value with
 * at least p % of the values at or below it. `NaN` for no values. Does not
 * modify `values`.
 * @param {ArrayLike<number>} values
 * @param {number} p
 * @returns {number}
 */
export function percentile(values, p) {
  const n = values.length;
  if (n === 0) return NaN;
  const sorted = Float64Array.from(values).sort();
  const rank = Math.ceil((Math.min(Math.max(p, 0), 100) / 100) * n);
  return sorted[Math.min(Math.max(rank, 1), n) - 1];
}

/**
 * How many of `times` (ascending or not) fall in the window `(now - windowMs, now]`,
 * scaled to one second.
 * @param {ArrayLike<number>} times ms
 * @param {number} now ms
 * @param {number} [windowMs=1000]
 * @returns {number}
 */
export function ratePerSecond(times, now, windowMs = 1000) {
  let count = 0;
  for (let i = 0; i < times.length; i++) {
    if (times[i] > now - windowMs && times[i] <= now) count += 1;
  }
  return (count * 1000) / windowMs;
}

/**
 * Gaps longer than `thresholdMs` between consecutive arrivals.
 * @param {ArrayLike<number>} arrivals ms, in arrival order
 * @param {number} [thresholdMs=100]
 * @returns {number}
 */
export function countStalls(arrivals, thresholdMs = 100) {
  let stalls = 0;
  for (let i = 1; i < arrivals.length; i++) {
    if (arrivals[i] - arrivals[i - 1] > thresholdMs) stalls += 1;
  }
  return stalls;
}

/**
 * Per-bucket age summary over the last `spanMs`: oldest bucket first, each
 * `{ p50, max, n }` (`NaN` and 0 when the bucket had no snapshot).
 * @param {ArrayLike<number>} times arrival times, ms
 * @param {ArrayLike<number>} ages the ages at those arrivals, ms
 * @param {number} now ms
 * @param {number} [spanMs=10000]
 * @param {number} [bucketMs=250]
 * @returns {{ p50: number, max: number, n: number }[]}
 */
export function ageBuckets(times, ages, now, spanMs = 10000, bucketMs = 250) {
  const count = Math.ceil(spanMs / bucketMs);
  /** @type {number[][]} */
  const buckets = Array.from({ length: count }, () => []);
  const start = now - count * bucketMs;
  for (let i = 0; i < times.length; i++) {
    const t = times[i];
    if (t <= start || t > now) continue;
    const b = Math.min(count - 1, Math.floor((t - start) / bucketMs));
    buckets[b].push(ages[i]);
  }
  return buckets.map((values) => ({
    p50: percentile(values, 50),
    max: values.length ? Math.max(...values) : NaN,
    n: values.length,
  }));
}

/**
 * Follows the ticks of one side. A tick newer than the newest seen counts
 * the ticks skipped as lost; an older (or repeated) tick is stale, and if
 * it fills a gap that gap is no longer lost. A tick more than `resetAfter`
 * below the newest is taken as a restarted publisher: tracking starts over.
 * Memory is bounded by `resetAfter`.
 */
export class TickTracker {
  /** @param {{ resetAfter?: number }} [options] */
  constructor({ resetAfter = 600 } = {}) {
    this.resetAfter = resetAfter;
    /** @type {number | null} the newest tick seen */
    this.newest = null;
    /** @type {number | null} the first tick after the last (re)start */
    this.first = null;
    /** Ticks skipped and never filled. */
    this.lost = 0;
    /** Ticks at or below the newest when they arrived. */
    this.stale = 0;
    /** Times the publisher appeared to restart. */
    this.restarts = 0;
    /** @type {Set<number>} skipped ticks within `resetAfter` of the newest */
    this.missing = new Set();
  }

  /**
   * @param {number} tick
   * @returns {"newer" | "stale" | "restart"} whether it is the new newest
   */
  observe(tick) {
    if (this.newest === null) {
      this.newest = tick;
      this.first = tick;
      return "newer";
    }
    if (tick > this.newest) {
      const gap = tick - this.newest - 1;
      if (gap > 0) {
        this.lost += gap;
        for (let t = Math.max(this.newest + 1, tick - this.resetAfter); t < tick; t++) this.missing.add(t);
      }
      this.newest = tick;
      this.#prune();
      return "newer";
    }
    if (this.newest - tick > this.resetAfter) {
      this.restarts += 1;
      this.newest = tick;
      this.first = tick;
      this.missing.clear();
      return "restart";
    }
    this.stale += 1;
    if (this.missing.delete(tick)) this.lost -= 1;
    return "stale";
  }

  #prune() {
    const floor = /** @type {number} */ (this.newest) - this.resetAfter;
    for (const t of this.missing) {
      if (t >= floor) break; // insertion order is ascending
      this.missing.delete(t);
    }
  }

  /**
   * The last `count` ticks up to the newest, oldest first: `true` received,
   * `false` missing, `null` before tracking began.
   * @param {number} count
   * @returns {(boolean | null)[]}
   */
  recent(count) {
    /** @type {(boolean | null)[]} */
    const out = new Array(count).fill(null);
    if (this.newest === null || this.first === null) return out;
    for (let i = 0; i < count; i++) {
      const t = this.newest - count + 1 + i;
      if (t < this.first) continue;
      out[i] = !this.missing.has(t);
    }
    return out;
  }
}

/**
 * @typedef {object} SideSummary the numbers shown under one view (and in `window.tradeoff`)
 * @property {number} received snapshots decoded since the page started
 * @property {number} perSecond snapshots in the last second
 * @property {number} ageP50 ms, over the last second's snapshots (NaN: none)
 * @property {number} ageP99 ms, over the last second's snapshots (NaN: none)
 * @property {number} lost ticks never received (gaps not filled later)
 * @property {number} stale snapshots older than the newest shown, plus the client's stale datagrams
 * @property {number} stalls gaps > stallMs between consecutive arrivals since the last impairment change
 * @property {number} secondsSinceChange since the last impairment change
 * @property {number} malformed payloads that were not a snapshot
 * @property {number | null} tick the newest tick shown
 * @property {number} sinceLastMs ms since the last arrival (Infinity: none yet)
 */

/**
 * Everything measured about one side (reliable or datagram). All times are
 * passed in (ms, `Date.now()`-like), so it is deterministic under test.
 */
export class SideStats {
  /**
   * @param {{ windowMs?: number, stallMs?: number, historyMs?: number,
   *   maxSamples?: number, resetAfter?: number, now?: number }} [options]
   */
  constructor({
    windowMs = 1000, stallMs = 100, historyMs = 10000, maxSamples = 4096, resetAfter = 600, now = 0,
  } = {}) {
    this.windowMs = windowMs;
    this.stallMs = stallMs;
    this.historyMs = historyMs;
    this.maxSamples = maxSamples;
    this.ticks = new TickTracker({ resetAfter });
    /** @type {number[]} arrival times of the last `historyMs` */
    this.times = [];
    /** @type {number[]} ages at those arrivals */
    this.ages = [];
    this.received = 0;
    this.malformed = 0;
    this.stalls = 0;
    /** Stale datagrams the client dropped before the page saw them (`bus.stats().datagramsStale`). */
    this.clientStale = 0;
    /** @type {number | null} */
    this.lastArrival = null;
    this.changedAt = now;
    /** @type {Snapshot | null} the snapshot to draw */
    this.shown = null;
  }

  /**
   * A snapshot arrived at `now`; its age is `now - snapshot.sentAt`.
   * @param {Snapshot} snapshot
   * @param {number} now
   * @returns {boolean} whether it is now the one to draw (not stale)
   */
  onSnapshot(snapshot, now) {
    this.received += 1;
    if (this.lastArrival !== null && now - this.lastArrival > this.stallMs) this.stalls += 1;
    this.lastArrival = now;
    this.times.push(now);
    this.ages.push(now - snapshot.sentAt);
    this.#prune(now);
    const verdict = this.ticks.observe(snapshot.tick);
    if (verdict === "stale") return false;
    this.shown = snapshot;
    return true;
  }

  /** A payload that was not a snapshot. */
  onMalformed() {
    this.malformed += 1;
  }

  /**
   * The network changed: stalls count from here.
   * @param {number} now
   */
  impairmentChanged(now) {
    this.stalls = 0;
    this.changedAt = now;
  }

  /** @param {number} now */
  #prune(now) {
    const cutoff = now - this.historyMs;
    let drop = 0;
    while (drop < this.times.length && this.times[drop] <= cutoff) drop += 1;
    drop = Math.max(drop, this.times.length - this.maxSamples);
    if (drop > 0) {
      this.times.splice(0, drop);
      this.ages.splice(0, drop);
    }
  }

  /**
   * @param {number} now
   * @returns {SideSummary}
   */
  summary(now) {
    this.#prune(now);
    /** @type {number[]} */
    const recent = [];
    for (let i = 0; i < this.times.length; i++) {
      if (this.times[i] > now - this.windowMs && this.times[i] <= now) recent.push(this.ages[i]);
    }
    return {
      received: this.received,
      perSecond: (recent.length * 1000) / this.windowMs,
      ageP50: percentile(recent, 50),
      ageP99: percentile(recent, 99),
      lost: this.ticks.lost,
      stale: this.ticks.stale + this.clientStale,
      stalls: this.stalls,
      secondsSinceChange: (now - this.changedAt) / 1000,
      malformed: this.malformed,
      tick: this.shown ? this.shown.tick : null,
      sinceLastMs: this.lastArrival === null ? Infinity : now - this.lastArrival,
    };
  }

  /**
   * The age chart's data: see `ageBuckets`.
   * @param {number} now
   * @param {number} [bucketMs=250]
   */
  buckets(now, bucketMs = 250) {
    return ageBuckets(this.times, this.ages, now, this.historyMs, bucketMs);
  }
}

// ---------------------------------------------------------------------------
// Small pure helpers

/**
 * @typedef {object} Impairment
 * @property {number} loss percent, 0..100
 * @property {number} delay_ms
 * @property {number} jitter_ms
 */

/**
 * The query of `POST /netsim`.
 * @param {Impairment} impairment
 * @returns {string}
 */
export function netsimQuery({ loss, delay_ms, jitter_ms }) {
  return new URLSearchParams({
    loss: String(loss), delay_ms: String(delay_ms), jitter_ms: String(jitter_ms),
  }).toString();
}

/**
 * A stable, distinct colour per entity id (golden-angle hues).
 * @param {number} id
 * @returns {string}
 */
export function colorForId(id) {
  const hue = (id * 137.508) % 360;
  return `hsl(${hue.toFixed(1)} 70% 48%)`;
}

/**
 * A number for display: `—` for NaN/Infinity, else rounded (one decimal under 10).
 * @param {number} value
 * @returns {string}
 */
export function formatNumber(value) {
  if (!Number.isFinite(value)) return "—";
  if (Math.abs(value) < 10 && !Number.isInteger(value)) return value.toFixed(1);
  return String(Math.round(value));
}

/**
 * Calls `fn` once `ms` have passed without another call; `flush()` calls it
 * now with the latest arguments, `cancel()` forgets them.
 * @template {unknown[]} A
 * @param {(...args: A) => void} fn
 * @param {number} ms
 * @param {{ setTimeout: (f: () => void, ms: number) => any, clearTimeout: (t: any) => void }} [timers]
 */
export function debounce(fn, ms, timers = globalThis) {
  /** @type {any} */
  let timer = null;
  /** @type {A | null} */
  let pending = null;
  const run = () => {
    timer = null;
    const args = pending;
    pending = null;
    if (args) fn(...args);
  };
  /** @param {A} args */
  const call = (...args) => {
    pending = args;
    if (timer !== null) timers.clearTimeout(timer);
    timer = timers.setTimeout(run, ms);
  };
  call.flush = () => {
    if (timer !== null) timers.clearTimeout(timer);
    run();
  };
  call.cancel = () => {
    if (timer !== null) timers.clearTimeout(timer);
    timer = null;
    pending = null;
  };
  return call;
}

// ---------------------------------------------------------------------------
// The page (browser only)

const REFRESH_MS = 250;
const CHAT_LINES = 200;
const SIDES = /** @type {const} */ (["reliable", "datagram"]);

/**
 * Starts the page: reads `/demo`, connects, joins the world and the chat
 * room, and keeps the views, numbers and test signals up to date. Called by
 * tradeoff.html; the only function here that touches the DOM.
 * @param {{ fetch?: typeof fetch, connect?: typeof connect }} [options]
 */
export async function start(options = {}) {
  const doFetch = options.fetch ?? globalThis.fetch.bind(globalThis);
  const doConnect = options.connect ?? connect;
  const $ = (/** @type {string} */ id) => /** @type {HTMLElement} */ (document.getElementById(id));
  const state = $("state");
  /**
   * @param {string} name
   * @param {string} [text]
   */
  const setState = (name, text) => {
    state.dataset.state = name;
    state.textContent = text ?? name;
  };

  // --- The demo's parameters -------------------------------------------------
  let demo;
  try {
    const res = await doFetch("/demo");
    if (res.status === 404) {
      showMissing("This server is not running the demo.");
      return;
    }
    if (!res.ok) throw new Error(`GET /demo: HTTP ${res.status}`);
    demo = await res.json();
  } catch (e) {
    showMissing(`Cannot read /demo: ${e instanceof Error ? e.message : e}.`);
    return;
  }
  const worldSize = Number(demo.world_size) || 1000;
  const tickHz = Number(demo.tick_hz) || 60;
  /** The tick strips show the last 2 s. */
  const stripTicks = Math.max(1, Math.round(2 * tickHz));
  $("tick-hz").textContent = String(tickHz);
  $("entity-count").textContent = String(demo.entities ?? "?");

  /** @param {string} why */
  function showMissing(why) {
    document.body.dataset.demo = "missing";
    setState("closed", "no demo");
    const box = $("missing");
    box.hidden = false;
    $("missing-why").textContent = why;
  }

  // --- Statistics ------------------------------------------------------------
  let changedAt = Date.now();
  /** @type {Record<"reliable" | "datagram", SideStats>} */
  const sides = {
    reliable: new SideStats({ now: changedAt, resetAfter: tickHz * 10 }),
    datagram: new SideStats({ now: changedAt, resetAfter: tickHz * 10 }),
  };
  /** @type {Impairment} */
  let impairment = { loss: 0, delay_ms: 0, jitter_ms: 0 };
  let joined = false;
  /** Whether the views and numbers are being refreshed (after joining). */
  let running = false;

  const signals = /** @type {any} */ ({
    reliable: sides.reliable.summary(changedAt),
    datagram: sides.datagram.summary(changedAt),
    impairment,
    sinceChange: 0,
    setImpairment,
  });

  function markReady() {
    if (running && joined && sides.reliable.shown && sides.datagram.shown && document.body.dataset.ready !== "1") {
      refresh(); // window.tradeoff already counts both first snapshots
      document.body.dataset.ready = "1";
    }
  }

  // --- Impairment -----------------------------------------------------------------
  const sliders = {
    loss: /** @type {HTMLInputElement} */ ($("loss")),
    delay_ms: /** @type {HTMLInputElement} */ ($("delay")),
    jitter_ms: /** @type {HTMLInputElement} */ ($("jitter")),
  };
  const netStatus = $("netsim-status");
  const showSliderValues = () => {
    $("loss-value").textContent = `${Number(sliders.loss.value).toFixed(1)} %`;
    $("delay-value").textContent = `${sliders.delay_ms.value} ms`;
    $("jitter-value").textContent = `${sliders.jitter_ms.value} ms`;
  };
  /** @param {Impairment} imp */
  const moveSliders = (imp) => {
    for (const key of /** @type {(keyof Impairment)[]} */ (["loss", "delay_ms", "jitter_ms"])) {
      const el = sliders[key];
      const v = Number(imp[key]);
      if (!Number.isFinite(v)) continue;
      el.dataset.max ??= el.max; // the page's own range; widened only as far as needed
      el.max = String(Math.max(Number(el.dataset.max), v));
      el.value = String(v);
    }
    showSliderValues();
  };
  /** @param {Impairment} imp */
  const describe = (imp) => `loss ${imp.loss} %, delay ${imp.delay_ms} ms, jitter ${imp.jitter_ms} ms`;

  let posting = Promise.resolve();
  /**
   * POSTs an impairment (one request at a time, in order).
   * @param {Impairment} imp
   * @returns {Promise<Impairment>}
   */
  function post(imp) {
    const run = async () => {
      netStatus.dataset.state = "pending";
      netStatus.textContent = `applying ${describe(imp)}…`;
      let res;
      let body;
      try {
        res = await doFetch(`/netsim?${netsimQuery(imp)}`, { method: "POST" });
        body = await res.json().catch(() => ({}));
      } catch (e) {
        netStatus.dataset.state = "error";
        netStatus.textContent = `not applied: ${e instanceof Error ? e.message : e}`;
        moveSliders(impairment);
        throw e;
      }
      if (!res.ok) {
        const why = body && body.error ? body.error : `HTTP ${res.status}`;
        netStatus.dataset.state = "error";
        netStatus.textContent = `refused: ${why}`;
        moveSliders(impairment);
        throw new Error(`POST /netsim: ${why}`);
      }
      impairment = { loss: Number(body.loss), delay_ms: Number(body.delay_ms), jitter_ms: Number(body.jitter_ms) };
      changedAt = Date.now();
      for (const s of SIDES) sides[s].impairmentChanged(changedAt);
      netStatus.dataset.state = "applied";
      netStatus.textContent = `applied: ${describe(impairment)}`;
      moveSliders(impairment);
      if (running) refresh();
      return impairment;
    };
    const result = posting.then(run, run);
    posting = result.then(() => {}, () => {});
    return result;
  }

  const fromSliders = () => ({
    loss: Number(sliders.loss.value),
    delay_ms: Number(sliders.delay_ms.value),
    jitter_ms: Number(sliders.jitter_ms.value),
  });
  const postLater = debounce(() => {
    post(fromSliders()).catch(() => {});
  }, 300);
  for (const el of Object.values(sliders)) {
    el.addEventListener("input", () => {
      showSliderValues();
      postLater();
    });
    el.addEventListener("change", () => postLater.flush());
  }
  $("reset").addEventListener("click", () => {
    postLater.cancel();
    moveSliders({ loss: 0, delay_ms: 0, jitter_ms: 0 });
    post(fromSliders()).catch(() => {});
  });

  /**
   * What the sliders do, for tests: moves them and applies at once.
   * @param {Partial<Impairment>} imp
   * @returns {Promise<Impairment>} the server's answer
   */
  function setImpairment(imp = {}) {
    postLater.cancel();
    /** @type {Record<string, number>} */
    const next = fromSliders();
    for (const [key, value] of Object.entries(imp)) if (value !== undefined && value !== null) next[key] = Number(value);
    moveSliders(next);
    return post(/** @type {Impairment} */ (/** @type {unknown} */ (next)));
  }

  try {
    const res = await doFetch("/netsim");
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const body = await res.json();
    impairment = { loss: Number(body.loss), delay_ms: Number(body.delay_ms), jitter_ms: Number(body.jitter_ms) };
    moveSliders(impairment);
    netStatus.dataset.state = "applied";
    netStatus.textContent = `current: ${describe(impairment)}`;
  } catch (e) {
    netStatus.dataset.state = "error";
    netStatus.textContent = `no impairment proxy (GET /netsim: ${e instanceof Error ? e.message : e})`;
    for (const el of Object.values(sliders)) el.disabled = true;
    /** @type {HTMLButtonElement} */ ($("reset")).disabled = true;
  }

  /** @type {any} */ (window).tradeoff = signals;

  // --- Connecting --------------------------------------------------------------
  const params = new URLSearchParams(location.search);
  let bus;
  try {
    bus = await doConnect({ token: params.get("token") ?? undefined, clientName: "tradeoff page" });
  } catch (e) {
    setState("closed", `cannot connect: ${e instanceof Error ? e.message : e}`);
    throw e;
  }
  /** @type {any} */ (window).bus = bus;
  setState("connected");
  bus.on("connection", (/** @type {any} */ c) => setState(
    c.state,
    c.resumed === undefined ? c.state : `${c.state} (${c.resumed ? "resumed" : "new session"})`,
  ));

  bus.on(demo.event ?? "snapshot", (/** @type {Uint8Array} */ payload, /** @type {any} */ event) => {
    if (event.room !== demo.room) return;
    const side = event.delivery === "datagram" ? sides.datagram : sides.reliable;
    const snapshot = decodeSnapshot(payload);
    if (!snapshot) {
      side.onMalformed();
      return;
    }
    side.onSnapshot(snapshot, Date.now());
    markReady();
  });

  // --- Chat ---------------------------------------------------------------------
  const chatRoom = String(demo.chat_room ?? "chat");
  $("chat-room").textContent = chatRoom;
  const log = /** @type {HTMLUListElement} */ ($("chat-log"));
  /**
   * @param {string} text
   * @param {string} [cls]
   * @param {string} [nick]
   */
  function chatLine(text, cls, nick) {
    const li = document.createElement("li");
    if (cls) li.className = cls;
    if (nick !== undefined) {
      const who = document.createElement("b");
      who.textContent = `${nick}: `;
      li.append(who);
    }
    li.append(text);
    log.append(li);
    while (log.children.length > CHAT_LINES) log.firstElementChild?.remove();
    log.scrollTop = log.scrollHeight;
  }
  bus.on("message", (/** @type {Uint8Array} */ _payload, /** @type {any} */ event) => {
    if (event.room !== chatRoom) return;
    let m;
    try {
      m = event.json();
    } catch {
      m = { nick: "?", text: event.text() };
    }
    chatLine(String(m.text ?? ""), "", String(m.nick ?? "?"));
  });
  bus.on("recovery", (/** @type {any} */ r) => chatLine(`${r.room}: ${JSON.stringify(r.recovery)}`, "notice"));
  const chatForm = /** @type {HTMLFormElement} */ ($("chat-form"));
  chatForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    const nick = /** @type {HTMLInputElement} */ (chatForm.elements.namedItem("nick")).value.trim() || "guest";
    const input = /** @type {HTMLInputElement} */ (chatForm.elements.namedItem("text"));
    const text = input.value;
    if (!text) return;
    input.value = "";
    try {
      await bus.emit(chatRoom, "message", { nick, text });
    } catch (err) {
      chatLine(`not sent: ${err instanceof Error ? err.message : err}`, "notice");
    }
  });

  try {
    await bus.join(demo.room, {});
    await bus.join(chatRoom, { echo: true });
    joined = true;
    document.body.dataset.joined = "1";
    markReady();
  } catch (e) {
    setState("closed", `cannot join: ${e instanceof Error ? e.message : e}`);
    throw e;
  }

  // --- Drawing -------------------------------------------------------------------------
  const views = Object.fromEntries(SIDES.map((s) => [s, {
    world: /** @type {HTMLCanvasElement} */ ($(`${s}-world`)),
    strip: /** @type {HTMLCanvasElement} */ ($(`${s}-ticks`)),
    chart: /** @type {HTMLCanvasElement} */ ($(`${s}-chart`)),
    colour: getComputedStyle($(`${s}-view`)).getPropertyValue("--side").trim() || "#333",
  }]));

  /** @param {HTMLCanvasElement} canvas */
  function fit(canvas) {
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(canvas.clientWidth * dpr));
    const h = Math.max(1, Math.round(canvas.clientHeight * dpr));
    if (canvas.width !== w || canvas.height !== h) {
      canvas.width = w;
      canvas.height = h;
    }
    const ctx = /** @type {CanvasRenderingContext2D} */ (canvas.getContext("2d"));
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    return { ctx, w, h, dpr };
  }

  /** @type {Map<number, string>} */
  const colours = new Map();
  /** @param {number} id */
  const colourOf = (id) => {
    let c = colours.get(id);
    if (!c) colours.set(id, (c = colorForId(id)));
    return c;
  };

  /**
   * @param {"reliable" | "datagram"} name
   * @param {number} now
   */
  function drawWorld(name, now) {
    const side = sides[name];
    const { ctx, w, h, dpr } = fit(views[name].world);
    ctx.fillStyle = "#fbfbfd";
    ctx.fillRect(0, 0, w, h);
    const size = Math.min(w, h);
    const scale = size / worldSize;
    const ox = (w - size) / 2;
    const oy = (h - size) / 2;
    ctx.strokeStyle = "#eceef3";
    ctx.lineWidth = 1;
    ctx.beginPath();
    for (let i = 0; i <= 10; i++) {
      const p = Math.round((i * size) / 10) + 0.5;
      ctx.moveTo(ox + p, oy);
      ctx.lineTo(ox + p, oy + size);
      ctx.moveTo(ox, oy + p);
      ctx.lineTo(ox + size, oy + p);
    }
    ctx.stroke();
    const snap = side.shown;
    const r = Math.max(3, 6 * dpr * Math.min(1, size / (420 * dpr)));
    if (snap) {
      for (const e of snap.entities) {
        ctx.fillStyle = colourOf(e.id);
        ctx.beginPath();
        ctx.arc(ox + e.x * scale, oy + e.y * scale, r, 0, Math.PI * 2);
        ctx.fill();
      }
    }
    const gap = side.lastArrival === null ? Infinity : now - side.lastArrival;
    ctx.font = `${12 * dpr}px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace`;
    ctx.textBaseline = "top";
    ctx.fillStyle = "#555";
    const age = snap ? Math.max(0, Date.now() - snap.sentAt) : NaN;
    ctx.fillText(snap ? `tick ${snap.tick} · showing ${formatNumber(age)} ms old` : "waiting for the first snapshot…", 8 * dpr, 8 * dpr);
    if (snap && gap > side.stallMs) {
      ctx.strokeStyle = "#d92d20";
      ctx.lineWidth = 4 * dpr;
      ctx.strokeRect(2 * dpr, 2 * dpr, w - 4 * dpr, h - 4 * dpr);
      const label = `frozen ${formatNumber(gap)} ms`;
      ctx.font = `bold ${15 * dpr}px system-ui, sans-serif`;
      const tw = ctx.measureText(label).width;
      ctx.fillStyle = "rgba(217, 45, 32, 0.9)";
      ctx.fillRect(w - tw - 24 * dpr, 8 * dpr, tw + 16 * dpr, 24 * dpr);
      ctx.fillStyle = "#fff";
      ctx.fillText(label, w - tw - 16 * dpr, 12 * dpr);
    }
  }

  /** @param {"reliable" | "datagram"} name */
  function drawStrip(name) {
    const { ctx, w, h } = fit(views[name].strip);
    ctx.clearRect(0, 0, w, h);
    const cells = sides[name].ticks.recent(stripTicks);
    const cw = w / stripTicks;
    cells.forEach((c, i) => {
      if (c === null) return;
      ctx.fillStyle = c ? views[name].colour : "#d92d20";
      ctx.globalAlpha = c ? 0.35 : 1;
      ctx.fillRect(Math.floor(i * cw), 0, Math.max(1, Math.ceil(cw) - (cw > 3 ? 1 : 0)), h);
    });
    ctx.globalAlpha = 1;
  }

  /**
   * @param {"reliable" | "datagram"} name
   * @param {{ p50: number, max: number, n: number }[]} buckets
   * @param {number} top ms at the top of the chart (shared by both sides)
   */
  function drawChart(name, buckets, top) {
    const { ctx, w, h, dpr } = fit(views[name].chart);
    ctx.fillStyle = "#fbfbfd";
    ctx.fillRect(0, 0, w, h);
    const pad = 4 * dpr;
    const y = (/** @type {number} */ v) => h - pad - (Math.min(v, top) / top) * (h - 2 * pad);
    const bw = w / buckets.length;
    ctx.fillStyle = views[name].colour;
    ctx.globalAlpha = 0.18;
    buckets.forEach((b, i) => {
      if (b.n) ctx.fillRect(i * bw, y(b.max), Math.max(1, bw - 1), h - pad - y(b.max));
    });
    ctx.globalAlpha = 1;
    ctx.strokeStyle = views[name].colour;
    ctx.lineWidth = 2 * dpr;
    ctx.beginPath();
    let drawing = false;
    buckets.forEach((b, i) => {
      if (!b.n) {
        drawing = false;
        return;
      }
      const px = i * bw + bw / 2;
      if (drawing) ctx.lineTo(px, y(b.p50));
      else ctx.moveTo(px, y(b.p50));
      drawing = true;
    });
    ctx.stroke();
    ctx.fillStyle = "#777";
    ctx.font = `${11 * dpr}px system-ui, sans-serif`;
    ctx.textBaseline = "top";
    ctx.fillText(`${top} ms`, pad, pad);
  }

  // --- Numbers and signals, 4 × per second ------------------------------------------
  /**
   * @param {"reliable" | "datagram"} name
   * @param {SideSummary} s
   */
  function showNumbers(name, s) {
    const set = (/** @type {string} */ key, /** @type {string} */ text) => {
      const el = $(`${name}-${key}`);
      if (el.textContent !== text) el.textContent = text;
    };
    /**
     * @param {string} key
     * @param {number} value
     */
    const count = (key, value) => {
      set(key, String(value));
      $(`${name}-${key}`).toggleAttribute("data-bad", value > 0);
    };
    set("rate", formatNumber(s.perSecond));
    set("p50", formatNumber(s.ageP50));
    set("p99", formatNumber(s.ageP99));
    if (name === "reliable" && s.lost === 0) {
      const el = $("reliable-lost");
      if (el.textContent !== "0 (by design)") {
        const note = document.createElement("small");
        note.className = "note";
        note.textContent = "(by design)";
        el.replaceChildren("0 ", note);
        el.removeAttribute("data-bad");
      }
    } else {
      count("lost", s.lost);
    }
    count("stale", s.stale);
    count("stalls", s.stalls);
    set("malformed", s.malformed ? `${s.malformed} malformed` : "");
  }

  function refresh() {
    const now = Date.now();
    sides.datagram.clientStale = bus.stats().datagramsStale;
    /** @type {Record<string, SideSummary>} */
    const summaries = {};
    /** @type {Record<string, { p50: number, max: number, n: number }[]>} */
    const charts = {};
    let top = 0;
    for (const name of SIDES) {
      summaries[name] = sides[name].summary(now);
      charts[name] = sides[name].buckets(now);
      for (const b of charts[name]) if (b.n) top = Math.max(top, b.max);
    }
    top = niceCeiling(Math.max(top, 20));
    for (const name of SIDES) {
      showNumbers(name, summaries[name]);
      drawChart(name, charts[name], top);
      drawStrip(name);
    }
    const since = (now - changedAt) / 1000;
    $("since-change").textContent = `${Math.floor(since)} s`;
    signals.reliable = summaries.reliable;
    signals.datagram = summaries.datagram;
    signals.impairment = { ...impairment };
    signals.sinceChange = since;
  }

  running = true;
  setInterval(refresh, REFRESH_MS);
  refresh();
  markReady();
  const frame = () => {
    const now = Date.now();
    for (const name of SIDES) drawWorld(name, now);
    requestAnimationFrame(frame);
  };
  requestAnimationFrame(frame);
}

/**
 * 20, 50, 100, 200, 500, 1000, … at or above `v`.
 * @param {number} v
 * @returns {number}
 */
export function niceCeiling(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}
