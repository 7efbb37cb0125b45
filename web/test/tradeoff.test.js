// @ts-check
// The pure logic of the trade-off page (tradeoff.js): the snapshot codec and
// the statistics. Times are passed in, so nothing sleeps.
import { test } from "node:test";
import assert from "node:assert/strict";

import {
  ENTITY_SIZE,
  SNAPSHOT_HEADER,
  SideStats,
  TickTracker,
  ageBuckets,
  colorForId,
  countStalls,
  debounce,
  decodeSnapshot,
  encodeSnapshot,
  formatNumber,
  netsimQuery,
  niceCeiling,
  percentile,
  ratePerSecond,
} from "../tradeoff.js";

/**
 * A snapshot built byte by byte, independently of encodeSnapshot.
 * @param {number} tick
 * @param {number} sentAt
 * @param {[number, number, number][]} entities
 */
function handBuilt(tick, sentAt, entities) {
  const buf = new ArrayBuffer(14 + 12 * entities.length);
  const v = new DataView(buf);
  v.setUint32(0, tick, true);
  v.setFloat64(4, sentAt, true);
  v.setUint16(12, entities.length, true);
  entities.forEach(([id, x, y], i) => {
    v.setUint32(14 + 12 * i, id, true);
    v.setFloat32(18 + 12 * i, x, true);
    v.setFloat32(22 + 12 * i, y, true);
  });
  return new Uint8Array(buf);
}

/**
 * @param {number} tick
 * @param {number} sentAt
 */
const snap = (tick, sentAt) => ({ tick, sentAt, entities: [] });

// ---------------------------------------------------------------------------
// Snapshots

test("a hand-built snapshot decodes: tick, sent_at_ms, entities (little-endian)", () => {
  const bytes = handBuilt(0xdeadbeef, 1764230400123.5, [[7, 12.5, 999.75], [4294967295, 0, 1000]]);
  assert.equal(bytes.length, SNAPSHOT_HEADER + 2 * ENTITY_SIZE);
  // Spot-check the layout itself: tick's low byte first.
  assert.deepEqual([...bytes.subarray(0, 4)], [0xef, 0xbe, 0xad, 0xde]);
  assert.deepEqual(decodeSnapshot(bytes), {
    tick: 0xdeadbeef,
    sentAt: 1764230400123.5,
    entities: [{ id: 7, x: 12.5, y: 999.75 }, { id: 4294967295, x: 0, y: 1000 }],
  });
});

test("a snapshot with no entities is 14 bytes and valid", () => {
  const bytes = handBuilt(1, 2, []);
  assert.equal(bytes.length, 14);
  assert.deepEqual(decodeSnapshot(bytes), { tick: 1, sentAt: 2, entities: [] });
});

test("a snapshot inside a larger buffer (an offset view) decodes", () => {
  const inner = handBuilt(42, 1000, [[1, 2, 3]]);
  const outer = new Uint8Array(inner.length + 7);
  outer.set(inner, 3);
  assert.deepEqual(decodeSnapshot(outer.subarray(3, 3 + inner.length)), {
    tick: 42, sentAt: 1000, entities: [{ id: 1, x: 2, y: 3 }],
  });
});

test("encodeSnapshot writes what the demo publishes", () => {
  const s = { tick: 9, sentAt: 1764230400000.25, entities: [{ id: 3, x: 1.5, y: 2.5 }] };
  assert.deepEqual(encodeSnapshot(s), handBuilt(9, 1764230400000.25, [[3, 1.5, 2.5]]));
  assert.deepEqual(decodeSnapshot(encodeSnapshot(s)), s);
});

