// Unit tests of web/codec.js against docs/PROTOCOL.md and the Rust encoder.
// Run: cd web && node --test test/

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

import {
  ACTIONS,
  ALPN,
  CloseCode,
  DEFAULT_MAX_FRAME,
  ERROR_CODES,
  FRAME_TYPES,
  FrameDecoder,
  MAX_COPY_BYTES,
  MAX_NAME_LEN,
  PROTOCOL_VERSION,
  RECOVERY_FAILURES,
  WireError,
  decodeFrame,
  decodeVarint,
  encodeFrame,
  encodeFramed,
  encodeVarint,
  eventFrameLen,
  text,
  utf8,
  varintLength,
} from "../codec.js";

// ---------------------------------------------------------------------------
// Helpers

/**
 * "0a 0b" or "0a0b" → bytes.
 * @param {string} hex
 * @returns {Uint8Array}
 */
function fromHex(hex) {
  const clean = hex.replace(/\s+/g, "").toLowerCase();
  assert.match(clean, /^([0-9a-f]{2})*$/, `not hex: ${hex}`);
  const out = new Uint8Array(clean.length / 2);
  for (let i = 0; i < out.length; i++) {
    out[i] = parseInt(clean.slice(2 * i, 2 * i + 2), 16);
  }
  return out;
}

/**
 * bytes → "0a 0b" (the spelling of PROTOCOL.md).
 * @param {Uint8Array} bytes
 * @returns {string}
 */
function toHex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join(" ");
}

/**
 * Normalizes a hex string to the spelling of `toHex`.
 * @param {string} hex
 * @returns {string}
 */
function normHex(hex) {
  return toHex(fromHex(hex));
}

/**
 * Asserts that `fn` throws a WireError with this code.
 * @param {() => unknown} fn
 * @param {string} code
 * @param {string} [what]
 */
function throwsWire(fn, code, what) {
  assert.throws(
    fn,
    (error) => {
      assert.ok(error instanceof WireError, `${what ?? ""}: not a WireError: ${error}`);
      assert.ok(error instanceof Error);
      assert.equal(error.code, code, `${what ?? ""}: ${error.message}`);
      return true;
    },
    what,
  );
}

const bytesOf = (/** @type {string} */ s) => new TextEncoder().encode(s);

// ---------------------------------------------------------------------------
// Constants

test("constants match src/wire/mod.rs and PROTOCOL.md", () => {
  assert.equal(PROTOCOL_VERSION, 2);
  assert.equal(ALPN, "quicbus/1");
  assert.equal(utf8(ALPN).length, 9);
  assert.equal(DEFAULT_MAX_FRAME, 1048576);
  assert.equal(MAX_NAME_LEN, 255);
  assert.equal(MAX_COPY_BYTES, 512);
  assert.equal(FRAME_TYPES.length, 25);
  assert.equal(FRAME_TYPES[0], "Hello");
  assert.equal(FRAME_TYPES[24], "Forbidden");
  assert.equal(ERROR_CODES.length, 17);
  assert.equal(ERROR_CODES[9], "Unavailable");
  assert.equal(ERROR_CODES[16], "DatagramsDisabled");
  assert.equal(RECOVERY_FAILURES.length, 8);
  assert.deepEqual([...ACTIONS], ["Publish", "Subscribe", "History"]);
  assert.ok(Object.isFrozen(CloseCode));
  assert.ok(Object.isFrozen(ERROR_CODES));
  assert.deepEqual(
    Object.entries(CloseCode).map(([name, code]) => `${code} ${name}`),
    [
      "0 NORMAL", "1 SERVER_SHUTTING_DOWN", "2 SLOW_CONSUMER", "3 PROTOCOL_VIOLATION",
      "4 FRAME_TOO_LARGE", "5 UNSUPPORTED_VERSION", "6 HANDSHAKE_TIMEOUT", "7 SERVER_BUSY",
      "8 UNAUTHORIZED", "9 SESSION_RESUMED", "10 STORAGE_UNAVAILABLE", "11 RATE_LIMITED",
      "12 FRAME_TIMEOUT", "13 TOKEN_EXPIRED",
    ],
  );
});

// ---------------------------------------------------------------------------
// 1. Varints (PROTOCOL.md 2.1)

/** The examples of PROTOCOL.md 2.1. */
const VARINT_EXAMPLES = /** @type {const} */ ([
  [0n, "00"],
  [127n, "7f"],
  [128n, "80 01"],
  [300n, "ac 02"],
  [1048576n, "80 80 40"],
  [2n ** 32n - 1n, "ff ff ff ff 0f"],
  [2n ** 64n - 1n, "ff ff ff ff ff ff ff ff ff 01"],
]);

test("varint examples of PROTOCOL.md 2.1 round-trip", () => {
  for (const [value, hex] of VARINT_EXAMPLES) {
    assert.equal(toHex(encodeVarint(value)), hex, `encode ${value}`);
    assert.deepEqual(decodeVarint(fromHex(hex)), { value, length: fromHex(hex).length });
    assert.equal(varintLength(value), fromHex(hex).length);
    if (value < 2n ** 32n) {
      assert.equal(toHex(encodeVarint(Number(value))), hex, `encode Number ${value}`);
      assert.deepEqual(decodeVarint(fromHex(hex), 0, "u32").value, value);
    }
  }
});

