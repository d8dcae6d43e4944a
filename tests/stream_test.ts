import assert from "node:assert/strict";
import {
  accept,
  BusyError,
  cancel,
  LineTooLong,
  type Operation,
  Scheduler,
  sleep,
  spawn,
  Stream,
  timeout,
  TimeoutError,
  UnexpectedEof,
  wait,
} from "../mod.ts";
import { createTestScheduler, memoryConnPair } from "../testing.ts";
import { decode, encode, loopback, readExactly as readText } from "./_net.ts";

interface Pair extends Disposable {
  client: Deno.Conn;
  server: Deno.Conn;
}

function closeBoth(client: Deno.Conn, server: Deno.Conn): void {
  for (const conn of [client, server]) {
    try {
      conn.close();
    } catch {
      // The test closed it already.
    }
  }
}

function memoryPair(capacity?: number): Pair {
  const [client, server] = memoryConnPair({ capacity });
  return { client, server, [Symbol.dispose]: () => closeBoth(client, server) };
}

// Every behaviour that needs no particular transport is checked over both.
const TRANSPORTS: readonly [string, () => Promise<Pair>][] = [
  ["memory", () => Promise.resolve(memoryPair())],
  ["tcp", loopback],
];

const pause = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function until(condition: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 1000 && !condition(); i++) await pause(2);
  assert.ok(condition(), `timed out waiting until ${what}`);
}

// Writes each piece once the server's task waits to read again, so that on loopback too
// the pieces arrive in separate reads.
async function trickle(
  scheduler: Scheduler,
  pair: Pair,
  pieces: readonly (string | Uint8Array)[],
): Promise<void> {
  for (const piece of pieces) {
    await until(() => scheduler.readWaiting.has(pair.server), "the server reads");
    await pair.client.write(typeof piece === "string" ? encode(piece) : piece);
    await pause(5);
  }
}

// Runs `operation` on a fresh scheduler while the client sends `pieces` one read at a
// time, then closes the client's write side.
async function serve<T>(
  pair: Pair,
  pieces: readonly (string | Uint8Array)[],
  operation: Operation<T>,
) {
  const scheduler = new Scheduler();
  const task = scheduler.spawn(operation);
  const done = scheduler.run();
  await trickle(scheduler, pair, pieces);
  await pair.client.closeWrite();
  await done;
  return await task.result;
}

function* lines(stream: Stream): Operation<string[]> {
  const found: string[] = [];
  for (let line; (line = yield* stream.readLine()) !== null;) found.push(line);
  return found;
}

function* records(stream: Stream, delimiter: string | Uint8Array): Operation<string[]> {
  const found: string[] = [];
  for (let record; (record = yield* stream.readUntil(delimiter)) !== null;) {
    found.push(decode(record));
  }
  return found;
}

function* caught<T>(operation: Operation<T>): Operation<T | Error> {
  try {
    return yield* operation;
  } catch (error) {
    return error as Error;
  }
}

// --- construction ----------------------------------------------------------------------

Deno.test("new Stream() refuses a size that is not an integer from 1 to 2^30", () => {
  using pair = memoryPair();
  for (const bad of [0, -1, 1.5, NaN, Infinity, 2 ** 30 + 1]) {
    assert.throws(
      () => new Stream(pair.server, { maxLineBytes: bad }),
      new RangeError(
        `Cannot create a stream: maxLineBytes must be an integer from 1 to 1073741824, got "${bad}"`,
      ),
    );
    assert.throws(() => new Stream(pair.server, { bufferSize: bad }), RangeError);
  }
  const stream = new Stream(pair.server, { maxLineBytes: 1, bufferSize: 2 ** 30 - 1 });
  assert.equal(stream.conn, pair.server);
});

Deno.test("stream.close() closes the conn and using closes it once", async () => {
  using pair = memoryPair();
  {
    using stream = new Stream(pair.server);
    stream.close();
  }
  assert.equal(await pair.client.read(new Uint8Array(1)), null);
  assert.throws(() => pair.server.close(), Deno.errors.BadResource);
});

