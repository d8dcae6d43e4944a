// Clients for the reliability suite and the soak: well-behaved ones that prove, with a digest
// of what they sent and one of what came back, that every byte was answered exactly once and
// in order; the internet's worst ones (resets, garbage, silence); and ways to count what a
// process holds open.
import assert from "node:assert/strict";
import { createHash, type Hash } from "node:crypto";
import net from "node:net";
import type { Server } from "../tcp_server.ts";
import { concat, connect, delay, HOST, readBytesToEnd, until } from "./_net.ts";

const G = 0x47;
const GOT: Uint8Array = new TextEncoder().encode("GOT:");

// --- traffic that can be checked ----------------------------------------------------------------

// A small seeded generator (xorshift32), so that a failing run can be replayed from its seed.
export class Random {
  #state: number;

  constructor(seed: number) {
    this.#state = (seed >>> 0) || 0x9e3779b9;
  }

  next(): number {
    let x = this.#state;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (this.#state = x >>> 0);
  }

  // An integer from `min` to `max`, both included.
  between(min: number, max: number): number {
    return min + this.next() % (max - min + 1);
  }

  fill(bytes: Uint8Array): Uint8Array {
    for (let i = 0; i < bytes.length; i++) bytes[i] = this.next() & 0xff;
    return bytes;
  }
}

// Binary payload with every byte value but "G", so that in the reply stream each "G" starts a
// "GOT:" header and the replies can be taken apart without knowing where the server's reads
// ended.
export function payload(random: Random, size: number): Uint8Array {
  const bytes = random.fill(new Uint8Array(size));
  for (let i = 0; i < size; i++) if (bytes[i] === G) bytes[i] = G + 1;
  return bytes;
}

export interface Tally {
  readonly sentBytes: number;
  readonly receivedBytes: number;
  readonly replies: number;
  readonly sentDigest: string;
  readonly receivedDigest: string;
}

// Both sides of one conversation with the echo server: a SHA-256 of the payload sent, and one of
// the payload taken out of the `GOT:` replies. It fails at once on a malformed reply, an empty
// one, a chunk larger than the server may read at once, or more bytes back than were sent.
export class EchoTally {
  sentBytes = 0;
  receivedBytes = 0;
  replies = 0;
  #sent: Hash = createHash("sha256");
  #received: Hash = createHash("sha256");
  #header = 0; // bytes of "GOT:" matched so far; 4 inside a chunk
  #chunk = 0; // bytes of the current chunk so far

  constructor(readonly maxChunk = Infinity) {}

  sent(bytes: Uint8Array): void {
    assert.ok(!bytes.includes(G), "payload must not contain G");
    this.#sent.update(bytes);
    this.sentBytes += bytes.length;
  }