test("varints inside frames: u32 and u64 extremes", () => {
  const leave = { type: "Leave", request: 2n ** 64n - 1n, room_id: 2 ** 32 - 1 };
  assert.equal(toHex(encodeFrame(leave)), "02 ff ff ff ff ff ff ff ff ff 01 ff ff ff ff 0f");
  assert.deepEqual(decodeFrame(encodeFrame(leave)), leave);
  const welcome = {
    type: "Welcome",
    session_id: 2n ** 53n + 1n,
    max_datagram_payload: 1162,
    max_frame: 1048576,
    epoch: 18446744073709551557n,
    resume_token: "t",
    resumed: "New",
  };
  const decoded = decodeFrame(encodeFrame(welcome));
  assert.deepEqual(decoded, welcome);
  assert.equal(typeof decoded.session_id, "bigint");
});

test("invalid varints (PROTOCOL.md 2.1, 2.3)", () => {
  // An 11-byte length prefix: never complete after 10 bytes.
  const prefix11 = fromHex("80 80 80 80 80 80 80 80 80 80 00");
  throwsWire(() => decodeVarint(prefix11), "invalid-varint", "11-byte varint");
  const stream = new FrameDecoder();
  stream.push(prefix11);
  throwsWire(() => stream.next(), "invalid-length", "11-byte length prefix");
  const allOnes = new FrameDecoder();
  allOnes.push(new Uint8Array(11).fill(0xff));
  throwsWire(() => allOnes.next(), "invalid-length", "ff x 11 length prefix");

  // A 5-byte u32 whose 5th byte is over 0x0f, and a 6-byte u32.
  throwsWire(() => decodeVarint(fromHex("ff ff ff ff 10"), 0, "u32"), "invalid-varint");
  throwsWire(() => decodeVarint(fromHex("80 80 80 80 80 00"), 0, "u32"), "invalid-varint");
  // ...in a frame: Leave { request: 1, room_id: <bad> }.
  throwsWire(() => decodeFrame(fromHex("02 01 ff ff ff ff 10")), "invalid-varint", "room_id");
  throwsWire(() => decodeFrame(fromHex("02 01 80 80 80 80 80 00")), "invalid-varint");
  // The largest u32 is fine.
  assert.equal(decodeFrame(fromHex("02 01 ff ff ff ff 0f")).room_id, 2 ** 32 - 1);

  // A 10-byte u64 whose 10th byte is over 0x01.
  const u64Bad = fromHex("ff ff ff ff ff ff ff ff ff 02");
  throwsWire(() => decodeVarint(u64Bad), "invalid-varint", "u64 10th byte 02");
  throwsWire(() => decodeFrame(fromHex("11 ff ff ff ff ff ff ff ff ff 02")), "invalid-varint");
  const prefixBad = new FrameDecoder();
  prefixBad.push(u64Bad);
  throwsWire(() => prefixBad.next(), "invalid-length", "prefix 10th byte 02");

  // Cut short.
  throwsWire(() => decodeVarint(fromHex("80")), "truncated");
  throwsWire(() => decodeFrame(fromHex("11 80 80")), "truncated");
});

test("padded varints are accepted as by the reference decoder, encoded shortest", () => {
  assert.deepEqual(decodeVarint(fromHex("81 00")), { value: 1n, length: 2 });
  const ping = decodeFrame(fromHex("11 81 80 00"));
  assert.deepEqual(ping, { type: "Ping", request: 1n });
  assert.equal(toHex(encodeFrame(ping)), "11 01");
});

// ---------------------------------------------------------------------------
// 2. The byte strings of PROTOCOL.md 4.1 and section 8

/**
 * Every example of PROTOCOL.md with its bytes, as written there.
 * `framed`: a stream frame with length prefix; `datagram`: a bare body.
 * @type {Array<{ name: string, frame: object, framed?: string, datagram?: string }>}
 */