for (const [kind, connect] of TRANSPORTS) {
  // --- readLine ----------------------------------------------------------------------

  Deno.test(`readLine() joins a line split across reads (${kind})`, async () => {
    using pair = await connect();
    const stream = new Stream(pair.server);
    const found = await serve(pair, ["he", "llo\nwo", "rld", "\n", "!\n"], lines(stream));
    assert.deepEqual(found, ["hello", "world", "!"]);
  });

  Deno.test(`readLine() strips \\n and \\r\\n but keeps a lone \\r (${kind})`, async () => {
    using pair = await connect();
    const stream = new Stream(pair.server);
    const found = await serve(pair, ["a\r\nb\nc\rd\n\r\n\n", "e\r", "\nf\r"], lines(stream));
    assert.deepEqual(found, ["a", "b", "c\rd", "", "", "e", "f\r"]);
  });

  Deno.test(`readLine() returns a last unterminated line, then null (${kind})`, async () => {
    using pair = await connect();
    const stream = new Stream(pair.server);
    const found = await serve(
      pair,
      ["one\ntw", "o"],
      function* () {
        const all = yield* lines(stream);
        return [...all, yield* stream.readLine(), yield* stream.readLine()];
      }(),
    );
    assert.deepEqual(found, ["one", "two", null, null]);
  });

  Deno.test(`readLine() decodes UTF-8 split across reads (${kind})`, async () => {
    using pair = await connect();
    const bytes = encode("héllo wörld\n");
    const stream = new Stream(pair.server);
    const found = await serve(
      pair,
      [bytes.subarray(0, 2), bytes.subarray(2, 9), bytes.subarray(9)],
      lines(stream),
    );
    assert.deepEqual(found, ["héllo wörld"]);
  });

  Deno.test(`readLine() reads many pipelined lines in order (${kind})`, async () => {
    using pair = await connect();
    const sent = Array.from({ length: 2000 }, (_, i) => `line ${i} `.padEnd(63, "x"));
    const stream = new Stream(pair.server, { bufferSize: 1000 });
    const found = await serve(pair, [sent.join("\n") + "\n"], lines(stream));
    assert.deepEqual(found, sent);
  });

  // --- readUntil ---------------------------------------------------------------------

  Deno.test(`readUntil() splits on a string delimiter split across reads (${kind})`, async () => {
    using pair = await connect();
    const stream = new Stream(pair.server);
    const found = await serve(
      pair,
      ["a\r\n\r", "\nb\r\nb\r", "\n\r\n", "\r\n\r\n", "c\r\n\r\n"],
      records(stream, "\r\n\r\n"),
    );
    assert.deepEqual(found, ["a", "b\r\nb", "", "c"]);
  });

  Deno.test(`readUntil() splits on a bytes delimiter (${kind})`, async () => {
    using pair = await connect();
    const stream = new Stream(pair.server);
    const delimiter = new Uint8Array([0, 255]);
    const found = await serve(
      pair,
      [new Uint8Array([104, 0, 105, 0]), new Uint8Array([255, 0, 0]), new Uint8Array([255])],
      records(stream, delimiter),
    );
    assert.deepEqual(found, ["h\0i", "\0"]);
  });

  Deno.test(`readUntil() throws UnexpectedEof with the record EOF cut (${kind})`, async () => {
    using pair = await connect();
    const stream = new Stream(pair.server);
    const result = await serve(
      pair,
      ["a;b", "c"],
      function* () {
        const first = decode((yield* stream.readUntil(";"))!);
        const error = yield* caught(stream.readUntil(";"));
        return { first, error, after: yield* stream.readUntil(";") };
      }(),
    );
    assert.equal(result.first, "a");
    assert.ok(result.error instanceof UnexpectedEof);
    assert.equal(decode(result.error.partial), "bc");
    assert.equal(
      result.error.message,
      "Cannot read a record: the stream ended after 2 bytes without its delimiter",
    );
    assert.equal(result.after, null);
  });

  // --- readExactly -------------------------------------------------------------------

  Deno.test(`readExactly() gathers bytes across reads (${kind})`, async () => {
    using pair = await connect();
    const stream = new Stream(pair.server);
    const result = await serve(
      pair,
      ["ab", "cdef", "g"],
      function* () {
        return [decode(yield* stream.readExactly(3)), decode(yield* stream.readExactly(4))];
      }(),
    );
    assert.deepEqual(result, ["abc", "defg"]);
  });

  Deno.test(`readExactly() at EOF throws with the partial bytes (${kind})`, async () => {
    using pair = await connect();
    const stream = new Stream(pair.server);
    const result = await serve(
      pair,
      ["xy"],
      function* () {
        const first = yield* caught(stream.readExactly(5));
        const second = yield* caught(stream.readExactly(5));
        return [first, second];
      }(),
    );
    const [first, second] = result as UnexpectedEof[];
    assert.ok(first instanceof UnexpectedEof);
    assert.equal(first.message, "Cannot read 5 bytes: the stream ended after 2");
    assert.equal(decode(first.partial), "xy");
    assert.ok(second instanceof UnexpectedEof);
    assert.deepEqual(second.partial, new Uint8Array(0));
  });

  Deno.test(`readExactly() of more than the buffer takes buffered bytes first (${kind})`, async () => {
    using pair = await connect();
    const payload = Array.from({ length: 5000 }, (_, i) => String.fromCharCode(97 + i % 26)).join(
      "",
    );
    const stream = new Stream(pair.server, { bufferSize: 64 });
    const pieces = [
      "head\n",
      payload.slice(0, 10),
      payload.slice(10, 3000),
      payload.slice(3000),
      "tail\n",
    ];
    const result = await serve(
      pair,
      pieces,
      function* () {
        const head = yield* stream.readLine();
        const body = decode(yield* stream.readExactly(payload.length));
        return [head, body, yield* stream.readLine(), yield* caught(stream.readExactly(1000))];
      }(),
    );
    assert.deepEqual(result.slice(0, 3), ["head", payload, "tail"]);
    assert.ok(result[3] instanceof UnexpectedEof);
    assert.equal(result[3].partial.length, 0);
  });

  Deno.test(`readExactly(0) returns at once, and refuses a bad n (${kind})`, async () => {
    using pair = await connect();
    const stream = new Stream(pair.server);
    const scheduler = new Scheduler();
    const task = scheduler.spawn(function* () {
      const none = yield* stream.readExactly(0);
      const bad = yield* caught(stream.readExactly(-1));
      return [none, bad];
    }());
    await scheduler.run(); // the client sends nothing, and nothing waits for it
    const [none, bad] = await task.result;
    assert.deepEqual(none, new Uint8Array(0));
    assert.deepEqual(
      bad,
      new RangeError("Cannot read exactly -1 bytes: expected an integer from 0 to 1073741824"),
    );
  });

  // --- read and write ----------------------------------------------------------------

  Deno.test(`read() serves buffered bytes first, then the conn (${kind})`, async () => {
    using pair = await connect();
    const stream = new Stream(pair.server);
    const result = await serve(
      pair,
      ["line\nabcdef", "gh"],
      function* () {
        const line = yield* stream.readLine();
        const small = new Uint8Array(4);
        const chunks: string[] = [];
        for (let n; (n = yield* stream.read(small)) !== null;) {
          chunks.push(decode(small.subarray(0, n)));
        }
        return [line, ...chunks];
      }(),
    );
    assert.deepEqual(result, ["line", "abcd", "ef", "gh"]);
  });

  Deno.test(`write() and writeLine() write everything (${kind})`, async () => {
    using pair = await connect();
    const stream = new Stream(pair.server);
    const big = new Uint8Array(300_000).fill(120);
    const scheduler = new Scheduler();
    const task = scheduler.spawn(function* () {
      return [
        yield* stream.write(big),
        yield* stream.write("é"),
        yield* stream.writeLine("ok ✓"),
      ];
    }());
    const done = scheduler.run();
    const text = await readText(pair.client, big.length + 2 + 7);
    await done;
    assert.deepEqual(await task.result, [300_000, 2, 7]);
    assert.equal(text, "x".repeat(300_000) + "éok ✓\n");
  });

  // --- waiting in the kernel ---------------------------------------------------------

  Deno.test(`a task in any stream read is reading its conn (${kind})`, async () => {
    using pair = await connect();
    const stream = new Stream(pair.server, { bufferSize: 16 });
    const scheduler = new Scheduler();
    const reads: [string, () => Operation<unknown>][] = [
      ["readLine", () => stream.readLine()],
      ["readUntil", () => stream.readUntil("--")],
      ["readExactly", () => stream.readExactly(4)],
      ["readExactly beyond the buffer", () => stream.readExactly(100)],
      ["read", () => stream.read(new Uint8Array(8))],
    ];
    const task = scheduler.spawn(
      function* () {
        for (const [, read] of reads) yield* read();
      }(),
      { name: "reader" },
    );
    const done = scheduler.run();
    const replies = ["x\n", "x--", "xxxx", "x".repeat(100), "x"];
    for (const [i, [name]] of reads.entries()) {
      await until(() => scheduler.readWaiting.get(pair.server) === task, `${name} waits`);
      const [info] = scheduler.tasks();
      assert.equal(info.state, "reading", name);
      assert.equal(info.waitingOn, pair.server, name);
      await pair.client.write(encode(replies[i]));
    }
    await done;
  });

  Deno.test(`a second task reading the stream gets a BusyError (${kind})`, async () => {
    using pair = await connect();
    const stream = new Stream(pair.server);
    const scheduler = new Scheduler();
    const first = scheduler.spawn(stream.readLine());
    const second = scheduler.spawn(caught(stream.readLine()));
    const done = scheduler.run();
    const error = await second.result;
    assert.ok(error instanceof BusyError);
    assert.equal(
      error.message,
      "Cannot read a line: the stream is already being read by another task",
    );
    await pair.client.write(encode("mine\n"));
    await done;
    assert.equal(await first.result, "mine");
  });

  Deno.test(`bytes survive a timed-out readLine, for the next one (${kind})`, async () => {
    using pair = await connect();
    const { scheduler, clock } = createTestScheduler();
    const stream = new Stream(pair.server, { bufferSize: 32 });
    const task = scheduler.spawn(function* () {
      const outcomes: unknown[] = [yield* stream.readLine()];
      for (let i = 0; i < 2; i++) {
        const line = yield* caught(timeout(1_000, stream.readLine()));
        outcomes.push(line instanceof TimeoutError ? "timed out" : line);
      }
      outcomes.push(...(yield* lines(stream)));
      return outcomes;
    }());
    const done = scheduler.run();
    const reading = () => scheduler.readWaiting.has(pair.server);
    await until(reading, "the first read");
    // A whole line and the start of the next, which the first readLine leaves buffered.
    await pair.client.write(encode("first\npar"));
    await pause(20);
    await until(reading, "the second read");
    await clock.advance(1_000);
    await until(reading, "the third read");
    await pair.client.write(encode("t"));
    await pause(20);
    await clock.advance(1_000);
    await until(reading, "the last reads");
    // Past the 32-byte buffer, so that the next reads must move and grow what is kept.
    await pair.client.write(encode(`ial\n${"y".repeat(40)}\nlast\n`));
    await pair.client.closeWrite();
    await done;
    assert.deepEqual(await task.result, [
      "first",
      "timed out",
      "timed out",
      "partial",
      "y".repeat(40),
      "last",
    ]);
  });

  Deno.test(`bytes that reach a cancelled readLine go to the next reader (${kind})`, async () => {
    using pair = await connect();
    const stream = new Stream(pair.server);
    const scheduler = new Scheduler();
    const main = scheduler.spawn(function* () {
      const reader = yield* spawn(stream.readLine());
      yield* sleep(10);
      yield* cancel(reader);
      assert.equal(reader.state, "cancelled");
      // The conn's read is still in flight: what it brings belongs to the stream.
      yield* wait(pair.client.write(encode("ab")));
      yield* sleep(10);
      return yield* lines(stream);
    }());
    const done = scheduler.run();
    await until(() => main.state === "reading", "the next reader waits");
    await pair.client.write(encode("c\nd"));
    await pair.client.closeWrite();
    await done;
    assert.deepEqual(await main.result, ["abc", "d"]);
  });

  Deno.test(`a readExactly beyond the buffer keeps its bytes when timed out (${kind})`, async () => {
    using pair = await connect();
    const { scheduler, clock } = createTestScheduler();
    const stream = new Stream(pair.server, { bufferSize: 16 });
    const task = scheduler.spawn(function* () {
      const error = yield* caught(timeout(1_000, stream.readExactly(100)));
      assert.ok(error instanceof TimeoutError);
      return decode(yield* stream.readExactly(100));
    }());
    const done = scheduler.run();
    const payload = "0123456789".repeat(10);
    await until(() => scheduler.readWaiting.has(pair.server), "the read");
    await pair.client.write(encode(payload.slice(0, 30)));
    await pause(20);
    await clock.advance(1_000);
    await until(() => task.state === "reading", "the second read");
    await pair.client.write(encode(payload.slice(30)));
    await pair.client.closeWrite();
    await done;
    assert.equal(await task.result, payload);
  });

  // --- the line limit ----------------------------------------------------------------

  Deno.test(`a line at the limit is read, one byte more is LineTooLong (${kind})`, async () => {
    using pair = await connect();
    const stream = new Stream(pair.server, { maxLineBytes: 50, bufferSize: 16 });
    const atLimit = "a".repeat(50);
    const result = await serve(
      pair,
      [`${atLimit}\n${atLimit}\r\n${atLimit}b\nmore\n`],
      function* () {
        const found = [yield* stream.readLine(), yield* stream.readLine()];
        return [...found, yield* caught(stream.readLine())];
      }(),
    );
    assert.deepEqual(result.slice(0, 2), [atLimit, atLimit]);
    assert.deepEqual(
      result[2],
      new LineTooLong("Cannot read a line: it is longer than 50 bytes", 50),
    );
    assert.equal((result[2] as LineTooLong).maxLineBytes, 50);
  });

  Deno.test(`a record over the limit is LineTooLong in readUntil too (${kind})`, async () => {
    using pair = await connect();
    const stream = new Stream(pair.server, { maxLineBytes: 4 });
    const result = await serve(
      pair,
      ["abcd--abcde--"],
      function* () {
        return [decode((yield* stream.readUntil("--"))!), yield* caught(stream.readUntil("--"))];
      }(),
    );
    assert.equal(result[0], "abcd");
    assert.ok(result[1] instanceof LineTooLong);
    assert.equal(result[1].message, "Cannot read a record: it is longer than 4 bytes");
  });
}

