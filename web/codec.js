// @ts-check
/**
 * The quicbus wire codec for JavaScript (browsers over WebTransport, Node 20).
 *
 * `docs/PROTOCOL.md` is normative; this module implements its sections 2
 * (encoding) and 3 (frames) exactly as the Rust crate does (`src/wire`):
 * a frame is postcard-encoded, a stream carries `varint(len) ‖ body` and a
 * datagram carries a bare body.
 *
 * Object form of a frame: `{ type: "<Rust variant name>", ...fields }` with
 * the Rust field names. `u32` → Number, `u64` → BigInt, `bool` → boolean,
 * `string` → string, `bytes` → Uint8Array, `Option` → `null` or the value,
 * `Resume` → `{ token, epoch }`, unit enum variants → their name as a
 * string, enum variants with fields → `{ "<Variant>": { ...fields } }`.
 * The encoder also takes a non-negative safe-integer Number for a `u64`.
 *
 * @module quicbus-codec
 */

/** Protocol version carried in `Hello.version` (`PROTOCOL_VERSION` in src/wire/mod.rs). */
export const PROTOCOL_VERSION = 2;
/** TLS application protocol name (PROTOCOL.md section 1). */
export const ALPN = "quicbus/1";
/** Default limit on one stream frame body, in bytes (PROTOCOL.md 2.3). */
export const DEFAULT_MAX_FRAME = 1048576;
/** Longest room or event name, in bytes of UTF-8 (PROTOCOL.md section 5). */
export const MAX_NAME_LEN = 255;
/** Reliable events with `len(event) + len(payload)` up to this travel as copies (PROTOCOL.md 4.6). */
export const MAX_COPY_BYTES = 512;
/** Longest varint of a `u64` or a length, in bytes (PROTOCOL.md 2.1). */
export const MAX_VARINT_LEN = 10;

/** QUIC application close codes (PROTOCOL.md 6.1). */
export const CloseCode = Object.freeze({
  NORMAL: 0,
  SERVER_SHUTTING_DOWN: 1,
  SLOW_CONSUMER: 2,
  PROTOCOL_VIOLATION: 3,
  FRAME_TOO_LARGE: 4,
  UNSUPPORTED_VERSION: 5,
  HANDSHAKE_TIMEOUT: 6,
  SERVER_BUSY: 7,
  UNAUTHORIZED: 8,
  SESSION_RESUMED: 9,
  STORAGE_UNAVAILABLE: 10,
  RATE_LIMITED: 11,
  FRAME_TIMEOUT: 12,
  TOKEN_EXPIRED: 13,
});

/** `ErrorCode` variant names; the index is the wire value (PROTOCOL.md 3.2). */
export const ERROR_CODES = Object.freeze([
  "UnsupportedVersion",
  "Unauthorized",
  "InvalidName",
  "UnknownRoom",
  "NotJoined",
  "TooManyRooms",
  "TooLarge",
  "ShuttingDown",
  "Duplicate",
  "Unavailable",
  "RateLimited",
  "LimitReached",
  "TokenRequired",
  "TokenExpired",
  "InvalidToken",
  "Forbidden",
  "DatagramsDisabled",
]);

/** `RecoveryFailure` variant names; the index is the wire value (PROTOCOL.md 3.1). */
export const RECOVERY_FAILURES = Object.freeze([
  "HistoryTooShort",
  "UnknownPosition",
  "EpochChanged",
  "TokenExpired",
  "JoinRefused",
  "HistoryBudget",
  "HistoryForbidden",
  "AnotherUser",
]);

/** `Action` variant names; the index is the wire value (PROTOCOL.md 3.1). */
export const ACTIONS = Object.freeze(["Publish", "Subscribe", "History"]);

/**
 * @typedef {"truncated" | "trailing-bytes" | "unknown-frame" | "invalid-varint"
 *   | "invalid-utf8" | "invalid-bool" | "invalid-option" | "invalid-length"
 *   | "empty-frame" | "too-large" | "unexpected-end" | "invalid-frame"} WireErrorCode
 *
 * - `truncated`: the body ended before the frame did.
 * - `trailing-bytes`: bytes left after one whole frame.
 * - `unknown-frame`: a frame tag ≥ 25, or an unknown index of a nested enum.
 * - `invalid-varint`: a varint longer than its type allows or out of its range.
 * - `invalid-utf8`: a string field (or `text()` input) is not valid UTF-8.
 * - `invalid-bool` / `invalid-option`: a byte other than 00/01.
 * - `invalid-length`: a stream length prefix that is not a valid varint.
 * - `empty-frame`: a stream length prefix of 0.
 * - `too-large`: a stream length prefix over the decoder's `maxFrame`.
 * - `unexpected-end`: `FrameDecoder.finish()` inside a frame.
 * - `invalid-frame`: (encoding only) the frame object does not fit the protocol.
 */

/** A frame that cannot be decoded (or a frame object that cannot be encoded). */
export class WireError extends Error {
  /**
   * @param {WireErrorCode} code machine-readable reason
   * @param {string} message human-readable detail
   */
  constructor(code, message) {
    super(message);
    this.name = "WireError";
    /** @type {WireErrorCode} */
    this.code = code;
  }