const DOC_EXAMPLES = [
  {
    name: "4.1 / 8: Hello { version: 2, token: None, client_name: \"cli\", resume: None, copies: false }",
    frame: { type: "Hello", version: 2, token: null, client_name: "cli", resume: null, copies: false },
    framed: "09 00 02 00 03 63 6c 69 00 00",
  },
  {
    name: "4.1: Hello with token, resume and copies",
    frame: {
      type: "Hello",
      version: 2,
      token: "s",
      client_name: "cli",
      resume: { token: "ab", epoch: 5n },
      copies: true,
    },
    framed: "0f 00 02 01 01 73 03 63 6c 69 01 02 61 62 05 01",
  },
  {
    name: "8: Welcome, resumed New",
    frame: {
      type: "Welcome",
      session_id: 1n,
      max_datagram_payload: 1200,
      max_frame: 1048576,
      epoch: 5n,
      resume_token: "t",
      resumed: "New",
    },
    framed: "0b 04 01 b0 09 80 80 40 05 01 74 00",
  },
  {
    name: "8: Join { request: 1, room: \"chat\", echo: None, since: None }",
    frame: { type: "Join", request: 1n, room: "chat", echo: null, since: null },
    framed: "09 01 01 04 63 68 61 74 00 00",
  },
  {
    name: "8: Joined, recovery Live",
    frame: { type: "Joined", request: 1n, room_id: 0, offset: 0n, recovery: "Live" },
    framed: "05 06 01 00 00 00",
  },
  {
    name: "8: Join with since: Some(300)",
    frame: { type: "Join", request: 2n, room: "chat", echo: null, since: 300n },
    framed: "0b 01 02 04 63 68 61 74 00 01 ac 02",
  },
  {
    name: "8: Joined, recovery Recovered { replayed: 10 }",
    frame: {
      type: "Joined",
      request: 2n,
      room_id: 0,
      offset: 310n,
      recovery: { Recovered: { replayed: 10n } },
    },
    framed: "07 06 02 00 b6 02 01 0a",
  },
  {
    name: "8: EventStream { room_id: 0, room: \"chat\" }",
    frame: { type: "EventStream", room_id: 0, room: "chat" },
    framed: "07 0c 00 04 63 68 61 74",
  },
  {
    name: "8: Event { offset: 1, event: \"say\", payload: \"hi\" }",
    frame: { type: "Event", offset: 1n, event: "say", payload: bytesOf("hi") },
    framed: "09 0e 01 03 73 61 79 02 68 69",
  },
  {
    name: "8: Datagram (datagram body)",
    frame: { type: "Datagram", room_id: 0, seq: 1n, event: "say", payload: bytesOf("hi") },
    datagram: "10 00 01 03 73 61 79 02 68 69",
  },
  {
    name: "8: PublishDatagram (datagram body)",
    frame: { type: "PublishDatagram", room_id: 0, event: "say", payload: bytesOf("hi") },
    datagram: "0f 00 03 73 61 79 02 68 69",
  },
  {
    name: "8: Hello with resume (the resume bytes are 01 02 61 62 05)",
    frame: {
      type: "Hello",
      version: 2,
      token: null,
      client_name: "cli",
      resume: { token: "ab", epoch: 5n },
      copies: false,
    },
    framed: "0d 00 02 00 03 63 6c 69 01 02 61 62 05 00",
  },
  {
    name: "8: Welcome, resumed Resumed",
    frame: {
      type: "Welcome",
      session_id: 7n,
      max_datagram_payload: 1162,
      max_frame: 1048576,
      epoch: 5n,
      resume_token: "ab",
      resumed: "Resumed",
    },
    framed: "0c 04 07 8a 09 80 80 40 05 02 61 62 01",
  },
  {
    // Section 8: "the resumed byte 01 would be 02 03 ... and the length 13".
    name: "8: Welcome, resumed NotResumed { reason: TokenExpired }",
    frame: {
      type: "Welcome",
      session_id: 7n,
      max_datagram_payload: 1162,
      max_frame: 1048576,
      epoch: 5n,
      resume_token: "ab",
      resumed: { NotResumed: { reason: "TokenExpired" } },
    },
    framed: "0d 04 07 8a 09 80 80 40 05 02 61 62 02 03",
  },
  {
    name: "8: Error { request: Some(2), code: Unavailable, message: \"disk full\" }",
    frame: { type: "Error", request: 2n, code: "Unavailable", message: "disk full" },
    framed: "0e 0a 01 02 09 09 64 69 73 6b 20 66 75 6c 6c",
  },
  {
    name: "8: Forbidden { request: Some(3), room: \"chat\", action: Publish }",
    frame: { type: "Forbidden", request: 3n, room: "chat", action: "Publish" },
    framed: "09 18 01 03 04 63 68 61 74 00",
  },
  {
    name: "8: Refresh { request: 4, token: \"t\" }",
    frame: { type: "Refresh", request: 4n, token: "t" },
    framed: "04 16 04 01 74",
  },
  {
    name: "8: Refreshed { request: 4, expires: 300 }",
    frame: { type: "Refreshed", request: 4n, expires: 300n },
    framed: "04 17 04 ac 02",
  },
];

test("PROTOCOL.md 4.1: the complete Hello byte by byte", () => {
  const bytes = fromHex("09 00 02 00 03 63 6c 69 00 00");
  const decoder = new FrameDecoder();
  decoder.push(bytes);
  assert.deepEqual(decoder.next(), {
    type: "Hello",
    version: PROTOCOL_VERSION,
    token: null,
    client_name: "cli",
    resume: null,
    copies: false,
  });
  assert.equal(decoder.next(), null);
  decoder.finish();
  // Byte by byte, as the table of 4.1 reads it.
  assert.equal(bytes[0], 9, "body length 9");
  assert.equal(bytes[1], FRAME_TYPES.indexOf("Hello"), "tag 0 = Hello");
  assert.equal(bytes[2], PROTOCOL_VERSION, "version");
  assert.equal(bytes[3], 0, "token = None");
  assert.equal(text(bytes.subarray(5, 8)), "cli", "client_name");
  assert.equal(bytes[8], 0, "resume = None");
  assert.equal(bytes[9], 0, "copies = false");
  // A Hello cut before `copies` is truncated (4.1).
  throwsWire(() => decodeFrame(bytes.subarray(1, 9)), "truncated");
});

for (const example of DOC_EXAMPLES) {
  test(`PROTOCOL.md ${example.name}`, () => {
    if (example.framed) {
      const framed = fromHex(example.framed);
      assert.equal(toHex(encodeFramed(example.frame)), example.framed, "encodeFramed");
      const decoder = new FrameDecoder();
      decoder.push(framed);
      const decoded = decoder.next();
      assert.deepEqual(decoded, example.frame, "FrameDecoder");
      assert.equal(decoder.next(), null);
      decoder.finish();
      assert.equal(toHex(encodeFramed(decoded)), example.framed, "re-encoded");
    } else {
      assert.equal(toHex(encodeFrame(example.frame)), example.datagram, "encodeFrame");
      const decoded = decodeFrame(fromHex(example.datagram));
      assert.deepEqual(decoded, example.frame, "decodeFrame");
      assert.equal(toHex(encodeFrame(decoded)), example.datagram, "re-encoded");
    }
  });
}