Deno.test("a 1 MiB line is refused after at most maxLineBytes plus one read", async () => {
  using pair = memoryPair();
  const maxLineBytes = 4096;
  const bufferSize = 1024;
  const stream = new Stream(pair.server, { maxLineBytes, bufferSize });
  const line = new Uint8Array(2 ** 20 + 1).fill(97);
  line[2 ** 20] = 10;
  await pair.client.write(line); // an unbounded memory conn takes it all at once
  await pair.client.closeWrite();
  const scheduler = new Scheduler();
  const task = scheduler.spawn(function* () {
    const tooLong = yield* caught(stream.readLine());
    // Given up: every read refuses, and none touches the conn.
    const again = [
      yield* caught(stream.readLine()),
      yield* caught(stream.readUntil("\n")),
      yield* caught(stream.readExactly(1)),
      yield* caught(stream.read(new Uint8Array(1))),
    ];
    yield* stream.writeLine("ERR line too long"); // the conn is still open
    return { tooLong, again };
  }());
  await scheduler.run();
  const { tooLong, again } = await task.result;
  assert.ok(tooLong instanceof LineTooLong);
  for (const error of again) {
    assert.ok(error instanceof LineTooLong);
    assert.match(error.message, /the stream gave up after a line longer than 4096 bytes$/);
  }
  assert.equal(await readText(pair.client, 18), "ERR line too long\n");
  // What the stream did not take is still in the conn.
  let left = 0;
  const buffer = new Uint8Array(65536);
  for (let n; (n = await pair.server.read(buffer)) !== null;) left += n;
  const taken = line.length - left;
  assert.ok(taken > maxLineBytes + 1, `took ${taken} bytes`);
  assert.ok(taken <= maxLineBytes + 1 + bufferSize, `took ${taken} bytes`);
});