test("malformed snapshots are rejected with null, never thrown", () => {
  const good = handBuilt(5, 10, [[1, 1, 1], [2, 2, 2]]);
  assert.equal(decodeSnapshot(new Uint8Array(0)), null, "empty");
  assert.equal(decodeSnapshot(good.subarray(0, 13)), null, "shorter than the header");
  assert.equal(decodeSnapshot(good.subarray(0, good.length - 1)), null, "one byte short");
  const longer = new Uint8Array(good.length + 1);
  longer.set(good);
  assert.equal(decodeSnapshot(longer), null, "one byte too many");
  assert.equal(decodeSnapshot(good.subarray(0, 14)), null, "n = 2 but no entities");
  const claimsMore = good.slice();
  new DataView(claimsMore.buffer).setUint16(12, 3, true);
  assert.equal(decodeSnapshot(claimsMore), null, "n larger than the payload");
  const nan = good.slice();
  new DataView(nan.buffer).setFloat64(4, NaN, true);
  assert.equal(decodeSnapshot(nan), null, "sent_at_ms not a number");
  assert.equal(decodeSnapshot(new TextEncoder().encode('{"tick":1}')), null, "JSON");
  assert.equal(decodeSnapshot(/** @type {any} */ ("not bytes")), null, "not bytes");
});

// ---------------------------------------------------------------------------
// Percentiles, rates, stalls

test("percentile of nothing is NaN", () => {
  assert.ok(Number.isNaN(percentile([], 50)));
  assert.ok(Number.isNaN(percentile([], 99)));
});

test("percentile of one value is that value", () => {
  for (const p of [0, 1, 50, 99, 100]) assert.equal(percentile([17], p), 17);
});

test("percentile of many values: nearest rank, numeric order, input untouched", () => {
  const values = Array.from({ length: 100 }, (_, i) => 100 - i); // 100..1
  const copy = values.slice();
  assert.equal(percentile(values, 50), 50);
  assert.equal(percentile(values, 99), 99);
  assert.equal(percentile(values, 100), 100);
  assert.equal(percentile(values, 0), 1);
  assert.deepEqual(values, copy);
  // Numeric, not lexicographic: 9 < 10 < 100.
  assert.equal(percentile([100, 9, 10], 50), 10);
  // A few values: p99 is the largest, p50 the lower middle.
  assert.equal(percentile([4, 1, 3, 2], 50), 2);
  assert.equal(percentile([4, 1, 3, 2], 99), 4);
  // Slow ones among 200 show at p99 only when they are over 1 %.
  assert.equal(percentile([...Array(198).fill(2), 300, 400], 99), 2);
  const ages = [...Array(197).fill(2), 300, 400, 500];
  assert.equal(percentile(ages, 50), 2);
  assert.equal(percentile(ages, 99), 300);
});

test("ratePerSecond counts the window (now - window, now]", () => {
  const times = [0, 100, 500, 999, 1000, 1500];
  assert.equal(ratePerSecond(times, 1000), 4); // 100, 500, 999, 1000
  assert.equal(ratePerSecond(times, 2000), 1); // 1500
  assert.equal(ratePerSecond(times, 5000), 0);
  assert.equal(ratePerSecond([], 1000), 0);
  assert.equal(ratePerSecond(times, 1000, 500), 4); // 999 and 1000 in half a second
  // 60 Hz for a while.
  const ticks = Array.from({ length: 300 }, (_, i) => (i * 1000) / 60);
  assert.equal(ratePerSecond(ticks, 4000), 60);
});

test("countStalls counts gaps over the threshold, not at it", () => {
  assert.equal(countStalls([]), 0);
  assert.equal(countStalls([5]), 0);
  assert.equal(countStalls([0, 16, 33, 50]), 0);
  assert.equal(countStalls([0, 100, 201, 210, 600]), 2); // 101 and 390
  assert.equal(countStalls([0, 50, 100], 40), 2);
});