// ---------------------------------------------------------------------------
// 3. Round trip of every frame type

const payload = new Uint8Array([0, 1, 2, 0xfe, 0xff]);
const BIG = 2n ** 64n - 1n;

/** Samples of every frame type, with Options null and set, every nested enum variant. */
const SAMPLES = [
  { type: "Hello", version: 2, token: null, client_name: "", resume: null, copies: false },
  {
    type: "Hello",
    version: 4294967295,
    token: "eyJ.x.y",
    client_name: "browser ✓ 🚀",
    resume: { token: "0123456789abcdef0123456789abcdef", epoch: BIG },
    copies: true,
  },
  { type: "Join", request: 1n, room: "chat", echo: null, since: null },
  { type: "Join", request: BIG, room: "game.lobby.1", echo: true, since: 9007199254740993n },
  { type: "Join", request: 3n, room: "r", echo: false, since: 0n },
  { type: "Leave", request: 4n, room_id: 0 },
  { type: "Resolve", request: 5n, room: "ρoom" },
  ...["New", "Resumed", ...RECOVERY_FAILURES.map((reason) => ({ NotResumed: { reason } }))].map(
    (resumed, i) => ({
      type: "Welcome",
      session_id: BigInt(i),
      max_datagram_payload: 1162,
      max_frame: 1048576,
      epoch: 12345678901234567890n,
      resume_token: "token",
      resumed,
    }),
  ),
  ...ERROR_CODES.map((code, i) => ({ type: "Reject", code, reason: `r${i}`, server_version: 2 })),
  { type: "Joined", request: 6n, room_id: 1, offset: 0n, recovery: "Live" },
  { type: "Joined", request: 7n, room_id: 2, offset: BIG, recovery: { Recovered: { replayed: 0n } } },
  { type: "Joined", request: 7n, room_id: 2, offset: 8n, recovery: { Recovered: { replayed: BIG } } },
  ...RECOVERY_FAILURES.map((reason, i) => ({
    type: "Joined",
    request: 8n,
    room_id: i,
    offset: 310n,
    recovery: { NotRecovered: { reason } },
  })),
  { type: "Left", request: 9n, room_id: 65535 },
  { type: "Resolved", request: 10n, room_id: 65536 },
  { type: "Ack", request: 11n, offset: 2n ** 63n },
  ...ERROR_CODES.map((code, i) => ({ type: "Error", request: BigInt(i), code, message: code })),
  { type: "Error", request: null, code: "UnknownRoom", message: "datagram dropped: unknown room id 9" },
  { type: "PublishStream", room: "chat" },
  { type: "EventStream", room_id: 128, room: "chat" },
  { type: "Publish", id: 1n, event: "say", payload, ack: null },
  { type: "Publish", id: 0n, event: "say", payload: new Uint8Array(0), ack: 17n },
  { type: "Event", offset: BIG, event: "chat", payload: bytesOf("hello") },
  { type: "PublishDatagram", room_id: 3, event: "pos", payload: new Uint8Array(900).fill(7) },
  { type: "Datagram", room_id: 3, seq: 1n << 40n, event: "pos", payload },
  { type: "Ping", request: 0n },
  { type: "Pong", request: 127n },
  { type: "Progress", room: "chat", through: 128n },
  {
    type: "PublishCopy",
    room_id: 3,
    id: 17n,
    event: "say",
    payload: bytesOf("hi"),
    ack: 9n,
    pad: new Uint8Array(0),
  },
  {
    type: "PublishCopy",
    room_id: 3,
    id: 18n,
    event: "say",
    payload: bytesOf("hi"),
    ack: null,
    pad: new Uint8Array(1100),
  },
  {
    type: "EventCopy",
    room_id: 3,
    previous: 309n,
    offset: 310n,
    event: "say",
    payload: bytesOf("hi"),
    pad: new Uint8Array(200),
  },
  { type: "Refresh", request: 12n, token: "eyJhbGciOiJIUzI1NiJ9.e30.sig" },
  { type: "Refreshed", request: 12n, expires: 1800000000n },
  { type: "Refreshed", request: 13n, expires: 0n },
  ...ACTIONS.map((action) => ({ type: "Forbidden", request: null, room: "game.lobby", action })),
  { type: "Forbidden", request: 3n, room: "chat", action: "Subscribe" },
];

test("the samples cover every frame type", () => {
  const covered = new Set(SAMPLES.map((frame) => frame.type));
  assert.deepEqual(FRAME_TYPES.filter((type) => !covered.has(type)), []);
});

for (const [i, frame] of SAMPLES.entries()) {
  test(`round trip #${i} ${frame.type}`, () => {
    const body = encodeFrame(frame);
    assert.equal(body[0], FRAME_TYPES.indexOf(frame.type), "tag");
    const decoded = decodeFrame(body);
    assert.deepEqual(decoded, frame);
    assert.deepEqual(encodeFrame(decoded), body, "re-encode");
    const framed = encodeFramed(frame);
    assert.deepEqual(framed, new Uint8Array([...encodeVarint(body.length), ...body]));
    assert.equal(Object.getPrototypeOf(framed), Uint8Array.prototype);
  });
}

