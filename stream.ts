/**
 * A buffered stream over a conn, for protocols framed in lines, delimited records or byte
 * counts: {@linkcode Stream}. Its reads are operations for `yield*` that wait in the kernel
 * exactly like a plain `read()` (the task shows as `reading` its conn in `tasks()` and in
 * `readWaiting`, and a cancel or a `timeout()` reaches it there), and bytes it has buffered
 * are kept for the next read whatever happens to the one before.
 *
 * @example A line protocol handler
 * ```ts
 * import { type Operation, Scheduler, Stream } from "@genio/genio";
 * import { memoryConnPair } from "@genio/genio/testing";
 * import assert from "node:assert/strict";
 *
 * function* shout(conn: Deno.Conn): Operation<void> {
 *   const stream = new Stream(conn);
 *   try {
 *     let line: string | null;
 *     while ((line = yield* stream.readLine()) !== null) {
 *       yield* stream.writeLine(line.toUpperCase());
 *     }
 *   } finally {
 *     stream.close();
 *   }
 * }
 *
 * const [client, server] = memoryConnPair();
 * const scheduler = new Scheduler();
 * scheduler.spawn(shout(server));
 * const done = scheduler.run();
 * await client.write(new TextEncoder().encode("hello\r\nworld\n"));
 * await client.closeWrite();
 * const reply = new Uint8Array(12);
 * for (let got = 0; got < reply.length;) got += (await client.read(reply.subarray(got)))!;
 * assert.equal(new TextDecoder().decode(reply), "HELLO\nWORLD\n");
 * await done;
 * client.close();
 * ```
 *
 * @module
 */
import { closeQuietly } from "./_close_quietly.ts";
import { BusyError, LineTooLong, UnexpectedEof } from "./errors.ts";
import type { Operation } from "./intents.ts";

/** Options for {@linkcode Stream}. */
export interface StreamOptions {
  /**
   * The longest line (or `readUntil()` record) accepted, in bytes, not counting its
   * delimiter. A longer one throws {@linkcode LineTooLong}, and the stream never buffers
   * more than this plus one read.
   *
   * @default {65536}
   */
  maxLineBytes?: number;
  /**
   * The size of the read buffer, in bytes: the most read from the conn at once while no
   * long line needs more room.
   *
   * @default {16384}
   */
  bufferSize?: number;
}

// The intents a stream yields, with fields it points at each read or write in turn.
interface MutableReadIntent {
  readonly type: "read";
  readonly conn: Deno.Conn;
  buffer: Uint8Array;
}

interface MutableWriteIntent {
  readonly type: "write";
  readonly conn: Deno.Conn;
  data: Uint8Array;
}

const LF = 10;
const CR = 13;
const DEFAULT_MAX_LINE_BYTES = 65536;
const DEFAULT_BUFFER_SIZE = 16384;
const MAX_SIZE = 1 << 30;
const SCRATCH_BYTES = 4096;
const EMPTY: Uint8Array = new Uint8Array(0);
const encoder: TextEncoder = new TextEncoder();
const decoder: TextDecoder = new TextDecoder();

/**
 * A conn with a read buffer: lines, delimited records and exact byte counts in, whole
 * writes out. Works over any `Deno.Conn` (TCP, TLS, Unix, `memoryConnPair`). One task
 * reads it at a time; another may write meanwhile.
 *
 * Every read waits in the kernel's `readWaiting` under the conn, like a plain `read()`,
 * so it can be cancelled or timed out. Bytes already buffered are never lost: when a read
 * is cancelled or times out, the next one gets them, then whatever the abandoned read of
 * the conn brings. Memory stays bounded on hostile input: the buffer never holds more than
 * `maxLineBytes` plus one read, and a longer line ends the reading with
 * {@linkcode LineTooLong}. Only `readExactly(n)` allocates what it is asked for.
 *
 * @example A length-prefixed frame: a 4-byte big-endian length, then the payload
 * ```ts
 * import { type Operation, Scheduler, Stream } from "@genio/genio";
 * import { memoryConnPair } from "@genio/genio/testing";
 * import assert from "node:assert/strict";
 *
 * const MAX_FRAME = 1 << 20;
 * function* readFrame(stream: Stream): Operation<Uint8Array> {
 *   const header = yield* stream.readExactly(4);
 *   const length = new DataView(header.buffer).getUint32(0);
 *   if (length > MAX_FRAME) throw new RangeError(`Cannot read a frame of ${length} bytes`);
 *   return yield* stream.readExactly(length);
 * }
 *
 * const [client, server] = memoryConnPair();
 * await client.write(new Uint8Array([0, 0, 0, 2, 104, 105]));
 * const stream = new Stream(server);
 * const scheduler = new Scheduler();
 * const task = scheduler.spawn(readFrame(stream));
 * await scheduler.run();
 * assert.equal(new TextDecoder().decode(await task.result), "hi");
 * stream.close();
 * client.close();
 * ```
 */
