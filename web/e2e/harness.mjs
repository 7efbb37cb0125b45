// Helpers of the browser tests: a real `quicbus serve --web` as a child
// process, the `quicbus` CLI (pub, sub, token) beside it, and headless
// Chromium through playwright-core. Every wait is on a signal (a line the
// process prints, a page promise) inside a bounded timeout; nothing sleeps.

import { spawn, execFile } from "node:child_process";
import { mkdtempSync, rmSync, existsSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";

const here = fileURLToPath(new URL(".", import.meta.url));

/** Generous: the tests run on a loaded 2-core machine; a hang still fails. */
export const WAIT = 30_000;

/** The `quicbus` binary: $QUICBUS_BIN, else the debug build `cargo test` leaves. */
export function quicbusBin() {
  const bin = process.env.QUICBUS_BIN ?? resolve(here, "../../target/debug/quicbus");
  if (!existsSync(bin)) {
    throw new Error(`${bin} not found: build it first (cargo build), or set QUICBUS_BIN`);
  }
  return bin;
}

/** Chromium: $CHROMIUM, else Debian's. */
export function chromiumPath() {
  const path = process.env.CHROMIUM ?? "/usr/bin/chromium";
  if (!existsSync(path)) {
    throw new Error(`${path} not found: apt install chromium, or set CHROMIUM`);
  }
  return path;
}

/** Resolves `promise`, or rejects after `ms` naming `what`. */
export async function within(what, promise, ms = WAIT) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** A scratch directory, removed by the returned function. */
export function scratch(prefix) {
  const dir = mkdtempSync(join(tmpdir(), `quicbus-e2e-${prefix}-`));
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/** Lines a child prints on one of its streams, awaitable one pattern at a time. */
class Lines {
  constructor(stream) {
    this.lines = [];
    this.waiters = [];
    createInterface({ input: stream }).on("line", (line) => {
      this.lines.push(line);
      for (const w of [...this.waiters]) {
        const m = line.match(w.pattern);
        if (m) {
          this.waiters.splice(this.waiters.indexOf(w), 1);
          w.resolve(m);
        }
      }
    });
  }

  /** The first line (already printed or to come) matching `pattern`. */
  wait(pattern, what) {
    for (const line of this.lines) {
      const m = line.match(pattern);
      if (m) return Promise.resolve(m);
    }
    return within(what, new Promise((resolve) => this.waiters.push({ pattern, resolve })));
  }
}

/**
 * `quicbus serve --web`, as a child process. `quic` and `web` are
 * addresses (port 0 for any); the real ones are read from what it prints.
 */
export async function startServer({ dir, quic = "127.0.0.1:0", web = "127.0.0.1:0", args = [] }) {
  const child = spawn(
    quicbusBin(),
    ["serve", "--listen", quic, "--web", web, "--certs", join(dir, "certs"), ...args],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  const stderr = new Lines(child.stderr);
  const exited = new Promise((resolve) => child.on("exit", (code, signal) => resolve({ code, signal })));
  const failed = exited.then(({ code, signal }) => {
    throw new Error(`quicbus serve exited (${code ?? signal}): ${stderr.lines.join("\n")}`);
  });
  failed.catch(() => {});
  const [, webUrl] = await Promise.race([stderr.wait(/web pages on (http:\/\/\S+)/, "the web address"), failed]);
  const [, quicAddr] = await Promise.race([stderr.wait(/listening on (\S+)/, "the QUIC address"), failed]);
  return {
    child,
    webUrl,
    quicAddr,
    ca: join(dir, "certs", "ca.pem"),
    /** Kills it with `signal` and waits until it is gone. */
    async kill(signal = "SIGKILL") {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return within("the server to exit", exited);
    },
  };
}

/** Runs the CLI to completion; resolves with its stdout. */
export function run(args) {
  return within(
    `quicbus ${args.join(" ")}`,
    new Promise((resolve, reject) => {
      execFile(quicbusBin(), args, { timeout: WAIT }, (error, stdout, stderr) => {
        if (error) reject(new Error(`quicbus ${args[0]} failed: ${error.message}\n${stderr}`));
        else resolve(stdout);
      });
    }),
  );
}

/**
 * `quicbus sub` as a child process, once it has joined (it says so on
 * stderr): `next()` waits for the next JSON event line on its stdout.
 */
export async function startSub(server, rooms, extra = []) {
  const child = spawn(
    quicbusBin(),
    ["sub", "--server", server.quicAddr, "--ca", server.ca, ...rooms.flatMap((r) => ["--room", r]), ...extra],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  const stdout = new Lines(child.stdout);
  const stderr = new Lines(child.stderr);
  for (const room of rooms) {
    await stderr.wait(new RegExp(`^joined ${room} at offset`), `quicbus sub to join ${room}`);
  }
  let seen = 0;
  return {
    /** The next event `sub` printed, parsed. */
    async next(what) {
      const index = seen;
      const line = await within(
        what,
        (async () => {
          for (;;) {
            const events = stdout.lines.filter((l) => l.startsWith("{"));
            if (events.length > index) return events[index];
            await new Promise((resolve) => stdout.waiters.push({ pattern: /^\{/, resolve }));
          }
        })(),
      );
      seen = index + 1;
      return JSON.parse(line);
    },
    stop() {
      child.kill("SIGKILL");
    },
  };
}

/** Writes a shared token secret for `serve --auth-secret-file`. */
export function secretFile(dir) {
  const path = join(dir, "secret");
  writeFileSync(path, "a development secret of enough length for HS256\n", { mode: 0o600 });
  return path;
}