test("decoded bytes are plain Uint8Arrays that do not share the input's memory", () => {
  const body = encodeFrame({ type: "Event", offset: 1n, event: "e", payload });
  const decoded = decodeFrame(body);
  assert.equal(Object.getPrototypeOf(decoded.payload), Uint8Array.prototype);
  body[body.length - 1] = 0x42;
  assert.deepEqual(decoded.payload, payload);
  // A Node Buffer is accepted as input.
  assert.deepEqual(decodeFrame(Buffer.from(encodeFrame(SAMPLES[1]))), SAMPLES[1]);
});

test("u64 fields accept safe-integer Numbers when encoding", () => {
  assert.deepEqual(
    encodeFrame({ type: "Join", request: 2, room: "chat", echo: null, since: 300 }),
    encodeFrame({ type: "Join", request: 2n, room: "chat", echo: null, since: 300n }),
  );
});

test("a leading BOM and non-ASCII text survive", () => {
  const frame = { type: "PublishStream", room: "\uFEFFchat 💬" };
  assert.deepEqual(decodeFrame(encodeFrame(frame)), frame);
  assert.equal(toHex(encodeFrame(frame).subarray(0, 5)), "0b 0c ef bb bf");
});

test("undecodable bodies throw typed WireErrors", () => {
  throwsWire(() => decodeFrame(new Uint8Array(0)), "truncated", "empty body");
  throwsWire(() => decodeFrame(fromHex("19 00")), "unknown-frame", "tag 25");
  throwsWire(() => decodeFrame(fromHex("c8 01 01")), "unknown-frame", "tag 200");
  // Nested enum indices beyond the last variant (PROTOCOL.md 2.2).
  throwsWire(() => decodeFrame(fromHex("0a 00 11 00")), "unknown-frame", "ErrorCode 17");
  throwsWire(() => decodeFrame(fromHex("05 11 00 02")), "unknown-frame", "Reject ErrorCode 17");
  throwsWire(() => decodeFrame(fromHex("06 01 00 00 03")), "unknown-frame", "Recovery 3");
  throwsWire(() => decodeFrame(fromHex("06 01 00 00 02 08")), "unknown-frame", "RecoveryFailure 8");
  throwsWire(
    () => decodeFrame(fromHex("04 01 00 00 05 01 74 03")),
    "unknown-frame",
    "ResumeOutcome 3",
  );
  throwsWire(() => decodeFrame(fromHex("18 00 01 72 03")), "unknown-frame", "Action 3");
  // bool and Option bytes other than 00/01.
  throwsWire(() => decodeFrame(fromHex("00 02 00 00 00 02")), "invalid-bool", "Hello.copies 02");
  throwsWire(() => decodeFrame(fromHex("01 01 00 01 02 00")), "invalid-bool", "Join.echo Some(02)");
  throwsWire(() => decodeFrame(fromHex("00 02 02 00 00 00")), "invalid-option", "Hello.token 02");
  throwsWire(() => decodeFrame(fromHex("01 01 00 00 ff")), "invalid-option", "Join.since ff");
  // Invalid UTF-8 (as in the Rust test: a room of ff fe).
  throwsWire(() => decodeFrame(fromHex("01 01 02 ff fe 00 00")), "invalid-utf8");
  throwsWire(() => decodeFrame(fromHex("0b 03 ed a0 80")), "invalid-utf8", "encoded surrogate");
  throwsWire(() => decodeFrame(fromHex("0b 02 c0 80")), "invalid-utf8", "overlong NUL");
  // Trailing bytes.
  throwsWire(() => decodeFrame(fromHex("11 01 00")), "trailing-bytes");
  // A length longer than what is left.
  throwsWire(() => decodeFrame(fromHex("0b 05 63 68 61 74")), "truncated");
  throwsWire(() => decodeFrame(fromHex("0b ff ff ff ff ff ff ff ff ff 01")), "truncated");
  assert.throws(() => decodeFrame(/** @type {any} */ ([0x11, 0x01])), TypeError);
});

test("a body cut at every byte is truncated", () => {
  for (const frame of SAMPLES) {
    const body = encodeFrame(frame);
    for (let cut = 0; cut < body.length; cut++) {
      throwsWire(() => decodeFrame(body.subarray(0, cut)), "truncated", `${frame.type} cut ${cut}`);
    }
  }
});

