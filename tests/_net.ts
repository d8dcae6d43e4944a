// The test suite's network helpers, in one place: the loopback address, waiting with a time
// limit, connecting, reading a reply, and a connected pair of real TCP conns.
import assert from "node:assert/strict";
import { closeQuietly } from "../_close_quietly.ts";

export const HOST = "127.0.0.1";

// Whether this machine can listen on ::1, for the tests that need IPv6.
export const HAS_IPV6: boolean = (() => {
  try {
    Deno.listen({ hostname: "::1", port: 0 }).close();
    return true;
  } catch {
    return false;
  }
})();

export const encode = (text: string): Uint8Array => new TextEncoder().encode(text);
export const decode = (bytes: Uint8Array): string => new TextDecoder().decode(bytes);

export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// Runs `task`, failing with a clear message if it takes longer than `ms`.
export async function within<T>(ms: number, what: string, task: () => Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`Timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  try {
    return await Promise.race([task(), expired]);
  } finally {
    clearTimeout(timer);
  }
}

// Polls `condition` every `every` ms until it holds, for at most `ms`; nothing keeps polling
// after a timeout.
export async function until(
  condition: () => boolean,
  what = "the condition",
  ms = 10_000,
  every = 5,
): Promise<void> {
  const deadline = performance.now() + ms;
  while (!condition()) {
    if (performance.now() > deadline) {
      throw new Error(`Timed out after ${ms} ms waiting for ${what}`);
    }
    await delay(every);
  }
}

export function connect(port: number, hostname: string = HOST): Promise<Deno.TcpConn> {
  return Deno.connect({ hostname, port });
}

// Reads `size` bytes, or what came before the end of the stream, within `ms`.
export function readExactly(conn: Deno.Conn, size: number, ms = 5_000): Promise<string> {
  return within(ms, `${size} bytes`, async () => {
    const buffer = new Uint8Array(size);
    let got = 0;
    while (got < size) {
      const n = await conn.read(buffer.subarray(got));
      if (n === null) break;
      got += n;
    }
    return decode(buffer.subarray(0, got));
  });
}

// Reads until the other end closes the stream, within `ms`.
export function readToEnd(conn: Deno.Conn, ms = 5_000): Promise<string> {
  return within(ms, "the end of the stream", async () => decode(await readBytesToEnd(conn)));
}

// Reads until the other end closes the stream, for as long as that takes.
export async function readBytesToEnd(conn: Deno.Conn): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  const buffer = new Uint8Array(64 * 1024);
  for (let n; (n = await conn.read(buffer)) !== null;) parts.push(buffer.slice(0, n));
  return concat(parts);
}

export function concat(parts: Uint8Array[]): Uint8Array {
  const all = new Uint8Array(parts.reduce((sum, part) => sum + part.length, 0));
  let at = 0;
  for (const part of parts) {
    all.set(part, at);
    at += part.length;
  }
  return all;
}

// One message to a `GOT:` echo server and its whole reply.
export async function echo(conn: Deno.Conn, message: string): Promise<string> {
  await conn.write(encode(message));
  return await readExactly(conn, 4 + message.length);
}

// A listener that has just closed refuses a connection, or resets one that reached its
// backlog while it was closing.
export function refused(error: unknown): boolean {
  return error instanceof Deno.errors.ConnectionRefused ||
    error instanceof Deno.errors.ConnectionReset;
}

export async function assertRefused(port: number): Promise<void> {
  await assert.rejects(connect(port), refused);
}

// Connects until the port refuses, which shows that the listener has closed. Probes that
// were still accepted are closed at once; returns how many there were.
export function waitUntilRefused(port: number, ms = 5_000): Promise<number> {
  return within(ms, `port ${port} to refuse connections`, async () => {
    for (let accepted = 0;; accepted++) {
      try {
        (await connect(port)).close();
      } catch (error) {
        if (refused(error)) return accepted;
        throw error;
      }
      await delay(20);
    }
  });
}

// A connected pair of real loopback TCP conns, closed by `using`.
export interface Loopback extends Disposable {
  client: Deno.TcpConn;
  server: Deno.TcpConn;
}

export async function loopback(): Promise<Loopback> {
  using listener = Deno.listen({ hostname: HOST, port: 0 });
  const [client, server] = await Promise.all([connect(listener.addr.port), listener.accept()]);
  return {
    client,
    server,
    [Symbol.dispose]() {
      closeQuietly(client);
      closeQuietly(server);
    },
  };
}

// A path for a Unix socket in a fresh directory, removed with it by `using`.
export function socketPath(): { path: string } & Disposable {
  const dir = Deno.makeTempDirSync({ prefix: "genio-unix-" });
  return {
    path: `${dir}/genio.sock`,
    [Symbol.dispose]: () => Deno.removeSync(dir, { recursive: true }),
  };
}

export function exists(path: string): boolean {
  try {
    Deno.lstatSync(path);
    return true;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return false;
    throw error;
  }
}