test("ageBuckets: p50 and max per bucket, oldest first, empty buckets NaN", () => {
  const times = [9001, 9100, 9200, 9900, 10000, 500];
  const ages = [5, 7, 100, 3, 4, 999];
  const b = ageBuckets(times, ages, 10000, 1000, 250);
  assert.equal(b.length, 4);
  assert.deepEqual(b[0], { p50: 7, max: 100, n: 3 }); // (9000, 9250]
  assert.equal(b[1].n, 0);
  assert.ok(Number.isNaN(b[1].p50) && Number.isNaN(b[1].max));
  assert.equal(b[2].n, 0);
  assert.deepEqual(b[3], { p50: 3, max: 4, n: 2 });
  assert.equal(ageBuckets([], [], 0).length, 40, "10 s of 250 ms buckets");
});

// ---------------------------------------------------------------------------
// Loss and staleness of ticks

test("TickTracker: consecutive ticks lose nothing", () => {
  const t = new TickTracker();
  for (let i = 100; i < 200; i++) assert.equal(t.observe(i), "newer");
  assert.equal(t.lost, 0);
  assert.equal(t.stale, 0);
  assert.equal(t.newest, 199);
});

test("TickTracker: gaps are lost when a newer tick arrives", () => {
  const t = new TickTracker();
  t.observe(1);
  t.observe(2);
  assert.equal(t.lost, 0);
  t.observe(5); // 3, 4 missing
  assert.equal(t.lost, 2);
  t.observe(6);
  t.observe(10); // 7, 8, 9
  assert.equal(t.lost, 5);
  assert.equal(t.stale, 0);
  assert.deepEqual(t.recent(10), [true, true, false, false, true, true, false, false, false, true]);
});

test("TickTracker: out-of-order ticks are stale, and a late one fills its gap", () => {
  const t = new TickTracker();
  t.observe(1);
  t.observe(4); // 2, 3 lost so far
  assert.equal(t.lost, 2);
  assert.equal(t.observe(3), "stale"); // late: not shown, but not lost either
  assert.equal(t.lost, 1);
  assert.equal(t.stale, 1);
  assert.equal(t.observe(3), "stale"); // a duplicate: stale again, fills nothing
  assert.equal(t.lost, 1);
  assert.equal(t.stale, 2);
  assert.equal(t.observe(4), "stale"); // the newest again
  assert.equal(t.observe(1), "stale");
  assert.equal(t.stale, 4);
  assert.equal(t.lost, 1);
  assert.equal(t.newest, 4);
  assert.equal(t.observe(5), "newer");
  assert.deepEqual(t.recent(6), [null, true, false, true, true, true]);
  // 2 arrives last of all: the gap is filled.
  t.observe(2);
  assert.equal(t.lost, 0);
  assert.equal(t.stale, 5);
});

test("TickTracker: memory stays bounded, a huge gap is still counted", () => {
  const t = new TickTracker({ resetAfter: 100 });
  t.observe(0);
  t.observe(10_000);
  assert.equal(t.lost, 9_999);
  assert.ok(t.missing.size <= 100);
  for (let i = 10_001; i < 10_500; i += 2) t.observe(i); // every other tick lost
  assert.ok(t.missing.size <= 101, `${t.missing.size}`);
  assert.equal(t.lost, 9_999 + 249);
});

test("TickTracker: a tick far below the newest is a restarted publisher", () => {
  const t = new TickTracker({ resetAfter: 600 });
  t.observe(5000);
  t.observe(5002);
  assert.equal(t.observe(4500), "stale"); // within the window
  assert.equal(t.observe(0), "restart");
  assert.equal(t.restarts, 1);
  assert.equal(t.newest, 0);
  assert.equal(t.observe(1), "newer");
  assert.equal(t.lost, 1, "counted before the restart");
  assert.deepEqual(t.recent(3), [null, true, true]);
});

// ---------------------------------------------------------------------------
// One side's statistics