test("frame objects that do not fit the protocol are refused when encoding", () => {
  const hello = SAMPLES[0];
  const cases = [
    [{ ...hello, type: "Nope" }, /frame\.type/],
    [{ type: "Hello", version: 2, token: null, client_name: "x", resume: null }, /Hello\.copies is missing/],
    [{ ...hello, token: undefined }, /Hello\.token is missing/],
    [{ ...hello, clientName: "x" }, /unknown field "clientName"/],
    [{ ...hello, version: -1 }, /Hello\.version: expected a u32/],
    [{ ...hello, version: 2 ** 32 }, /Hello\.version: expected a u32/],
    [{ ...hello, version: 2n }, /Hello\.version: expected a u32/],
    [{ ...hello, copies: 1 }, /Hello\.copies: expected a boolean/],
    [{ ...hello, resume: { token: "t" } }, /Hello\.resume\.epoch is missing/],
    [{ ...hello, client_name: "\uD800" }, /lone surrogate/],
    [{ type: "Ping", request: 2n ** 64n }, /Ping\.request: expected a u64/],
    [{ type: "Ping", request: -1n }, /Ping\.request: expected a u64/],
    [{ type: "Ping", request: 2 ** 53 }, /Ping\.request: expected a u64/],
    [{ type: "Ping", request: 1.5 }, /Ping\.request: expected a u64/],
    [{ type: "Event", offset: 1n, event: "e", payload: [1, 2] }, /Event\.payload: expected a Uint8Array/],
    [{ type: "Error", request: null, code: "Nope", message: "" }, /Error\.code: expected a ErrorCode/],
    [{ type: "Forbidden", request: null, room: "r", action: "publish" }, /Forbidden\.action/],
    [{ type: "Joined", request: 1n, room_id: 0, offset: 0n, recovery: "Recovered" }, /Joined\.recovery/],
    [
      { type: "Joined", request: 1n, room_id: 0, offset: 0n, recovery: { Live: {} } },
      /Joined\.recovery/,
    ],
    [
      { type: "Joined", request: 1n, room_id: 0, offset: 0n, recovery: { Recovered: { replayed: 1n, x: 1 } } },
      /unknown field "x"/,
    ],
    [null, /frame: expected a frame object/],
  ];
  for (const [frame, message] of cases) {
    assert.throws(
      () => encodeFrame(/** @type {any} */ (frame)),
      (error) => error instanceof WireError && error.code === "invalid-frame" && message.test(error.message),
      String(message),
    );
  }
});

test("utf8 and text helpers", () => {
  assert.deepEqual(utf8("hé"), new Uint8Array([0x68, 0xc3, 0xa9]));
  assert.equal(text(new Uint8Array([0x68, 0xc3, 0xa9])), "hé");
  assert.equal(text(new Uint8Array([0xef, 0xbb, 0xbf, 0x61])), "\uFEFFa");
  throwsWire(() => text(new Uint8Array([0xff])), "invalid-utf8");
  throwsWire(() => text(new Uint8Array([0xc3])), "invalid-utf8", "cut sequence");
  throwsWire(() => utf8("a\uDC00"), "invalid-utf8");
  assert.equal(text(utf8("😀")), "😀");
});

test("eventFrameLen bounds an Event body as in the Rust crate", () => {
  for (const [event, size] of [["e", 0], ["say", 2], ["x".repeat(200), 70000]]) {
    const frame = { type: "Event", offset: BIG, event, payload: new Uint8Array(size) };
    assert.equal(encodeFrame(frame).length, eventFrameLen(utf8(event).length, size));
  }
});

test("WireError carries the close code a receiver uses", () => {
  assert.equal(new WireError("too-large", "x").closeCode, CloseCode.FRAME_TOO_LARGE);
  assert.equal(new WireError("truncated", "x").closeCode, CloseCode.PROTOCOL_VIOLATION);
  assert.equal(new WireError("truncated", "x").name, "WireError");
});

// ---------------------------------------------------------------------------
// 4. FrameDecoder (PROTOCOL.md 2.3)

const THREE = [
  { type: "Hello", version: 2, token: null, client_name: "cli", resume: null, copies: false },
  { type: "Event", offset: 1n, event: "say", payload: new Uint8Array(300).fill(0x61) },
  { type: "Pong", request: 2n },
];
const THREE_BYTES = new Uint8Array(THREE.flatMap((frame) => [...encodeFramed(frame)]));

/**
 * Pushes the chunks, collecting every frame as it becomes complete.
 * @param {FrameDecoder} decoder
 * @param {Uint8Array[]} chunks
 * @returns {object[]}
 */
function drain(decoder, chunks) {
  const frames = [];
  for (const chunk of chunks) {
    decoder.push(chunk);
    for (let frame = decoder.next(); frame !== null; frame = decoder.next()) {
      frames.push(frame);
    }
  }
  return frames;
}

test("FrameDecoder: three frames in one chunk", () => {
  const decoder = new FrameDecoder();
  assert.deepEqual(drain(decoder, [THREE_BYTES]), THREE);
  assert.equal(decoder.buffered, 0);
  decoder.finish();
});

test("FrameDecoder: split at every byte offset", () => {
  for (let at = 0; at <= THREE_BYTES.length; at++) {
    const decoder = new FrameDecoder();
    const chunks = [THREE_BYTES.subarray(0, at), THREE_BYTES.subarray(at)];
    assert.deepEqual(drain(decoder, chunks), THREE, `split at ${at}`);
    decoder.finish();
  }
});

test("FrameDecoder: split at every pair of offsets, and byte at a time", () => {
  for (let a = 0; a <= THREE_BYTES.length; a += 7) {
    for (let b = a; b <= THREE_BYTES.length; b++) {
      const decoder = new FrameDecoder();
      const chunks = [
        THREE_BYTES.subarray(0, a),
        THREE_BYTES.subarray(a, b),
        THREE_BYTES.subarray(b),
      ];
      assert.deepEqual(drain(decoder, chunks), THREE, `split at ${a}, ${b}`);
      decoder.finish();
    }
  }
  const bytewise = Array.from(THREE_BYTES, (byte) => new Uint8Array([byte]));
  const decoder = new FrameDecoder();
  assert.deepEqual(drain(decoder, bytewise), THREE);
  decoder.finish();
});

