// @ts-check
/**
 * An in-memory stand-in for the browser's WebTransport API, driven by a
 * scripted server in the tests: every session the client opens appears as
 * a `ServerSession` on `FakeServer.sessions()`, which decodes the client's
 * frames with codec.js and lets the test answer.
 */

import { FrameDecoder, decodeFrame, encodeFrame, encodeFramed } from "../codec.js";

/** A promise queue: `push` values, `next()` takes them in order. */
export class AsyncQueue {
  /** @type {any[]} */
  items = [];
  /** @type {((v: any) => void)[]} */
  takers = [];

  /** @param {any} value */
  push(value) {
    const taker = this.takers.shift();
    if (taker) taker(value);
    else this.items.push(value);
  }

  /** @returns {Promise<any>} */
  next() {
    if (this.items.length > 0) return Promise.resolve(this.items.shift());
    return new Promise((resolve) => this.takers.push(resolve));
  }
}

/**
 * Fails if `promise` does not settle within `ms` (no sleeping: the timer
 * only bounds the wait).
 * @template T
 * @param {Promise<T>} promise
 * @param {string} [what]
 * @param {number} [ms]
 * @returns {Promise<T>}
 */
export function within(promise, what = "the awaited step", ms = 2000) {
  /** @type {any} */
  let timer;
  const expired = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
  });
  return Promise.race([promise, expired]).finally(() => clearTimeout(timer));
}

/** A one-way byte pipe: a ReadableStream for one side, `write`/`finish`/`error` for the other. */
function pipe() {
  /** @type {ReadableStreamDefaultController<Uint8Array>} */
  let controller;
  const readable = new ReadableStream({
    start(c) {
      controller = c;
    },
  });
  let open = true;
  return {
    readable,
    /** @param {Uint8Array} bytes */
    write(bytes) {
      if (open) controller.enqueue(bytes);
    },
    finish() {
      if (open) controller.close();
      open = false;
    },
    /** @param {Error} e */
    error(e) {
      if (open) controller.error(e);
      open = false;
    },
  };
}

/**
 * The frames a client writes on one of its streams, decoded.
 */
class FramesIn {
  frames = new AsyncQueue();
  decoder = new FrameDecoder();
  ended = false;

  /** @param {Uint8Array} chunk */
  push(chunk) {
    this.decoder.push(chunk.slice());
    for (let f = this.decoder.next(); f; f = this.decoder.next()) this.frames.push(f);
  }

  /** The next frame the client sent. */
  next() {
    return this.frames.next();
  }
}

/** One WebTransport session as the fake server sees it. */
export class ServerSession {
  /**
   * @param {FakeWebTransport} transport
   */
  constructor(transport) {
    this.transport = transport;
    this.url = transport.url;
    this.options = transport.options;
    /** Frames the client sent on its control stream. */
    this.control = new FramesIn();
    /** @type {ReturnType<typeof pipe> | null} */
    this.controlOut = null;
    /** Publish streams the client opened: `{ frames: FramesIn }` each. */
    this.publishStreams = new AsyncQueue();
    /** Datagrams the client sent, decoded. */
    this.datagrams = new AsyncQueue();
    /** @type {Set<ReturnType<typeof pipe>>} */
    this.outPipes = new Set();
    /** Resolves with the close info when the client closes the session. */
    this.clientClosed = new Promise((resolve) => {
      this.resolveClientClosed = resolve;
    });
  }

  /** The next control frame from the client. */
  next() {
    return this.control.next();
  }

  /**
   * Sends a control frame to the client.
   * @param {any} frame
   */
  send(frame) {
    this.controlOut?.write(encodeFramed(frame));
  }

  /**
   * Opens an event stream (a server uni stream) and writes its header.
   * @param {number} roomId
   * @param {string} room
   */
  eventStream(roomId, room) {
    const p = pipe();
    this.outPipes.add(p);
    this.transport._incoming?.enqueue(p.readable);
    p.write(encodeFramed({ type: "EventStream", room_id: roomId, room }));
    return {
      /**
       * @param {number | bigint} offset
       * @param {string} event
       * @param {Uint8Array | string} payload
       */
      event(offset, event, payload) {
        const bytes = typeof payload === "string" ? new TextEncoder().encode(payload) : payload;
        p.write(encodeFramed({ type: "Event", offset: BigInt(offset), event, payload: bytes }));
      },
      finish: () => p.finish(),
    };
  }