export class Stream {
  readonly #conn: Deno.Conn;
  readonly #maxLineBytes: number;
  readonly #bufferSize: number;
  // The buffered bytes are #buffer[#start, #end). Past #end, when there is room, sits a
  // "\n" (see #readEnded).
  #buffer: Uint8Array;
  #start = 0;
  #end = 0;
  #eof = false;
  #reading = false;
  #gaveUp = false;
  #scratch: Uint8Array | null = null;
  #readIntent: MutableReadIntent;
  #writeIntent: MutableWriteIntent;

  /**
   * Wraps `conn`. The stream does not read until asked to.
   *
   * @param conn The conn to read and write.
   * @param options The line limit and the buffer size.
   * @throws {RangeError} If an option is not an integer from 1 to 2^30.
   */
  constructor(conn: Deno.Conn, options?: StreamOptions) {
    this.#conn = conn;
    this.#maxLineBytes = checkSize("maxLineBytes", options?.maxLineBytes, DEFAULT_MAX_LINE_BYTES);
    this.#bufferSize = checkSize("bufferSize", options?.bufferSize, DEFAULT_BUFFER_SIZE);
    this.#buffer = new Uint8Array(this.#bufferSize);
    this.#buffer[0] = LF;
    this.#readIntent = { type: "read", conn, buffer: this.#buffer };
    this.#writeIntent = { type: "write", conn, data: EMPTY };
  }

  /** The conn this stream reads and writes. */
  get conn(): Deno.Conn {
    return this.#conn;
  }

  /**
   * Closes the conn. Bytes still buffered are dropped.
   *
   * @throws {Deno.errors.BadResource} If the conn is closed already.
   */
  close(): void {
    this.#conn.close();
  }