test("FrameDecoder: a complete frame is returned only once its last byte arrives", () => {
  const framed = encodeFramed(THREE[1]);
  const decoder = new FrameDecoder();
  decoder.push(framed.subarray(0, framed.length - 1));
  assert.equal(decoder.next(), null);
  decoder.push(framed.subarray(framed.length - 1));
  assert.deepEqual(decoder.next(), THREE[1]);
  assert.equal(decoder.next(), null);
});

test("FrameDecoder: an oversize prefix is refused before its body arrives", () => {
  const decoder = new FrameDecoder(1024);
  decoder.push(encodeVarint(1025));
  throwsWire(() => decoder.next(), "too-large");
  // The error is sticky: the stream is unusable.
  decoder.push(new Uint8Array(1025));
  throwsWire(() => decoder.next(), "too-large");
  throwsWire(() => decoder.finish(), "too-large");

  const huge = new FrameDecoder();
  huge.push(encodeVarint(2n ** 63n));
  assert.throws(() => huge.next(), (error) => {
    assert.equal(error.code, "too-large");
    assert.equal(error.closeCode, CloseCode.FRAME_TOO_LARGE);
    assert.match(error.message, /frame of 9223372036854775808 bytes is over the limit of 1048576 bytes/);
    return true;
  });

  // The prefix split across chunks is checked as soon as it is complete.
  const split = new FrameDecoder(DEFAULT_MAX_FRAME);
  const prefix = encodeVarint(DEFAULT_MAX_FRAME + 1);
  split.push(prefix.subarray(0, 1));
  assert.equal(split.next(), null);
  split.push(prefix.subarray(1));
  throwsWire(() => split.next(), "too-large");
});

test("FrameDecoder: a prefix at the limit waits for its body", () => {
  const decoder = new FrameDecoder(1024);
  const frame = { type: "Event", offset: 1n, event: "e", payload: new Uint8Array(1024 - 6) };
  const framed = encodeFramed(frame);
  assert.equal(framed.length, 1024 + 2);
  decoder.push(framed.subarray(0, 2));
  assert.equal(decoder.next(), null);
  assert.equal(decoder.buffered, 0);
  decoder.push(framed.subarray(2));
  assert.deepEqual(decoder.next(), frame);
});

test("FrameDecoder: zero length is invalid", () => {
  const decoder = new FrameDecoder();
  decoder.push(new Uint8Array([0x00]));
  throwsWire(() => decoder.next(), "empty-frame");
});

test("FrameDecoder: a stream that ends inside a frame", () => {
  const framed = encodeFramed(THREE[0]);
  for (let cut = 1; cut < framed.length; cut++) {
    const decoder = new FrameDecoder();
    decoder.push(framed.subarray(0, cut));
    assert.equal(decoder.next(), null);
    throwsWire(() => decoder.finish(), "unexpected-end", `cut at ${cut}`);
  }
  // Inside a multi-byte length prefix.
  const prefixOnly = new FrameDecoder();
  prefixOnly.push(new Uint8Array([0x80]));
  assert.equal(prefixOnly.next(), null);
  throwsWire(() => prefixOnly.finish(), "unexpected-end");
  // A clean end, and an empty stream.
  const clean = new FrameDecoder();
  drain(clean, [THREE_BYTES]);
  clean.finish();
  new FrameDecoder().finish();
});

test("FrameDecoder: a body with bytes after its frame, or too short for it", () => {
  // Ping { request: 1 } is `11 01`; a body of 3 bytes holds one more.
  const trailing = new FrameDecoder();
  trailing.push(fromHex("03 11 01 00"));
  throwsWire(() => trailing.next(), "trailing-bytes");
  // A length of 1 cuts the Ping short, even though the next byte is there.
  const short = new FrameDecoder();
  short.push(fromHex("01 11 01"));
  throwsWire(() => short.next(), "truncated");
});

test("FrameDecoder: a 1 MiB frame in small chunks costs linear time", () => {
  const frame = {
    type: "Event",
    offset: 99n,
    event: "big",
    payload: new Uint8Array(DEFAULT_MAX_FRAME - 20).map((_, i) => i & 0xff),
  };
  const framed = encodeFramed(frame);
  const decoder = new FrameDecoder();
  const started = performance.now();
  let result = null;
  for (let at = 0; at < framed.length; at += 100) {
    decoder.push(framed.subarray(at, at + 100));
    result = decoder.next() ?? result;
  }
  const elapsed = performance.now() - started;
  assert.deepEqual(result, frame);
  decoder.finish();
  assert.ok(elapsed < 2000, `took ${elapsed.toFixed(0)} ms`);
});

test("FrameDecoder: rejects a bad maxFrame and non-byte chunks", () => {
  assert.throws(() => new FrameDecoder(-1), RangeError);
  assert.throws(() => new FrameDecoder(1.5), RangeError);
  assert.throws(() => new FrameDecoder().push(/** @type {any} */ ("abc")), TypeError);
});

// ---------------------------------------------------------------------------
// 5. Fixtures from the Rust encoder (web/test/fixtures/frames.json)

const FIXTURES_PATH = process.env.QUICBUS_FIXTURES ??
  fileURLToPath(new URL("./fixtures/frames.json", import.meta.url));