Deno.test("long lines on many conns at once keep memory bounded", async () => {
  // 50 conns, each sent an 8 MiB line a chunk at a time, all at once: 400 MiB would be
  // buffered if the streams kept whole lines (with buffers grown by doubling, over 1 GiB
  // measured), some 50 × 80 KiB if they keep to their limit.
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--v8-flags=--expose-gc",
      new URL("./scripts/long_lines.ts", import.meta.url).href,
    ],
  }).output();
  assert.equal(code, 0, decode(stderr));
  const { refused, grewMiB } = JSON.parse(decode(stdout));
  assert.equal(refused, 50);
  assert.ok(grewMiB < 48, `RSS grew by ${grewMiB} MiB`);
});

// --- writes ------------------------------------------------------------------------------

Deno.test("writeLine() and write() encode text of any length", async () => {
  using pair = memoryPair();
  const stream = new Stream(pair.server);
  const texts = ["", "é".repeat(2047), "é".repeat(2048), "x".repeat(5000), "✓".repeat(1500)];
  const scheduler = new Scheduler();
  const task = scheduler.spawn(function* () {
    const counts = [];
    for (const text of texts) {
      counts.push(yield* stream.writeLine(text), yield* stream.write(text));
    }
    return counts;
  }());
  await scheduler.run();
  const lengths = texts.map((text) => encode(text).length);
  assert.deepEqual(await task.result, lengths.flatMap((n) => [n + 1, n]));
  const total = lengths.reduce((sum, n) => sum + 2 * n + 1, 0);
  assert.equal(
    await readText(pair.client, total),
    texts.map((text) => `${text}\n${text}`).join(""),
  );
});