  /** The close code a receiver of this input uses (PROTOCOL.md 6.1, 6.2). */
  get closeCode() {
    return this.code === "too-large" ? CloseCode.FRAME_TOO_LARGE : CloseCode.PROTOCOL_VIOLATION;
  }
}

// ---------------------------------------------------------------------------
// Frame object types (JSDoc). Names and field names are those of src/wire/mod.rs.

/** @typedef {number} RoomId A `u32` naming a room on one connection only. */
/** @typedef {{ token: string, epoch: bigint }} Resume */
/**
 * @typedef {"HistoryTooShort" | "UnknownPosition" | "EpochChanged" | "TokenExpired"
 *   | "JoinRefused" | "HistoryBudget" | "HistoryForbidden" | "AnotherUser"} RecoveryFailure
 */
/** @typedef {"New" | "Resumed" | { NotResumed: { reason: RecoveryFailure } }} ResumeOutcome */
/**
 * @typedef {"Live" | { Recovered: { replayed: bigint } }
 *   | { NotRecovered: { reason: RecoveryFailure } }} Recovery
 */
/** @typedef {"Publish" | "Subscribe" | "History"} Action */
/** @typedef {string} ErrorCode One of `ERROR_CODES`. */
/**
 * @typedef {{ type: "Hello", version: number, token: string | null, client_name: string,
 *   resume: Resume | null, copies: boolean }} HelloFrame
 * @typedef {{ type: "Join", request: bigint, room: string, echo: boolean | null,
 *   since: bigint | null }} JoinFrame
 * @typedef {{ type: "Leave", request: bigint, room_id: RoomId }} LeaveFrame
 * @typedef {{ type: "Resolve", request: bigint, room: string }} ResolveFrame
 * @typedef {{ type: "Welcome", session_id: bigint, max_datagram_payload: number,
 *   max_frame: number, epoch: bigint, resume_token: string,
 *   resumed: ResumeOutcome }} WelcomeFrame
 * @typedef {{ type: "Reject", code: ErrorCode, reason: string,
 *   server_version: number }} RejectFrame
 * @typedef {{ type: "Joined", request: bigint, room_id: RoomId, offset: bigint,
 *   recovery: Recovery }} JoinedFrame
 * @typedef {{ type: "Left", request: bigint, room_id: RoomId }} LeftFrame
 * @typedef {{ type: "Resolved", request: bigint, room_id: RoomId }} ResolvedFrame
 * @typedef {{ type: "Ack", request: bigint, offset: bigint }} AckFrame
 * @typedef {{ type: "Error", request: bigint | null, code: ErrorCode,
 *   message: string }} ErrorFrame
 * @typedef {{ type: "PublishStream", room: string }} PublishStreamFrame
 * @typedef {{ type: "EventStream", room_id: RoomId, room: string }} EventStreamFrame
 * @typedef {{ type: "Publish", id: bigint, event: string, payload: Uint8Array,
 *   ack: bigint | null }} PublishFrame
 * @typedef {{ type: "Event", offset: bigint, event: string,
 *   payload: Uint8Array }} EventFrame
 * @typedef {{ type: "PublishDatagram", room_id: RoomId, event: string,
 *   payload: Uint8Array }} PublishDatagramFrame
 * @typedef {{ type: "Datagram", room_id: RoomId, seq: bigint, event: string,
 *   payload: Uint8Array }} DatagramFrame
 * @typedef {{ type: "Ping", request: bigint }} PingFrame
 * @typedef {{ type: "Pong", request: bigint }} PongFrame
 * @typedef {{ type: "Progress", room: string, through: bigint }} ProgressFrame
 * @typedef {{ type: "PublishCopy", room_id: RoomId, id: bigint, event: string,
 *   payload: Uint8Array, ack: bigint | null, pad: Uint8Array }} PublishCopyFrame
 * @typedef {{ type: "EventCopy", room_id: RoomId, previous: bigint, offset: bigint,
 *   event: string, payload: Uint8Array, pad: Uint8Array }} EventCopyFrame
 * @typedef {{ type: "Refresh", request: bigint, token: string }} RefreshFrame
 * @typedef {{ type: "Refreshed", request: bigint, expires: bigint }} RefreshedFrame
 * @typedef {{ type: "Forbidden", request: bigint | null, room: string,
 *   action: Action }} ForbiddenFrame
 */
/**
 * @typedef {HelloFrame | JoinFrame | LeaveFrame | ResolveFrame | WelcomeFrame | RejectFrame
 *   | JoinedFrame | LeftFrame | ResolvedFrame | AckFrame | ErrorFrame | PublishStreamFrame
 *   | EventStreamFrame | PublishFrame | EventFrame | PublishDatagramFrame | DatagramFrame
 *   | PingFrame | PongFrame | ProgressFrame | PublishCopyFrame | EventCopyFrame
 *   | RefreshFrame | RefreshedFrame | ForbiddenFrame} Frame
 */

// ---------------------------------------------------------------------------
// UTF-8

