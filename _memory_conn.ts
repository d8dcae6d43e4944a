/** Options for {@linkcode memoryConnPair}. */
export interface MemoryConnPairOptions {
  /**
   * How many bytes each direction buffers before `write()` waits for the other end to read.
   * A write that finds some room takes what fits and resolves with that count, as a
   * partial write; `0` hands bytes only to a read that is already waiting.
   *
   * @default {Infinity}
   */
  capacity?: number;
  /**
   * The first conn's local address (the second conn's remote one).
   *
   * @default {{ transport: "tcp", hostname: "127.0.0.1", port: 49152 }}
   */
  localAddr?: Deno.NetAddr;
  /**
   * The first conn's remote address (the second conn's local one).
   *
   * @default {{ transport: "tcp", hostname: "127.0.0.1", port: 8000 }}
   */
  remoteAddr?: Deno.NetAddr;
}

const CLIENT_ADDR: Deno.NetAddr = { transport: "tcp", hostname: "127.0.0.1", port: 49152 };
const SERVER_ADDR: Deno.NetAddr = { transport: "tcp", hostname: "127.0.0.1", port: 8000 };
const STREAM_CHUNK_SIZE: number = 64 * 1024;

interface PendingRead {
  readonly buffer: Uint8Array;
  readonly settle: PromiseWithResolvers<number | null>;
}

interface PendingWrite {
  readonly data: Uint8Array;
  readonly settle: PromiseWithResolvers<number>;
}

// One direction of a pair: bytes one conn writes and the other reads, with the waits of
// both ends. Reads wait only while nothing is buffered; writes wait only while there is no
// room; both are served first come, first served.
class Pipe {
  readonly #capacity: number;
  #chunks: Uint8Array[] = [];
  #head = 0;
  #buffered = 0;
  #readers: PendingRead[] = [];
  #writers: PendingWrite[] = [];
  #writeShut = false;
  #readShut = false;
  #broken = false;

  constructor(capacity: number) {
    this.#capacity = capacity;
  }