  /** Closes the conn unless it is closed already, for `using`. */
  [Symbol.dispose](): void {
    closeQuietly(this.#conn);
  }

  /**
   * Reads the next line, as UTF-8 text without its `\n` or `\r\n` (invalid bytes become
   * U+FFFD). At the end of the stream, a last line without `\n` is returned if not empty,
   * then `null`.
   *
   * @returns The line, or `null` at the end of the stream.
   * @throws {LineTooLong} If the line is longer than `maxLineBytes` (or the stream gave up
   * on an earlier one).
   * @throws {BusyError} If another task is reading the stream.
   *
   * @example Lines, however they arrive
   * ```ts
   * import { Scheduler, Stream } from "@genio/genio";
   * import { memoryConnPair } from "@genio/genio/testing";
   * import assert from "node:assert/strict";
   *
   * const [client, server] = memoryConnPair();
   * await client.write(new TextEncoder().encode("one\r\ntw"));
   * await client.write(new TextEncoder().encode("o\nthree"));
   * client.close();
   * const stream = new Stream(server);
   * const scheduler = new Scheduler();
   * const task = scheduler.spawn(function* () {
   *   const lines: string[] = [];
   *   for (let line; (line = yield* stream.readLine()) !== null;) lines.push(line);
   *   return lines;
   * }());
   * await scheduler.run();
   * assert.deepEqual(await task.result, ["one", "two", "three"]);
   * stream.close();
   * ```
   */
  *readLine(): Operation<string | null> {
    if (this.#reading || this.#gaveUp) this.#refuse("read a line");
    let from = this.#start;
    for (;;) {
      const buffer = this.#buffer;
      const start = this.#start;
      const end = this.#end;
      // Never past #end: the "\n" kept there stops the search.
      const at = buffer.indexOf(LF, from);
      if (at >= 0 && at < end) {
        const stop = at > start && buffer[at - 1] === CR ? at - 1 : at;
        if (stop - start > this.#maxLineBytes) throw this.#giveUp("read a line");
        this.#start = at + 1;
        return decoder.decode(buffer.subarray(start, stop));
      }
      if (this.#eof) {
        if (start === end) return null;
        if (end - start > this.#maxLineBytes) throw this.#giveUp("read a line");
        this.#start = end;
        return decoder.decode(buffer.subarray(start, end));
      }
      // "\r" may be all that is over the limit, until its "\n" comes.
      if (end - start > this.#maxLineBytes + 1) throw this.#giveUp("read a line");
      const scanned = end - start;
      // Inline rather than `yield* this.#fill()`: one generator fewer per line read.
      const intent = this.#nextRead(2);
      let n: number | null | undefined;
      try {
        n = (yield intent) as number | null;
      } finally {
        this.#readEnded(n);
      }
      from = this.#start + scanned;
    }
  }

  /**
   * Reads up to the next `delimiter`, which is consumed but not returned.
   *
   * @param delimiter The bytes that end a record (a string is taken as UTF-8).
   * @returns The record's bytes, or `null` at the end of the stream when nothing is
   * buffered.
   * @throws {UnexpectedEof} If the stream ends inside a record; `partial` holds it.
   * @throws {LineTooLong} If the record is longer than `maxLineBytes`.
   * @throws {BusyError} If another task is reading the stream.
   * @throws {RangeError} If `delimiter` is empty.
   *
   * @example Records ended by a NUL byte
   * ```ts
   * import { Scheduler, Stream } from "@genio/genio";
   * import { memoryConnPair } from "@genio/genio/testing";
   * import assert from "node:assert/strict";
   *
   * const [client, server] = memoryConnPair();
   * await client.write(new TextEncoder().encode("a=1\0b=2\0"));
   * client.close();
   * const stream = new Stream(server);
   * const scheduler = new Scheduler();
   * const task = scheduler.spawn(function* () {
   *   const records: string[] = [];
   *   for (let record; (record = yield* stream.readUntil("\0")) !== null;) {
   *     records.push(new TextDecoder().decode(record));
   *   }
   *   return records;
   * }());
   * await scheduler.run();
   * assert.deepEqual(await task.result, ["a=1", "b=2"]);
   * stream.close();
   * ```
   */
  *readUntil(delimiter: Uint8Array | string): Operation<Uint8Array | null> {
    const delim = typeof delimiter === "string" ? encoder.encode(delimiter) : delimiter;
    if (delim.length === 0) throw new RangeError("Cannot read until a delimiter: it is empty");
    if (this.#reading || this.#gaveUp) this.#refuse("read a record");
    let scanned = 0;
    for (;;) {
      const start = this.#start;
      const end = this.#end;
      const at = indexOfBytes(this.#buffer.subarray(0, end), delim, start + scanned);
      if (at >= 0) {
        if (at - start > this.#maxLineBytes) throw this.#giveUp("read a record");
        this.#start = at + delim.length;
        return this.#buffer.slice(start, at);
      }
      if (this.#eof) {
        if (start === end) return null;
        throw new UnexpectedEof(
          `Cannot read a record: the stream ended after ${end - start} bytes without its delimiter`,
          this.#takeAll(),
        );
      }
      if (end - start > this.#maxLineBytes + delim.length - 1) {
        throw this.#giveUp("read a record");
      }
      scanned = Math.max(0, end - start - delim.length + 1);
      yield* this.#fill(delim.length);
    }
  }

  /**
   * Reads exactly `n` bytes. `n` may be larger than the buffer: the bytes then go straight
   * into the array returned, which is allocated at once, so check a length that comes from
   * the peer before passing it.
   *
   * @param n How many bytes to read.
   * @returns A new array of `n` bytes.
   * @throws {UnexpectedEof} If the stream ends first; `partial` holds what arrived.
   * @throws {RangeError} If `n` is not an integer from 0 to 2^30.
   * @throws {LineTooLong} If the stream gave up on an earlier line.
   * @throws {BusyError} If another task is reading the stream.
   *
   * @example A fixed-size header, then a line
   * ```ts
   * import { Scheduler, Stream } from "@genio/genio";
   * import { memoryConnPair } from "@genio/genio/testing";
   * import assert from "node:assert/strict";
   *
   * const [client, server] = memoryConnPair();
   * await client.write(new Uint8Array([1, 2, 104, 105, 10]));
   * const stream = new Stream(server);
   * const scheduler = new Scheduler();
   * const task = scheduler.spawn(function* () {
   *   const header = yield* stream.readExactly(2);
   *   return [...header, yield* stream.readLine()];
   * }());
   * await scheduler.run();
   * assert.deepEqual(await task.result, [1, 2, "hi"]);
   * stream.close();
   * client.close();
   * ```
   */
  *readExactly(n: number): Operation<Uint8Array> {
    if (!(Number.isInteger(n) && n >= 0 && n <= MAX_SIZE)) {
      throw new RangeError(
        `Cannot read exactly ${n} bytes: expected an integer from 0 to ${MAX_SIZE}`,
      );
    }
    if (this.#reading || this.#gaveUp) this.#refuse(`read ${n} bytes`);
    if (n > this.#buffer.length) return yield* this.#readLarge(n);
    while (this.#end - this.#start < n) {
      if (this.#eof) {
        throw new UnexpectedEof(
          `Cannot read ${n} bytes: the stream ended after ${this.#end - this.#start}`,
          this.#takeAll(),
        );
      }
      yield* this.#fill(1);
    }
    const start = this.#start;
    this.#start = start + n;
    return this.#buffer.slice(start, start + n);
  }

  /**
   * Reads into `buffer` like a plain `read()`: the buffered bytes first (as many as fit),
   * then, when none are left, one read of the conn straight into `buffer`, which stays lent
   * to that read if it is abandoned (see `read()`).
   *
   * @param buffer Where to put the bytes.
   * @returns How many bytes were put in `buffer`, or `null` at the end of the stream.
   * @throws {LineTooLong} If the stream gave up on an earlier line.
   * @throws {BusyError} If another task is reading the stream.
   *
   * @example A line, then the raw bytes behind it
   * ```ts
   * import { Scheduler, Stream } from "@genio/genio";
   * import { memoryConnPair } from "@genio/genio/testing";
   * import assert from "node:assert/strict";
   *
   * const [client, server] = memoryConnPair();
   * await client.write(new TextEncoder().encode("BINARY\n\x01\x02"));
   * const stream = new Stream(server);
   * const scheduler = new Scheduler();
   * const task = scheduler.spawn(function* () {
   *   const line = yield* stream.readLine();
   *   const bytes = new Uint8Array(16);
   *   const n = yield* stream.read(bytes);
   *   return [line, ...bytes.subarray(0, n!)];
   * }());
   * await scheduler.run();
   * assert.deepEqual(await task.result, ["BINARY", 1, 2]);
   * stream.close();
   * client.close();
   * ```
   */
  *read(buffer: Uint8Array): Operation<number | null> {
    if (this.#reading || this.#gaveUp) this.#refuse("read");
    const start = this.#start;
    const buffered = this.#end - start;
    if (buffered > 0) {
      const n = Math.min(buffered, buffer.length);
      buffer.set(this.#buffer.subarray(start, start + n));
      this.#start = start + n;
      return n;
    }
    if (this.#eof) return null;
    this.#reading = true;
    let n: number | null;
    try {
      n = (yield { type: "read", conn: this.#conn, buffer }) as number | null;
    } finally {
      this.#reading = false;
    }
    if (n === null) this.#eof = true;
    return n;
  }

  /**
   * Writes all of `data` to the conn, as `write()` does. Do not change `data` until it
   * returns.
   *
   * @param data The bytes to write (a string is written as UTF-8).
   * @returns How many bytes were written: all of them.
   *
   * @example Writing text and bytes
   * ```ts
   * import { Scheduler, Stream } from "@genio/genio";
   * import { memoryConnPair } from "@genio/genio/testing";
   * import assert from "node:assert/strict";
   *
   * const [client, server] = memoryConnPair();
   * const stream = new Stream(server);
   * const scheduler = new Scheduler();
   * scheduler.spawn(function* () {
   *   yield* stream.write("é");
   *   yield* stream.write(new Uint8Array([33]));
   *   stream.close();
   * }());
   * await scheduler.run();
   * const reply = new Uint8Array(8);
   * assert.equal(new TextDecoder().decode(reply.subarray(0, (await client.read(reply))!)), "é!");
   * client.close();
   * ```
   */
  *write(data: Uint8Array | string): Operation<number> {
    const intent = this.#writeIntent;
    if (typeof data !== "string") {
      intent.data = data;
      return (yield intent) as number;
    }
    const scratch = this.#takeScratch();
    intent.data = encodeText(data, false, scratch);
    const n = (yield intent) as number;
    this.#scratch = scratch; // see writeLine
    return n;
  }

  /**
   * Writes `text` and a `\n`, as UTF-8, in one whole write.
   *
   * @param text The line, without its `\n`.
   * @returns How many bytes were written, the `\n` included.
   *
   * @example Answering a line
   * ```ts
   * import { Scheduler, Stream } from "@genio/genio";
   * import { memoryConnPair } from "@genio/genio/testing";
   * import assert from "node:assert/strict";
   *
   * const [client, server] = memoryConnPair();
   * const stream = new Stream(server);
   * const scheduler = new Scheduler();
   * const task = scheduler.spawn(stream.writeLine("OK"));
   * await scheduler.run();
   * assert.equal(await task.result, 3);
   * stream.close();
   * client.close();
   * ```
   */
  *writeLine(text: string): Operation<number> {
    const scratch = this.#takeScratch();
    const intent = this.#writeIntent;
    intent.data = encodeText(text, true, scratch);
    const n = (yield intent) as number;
    // Not reached when the write was abandoned at its yield: it keeps the array.
    this.#scratch = scratch;
    return n;
  }

  // Text is encoded into this array when it fits, not into a new one per write: while a
  // write has it, the stream holds none (a concurrent writer makes its own).
  #takeScratch(): Uint8Array {
    const scratch = this.#scratch ?? new Uint8Array(SCRATCH_BYTES);
    this.#scratch = null;
    return scratch;
  }

  // Reads once more into the buffer; `delimiterLength` sets how far it may grow.
  *#fill(delimiterLength: number): Operation<void> {
    const intent = this.#nextRead(delimiterLength);
    let n: number | null | undefined;
    try {
      n = (yield intent) as number | null;
    } finally {
      this.#readEnded(n);
    }
  }

  // Makes room after the buffered bytes and points the read intent there: moves them to
  // the front, or, when they fill the buffer, moves them to a larger one (never beyond one
  // read past the longest record with its delimiter).
  #nextRead(delimiterLength: number): MutableReadIntent {
    let buffer = this.#buffer;
    const start = this.#start;
    const end = this.#end;
    if (start === end) {
      this.#start = this.#end = 0;
    } else if (start > 0) {
      buffer.copyWithin(0, start, end);
      this.#start = 0;
      this.#end = end - start;
    } else if (end === buffer.length) {
      const ceiling = this.#maxLineBytes + delimiterLength - 1 + this.#bufferSize;
      const larger = new Uint8Array(Math.min(2 * buffer.length, ceiling));
      larger.set(buffer);
      this.#buffer = buffer = larger;
    }
    const intent = this.#readIntent;
    intent.buffer = this.#end === 0 ? buffer : buffer.subarray(this.#end);
    this.#reading = true;
    return intent;
  }

  // After a read into the buffer: `n` bytes came, or the end (null), or nothing because the
  // read threw at its yield (undefined). A read abandoned there stays in flight, and the
  // kernel may still write into the part of the buffer it was lent: the buffered bytes move
  // to a buffer of their own, leaving that one to the read.
  #readEnded(n: number | null | undefined): void {
    this.#reading = false;
    if (n === null) {
      this.#eof = true;
      return;
    }
    if (n === undefined) {
      this.#keep(this.#buffer.subarray(this.#start, this.#end));
      return;
    }
    const end = this.#end += n;
    // A "\n" past the bytes bounds readLine's indexOf, which otherwise runs on through
    // stale bytes: a line trickling in a byte at a time would cost a scan of the buffer per
    // byte.
    if (end < this.#buffer.length) this.#buffer[end] = LF;
  }

  // Buffers `bytes` alone, in a new array.
  #keep(bytes: Uint8Array): void {
    const buffer = new Uint8Array(Math.max(this.#bufferSize, this.#buffer.length, bytes.length));
    buffer.set(bytes);
    if (bytes.length < buffer.length) buffer[bytes.length] = LF;
    this.#buffer = buffer;
    this.#start = 0;
    this.#end = bytes.length;
  }

  // readExactly for more than the buffer holds: the bytes go straight into the result.
  *#readLarge(n: number): Operation<Uint8Array> {
    const bytes = new Uint8Array(n);
    bytes.set(this.#buffer.subarray(this.#start, this.#end));
    let got = this.#end - this.#start;
    this.#start = this.#end = 0;
    this.#buffer[0] = LF;
    while (got < n) {
      if (this.#eof) {
        throw new UnexpectedEof(
          `Cannot read ${n} bytes: the stream ended after ${got}`,
          bytes.slice(0, got),
        );
      }
      this.#reading = true;
      let m: number | null | undefined;
      try {
        m = (yield { type: "read", conn: this.#conn, buffer: bytes.subarray(got) }) as
          | number
          | null;
      } finally {
        this.#reading = false;
        // The rest of `bytes` stays lent to an abandoned read; what came is kept.
        if (m === undefined && got > 0) this.#keep(bytes.subarray(0, got));
      }
      if (m === null) this.#eof = true;
      else got += m;
    }
    return bytes;
  }

  #takeAll(): Uint8Array {
    const bytes = this.#buffer.slice(this.#start, this.#end);
    this.#start = this.#end = 0;
    return bytes;
  }

  #refuse(what: string): never {
    if (this.#reading) {
      throw new BusyError(
        `Cannot ${what}: the stream is already being read by another task`,
        this.#conn,
      );
    }
    throw new LineTooLong(
      `Cannot ${what}: the stream gave up after a line longer than ${this.#maxLineBytes} bytes`,
      this.#maxLineBytes,
    );
  }

  // Too long a line: the stream drops its buffer and reads no more.
  #giveUp(what: string): LineTooLong {
    this.#gaveUp = true;
    this.#buffer = EMPTY;
    this.#start = this.#end = 0;
    return new LineTooLong(
      `Cannot ${what}: it is longer than ${this.#maxLineBytes} bytes`,
      this.#maxLineBytes,
    );
  }
}

// `text` (and a "\n") as UTF-8: in `scratch` when it fits, else in a new array.
function encodeText(text: string, newline: boolean, scratch: Uint8Array): Uint8Array {
  if (text.length < scratch.length) {
    const { read, written } = encoder.encodeInto(text, scratch);
    if (read === text.length && written < scratch.length) {
      if (!newline) return scratch.subarray(0, written);
      scratch[written] = LF;
      return scratch.subarray(0, written + 1);
    }
  }
  return encoder.encode(newline ? text + "\n" : text);
}

function checkSize(name: string, value: number | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  if (!(Number.isInteger(value) && value >= 1 && value <= MAX_SIZE)) {
    throw new RangeError(
      `Cannot create a stream: ${name} must be an integer from 1 to ${MAX_SIZE}, got "${value}"`,
    );
  }
  return value;
}

// Where `pattern` first occurs in `bytes` at or after `from`, or -1.
function indexOfBytes(bytes: Uint8Array, pattern: Uint8Array, from: number): number {
  const first = pattern[0];
  const last = bytes.length - pattern.length;
  for (
    let at = bytes.indexOf(first, from);
    at >= 0 && at <= last;
    at = bytes.indexOf(first, at + 1)
  ) {
    let i = 1;
    while (i < pattern.length && bytes[at + i] === pattern[i]) i++;
    if (i === pattern.length) return at;
  }
  return -1;
}