const encoder = new TextEncoder();
// ignoreBOM: a leading U+FEFF is part of the string, as in Rust.
const decoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?:^|[^\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/**
 * Whether a string can be encoded as UTF-8 without loss (no lone surrogates).
 * @param {string} value
 * @returns {boolean}
 */
function isWellFormed(value) {
  return !LONE_SURROGATE.test(value);
}

/**
 * Encodes a string as UTF-8.
 * @param {string} value
 * @returns {Uint8Array}
 * @throws {WireError} `invalid-utf8` if the string holds a lone surrogate,
 *   which UTF-8 cannot represent.
 */
export function utf8(value) {
  if (typeof value !== "string") {
    throw new TypeError(`utf8: expected a string, got ${describe(value)}`);
  }
  if (!isWellFormed(value)) {
    throw new WireError("invalid-utf8", "string holds a lone surrogate, which UTF-8 cannot encode");
  }
  return encoder.encode(value);
}

/**
 * Decodes UTF-8 strictly (a leading BOM is kept as U+FEFF).
 * @param {Uint8Array} bytes
 * @returns {string}
 * @throws {WireError} `invalid-utf8` on any invalid sequence.
 */
export function text(bytes) {
  if (!(bytes instanceof Uint8Array)) {
    throw new TypeError(`text: expected a Uint8Array, got ${describe(bytes)}`);
  }
  try {
    return decoder.decode(bytes);
  } catch {
    throw new WireError("invalid-utf8", "invalid UTF-8 in a text field");
  }
}

// ---------------------------------------------------------------------------
// Varints (PROTOCOL.md 2.1)

const U32_MAX = 0xffffffff;
const U64_MAX = (1n << 64n) - 1n;
/** Longest varint of a u32, and the largest value its last byte may have. */
const U32_VARINT = { maxLen: 5, lastMax: 0x0f, label: "u32" };
/** Longest varint of a u64 (or a length), and the largest value its last byte may have. */
const U64_VARINT = { maxLen: MAX_VARINT_LEN, lastMax: 0x01, label: "u64" };

/**
 * Finds the varint starting at `start`: its length in bytes, or 0 if the
 * input ends before it does. Padded forms (`81 00`) are accepted, as by the
 * reference decoder.
 * @param {Uint8Array} bytes
 * @param {number} start
 * @param {{ maxLen: number, lastMax: number, label: string }} limits
 * @param {string} where for the error message
 * @returns {number}
 */
function scanVarint(bytes, start, limits, where) {
  for (let i = 0; i < limits.maxLen; i++) {
    if (start + i >= bytes.length) {
      return 0;
    }
    const byte = bytes[start + i];
    if (i === limits.maxLen - 1 && byte > limits.lastMax) {
      throw new WireError(
        "invalid-varint",
        `${where}: varint is longer than a ${limits.label} allows or out of its range`,
      );
    }
    if (byte < 0x80) {
      return i + 1;
    }
  }
  // lastMax < 0x80, so the last allowed byte either ended the varint or threw.
  throw new WireError("invalid-varint", `${where}: varint is too long`);
}

/**
 * The value of a varint already scanned, as a Number (exact up to 7 bytes).
 * @param {Uint8Array} bytes
 * @param {number} start
 * @param {number} length
 * @returns {number}
 */
function varintNumber(bytes, start, length) {
  let value = 0;
  for (let i = 0; i < length; i++) {
    value += (bytes[start + i] & 0x7f) * 2 ** (7 * i);
  }
  return value;
}

/**
 * The value of a varint already scanned, as a BigInt.
 * @param {Uint8Array} bytes
 * @param {number} start
 * @param {number} length
 * @returns {bigint}
 */
function varintBigInt(bytes, start, length) {
  if (length <= 7) {
    return BigInt(varintNumber(bytes, start, length));
  }
  let value = 0n;
  for (let i = 0; i < length; i++) {
    value |= BigInt(bytes[start + i] & 0x7f) << BigInt(7 * i);
  }
  return value;
}

/**
 * Encodes an unsigned integer as a shortest-form LEB128 varint.
 * @param {bigint | number} value 0 to 2^64−1 (a Number must be a safe integer)
 * @returns {Uint8Array}
 */
export function encodeVarint(value) {
  const writer = new Writer(MAX_VARINT_LEN);
  writer.varint(checkU64(value, "varint"));
  return writer.finish();
}

/**
 * Decodes one varint at `offset`.
 * @param {Uint8Array} bytes
 * @param {number} [offset=0]
 * @param {"u32" | "u64"} [type="u64"] the integer type, which bounds length and value
 * @returns {{ value: bigint, length: number }} the value and how many bytes it used
 * @throws {WireError} `truncated` if the bytes end inside the varint,
 *   `invalid-varint` if it is too long or out of range for `type`.
 */
export function decodeVarint(bytes, offset = 0, type = "u64") {
  const limits = type === "u32" ? U32_VARINT : U64_VARINT;
  const length = scanVarint(bytes, offset, limits, "varint");
  if (length === 0) {
    throw new WireError("truncated", "varint is truncated");
  }
  return { value: varintBigInt(bytes, offset, length), length };
}

/**
 * How many bytes `value` takes as a varint.
 * @param {bigint | number} value
 * @returns {number}
 */
export function varintLength(value) {
  let rest = BigInt(value);
  let length = 1;
  while (rest >= 0x80n) {
    rest >>= 7n;
    length += 1;
  }
  return length;
}

/**
 * The largest body an `Event` frame can have for an event name and payload of
 * these lengths in bytes (with the largest offset): what must fit the server's
 * `max_frame` (PROTOCOL.md section 9, item 3).
 * @param {number} eventLen UTF-8 length of the event name
 * @param {number} payloadLen payload length
 * @returns {number}
 */
export function eventFrameLen(eventLen, payloadLen) {
  return (
    1 + MAX_VARINT_LEN + varintLength(eventLen) + eventLen + varintLength(payloadLen) + payloadLen
  );
}

// ---------------------------------------------------------------------------
// Byte writer and reader

/** A growable output buffer. */
class Writer {
  /** @param {number} [capacity] */
  constructor(capacity = 64) {
    this.buf = new Uint8Array(capacity);
    this.len = 0;
  }

  /** @param {number} extra bytes about to be written */
  reserve(extra) {
    const needed = this.len + extra;
    if (needed <= this.buf.length) {
      return;
    }
    let size = Math.max(this.buf.length * 2, 64);
    while (size < needed) {
      size *= 2;
    }
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.len));
    this.buf = next;
  }

  /** @param {number} value one byte */
  byte(value) {
    this.reserve(1);
    this.buf[this.len] = value;
    this.len += 1;
  }

  /** @param {Uint8Array} bytes */
  bytes(bytes) {
    this.reserve(bytes.length);
    this.buf.set(bytes, this.len);
    this.len += bytes.length;
  }

  /** @param {bigint | number} value a checked non-negative integer */
  varint(value) {
    if (typeof value === "bigint") {
      let rest = value;
      while (rest >= 0x80n) {
        this.byte(Number(rest & 0x7fn) | 0x80);
        rest >>= 7n;
      }
      this.byte(Number(rest));
      return;
    }
    let rest = value;
    while (rest >= 0x80) {
      this.byte((rest % 0x80) | 0x80);
      rest = Math.floor(rest / 0x80);
    }
    this.byte(rest);
  }

  /** @returns {Uint8Array} the bytes written, in a buffer of their own */
  finish() {
    return this.buf.slice(0, this.len);
  }
}