test("SideStats: snapshots/s and age percentiles over the last second", () => {
  const s = new SideStats({ now: 0 });
  // 60 Hz for 2 s, each 5 ms old on arrival, except one 80 ms late.
  for (let i = 0; i < 120; i++) {
    const at = 1000 + (i * 1000) / 60;
    const age = i === 100 ? 80 : 5;
    assert.equal(s.onSnapshot(snap(i, at - age), at), true);
  }
  const now = 1000 + (119 * 1000) / 60 + 5; // a refresh shortly after the last one
  const sum = s.summary(now);
  assert.equal(sum.received, 120);
  assert.equal(sum.perSecond, 60);
  assert.equal(sum.ageP50, 5);
  assert.equal(sum.ageP99, 80);
  assert.equal(sum.lost, 0);
  assert.equal(sum.stale, 0);
  assert.equal(sum.stalls, 0);
  assert.equal(sum.tick, 119);
  assert.equal(sum.malformed, 0);
  assert.equal(sum.secondsSinceChange, now / 1000);
  // Nothing for a second and a half: no rate, no ages.
  const later = s.summary(now + 1500);
  assert.equal(later.perSecond, 0);
  assert.ok(Number.isNaN(later.ageP50) && Number.isNaN(later.ageP99));
  assert.equal(later.received, 120);
  assert.equal(later.sinceLastMs, 1505);
});

test("SideStats: stalls are gaps over 100 ms, counted from the last impairment change", () => {
  const s = new SideStats({ now: 0 });
  const arrivals = [0, 16, 33, 200, 216, 316, 417, 433];
  arrivals.forEach((at, i) => s.onSnapshot(snap(i, at), at));
  assert.equal(s.summary(433).stalls, 2); // 167 and 101; 100 is not a stall
  assert.equal(s.summary(433).stalls, countStalls(arrivals));
  s.impairmentChanged(500);
  assert.equal(s.summary(500).stalls, 0);
  assert.equal(s.summary(1500).secondsSinceChange, 1);
  s.onSnapshot(snap(8, 700), 700); // the gap that spans the change still ends after it
  s.onSnapshot(snap(9, 710), 710);
  assert.equal(s.summary(710).stalls, 1);
});

test("SideStats: a reliable freeze then burst shows as one stall and high ages", () => {
  const s = new SideStats({ now: 0 });
  let tick = 0;
  for (let at = 0; at < 500; at += 16) s.onSnapshot(snap(tick++, at - 2), at);
  // A retransmission holds everything for ~200 ms, then the backlog arrives at once.
  const frozenAt = 496;
  const burst = 700;
  for (let sent = frozenAt; sent < burst; sent += 16) s.onSnapshot(snap(tick++, sent), burst);
  const sum = s.summary(burst);
  assert.equal(sum.stalls, 1);
  assert.equal(sum.lost, 0);
  assert.ok(sum.ageP99 >= 200, `${sum.ageP99}`);
  assert.equal(sum.ageP50, 2);
});

test("SideStats: datagram loss and staleness with out-of-order ticks", () => {
  const s = new SideStats({ now: 0 });
  const shown = [];
  // Ticks as they arrive: 3 and 4 swapped, 6 lost, 9 late after 10, 11 duplicated.
  const order = [1, 2, 4, 3, 5, 7, 8, 10, 9, 11, 11, 12];
  order.forEach((tick, i) => {
    if (s.onSnapshot(snap(tick, i * 16), i * 16)) shown.push(tick);
  });
  assert.deepEqual(shown, [1, 2, 4, 5, 7, 8, 10, 11, 12]);
  const sum = s.summary(order.length * 16);
  assert.equal(sum.lost, 1, "only tick 6 never came");
  assert.equal(sum.stale, 3, "3 after 4, 9 after 10, the second 11");
  assert.equal(sum.received, order.length);
  assert.equal(s.shown?.tick, 12);
  // The client's own stale count (bus.stats().datagramsStale) is added.
  s.clientStale = 4;
  assert.equal(s.summary(order.length * 16).stale, 7);
});