Deno.test("a write abandoned by a timeout keeps its bytes apart from the next", async () => {
  using pair = memoryPair(10); // the client reads nothing yet: writes wait for room
  const { scheduler, clock } = createTestScheduler();
  const stream = new Stream(pair.server);
  const task = scheduler.spawn(function* () {
    try {
      const error = yield* caught(timeout(1_000, stream.writeLine("a".repeat(100))));
      assert.ok(error instanceof TimeoutError);
      yield* stream.writeLine("b".repeat(100));
      yield* stream.write("c".repeat(100));
    } finally {
      stream.close();
    }
  }());
  const done = scheduler.run();
  await until(() => task.state === "writing", "the first write waits");
  await clock.advance(1_000);
  await until(() => task.state === "writing", "the second write waits");
  const buffer = new Uint8Array(64);
  let text = "";
  for (let i = 0, n; i < 1000 && (n = await pair.client.read(buffer)) !== null; i++) {
    text += decode(buffer.subarray(0, n));
  }
  await done;
  // The Deno call of the abandoned write still went out, with its own bytes; the rest of
  // that write did not (see write()).
  assert.match(text, /^a{10,100}b{100}\nc{100}$/);
});

Deno.test("a second task writing the stream meanwhile gets a BusyError", async () => {
  using pair = memoryPair(10);
  const stream = new Stream(pair.server);
  const scheduler = new Scheduler();
  const first = scheduler.spawn(stream.writeLine("a".repeat(100)));
  const second = scheduler.spawn(caught(stream.writeLine("b".repeat(100))));
  const done = scheduler.run();
  assert.ok(await second.result instanceof BusyError);
  assert.equal(await readText(pair.client, 101), `${"a".repeat(100)}\n`);
  await done;
  assert.equal(await first.result, 101);
});