/** Reads one frame body front to back. */
class Reader {
  /** @param {Uint8Array} bytes */
  constructor(bytes) {
    this.bytes = bytes;
    this.pos = 0;
  }

  /** @returns {number} bytes not read yet */
  remaining() {
    return this.bytes.length - this.pos;
  }

  /**
   * @param {string} path the field being read
   * @returns {number}
   */
  byte(path) {
    if (this.pos >= this.bytes.length) {
      throw truncated(path);
    }
    const value = this.bytes[this.pos];
    this.pos += 1;
    return value;
  }

  /**
   * @param {number} length
   * @returns {Uint8Array} a view of the next `length` bytes (the caller copies if it keeps them)
   */
  view(length) {
    const view = this.bytes.subarray(this.pos, this.pos + length);
    this.pos += length;
    return view;
  }

  /**
   * @param {{ maxLen: number, lastMax: number, label: string }} limits
   * @param {string} path
   * @returns {number} the varint's length; `pos` is left at its start
   */
  scan(limits, path) {
    const length = scanVarint(this.bytes, this.pos, limits, path);
    if (length === 0) {
      throw truncated(path);
    }
    return length;
  }

  /**
   * @param {string} path
   * @returns {number}
   */
  u32(path) {
    const length = this.scan(U32_VARINT, path);
    const value = varintNumber(this.bytes, this.pos, length);
    this.pos += length;
    return value;
  }

  /**
   * @param {string} path
   * @returns {bigint}
   */
  u64(path) {
    const length = this.scan(U64_VARINT, path);
    const value = varintBigInt(this.bytes, this.pos, length);
    this.pos += length;
    return value;
  }

  /**
   * A length prefix inside the body, checked against the bytes left.
   * @param {string} path
   * @returns {number}
   */
  length(path) {
    const value = this.u64(path);
    if (value > BigInt(this.remaining())) {
      throw new WireError(
        "truncated",
        `frame is truncated: ${path} announces ${value} bytes, ${this.remaining()} remain`,
      );
    }
    return Number(value);
  }
}

/**
 * @param {string} path
 * @returns {WireError}
 */
function truncated(path) {
  return new WireError("truncated", `frame is truncated: it ends inside ${path}`);
}

// ---------------------------------------------------------------------------
// Encoding-side checks

/**
 * A short description of a value for error messages.
 * @param {unknown} value
 * @returns {string}
 */
function describe(value) {
  if (value === null) {
    return "null";
  }
  if (value === undefined) {
    return "undefined";
  }
  if (typeof value === "bigint") {
    return `bigint ${value}`;
  }
  if (typeof value === "string") {
    return `string ${JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value)}`;
  }
  if (typeof value === "number" || typeof value === "boolean") {
    return `${typeof value} ${value}`;
  }
  if (Array.isArray(value)) {
    return "an array";
  }
  if (value instanceof Uint8Array) {
    return `${value.constructor.name} of ${value.length} bytes`;
  }
  return typeof value;
}

/**
 * @param {string} path
 * @param {string} expected
 * @param {unknown} value
 * @returns {WireError}
 */
function badField(path, expected, value) {
  return new WireError("invalid-frame", `${path}: expected ${expected}, got ${describe(value)}`);
}

/**
 * @param {unknown} value
 * @param {string} path
 * @returns {bigint | number}
 */