/**
 * The u64 fields of src/wire/mod.rs, by path in serde's JSON form
 * (`Frame.field`, nested: `Frame.field.Variant.field`).
 */
const U64_PATHS = new Set([
  "Hello.resume.epoch",
  "Join.request", "Join.since",
  "Leave.request",
  "Resolve.request",
  "Welcome.session_id", "Welcome.epoch",
  "Joined.request", "Joined.offset", "Joined.recovery.Recovered.replayed",
  "Left.request",
  "Resolved.request",
  "Ack.request", "Ack.offset",
  "Error.request",
  "Publish.id", "Publish.ack",
  "Event.offset",
  "Datagram.seq",
  "Ping.request",
  "Pong.request",
  "Progress.through",
  "PublishCopy.id", "PublishCopy.ack",
  "EventCopy.previous", "EventCopy.offset",
  "Refresh.request",
  "Refreshed.request", "Refreshed.expires",
  "Forbidden.request",
]);

/**
 * Parses JSON whose integers may exceed 2^53: integers of 16 or more digits
 * outside strings are turned into strings first, then into BigInt by `fromSerde`.
 * @param {string} json
 * @returns {unknown}
 */
function parseBigJson(json) {
  const quoted = json.replace(/"(?:[^"\\]|\\.)*"|-?\d{16,}(?![.eE\d])/g, (token) =>
    token.startsWith('"') ? token : `"${token}"`);
  return JSON.parse(quoted);
}

/**
 * Converts one value of serde's JSON form at `path` to the codec's object form.
 * @param {unknown} value
 * @param {string} path
 * @returns {unknown}
 */
function fromSerdeValue(value, path) {
  if (value === null) {
    return null;
  }
  if (U64_PATHS.has(path)) {
    assert.ok(typeof value === "number" || typeof value === "string", `${path}: ${value}`);
    if (typeof value === "number") {
      assert.ok(Number.isSafeInteger(value), `${path}: ${value} lost precision`);
    }
    return BigInt(value);
  }
  if (Array.isArray(value)) {
    assert.ok(value.every((b) => Number.isInteger(b) && b >= 0 && b <= 255), `${path}: bytes`);
    return Uint8Array.from(value);
  }
  if (typeof value === "object") {
    return Object.fromEntries(
      Object.entries(value).map(([key, inner]) => [key, fromSerdeValue(inner, `${path}.${key}`)]),
    );
  }
  return value;
}

/**
 * serde_json's externally tagged `Frame` → `{ type, ...fields }`.
 * @param {unknown} serde
 * @returns {object}
 */
function fromSerde(serde) {
  assert.ok(serde && typeof serde === "object" && !Array.isArray(serde), "frame object");
  const entries = Object.entries(serde);
  assert.equal(entries.length, 1, `one variant key: ${Object.keys(serde)}`);
  const [[type, fields]] = entries;
  return { type, ...fromSerdeValue(fields, type) };
}

/** @returns {Array<{ name: string, frame: unknown, body_hex: string, framed_hex: string }>} */
function loadFixtures() {
  let json;
  try {
    json = readFileSync(FIXTURES_PATH, "utf8");
  } catch (error) {
    if (error.code === "ENOENT") {
      assert.fail(
        `fixtures file ${FIXTURES_PATH} is missing: run \`cargo test --test web_fixtures\` to generate it`,
      );
    }
    throw error;
  }
  const fixtures = parseBigJson(json);
  assert.ok(Array.isArray(fixtures) && fixtures.length > 0, `${FIXTURES_PATH}: expected a non-empty array`);
  return fixtures;
}

test("the fixture parser keeps big integers exact and strings untouched", () => {
  const parsed = parseBigJson(
    '[{"Welcome":{"session_id":18446744073709551615,"max_datagram_payload":1162,' +
      '"max_frame":1048576,"epoch":9007199254740993,' +
      '"resume_token":"12345678901234567890123456789012","resumed":"New"}}]',
  );
  assert.deepEqual(fromSerde(parsed[0]), {
    type: "Welcome",
    session_id: 2n ** 64n - 1n,
    max_datagram_payload: 1162,
    max_frame: 1048576,
    epoch: 9007199254740993n,
    resume_token: "12345678901234567890123456789012",
    resumed: "New",
  });
});

test("fixtures from the Rust encoder (web/test/fixtures/frames.json)", async (t) => {
  const fixtures = loadFixtures();
  for (const fixture of fixtures) {
    await t.test(fixture.name, () => {
      const expected = fromSerde(fixture.frame);
      const body = fromHex(fixture.body_hex);
      assert.deepEqual(decodeFrame(body), expected, "decodeFrame(body_hex)");
      assert.equal(toHex(encodeFrame(expected)), normHex(fixture.body_hex), "encodeFrame");
      assert.equal(toHex(encodeFramed(expected)), normHex(fixture.framed_hex), "encodeFramed");
      const decoder = new FrameDecoder();
      decoder.push(fromHex(fixture.framed_hex));
      assert.deepEqual(decoder.next(), expected, "FrameDecoder(framed_hex)");
      decoder.finish();
    });
  }
  await t.test("every frame type has a fixture", () => {
    const covered = new Set(fixtures.map((fixture) => Object.keys(fixture.frame)[0]));
    assert.deepEqual(FRAME_TYPES.filter((type) => !covered.has(type)), []);
  });
});