// --- a protocol built on readExactly ------------------------------------------------------

// Frames: a 4-byte big-endian length, then that many bytes.
function* readFrame(stream: Stream): Operation<Uint8Array | null> {
  const header = yield* caught(stream.readExactly(4));
  if (header instanceof UnexpectedEof && header.partial.length === 0) return null;
  if (header instanceof Error) throw header;
  const length = new DataView(header.buffer).getUint32(0);
  if (length > 1 << 20) throw new RangeError(`Cannot read a frame of ${length} bytes`);
  return yield* stream.readExactly(length);
}

function frame(payload: Uint8Array): Uint8Array {
  const bytes = new Uint8Array(4 + payload.length);
  new DataView(bytes.buffer).setUint32(0, payload.length);
  bytes.set(payload, 4);
  return bytes;
}

// Answers each frame with a frame holding its reversed payload.
function* reverser(conn: Deno.Conn): Operation<number> {
  const stream = new Stream(conn, { bufferSize: 256 });
  let frames = 0;
  try {
    for (let payload; (payload = yield* readFrame(stream)) !== null; frames++) {
      yield* stream.write(frame(payload.reverse()));
    }
    return frames;
  } finally {
    stream.close();
  }
}

const PAYLOADS: readonly Uint8Array[] = [0, 1, 5, 255, 256, 3000, 70_000].map((size) =>
  Uint8Array.from({ length: size }, (_, i) => (i * 7 + size) % 256)
);