function checkU64(value, path) {
  if (typeof value === "bigint" && value >= 0n && value <= U64_MAX) {
    return value;
  }
  if (typeof value === "number" && Number.isSafeInteger(value) && value >= 0) {
    return value;
  }
  throw badField(path, "a u64 (a BigInt 0..2^64-1, or a safe non-negative integer)", value);
}

/**
 * @param {unknown} value
 * @returns {value is Record<string, unknown>}
 */
function isPlainObject(value) {
  return typeof value === "object" && value !== null && !Array.isArray(value) &&
    !(value instanceof Uint8Array);
}

// ---------------------------------------------------------------------------
// Type codecs: one object per protocol type, driven by the frame table below.

/**
 * @typedef {object} Codec
 * @property {(w: Writer, value: unknown, path: string) => void} write
 * @property {(r: Reader, path: string) => unknown} read
 */
/** @typedef {ReadonlyArray<readonly [string, Codec]>} Fields */

/** @type {Codec} */
const U32 = {
  write(w, value, path) {
    if (typeof value !== "number" || !Number.isInteger(value) || value < 0 || value > U32_MAX) {
      throw badField(path, "a u32 (an integer 0..4294967295)", value);
    }
    w.varint(value);
  },
  read: (r, path) => r.u32(path),
};

/** @type {Codec} */
const U64 = {
  write(w, value, path) {
    w.varint(checkU64(value, path));
  },
  read: (r, path) => r.u64(path),
};

/** @type {Codec} */
const BOOL = {
  write(w, value, path) {
    if (typeof value !== "boolean") {
      throw badField(path, "a boolean", value);
    }
    w.byte(value ? 1 : 0);
  },
  read(r, path) {
    const byte = r.byte(path);
    if (byte > 1) {
      throw new WireError("invalid-bool", `${path}: invalid bool byte 0x${hexByte(byte)}`);
    }
    return byte === 1;
  },
};

/** @type {Codec} */
const STRING = {
  write(w, value, path) {
    if (typeof value !== "string") {
      throw badField(path, "a string", value);
    }
    if (!isWellFormed(value)) {
      throw new WireError("invalid-frame", `${path}: string holds a lone surrogate`);
    }
    const bytes = encoder.encode(value);
    w.varint(bytes.length);
    w.bytes(bytes);
  },
  read(r, path) {
    const bytes = r.view(r.length(path));
    try {
      return decoder.decode(bytes);
    } catch {
      throw new WireError("invalid-utf8", `${path}: invalid UTF-8 in a text field`);
    }
  },
};

/** @type {Codec} */
const BYTES = {
  write(w, value, path) {
    if (!(value instanceof Uint8Array)) {
      throw badField(path, "a Uint8Array", value);
    }
    w.varint(value.length);
    w.bytes(value);
  },
  read(r, path) {
    // A copy: the frame must not share memory with the decoder's buffers.
    return new Uint8Array(r.view(r.length(path)));
  },
};

/**
 * `Option<T>`: `null` is None.
 * @param {Codec} inner
 * @returns {Codec}
 */
function option(inner) {
  return {
    write(w, value, path) {
      if (value === undefined) {
        throw badField(path, "a value or null (None)", value);
      }
      if (value === null) {
        w.byte(0);
        return;
      }
      w.byte(1);
      inner.write(w, value, path);
    },
    read(r, path) {
      const byte = r.byte(path);
      if (byte === 0) {
        return null;
      }
      if (byte !== 1) {
        throw new WireError("invalid-option", `${path}: invalid Option byte 0x${hexByte(byte)}`);
      }
      return inner.read(r, path);
    },
  };
}

/**
 * Writes the fields of a struct or enum variant in order, after checking that
 * the object has exactly these fields (plus `ignored`, the frame's `type`).
 * @param {Writer} w
 * @param {Fields} fields
 * @param {Record<string, unknown>} object
 * @param {string} path
 * @param {string} [ignored]
 */
function writeFields(w, fields, object, path, ignored) {
  for (const key of Object.keys(object)) {
    if (key !== ignored && !fields.some(([name]) => name === key)) {
      throw new WireError("invalid-frame", `${path}: unknown field ${JSON.stringify(key)}`);
    }
  }
  for (const [name, codec] of fields) {
    if (!(name in object) || object[name] === undefined) {
      throw new WireError(
        "invalid-frame",
        `${path}.${name} is missing (every field is required; use null for None)`,
      );
    }
    codec.write(w, object[name], `${path}.${name}`);
  }
}

/**
 * Reads the fields of a struct or enum variant into `into`.
 * @param {Reader} r
 * @param {Fields} fields
 * @param {string} path
 * @param {Record<string, unknown>} into
 * @returns {Record<string, unknown>}
 */
function readFields(r, fields, path, into) {
  for (const [name, codec] of fields) {
    into[name] = codec.read(r, `${path}.${name}`);
  }
  return into;
}

/**
 * A struct: its fields in order, no tag.
 * @param {string} name
 * @param {Fields} fields
 * @returns {Codec}
 */
function struct(name, fields) {
  return {
    write(w, value, path) {
      if (!isPlainObject(value)) {
        throw badField(path, `a ${name} object`, value);
      }
      writeFields(w, fields, value, path);
    },
    read: (r, path) => readFields(r, fields, path, {}),
  };
}