  read(buffer: Uint8Array): Promise<number | null> {
    if (this.#broken) return Promise.reject(connectionReset());
    if (buffer.length === 0) return Promise.resolve(0);
    const settle = Promise.withResolvers<number | null>();
    this.#readers.push({ buffer, settle });
    this.#pump();
    return settle.promise;
  }

  write(data: Uint8Array): Promise<number> {
    if (this.#broken) return Promise.reject(connectionReset());
    if (this.#writeShut || this.#readShut) return Promise.reject(brokenPipe());
    if (data.length === 0) return Promise.resolve(0);
    const settle = Promise.withResolvers<number>();
    this.#writers.push({ data, settle });
    this.#pump();
    return settle.promise;
  }

  failReaders(error: () => Error): void {
    for (const reader of this.#readers.splice(0)) reader.settle.reject(error());
  }

  failWriters(error: () => Error): void {
    for (const writer of this.#writers.splice(0)) writer.settle.reject(error());
  }

  // The writing end sends no more: the reader gets end of stream once the buffer is drained.
  shutWrite(): void {
    this.#writeShut = true;
    this.#pump();
  }

  // The reading end is gone: buffered bytes are dropped and writes fail with BrokenPipe.
  shutRead(): void {
    this.#readShut = true;
    this.#drop();
    this.failWriters(brokenPipe);
  }

  // A reset: everything buffered is lost and both ends' waits, now and later, fail with
  // ConnectionReset.
  break(): void {
    this.#broken = true;
    this.#drop();
    this.failReaders(connectionReset);
    this.failWriters(connectionReset);
  }

  #pump(): void {
    for (;;) {
      while (this.#readers.length > 0 && this.#buffered > 0) this.#serve(this.#readers.shift()!);
      if (this.#writers.length === 0) break;
      const room = this.#room();
      if (room <= 0) break;
      const writer = this.#writers.shift()!;
      const n = Math.min(room, writer.data.length);
      this.#chunks.push(writer.data.slice(0, n));
      this.#buffered += n;
      writer.settle.resolve(n);
    }
    if (this.#writeShut && this.#buffered === 0) {
      for (const reader of this.#readers.splice(0)) reader.settle.resolve(null);
    }
  }

  // Bytes a write may hand over now: free buffer space, plus what the waiting reads take
  // directly (they wait only while the buffer is empty).
  #room(): number {
    let room = this.#capacity - this.#buffered;
    if (this.#buffered === 0) {
      for (const reader of this.#readers) room += reader.buffer.length;
    }
    return room;
  }

  #serve({ buffer, settle }: PendingRead): void {
    let n = 0;
    while (n < buffer.length && this.#buffered > 0) {
      const chunk = this.#chunks[this.#head];
      const take = Math.min(chunk.length, buffer.length - n);
      buffer.set(chunk.subarray(0, take), n);
      n += take;
      this.#buffered -= take;
      if (take === chunk.length) this.#chunks[this.#head++] = EMPTY;
      else this.#chunks[this.#head] = chunk.subarray(take);
    }
    if (this.#head > 64 && this.#head * 2 > this.#chunks.length) {
      this.#chunks = this.#chunks.slice(this.#head);
      this.#head = 0;
    }
    settle.resolve(n);
  }

  #drop(): void {
    this.#chunks = [];
    this.#head = 0;
    this.#buffered = 0;
  }
}

const EMPTY: Uint8Array = new Uint8Array(0);

let connect: (options: MemoryConnPairOptions) => [MemoryConn, MemoryConn];

/**
 * One end of an in-memory connection made by {@linkcode memoryConnPair}. It behaves as a
 * `Deno.TcpConn` does, without a socket: no port, no resource, no timer, so a test that
 * uses it is fast, deterministic and clean under Deno's sanitizers.
 *
 * As with Deno: after `close()` every call throws or rejects with `Deno.errors.BadResource`;
 * a read that was waiting when its own end closed rejects with `Deno.errors.Interrupted`;
 * writing after `closeWrite()`, or to a peer that closed, rejects with
 * `Deno.errors.BrokenPipe`; and reading `readable` to its end, cancelling it, or closing or
 * aborting `writable` closes the conn.
 *
 * @example A write at one end is read at the other
 * ```ts
 * import { memoryConnPair } from "@genio/genio/testing";
 * import assert from "node:assert/strict";
 *
 * const [client, server] = memoryConnPair();
 * await client.write(new TextEncoder().encode("ping"));
 * const buffer = new Uint8Array(16);
 * const n = await server.read(buffer);
 * assert.equal(new TextDecoder().decode(buffer.subarray(0, n!)), "ping");
 * client.close();
 * assert.equal(await server.read(buffer), null);
 * server.close();
 * ```
 */
export class MemoryConn implements Deno.TcpConn {
  #incoming!: Pipe;
  #outgoing!: Pipe;
  #localAddr!: Deno.NetAddr;
  #remoteAddr!: Deno.NetAddr;
  #closed = false;
  #readable: ReadableStream<Uint8Array<ArrayBuffer>> | null = null;
  #writable: WritableStream<Uint8Array> | null = null;

  static {
    connect = (options) => {
      const capacity = options.capacity ?? Infinity;
      if (!(capacity >= 0 && (Number.isInteger(capacity) || capacity === Infinity))) {
        throw new RangeError(`Cannot create a memory conn pair: capacity is ${capacity}`);
      }
      const local = options.localAddr ?? CLIENT_ADDR;
      const remote = options.remoteAddr ?? SERVER_ADDR;
      const forth = new Pipe(capacity);
      const back = new Pipe(capacity);
      const a = new MemoryConn();
      const b = new MemoryConn();
      [a.#incoming, a.#outgoing, a.#localAddr, a.#remoteAddr] = [back, forth, local, remote];
      [b.#incoming, b.#outgoing, b.#localAddr, b.#remoteAddr] = [forth, back, remote, local];
      return [a, b];
    };
  }

  private constructor() {}

  /** The address of this end. */
  get localAddr(): Deno.NetAddr {
    return { ...this.#localAddr };
  }

  /** The address of the other end. */
  get remoteAddr(): Deno.NetAddr {
    return { ...this.#remoteAddr };
  }

  /** Whether this end has been closed (by `close()`, `reset()` or its streams). */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Reads what the other end wrote into `p`: at most `p.length` bytes, waiting while
   * nothing has arrived. The bytes are copied, so the writer may reuse its buffer.
   *
   * @param p Where to put the bytes.
   * @returns The number of bytes read, or `null` once the other end has closed its write
   * side and everything it wrote has been read.
   * @throws {Deno.errors.BadResource} If this end is closed.
   * @throws {Deno.errors.Interrupted} If this end closes while the read waits.
   * @throws {Deno.errors.ConnectionReset} If the other end reset the connection.
   */
  read(p: Uint8Array): Promise<number | null> {
    if (this.#closed) return Promise.reject(badResource());
    return this.#incoming.read(p);
  }

  /**
   * Hands bytes of `p` to the other end, copying them. Waits while the direction's buffer
   * is full; then takes as much as fits, which may be less than `p.length`.
   *
   * @param p The bytes to write.
   * @returns The number of bytes accepted (at least one, unless `p` is empty).
   * @throws {Deno.errors.BadResource} If this end is closed.
   * @throws {Deno.errors.BrokenPipe} After `closeWrite()`, or once the other end closed.
   * @throws {Deno.errors.Interrupted} If this end closes while the write waits.
   * @throws {Deno.errors.ConnectionReset} If the other end reset the connection.
   */
  write(p: Uint8Array): Promise<number> {
    if (this.#closed) return Promise.reject(badResource());
    return this.#outgoing.write(p);
  }

  /**
   * Shuts down the write side: the other end reads what is buffered, then `null`. This
   * end can still read.
   *
   * @returns A promise that resolves once the write side is shut.
   * @throws {Deno.errors.BadResource} If this end is closed.
   */
  closeWrite(): Promise<void> {
    if (this.#closed) return Promise.reject(badResource());
    this.#outgoing.failWriters(brokenPipe);
    this.#outgoing.shutWrite();
    return Promise.resolve();
  }

  /**
   * Closes this end. Its waiting read and write reject with `Deno.errors.Interrupted`; the
   * other end reads what is buffered, then `null`, and its writes fail with
   * `Deno.errors.BrokenPipe`.
   *
   * @throws {Deno.errors.BadResource} If this end is already closed.
   */
  close(): void {
    if (this.#closed) throw badResource();
    this.#closed = true;
    this.#incoming.failReaders(interrupted);
    this.#incoming.shutRead();
    this.#outgoing.failWriters(interrupted);
    this.#outgoing.shutWrite();
  }

  /**
   * Closes this end abruptly, as a TCP reset does: buffered bytes in both directions are
   * lost, and every read and write of the other end, waiting or later, rejects with
   * `Deno.errors.ConnectionReset`. This end's own waits reject with
   * `Deno.errors.Interrupted`.
   *
   * @throws {Deno.errors.BadResource} If this end is already closed.
   *
   * @example A client that resets
   * ```ts
   * import { memoryConnPair } from "@genio/genio/testing";
   * import assert from "node:assert/strict";
   *
   * const [client, server] = memoryConnPair();
   * const reading = server.read(new Uint8Array(8));
   * client.reset();
   * await assert.rejects(reading, Deno.errors.ConnectionReset);
   * await assert.rejects(server.write(new Uint8Array(1)), Deno.errors.ConnectionReset);
   * server.close();
   * ```
   */
  reset(): void {
    if (this.#closed) throw badResource();
    this.#closed = true;
    this.#incoming.failReaders(interrupted);
    this.#outgoing.failWriters(interrupted);
    this.#incoming.break();
    this.#outgoing.break();
  }

  /** Does nothing: a memory conn never keeps the process alive. */
  ref(): void {}

  /** Does nothing: a memory conn never keeps the process alive. */
  unref(): void {}

  /**
   * Does nothing: there is no Nagle's algorithm in memory.
   *
   * @param _noDelay Ignored.
   */
  setNoDelay(_noDelay?: boolean): void {}

  /**
   * Does nothing: there are no keep-alive probes in memory.
   *
   * @param _keepAlive Ignored.
   */
  setKeepAlive(_keepAlive?: boolean): void {}

  /** Closes this end if it is open. */
  [Symbol.dispose](): void {
    if (!this.#closed) this.close();
  }

  /**
   * The bytes the other end writes, as a byte stream. Reaching its end or cancelling it
   * closes this conn, as with Deno.
   */
  get readable(): ReadableStream<Uint8Array<ArrayBuffer>> {
    return this.#readable ??= new ReadableStream({
      type: "bytes",
      autoAllocateChunkSize: STREAM_CHUNK_SIZE,
      pull: async (controller) => {
        const view = controller.byobRequest!.view!;
        const buffer = new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
        let n: number | null;
        try {
          n = await this.read(buffer);
        } catch (error) {
          this[Symbol.dispose]();
          controller.error(error);
          return;
        }
        if (n === null) {
          this[Symbol.dispose]();
          controller.close();
          controller.byobRequest?.respond(0);
        } else {
          controller.byobRequest!.respond(n);
        }
      },
      cancel: () => this[Symbol.dispose](),
    });
  }

  /**
   * A stream that writes each chunk in full to the other end. Closing or aborting it
   * closes this conn, as with Deno.
   */
  get writable(): WritableStream<Uint8Array> {
    return this.#writable ??= new WritableStream({
      write: async (chunk) => {
        for (let written = 0; written < chunk.length;) {
          written += await this.write(chunk.subarray(written));
        }
      },
      close: () => this[Symbol.dispose](),
      abort: () => this[Symbol.dispose](),
    });
  }
}

/**
 * Creates two connected in-memory conns, `[client, server]` by convention: what one writes,
 * the other reads. Each satisfies `Deno.Conn` (and `Deno.TcpConn`) in full, so a handler
 * runs on it unchanged, and {@linkcode MemoryConn.reset} injects a connection reset.
 *
 * @param options Per-direction capacity and the addresses.
 * @returns The two ends.
 * @throws {RangeError} If `capacity` is not a whole number of bytes (or `Infinity`).
 *
 * @example Testing a handler without a socket
 * ```ts
 * import { read, Scheduler, write } from "@genio/genio";
 * import { memoryConnPair } from "@genio/genio/testing";
 * import assert from "node:assert/strict";
 *
 * function* shout(conn: Deno.Conn) {
 *   const buffer = new Uint8Array(64);
 *   try {
 *     let n: number | null;
 *     while ((n = yield* read(conn, buffer)) !== null) {
 *       const text = new TextDecoder().decode(buffer.subarray(0, n));
 *       yield* write(conn, new TextEncoder().encode(text.toUpperCase()));
 *     }
 *   } finally {
 *     conn.close();
 *   }
 * }
 * const [client, server] = memoryConnPair();
 * const scheduler = new Scheduler();
 * scheduler.spawn(shout(server));
 * const done = scheduler.run();
 * await client.write(new TextEncoder().encode("hello"));
 * const reply = new Uint8Array(64);
 * const n = await client.read(reply);
 * assert.equal(new TextDecoder().decode(reply.subarray(0, n!)), "HELLO");
 * await client.closeWrite();
 * await done;
 * assert.equal(await client.read(reply), null);
 * client.close();
 * ```
 *
 * @example Backpressure: a write waits until the reader makes room
 * ```ts
 * import { memoryConnPair } from "@genio/genio/testing";
 * import assert from "node:assert/strict";
 *
 * const [client, server] = memoryConnPair({ capacity: 4 });
 * assert.equal(await client.write(new Uint8Array(10)), 4);
 * let accepted: number | null = null;
 * client.write(new Uint8Array(6)).then((n) => accepted = n);
 * await Promise.resolve();
 * assert.equal(accepted, null);
 * assert.equal(await server.read(new Uint8Array(3)), 3);
 * await Promise.resolve();
 * assert.equal(accepted, 3);
 * client.close();
 * server.close();
 * ```
 */
export function memoryConnPair(options?: MemoryConnPairOptions): [MemoryConn, MemoryConn] {
  return connect(options ?? {});
}

function badResource(): Error {
  return new Deno.errors.BadResource("Bad resource ID");
}

function interrupted(): Error {
  return new Deno.errors.Interrupted("operation canceled");
}

function brokenPipe(): Error {
  return new Deno.errors.BrokenPipe("Broken pipe");
}

function connectionReset(): Error {
  return new Deno.errors.ConnectionReset("Connection reset by peer");
}