function* frameClient(conn: Deno.Conn): Operation<Uint8Array[]> {
  const stream = new Stream(conn);
  const replies: Uint8Array[] = [];
  try {
    for (const payload of PAYLOADS) {
      // The header and the payload in two writes, and a large payload in several reads.
      const bytes = frame(payload);
      yield* stream.write(bytes.subarray(0, 3));
      yield* stream.write(bytes.subarray(3));
      replies.push((yield* readFrame(stream))!);
    }
    return replies;
  } finally {
    stream.close();
  }
}

Deno.test("a length-prefixed protocol over TCP: a server task and a client task", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const scheduler = new Scheduler();
  const server = scheduler.spawn(function* () {
    try {
      return yield* reverser(yield* accept(listener));
    } finally {
      listener.close();
    }
  }());
  const client = scheduler.spawn(function* () {
    const conn = yield* wait(Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port }));
    return yield* frameClient(conn);
  }());
  await scheduler.run();
  assert.deepEqual(await client.result, PAYLOADS.map((payload) => payload.slice().reverse()));
  assert.equal(await server.result, PAYLOADS.length);
});

Deno.test("a length-prefixed protocol over a memory conn with little room", async () => {
  using pair = memoryPair(100);
  const scheduler = new Scheduler();
  const server = scheduler.spawn(reverser(pair.server));
  const client = scheduler.spawn(frameClient(pair.client));
  await scheduler.run();
  assert.deepEqual(await client.result, PAYLOADS.map((payload) => payload.slice().reverse()));
  assert.equal(await server.result, PAYLOADS.length);
});