/**
 * Reads an enum variant index (a u32 varint) and checks it against `count`.
 * @param {Reader} r
 * @param {string} name the enum, for messages
 * @param {number} count how many variants it has
 * @param {string} path
 * @returns {number}
 */
function readVariantIndex(r, name, count, path) {
  const index = r.u32(path);
  if (index >= count) {
    throw new WireError("unknown-frame", `${path}: unknown ${name} variant ${index}`);
  }
  return index;
}

/**
 * An enum of unit variants, each represented by its name.
 * @param {string} name
 * @param {ReadonlyArray<string>} variants
 * @returns {Codec}
 */
function unitEnum(name, variants) {
  return {
    write(w, value, path) {
      const index = typeof value === "string" ? variants.indexOf(value) : -1;
      if (index < 0) {
        throw badField(path, `a ${name} (${variants.join(", ")})`, value);
      }
      w.varint(index);
    },
    read: (r, path) => variants[readVariantIndex(r, name, variants.length, path)],
  };
}

/**
 * An enum whose variants may have fields: a unit variant is its name, a
 * variant with fields is `{ Name: { ...fields } }` (serde's external tagging).
 * @param {string} name
 * @param {ReadonlyArray<readonly [string, Fields | null]>} variants `null`: a unit variant
 * @returns {Codec}
 */
function dataEnum(name, variants) {
  const expected = `a ${name} (${variants
    .map(([variant, fields]) => (fields ? `{ ${variant}: {…} }` : JSON.stringify(variant)))
    .join(", ")})`;
  return {
    write(w, value, path) {
      // A unit variant: its name.
      const unit = variants.findIndex(([variant, fields]) => variant === value && !fields);
      if (unit >= 0) {
        w.varint(unit);
        return;
      }
      // A variant with fields: an object with exactly one key, the variant's name.
      const keys = isPlainObject(value) ? Object.keys(value) : [];
      const index = variants.findIndex(([variant, fields]) => variant === keys[0] && fields);
      if (keys.length !== 1 || index < 0) {
        throw badField(path, expected, value);
      }
      const [variant, fields] = variants[index];
      const inner = /** @type {Record<string, unknown>} */ (value)[variant];
      if (!isPlainObject(inner) || !fields) {
        throw badField(`${path}.${variant}`, "an object with the variant's fields", inner);
      }
      w.varint(index);
      writeFields(w, fields, inner, `${path}.${variant}`);
    },
    read(r, path) {
      const [variant, fields] = variants[readVariantIndex(r, name, variants.length, path)];
      if (!fields) {
        return variant;
      }
      return { [variant]: readFields(r, fields, `${path}.${variant}`, {}) };
    },
  };
}

/**
 * @param {number} byte
 * @returns {string}
 */
function hexByte(byte) {
  return byte.toString(16).padStart(2, "0");
}

// ---------------------------------------------------------------------------
// The protocol's types (PROTOCOL.md 3.1, 3.2) and frames (section 3).

const ERROR_CODE = unitEnum("ErrorCode", ERROR_CODES);
const RECOVERY_FAILURE = unitEnum("RecoveryFailure", RECOVERY_FAILURES);
const ACTION = unitEnum("Action", ACTIONS);
const RESUME = struct("Resume", [["token", STRING], ["epoch", U64]]);
const RESUME_OUTCOME = dataEnum("ResumeOutcome", [
  ["New", null],
  ["Resumed", null],
  ["NotResumed", [["reason", RECOVERY_FAILURE]]],
]);
const RECOVERY = dataEnum("Recovery", [
  ["Live", null],
  ["Recovered", [["replayed", U64]]],
  ["NotRecovered", [["reason", RECOVERY_FAILURE]]],
]);

/**
 * Every frame of version 2; the index is the wire tag (the variant order of
 * `Frame` in src/wire/mod.rs).
 * @type {ReadonlyArray<readonly [string, Fields]>}
 */
const FRAMES = [
  ["Hello", [
    ["version", U32],
    ["token", option(STRING)],
    ["client_name", STRING],
    ["resume", option(RESUME)],
    ["copies", BOOL],
  ]],
  ["Join", [["request", U64], ["room", STRING], ["echo", option(BOOL)], ["since", option(U64)]]],
  ["Leave", [["request", U64], ["room_id", U32]]],
  ["Resolve", [["request", U64], ["room", STRING]]],
  ["Welcome", [
    ["session_id", U64],
    ["max_datagram_payload", U32],
    ["max_frame", U32],
    ["epoch", U64],
    ["resume_token", STRING],
    ["resumed", RESUME_OUTCOME],
  ]],
  ["Reject", [["code", ERROR_CODE], ["reason", STRING], ["server_version", U32]]],
  ["Joined", [["request", U64], ["room_id", U32], ["offset", U64], ["recovery", RECOVERY]]],
  ["Left", [["request", U64], ["room_id", U32]]],
  ["Resolved", [["request", U64], ["room_id", U32]]],
  ["Ack", [["request", U64], ["offset", U64]]],
  ["Error", [["request", option(U64)], ["code", ERROR_CODE], ["message", STRING]]],
  ["PublishStream", [["room", STRING]]],
  ["EventStream", [["room_id", U32], ["room", STRING]]],
  ["Publish", [["id", U64], ["event", STRING], ["payload", BYTES], ["ack", option(U64)]]],
  ["Event", [["offset", U64], ["event", STRING], ["payload", BYTES]]],
  ["PublishDatagram", [["room_id", U32], ["event", STRING], ["payload", BYTES]]],
  ["Datagram", [["room_id", U32], ["seq", U64], ["event", STRING], ["payload", BYTES]]],
  ["Ping", [["request", U64]]],
  ["Pong", [["request", U64]]],
  ["Progress", [["room", STRING], ["through", U64]]],
  ["PublishCopy", [
    ["room_id", U32],
    ["id", U64],
    ["event", STRING],
    ["payload", BYTES],
    ["ack", option(U64)],
    ["pad", BYTES],
  ]],
  ["EventCopy", [
    ["room_id", U32],
    ["previous", U64],
    ["offset", U64],
    ["event", STRING],
    ["payload", BYTES],
    ["pad", BYTES],
  ]],
  ["Refresh", [["request", U64], ["token", STRING]]],
  ["Refreshed", [["request", U64], ["expires", U64]]],
  ["Forbidden", [["request", option(U64)], ["room", STRING], ["action", ACTION]]],
];