  received(bytes: Uint8Array): void {
    for (let i = 0; i < bytes.length;) {
      if (this.#header < GOT.length) {
        if (bytes[i] !== GOT[this.#header]) {
          const at = this.receivedBytes;
          throw new Error(`Malformed reply: byte ${bytes[i]} where "GOT:" was due, ${at} bytes in`);
        }
        i++;
        if (++this.#header === GOT.length) {
          this.#chunk = 0;
          this.replies++;
        }
        continue;
      }
      const next = bytes.indexOf(G, i);
      const end = next < 0 ? bytes.length : next;
      if (end > i) {
        const run = bytes.subarray(i, end);
        this.#received.update(run);
        this.receivedBytes += run.length;
        this.#chunk += run.length;
        if (this.#chunk > this.maxChunk) {
          throw new Error(`A reply of more than ${this.maxChunk} bytes`);
        }
        if (this.receivedBytes > this.sentBytes) {
          throw new Error(`${this.receivedBytes} bytes answered, only ${this.sentBytes} sent`);
        }
        i = end;
      }
      if (next >= 0) {
        if (this.#chunk === 0) throw new Error(`An empty reply, ${this.receivedBytes} bytes in`);
        this.#header = 0;
      }
    }
  }

  // Everything sent has been answered and the last reply is complete.
  get balanced(): boolean {
    return this.receivedBytes === this.sentBytes &&
      (this.#header === GOT.length || this.replies === 0 && this.#header === 0);
  }

  finish(): Tally {
    return {
      sentBytes: this.sentBytes,
      receivedBytes: this.receivedBytes,
      replies: this.replies,
      sentDigest: this.#sent.digest("hex"),
      receivedDigest: this.#received.digest("hex"),
    };
  }
}

export function assertAnsweredExactly(tally: Tally, what = "the client"): void {
  assert.equal(tally.receivedBytes, tally.sentBytes, `${what}: bytes answered`);
  assert.equal(tally.receivedDigest, tally.sentDigest, `${what}: digest of what came back`);
}

export interface PingPongOptions {
  messages: number;
  maxSize: number;
  random: Random;
  pauseMs?: number;
  maxChunk?: number;
  // Called after each answered message, with its index.
  onAnswered?: (index: number) => void | Promise<void>;
  // Checked before each message, with how many were answered: true ends the conversation.
  stop?: (answered: number) => boolean;
}

// Sends `messages` messages of random sizes, reading the whole answer to each before the next;
// then shuts its write side and expects the server to close with nothing more to say.
export async function pingPong(conn: Deno.Conn, options: PingPongOptions): Promise<Tally> {
  const { random, pauseMs = 0 } = options;
  const tally = new EchoTally(options.maxChunk);
  const buffer = new Uint8Array(Math.min(64 * 1024, 2 * options.maxSize + 64));
  for (let i = 0; i < options.messages && !options.stop?.(i); i++) {
    const message = payload(random, random.between(1, options.maxSize));
    tally.sent(message);
    await conn.write(message);
    while (!tally.balanced) {
      const n = await conn.read(buffer);
      if (n === null) throw new Error(`The server closed with message ${i} unanswered`);
      tally.received(buffer.subarray(0, n));
    }
    await options.onAnswered?.(i);
    if (pauseMs > 0) await delay(pauseMs);
  }
  await conn.closeWrite();
  for (let n; (n = await conn.read(buffer)) !== null;) tally.received(buffer.subarray(0, n));
  return tally.finish();
}

export interface StreamOptions {
  bytes: number;
  maxWrite: number;
  random: Random;
  maxChunk?: number;
}

// Sends `bytes` bytes as fast as the server takes them while reading the answers as they come,
// shuts its write side, and reads until the server closes.
export async function stream(conn: Deno.Conn, options: StreamOptions): Promise<Tally> {
  const { random } = options;
  const tally = new EchoTally(options.maxChunk);
  let failure: unknown = null;
  const reading = (async () => {
    const buffer = new Uint8Array(64 * 1024);
    try {
      for (let n; (n = await conn.read(buffer)) !== null;) tally.received(buffer.subarray(0, n));
    } catch (error) {
      failure = error;
      conn.close(); // so that the writer, whom nobody reads for now, stops too
    }
  })();
  try {
    for (let left = options.bytes; left > 0;) {
      const chunk = payload(random, Math.min(left, random.between(1, options.maxWrite)));
      tally.sent(chunk);
      await conn.write(chunk);
      left -= chunk.length;
    }
    await conn.closeWrite();
  } catch (error) {
    failure ??= error;
  }
  await reading;
  if (failure !== null) throw failure;
  return tally.finish();
}

// Well-behaved clients in the background while a scenario runs: each plays ping-pong (one
// message at least) until stopped, then half-closes. `stop()` returns their tallies.
export interface Witnesses {
  stop(): Promise<Tally[]>;
}

export function witnesses(port: number, count: number, seed: number): Witnesses {
  let stopped = false;
  const runs = Array.from({ length: count }, async (_, i) => {
    using conn = await connect(port);
    return await pingPong(conn, {
      messages: Infinity,
      maxSize: 8 * 1024,
      random: new Random(seed + i),
      pauseMs: 2,
      stop: (answered) => stopped && answered > 0,
    });
  });
  // A failure waits in its promise for stop(), which reports it.
  for (const run of runs) run.catch(() => {});
  return {
    stop() {
      stopped = true;
      return Promise.all(runs);
    },
  };
}

// --- binary garbage -----------------------------------------------------------------------------

// How `reply` splits into "GOT:" + chunk replies, none longer than `maxChunk`, that together are
// `sent`: the chunks' lengths, or null when it does not. `sent` may hold any bytes, "GOT:" too,
// so a "G" in the replies may start a header or be data; this follows the possible splits,
// longest chunk first, and remembers the dead ends.
export function splitReply(
  reply: Uint8Array,
  sent: Uint8Array,
  maxChunk = Infinity,
): number[] | null {
  const deadEnds = new Set<number>();
  const key = (p: number, q: number) => p * (sent.length + 1) + q;
  // The longest chunk that can follow a header at reply[p], as sent[q...]; 0 if none.
  const longest = (p: number, q: number): number => {
    if (p + GOT.length > reply.length) return 0;
    for (let i = 0; i < GOT.length; i++) if (reply[p + i] !== GOT[i]) return 0;
    let k = 0;
    const start = p + GOT.length;
    while (
      k < maxChunk && q + k < sent.length && start + k < reply.length &&
      reply[start + k] === sent[q + k]
    ) k++;
    return k;
  };
  const chunks: number[] = [];
  const frames = [{ p: 0, q: 0, next: longest(0, 0) }];
  while (frames.length > 0) {
    const frame = frames.at(-1)!;
    if (frame.q === sent.length && frame.p === reply.length && chunks.length > 0) return chunks;
    if (frame.q === sent.length || frame.next === 0) {
      deadEnds.add(key(frame.p, frame.q));
      frames.pop();
      chunks.pop();
      continue;
    }
    const k = frame.next--;
    const p = frame.p + GOT.length + k;
    const q = frame.q + k;
    if (deadEnds.has(key(p, q))) continue;
    chunks.push(k);
    frames.push({ p, q, next: longest(p, q) });
  }
  return null;
}

export interface GarbageOptions {
  random: Random;
  messages: number;
  // The server's buffer size: no reply can be longer.
  maxChunk?: number;
  // Called before each message.
  between?: () => Promise<void>;
}

// Bytes of every value, with the server's own "GOT:" and runs of "G" mixed in.
export function garbage(random: Random): Uint8Array {
  const bytes = random.fill(new Uint8Array(random.between(1, 2048)));
  for (let n = random.between(0, 4); n > 0; n--) {
    const at = random.between(0, bytes.length - 1);
    bytes.set(GOT.subarray(0, bytes.length - at), at);
  }
  if (random.between(0, 3) === 0) bytes.fill(G, random.between(0, bytes.length - 1));
  return bytes;
}

// Sends `messages` messages of garbage, shuts its write side, reads every reply until the
// server closes, and takes the replies apart against what was sent. Both digests are of the
// bytes themselves: the garbage sent, and the chunks taken out of the replies.
export async function garbageConversation(
  conn: Deno.Conn,
  options: GarbageOptions,
): Promise<Tally> {
  const sentHash = createHash("sha256");
  const sent: Uint8Array[] = [];
  const reading = readBytesToEnd(conn);
  try {
    for (let m = 0; m < options.messages; m++) {
      await options.between?.();
      const message = garbage(options.random);
      sent.push(message);
      sentHash.update(message);
      await conn.write(message);
    }
    await conn.closeWrite();
  } finally {
    await reading.catch(() => {});
  }
  const reply = await reading;
  const all = concat(sent);
  const chunks = splitReply(reply, all, options.maxChunk);
  if (chunks === null) {
    throw new Error(`${reply.length} bytes of replies are not ${all.length} bytes of garbage`);
  }
  const receivedHash = createHash("sha256");
  let p = 0;
  for (const k of chunks) {
    receivedHash.update(reply.subarray(p + GOT.length, p + GOT.length + k));
    p += GOT.length + k;
  }
  return {
    sentBytes: all.length,
    receivedBytes: all.length,
    replies: chunks.length,
    sentDigest: sentHash.digest("hex"),
    receivedDigest: receivedHash.digest("hex"),
  };
}

// --- the worst clients ------------------------------------------------------------------------

// A client that can reset its connection: node:net's resetAndDestroy() closes with SO_LINGER 0,
// so the server gets an RST, not the FIN that `Deno.Conn.close()` sends first.
export class ResettingClient {
  readonly #socket: net.Socket;
  readonly closed: Promise<void>;
  written = 0;
  received = 0;

  private constructor(socket: net.Socket, read: boolean) {
    this.#socket = socket;
    this.closed = new Promise((resolve) => socket.once("close", () => resolve()));
    socket.on("error", () => {}); // the reset we cause is all there is to see
    if (read) socket.on("data", (data: Uint8Array) => this.received += data.length);
  }

  // Connects; with `read: false` it never reads what the server answers.
  static async connect(port: number, { read }: { read: boolean }): Promise<ResettingClient> {
    const socket = net.connect({ host: HOST, port });
    await new Promise<void>((resolve, reject) => {
      socket.once("connect", resolve);
      socket.once("error", reject);
    });
    return new ResettingClient(socket, read);
  }

  get localPort(): number {
    return this.#socket.localPort!;
  }

  // Resolves when node has handed the bytes to the kernel.
  write(bytes: Uint8Array): Promise<void> {
    return new Promise((resolve, reject) => {
      this.#socket.write(bytes, (error) => {
        if (error) return reject(error);
        this.written += bytes.length;
        resolve();
      });
    });
  }

  // Writes `chunk` again and again for as long as the kernel takes it.
  flood(chunk: Uint8Array): void {
    const more = (): void => {
      while (!this.#socket.destroyed) {
        this.written += chunk.length;
        if (!this.#socket.write(chunk)) break;
      }
    };
    this.#socket.on("drain", more);
    more();
  }

  async reset(): Promise<void> {
    this.#socket.resetAndDestroy();
    await this.closed;
  }
}

// --- what a process holds ---------------------------------------------------------------------

// Deno 2 asks for --allow-all to read anything under /proc, even this process's own entries.
// The test task grants --allow-run, so `find`, `cat` and `ps` read it for us.
async function sh(script: string): Promise<string> {
  const output = await new Deno.Command("sh", { args: ["-c", script], stdin: "null" }).output();
  return new TextDecoder().decode(output.stdout);
}

// A process's open file descriptors, each with what it points to (`socket:[1234]`,
// `/dev/null`, ...), as `/proc/PID/fd` lists them.
export type FdTable = ReadonlyMap<string, string>;

// Left out: the pipes and the pidfd of the `sh` that makes the listing, and Unix sockets. Deno
// opens one AF_UNIX socket pair of its own, once, some time after it starts; genio opens only
// TCP sockets.
export async function openFds(pid: number = Deno.pid): Promise<FdTable> {
  const [own, fds, unix] = (await sh(
    `readlink /proc/$$/fd/1 /proc/$$/fd/2; echo ==; ` +
      `find /proc/${pid}/fd -mindepth 1 -maxdepth 1 -printf '%f %l\\n' 2>/dev/null; echo ==; ` +
      `cat /proc/${pid}/net/unix`,
  )).split("==\n").map((part) => part.split("\n").filter((line) => line !== ""));
  if (fds === undefined || fds.length === 0) throw new Error(`Cannot list /proc/${pid}/fd`);
  const unixInodes = new Set(unix.slice(1).map((line) => line.trim().split(/\s+/)[6]));
  const table = new Map<string, string>();
  for (const line of fds) {
    const [fd, target] = line.split(" ", 2);
    if (own.includes(target) || target === "anon_inode:[pidfd]") continue;
    const inode = target.match(/^socket:\[(\d+)\]$/)?.[1];
    if (inode !== undefined && unixInodes.has(inode)) continue;
    table.set(fd, target);
  }
  return table;
}

// The descriptors open now that were not open in `before`.
export async function fdsOpenedSince(before: FdTable, pid: number = Deno.pid): Promise<string[]> {
  const opened: string[] = [];
  for (const [fd, target] of await openFds(pid)) {
    if (before.get(fd) !== target) opened.push(`${fd} -> ${target}`);
  }
  return opened;
}

// How many files this process may have open (Deno raises its soft limit to the hard one).
// This process's soft limit on open files, first raised to `wanted` (or as far towards it as the
// hard limit allows) where `prlimit` is installed: many systems start a process at 1,024 with a
// far higher hard limit.
export async function openFileLimit(wanted = 0): Promise<number> {
  const [soft, hard] = (await sh("ulimit -Sn; ulimit -Hn")).trim().split("\n").map((text) =>
    text === "unlimited" ? Infinity : Number(text)
  );
  const raised = Math.min(wanted, hard);
  if (raised <= soft) return soft;
  const prlimit = new Deno.Command("prlimit", {
    args: ["--pid", String(Deno.pid), `--nofile=${raised}:`],
    stdin: "null",
    stdout: "null",
    stderr: "null",
  });
  const status = await prlimit.output().catch(() => null);
  return status?.success ? raised : soft;
}

// Resident memory of a process, in bytes.
export async function rss(pid: number = Deno.pid): Promise<number> {
  const kib = (await sh(`cat /proc/${pid}/status`)).match(/^VmRSS:\s+(\d+) kB$/m)?.[1];
  if (kib === undefined) throw new Error(`No VmRSS for process ${pid}`);
  return Number(kib) * 1024;
}

// The pid of this process's one child whose command line ends with `script`.
export async function childRunning(script: string): Promise<number> {
  const found = (await sh(`ps -o pid=,args= --ppid ${Deno.pid}`)).split("\n")
    .map((line) => line.trim().split(/\s+/))
    .filter((fields) => fields.some((arg) => arg.endsWith(script)))
    .map((fields) => Number(fields[0]));
  if (found.length !== 1) throw new Error(`Expected one child running ${script}, found ${found}`);
  return found[0];
}

// --- the server, back to rest -----------------------------------------------------------------

// Waits until the server is back to its listener task alone, accepting, with every wait map
// empty and no descriptor open that was not open in `before`.
export async function assertAtRest(server: Server, before: FdTable, ms = 10_000): Promise<void> {
  const { scheduler } = server;
  const tasksAtRest = () =>
    scheduler.tasks().length === 1 && scheduler.acceptWaiting.size === 1 &&
    scheduler.readWaiting.size === 0 && scheduler.writeWaiting.size === 0 &&
    scheduler.sleeping.size === 0 && scheduler.ready.length === 0;
  await until(tasksAtRest, "the server to be back to its listener task alone", ms).catch(() => {});
  assert.deepEqual(
    scheduler.tasks().map(({ name, state }) => `${name}: ${state}`),
    ["tcp-server: accepting"],
  );
  assert.equal(scheduler.ready.length, 0, "ready tasks");
  assert.equal(scheduler.readWaiting.size, 0, "readWaiting");
  assert.equal(scheduler.writeWaiting.size, 0, "writeWaiting");
  assert.equal(scheduler.sleeping.size, 0, "sleeping");
  assert.equal(scheduler.acceptWaiting.size, 1, "acceptWaiting");
  assert.equal(server.connections, 0);
  await assertFdsBackTo(before, Deno.pid, ms);
}

// Waits until no descriptor of process `pid` is open that was not open in `before`.
export async function assertFdsBackTo(
  before: FdTable,
  pid: number = Deno.pid,
  ms = 10_000,
): Promise<void> {
  const deadline = performance.now() + ms;
  let opened: string[];
  while ((opened = await fdsOpenedSince(before, pid)).length > 0 && performance.now() < deadline) {
    await delay(50);
  }
  assert.deepEqual(opened, [], `descriptors of process ${pid} opened and not closed`);
}