test("SideStats: malformed payloads are counted apart", () => {
  const s = new SideStats({ now: 0 });
  s.onMalformed();
  s.onMalformed();
  s.onSnapshot(snap(1, 0), 1);
  const sum = s.summary(1);
  assert.equal(sum.malformed, 2);
  assert.equal(sum.received, 1);
});

test("SideStats: samples are bounded by time and by count", () => {
  const s = new SideStats({ now: 0, historyMs: 10_000, maxSamples: 500 });
  for (let i = 0; i < 3000; i++) s.onSnapshot(snap(i, i * 10), i * 10);
  assert.ok(s.times.length <= 500);
  assert.equal(s.times.length, s.ages.length);
  const t = new SideStats({ now: 0 });
  for (let i = 0; i < 1200; i++) t.onSnapshot(snap(i, i * 16), i * 16); // 19.2 s at ~60 Hz
  assert.ok(t.times.length <= 626, `${t.times.length}`);
  assert.ok(t.times[0] > 1200 * 16 - 10_000 - 16);
  assert.equal(t.buckets(1200 * 16).length, 40);
});

// ---------------------------------------------------------------------------
// Small helpers

test("netsimQuery is POST /netsim's query", () => {
  assert.equal(netsimQuery({ loss: 5, delay_ms: 20, jitter_ms: 5 }), "loss=5&delay_ms=20&jitter_ms=5");
  assert.equal(netsimQuery({ loss: 2.5, delay_ms: 0, jitter_ms: 0 }), "loss=2.5&delay_ms=0&jitter_ms=0");
});

test("colorForId is stable and differs for neighbours", () => {
  assert.equal(colorForId(7), colorForId(7));
  assert.notEqual(colorForId(1), colorForId(2));
  assert.match(colorForId(3), /^hsl\(/);
});

test("formatNumber: dashes for no value, one decimal for small fractions", () => {
  assert.equal(formatNumber(NaN), "—");
  assert.equal(formatNumber(Infinity), "—");
  assert.equal(formatNumber(3.14159), "3.1");
  assert.equal(formatNumber(60), "60");
  assert.equal(formatNumber(123.6), "124");
});

test("niceCeiling rounds a chart's top up to 1, 2 or 5 × 10ⁿ", () => {
  assert.equal(niceCeiling(20), 20);
  assert.equal(niceCeiling(21), 50);
  assert.equal(niceCeiling(180), 200);
  assert.equal(niceCeiling(501), 1000);
  assert.equal(niceCeiling(0), 1);
});

test("debounce: one call after the quiet period, flush and cancel", () => {
  /** @type {Map<number, () => void>} */
  const pending = new Map();
  let next = 1;
  const timers = {
    setTimeout: (/** @type {() => void} */ f) => {
      pending.set(next, f);
      return next++;
    },
    clearTimeout: (/** @type {number} */ id) => pending.delete(id),
  };
  const fire = () => {
    for (const [id, f] of [...pending]) {
      pending.delete(id);
      f();
    }
  };
  /** @type {number[]} */
  const calls = [];
  const d = debounce((/** @type {number} */ v) => calls.push(v), 300, timers);
  d(1);
  d(2);
  d(3);
  assert.equal(pending.size, 1, "one timer at a time");
  fire();
  assert.deepEqual(calls, [3]);
  d(4);
  d.flush();
  assert.deepEqual(calls, [3, 4]);
  assert.equal(pending.size, 0);
  d.flush();
  assert.deepEqual(calls, [3, 4], "nothing pending: flush does nothing");
  d(5);
  d.cancel();
  fire();
  assert.deepEqual(calls, [3, 4]);
});

test("importing tradeoff.js in Node touches no DOM", async () => {
  assert.equal(typeof (/** @type {any} */ (globalThis).document), "undefined");
  const mod = await import("../tradeoff.js");
  assert.equal(typeof mod.start, "function");
});