/** Frame type names; the index is the wire tag (25 frames, tags 0 to 24). */
export const FRAME_TYPES = Object.freeze(FRAMES.map(([name]) => name));

// ---------------------------------------------------------------------------
// Frames

/**
 * Writes one frame body.
 * @param {Writer} w
 * @param {unknown} frame
 */
function writeFrame(w, frame) {
  if (!isPlainObject(frame)) {
    throw badField("frame", "a frame object { type, ...fields }", frame);
  }
  const tag = typeof frame.type === "string" ? FRAME_TYPES.indexOf(frame.type) : -1;
  if (tag < 0) {
    throw badField("frame.type", "a frame type name (one of FRAME_TYPES)", frame.type);
  }
  w.varint(tag);
  writeFields(w, FRAMES[tag][1], frame, String(frame.type), "type");
}

/**
 * Encodes one frame body, without length prefix: what a datagram carries.
 * @param {Frame} frame
 * @returns {Uint8Array}
 * @throws {WireError} `invalid-frame` if the object does not fit the protocol
 *   (unknown type, missing or unknown field, wrong type or range).
 */
export function encodeFrame(frame) {
  const writer = new Writer();
  writeFrame(writer, frame);
  return writer.finish();
}

/**
 * Encodes one frame as a stream carries it: `varint(body length) ‖ body`.
 * @param {Frame} frame
 * @returns {Uint8Array}
 * @throws {WireError} as `encodeFrame`.
 */
export function encodeFramed(frame) {
  const body = encodeFrame(frame);
  const writer = new Writer(body.length + MAX_VARINT_LEN);
  writer.varint(body.length);
  writer.bytes(body);
  return writer.finish();
}

/**
 * Decodes exactly one frame body (a datagram, or a body cut from a stream),
 * which must use every byte.
 * @param {Uint8Array} bytes
 * @returns {Frame}
 * @throws {WireError} `truncated`, `trailing-bytes`, `unknown-frame`,
 *   `invalid-varint`, `invalid-utf8`, `invalid-bool` or `invalid-option`.
 */
export function decodeFrame(bytes) {
  if (!(bytes instanceof Uint8Array)) {
    throw new TypeError(`decodeFrame: expected a Uint8Array, got ${describe(bytes)}`);
  }
  const r = new Reader(bytes);
  // The tag is read with u64 rules, as the reference decoder checks it.
  const tag = r.u64("the frame tag");
  if (tag >= BigInt(FRAMES.length)) {
    throw new WireError("unknown-frame", `unknown frame type ${tag}`);
  }
  const [type, fields] = FRAMES[Number(tag)];
  const frame = readFields(r, fields, type, { type });
  if (r.remaining() > 0) {
    throw new WireError("trailing-bytes", `${r.remaining()} trailing bytes after the frame`);
  }
  return /** @type {Frame} */ (frame);
}

// ---------------------------------------------------------------------------
// Stream framing (PROTOCOL.md 2.3)

/**
 * Cuts a stream's bytes into frames. Push chunks as they arrive, then call
 * `next()` until it returns `null`; at the end of the stream call `finish()`.
 *
 * The length prefix is checked against `maxFrame` as soon as it is complete,
 * before any of the body is buffered. Chunks are kept by reference until
 * their bytes are consumed (do not modify a chunk after pushing it), and each
 * body is copied at most once, so large frames cost linear time. After an
 * error the decoder throws that error again on every call.
 */
export class FrameDecoder {
  /** @type {Uint8Array[]} chunks not yet consumed, from `#first` on */
  #chunks = [];
  /** index in `#chunks` of the oldest chunk still holding unread bytes */
  #first = 0;
  /** bytes of `#chunks[#first]` already consumed */
  #offset = 0;
  /** unread bytes across all chunks */
  #buffered = 0;
  /** body length of the frame being read, or -1 while its prefix is awaited */
  #bodyLen = -1;
  /** @type {WireError | null} */
  #error = null;
  #maxFrame;