  /**
   * Sends a datagram frame body.
   * @param {any} frame
   */
  datagram(frame) {
    this.transport._datagramsIn?.enqueue(encodeFrame(frame));
  }

  /**
   * The server ends the session (unexpectedly, from the client's side).
   * @param {number} closeCode
   * @param {string} reason
   */
  kill(closeCode = 1, reason = "server shutting down") {
    this.transport._end({ closeCode, reason });
  }
}

/** The scripted server's view: sessions in the order the client opened them. */
export class FakeServer {
  sessions = new AsyncQueue();
  /** @type {ServerSession[]} */
  all = [];
  /** How many of the next sessions fail to open (their `ready` rejects). */
  refuse = 0;
  /** How many sessions failed to open so far. */
  refused = 0;

  /** The WebTransport constructor to give the client. */
  get WebTransport() {
    const server = this;
    return class extends FakeWebTransport {
      /**
       * @param {string} url
       * @param {any} options
       */
      constructor(url, options) {
        super(url, options, server);
      }
    };
  }
}

/** The fake WebTransport: the subset of the API the client uses. */
export class FakeWebTransport {
  /**
   * @param {string} url
   * @param {any} options
   * @param {FakeServer} server
   */
  constructor(url, options, server) {
    this.url = url;
    this.options = options;
    this.isClosed = false;
    /** @type {(info: any) => void} */
    let resolveClosed = () => {};
    /** @type {(e: any) => void} */
    let rejectClosed = () => {};
    this.closed = new Promise((resolve, reject) => {
      resolveClosed = resolve;
      rejectClosed = reject;
    });
    this._resolveClosed = resolveClosed;
    this._rejectClosed = rejectClosed;
    /** @type {ReadableStreamDefaultController<ReadableStream<Uint8Array>> | null} */
    this._incoming = null;
    this.incomingUnidirectionalStreams = new ReadableStream({
      start: (c) => {
        this._incoming = c;
      },
    });
    /** @type {ReadableStreamDefaultController<Uint8Array> | null} */
    this._datagramsIn = null;
    const session = new ServerSession(this);
    this.session = session;
    this.datagrams = {
      maxDatagramSize: 1200,
      readable: new ReadableStream({
        start: (c) => {
          this._datagramsIn = c;
        },
      }),
      writable: new WritableStream({
        write: (chunk) => {
          if (this.isClosed) throw new Error("session closed");
          session.datagrams.push(decodeFrame(chunk));
        },
      }),
    };
    if (server.refuse > 0) {
      server.refuse -= 1;
      server.refused += 1;
      const e = new Error("WebTransport connection rejected");
      this.ready = Promise.reject(e);
      this.ready.catch(() => {});
      this.isClosed = true;
      rejectClosed(e);
      this.closed.catch(() => {});
      return;
    }
    this.ready = Promise.resolve();
    server.all.push(session);
    server.sessions.push(session);
  }

  async createBidirectionalStream() {
    if (this.isClosed) throw new Error("session closed");
    const session = this.session;
    const out = pipe();
    session.controlOut = out;
    session.outPipes.add(out);
    const writable = new WritableStream({
      write: (chunk) => {
        if (this.isClosed) throw new Error("session closed");
        session.control.push(chunk);
      },
    });
    return { readable: out.readable, writable };
  }

  async createUnidirectionalStream() {
    if (this.isClosed) throw new Error("session closed");
    const frames = new FramesIn();
    this.session.publishStreams.push({ frames });
    return new WritableStream({
      write: (chunk) => {
        if (this.isClosed) throw new Error("session closed");
        frames.push(chunk);
      },
    });
  }

  /** @param {{ closeCode?: number, reason?: string }} [info] */
  close(info = {}) {
    if (this.isClosed) return;
    const closeInfo = { closeCode: info.closeCode ?? 0, reason: info.reason ?? "" };
    this.session.resolveClientClosed?.(closeInfo);
    this._end(closeInfo);
  }

  /** @param {{ closeCode: number, reason: string }} info */
  _end(info) {
    if (this.isClosed) return;
    this.isClosed = true;
    const e = new Error("session closed");
    for (const p of this.session.outPipes) p.error(e);
    try {
      this._incoming?.error(e);
      this._datagramsIn?.error(e);
    } catch {
      // already errored
    }
    this._resolveClosed(info);
  }
}