  /**
   * @param {number} [maxFrame=DEFAULT_MAX_FRAME] the largest body accepted, in bytes
   */
  constructor(maxFrame = DEFAULT_MAX_FRAME) {
    if (!Number.isSafeInteger(maxFrame) || maxFrame < 0) {
      throw new RangeError(`FrameDecoder: maxFrame must be a non-negative integer, got ${maxFrame}`);
    }
    this.#maxFrame = maxFrame;
  }

  /** Bytes received but not yet returned as frames (prefixes already read excluded). */
  get buffered() {
    return this.#buffered;
  }

  /**
   * Appends bytes received from the stream.
   * @param {Uint8Array} chunk
   */
  push(chunk) {
    if (!(chunk instanceof Uint8Array)) {
      throw new TypeError(`FrameDecoder.push: expected a Uint8Array, got ${describe(chunk)}`);
    }
    if (chunk.length === 0) {
      return;
    }
    this.#chunks.push(chunk);
    this.#buffered += chunk.length;
  }

  /**
   * The next complete frame, or `null` if more bytes are needed.
   * @returns {Frame | null}
   * @throws {WireError} `invalid-length`, `too-large`, `empty-frame`, or any
   *   error of `decodeFrame` for the body.
   */
  next() {
    if (this.#error) {
      throw this.#error;
    }
    try {
      return this.#next();
    } catch (error) {
      if (error instanceof WireError) {
        this.#error = error;
      }
      throw error;
    }
  }

  /**
   * Call when the stream has ended (FIN), after `next()` returned `null`.
   * @throws {WireError} `unexpected-end` if the stream ended inside a frame.
   */
  finish() {
    if (this.#error) {
      throw this.#error;
    }
    if (this.#bodyLen >= 0 || this.#buffered > 0) {
      const waiting = this.#bodyLen >= 0
        ? `${this.#buffered} of a ${this.#bodyLen}-byte body received`
        : `${this.#buffered} bytes of a length prefix received`;
      throw new WireError("unexpected-end", `stream ended in the middle of a frame (${waiting})`);
    }
  }

  /** @returns {Frame | null} */
  #next() {
    if (this.#bodyLen < 0 && !this.#readPrefix()) {
      return null;
    }
    if (this.#buffered < this.#bodyLen) {
      return null;
    }
    const body = this.#take(this.#bodyLen);
    this.#bodyLen = -1;
    return decodeFrame(body);
  }

  /**
   * Reads and checks the length prefix if it is complete.
   * @returns {boolean} whether `#bodyLen` is now set
   */
  #readPrefix() {
    const head = this.#peek(MAX_VARINT_LEN);
    let length;
    try {
      length = scanVarint(head, 0, U64_VARINT, "length prefix");
    } catch {
      throw new WireError("invalid-length", "invalid length prefix");
    }
    if (length === 0) {
      return false;
    }
    const bodyLen = varintBigInt(head, 0, length);
    if (bodyLen > BigInt(this.#maxFrame)) {
      throw new WireError(
        "too-large",
        `frame of ${bodyLen} bytes is over the limit of ${this.#maxFrame} bytes`,
      );
    }
    if (bodyLen === 0n) {
      throw new WireError("empty-frame", "frame of 0 bytes: a frame body is never empty");
    }
    this.#take(length);
    this.#bodyLen = Number(bodyLen);
    return true;
  }

  /**
   * Up to `count` unread bytes, copied, without consuming them.
   * @param {number} count
   * @returns {Uint8Array}
   */
  #peek(count) {
    const out = new Uint8Array(Math.min(count, this.#buffered));
    let filled = 0;
    let offset = this.#offset;
    for (let i = this.#first; filled < out.length; i++) {
      const part = this.#chunks[i].subarray(offset, offset + out.length - filled);
      out.set(part, filled);
      filled += part.length;
      offset = 0;
    }
    return out;
  }

  /**
   * Consumes `count` buffered bytes (count ≤ buffered): a view when they lie
   * in one chunk, else one copy.
   * @param {number} count
   * @returns {Uint8Array}
   */
  #take(count) {
    const chunk = this.#chunks[this.#first];
    if (this.#offset + count <= chunk.length) {
      const view = chunk.subarray(this.#offset, this.#offset + count);
      this.#consume(count);
      return view;
    }
    const out = new Uint8Array(count);
    let filled = 0;
    while (filled < count) {
      const current = this.#chunks[this.#first];
      const part = current.subarray(this.#offset, this.#offset + count - filled);
      out.set(part, filled);
      filled += part.length;
      this.#consume(part.length);
    }
    return out;
  }

  /**
   * Advances past `count` bytes of the first chunk (at most its unread part).
   * @param {number} count
   */
  #consume(count) {
    this.#offset += count;
    this.#buffered -= count;
    if (this.#offset === this.#chunks[this.#first].length) {
      this.#first += 1;
      this.#offset = 0;
      this.#compact();
    }
  }

  /** Drops consumed chunks from the array once they are the larger part of it. */
  #compact() {
    if (this.#first === this.#chunks.length) {
      this.#chunks = [];
      this.#first = 0;
    } else if (this.#first > 64 && this.#first * 2 > this.#chunks.length) {
      this.#chunks = this.#chunks.slice(this.#first);
      this.#first = 0;
    }
  }
}
