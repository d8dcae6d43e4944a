import assert from "node:assert/strict";
import {
  idleTimeout,
  type Operation,
  read,
  Scheduler,
  sleep,
  timeout,
  TimeoutError,
  wait,
  write,
} from "../mod.ts";
import { echoHandler } from "../echo.ts";
import { createTestScheduler, type MemoryConn, memoryConnPair, VirtualClock } from "../testing.ts";
import { decode, encode, readExactly, readToEnd } from "./_net.ts";

// Settles now, or never: whether a promise is already settled once pending microtasks ran.
async function settled(promise: Promise<unknown>): Promise<boolean> {
  let done = false;
  promise.then(() => done = true, () => done = true);
  for (let i = 0; i < 10; i++) await Promise.resolve();
  return done;
}

function* echo(conn: Deno.Conn, buffer = new Uint8Array(1024)): Operation<number> {
  let total = 0;
  try {
    let n: number | null;
    while ((n = yield* read(conn, buffer)) !== null) {
      total += yield* write(conn, buffer.subarray(0, n));
    }
    return total;
  } finally {
    conn.close();
  }
}

// --- memoryConnPair ------------------------------------------------------------------------

Deno.test("memoryConnPair() delivers what one end writes to the other, in order, both ways", async () => {
  const [client, server] = memoryConnPair();
  await client.write(encode("one "));
  await client.write(encode("two"));
  await server.write(encode("back"));
  assert.equal(await readExactly(server, 7), "one two");
  assert.equal(await readExactly(client, 4), "back");
  client.close();
  server.close();
});

Deno.test("a MemoryConn is a Deno.Conn and a Deno.TcpConn", () => {
  const [client, server] = memoryConnPair();
  const conns: Deno.TcpConn[] = [client, server];
  const conn: Deno.Conn = conns[0];
  assert.equal(typeof conn.closeWrite, "function");
  client.close();
  server.close();
});

Deno.test("write() copies its bytes, so the writer may reuse its buffer once it resolves", async () => {
  const [client, server] = memoryConnPair();
  const buffer = encode("first");
  await client.write(buffer);
  buffer.set(encode("XXXXX"));
  assert.equal(await readExactly(server, 5), "first");
  client.close();
  server.close();
});

Deno.test("read() takes at most its buffer's length and leaves the rest for the next read", async () => {
  const [client, server] = memoryConnPair();
  await client.write(encode("abcdef"));
  const small = new Uint8Array(4);
  assert.equal(await server.read(small), 4);
  assert.equal(decode(small), "abcd");
  assert.equal(await server.read(small), 2);
  assert.equal(decode(small.subarray(0, 2)), "ef");
  client.close();
  server.close();
});

Deno.test("zero-length reads and writes resolve with 0", async () => {
  const [client, server] = memoryConnPair();
  assert.equal(await client.write(new Uint8Array(0)), 0);
  assert.equal(await server.read(new Uint8Array(0)), 0);
  client.close();
  server.close();
});

Deno.test("reads and writes that wait are served first come, first served", async () => {
  const [client, server] = memoryConnPair({ capacity: 2 });
  const first = server.read(new Uint8Array(3));
  const second = server.read(new Uint8Array(3));
  assert.equal(await client.write(encode("abcdefgh")), 8);
  assert.equal(await first, 3);
  assert.equal(await second, 3);
  const a = client.write(encode("xy"));
  const b = client.write(encode("z"));
  assert.equal(await settled(a), false);
  const rest = new Uint8Array(8);
  assert.equal(await server.read(rest), 2);
  assert.equal(decode(rest.subarray(0, 2)), "gh");
  assert.equal(await a, 2);
  assert.equal(await settled(b), false);
  assert.equal(await readExactly(server, 2), "xy");
  assert.equal(await b, 1);
  client.close();
  assert.equal(await readToEnd(server), "z");
  server.close();
});

Deno.test("closeWrite() gives the peer EOF after the buffered bytes; the reverse direction stays open", async () => {
  const [client, server] = memoryConnPair();
  await client.write(encode("last words"));
  await client.closeWrite();
  await client.closeWrite();
  assert.equal(await readToEnd(server), "last words");
  assert.equal(await server.read(new Uint8Array(8)), null);
  await server.write(encode("reply"));
  assert.equal(await readExactly(client, 5), "reply");
  await assert.rejects(client.write(encode("more")), Deno.errors.BrokenPipe);
  client.close();
  server.close();
});

Deno.test("closeWrite() wakes a peer's waiting read with EOF", async () => {
  const [client, server] = memoryConnPair();
  const reading = server.read(new Uint8Array(8));
  await client.closeWrite();
  assert.equal(await reading, null);
  client.close();
  server.close();
});

Deno.test("close() interrupts this end's waits; later calls fail with BadResource, as in Deno", async () => {
  const [client, server] = memoryConnPair({ capacity: 0 });
  const reading = client.read(new Uint8Array(8));
  const writing = client.write(encode("stuck"));
  client.close();
  await assert.rejects(reading, Deno.errors.Interrupted);
  await assert.rejects(writing, Deno.errors.Interrupted);
  await assert.rejects(client.read(new Uint8Array(8)), Deno.errors.BadResource);
  await assert.rejects(client.write(encode("x")), Deno.errors.BadResource);
  await assert.rejects(client.closeWrite(), Deno.errors.BadResource);
  assert.throws(() => client.close(), Deno.errors.BadResource);
  assert.throws(() => client.reset(), Deno.errors.BadResource);
  assert.equal(client.closed, true);
  server.close();
});

Deno.test("close() lets the peer read what was buffered, then EOF; its writes fail with BrokenPipe", async () => {
  const [client, server] = memoryConnPair({ capacity: 4 });
  await server.write(encode("abcd"));
  const blocked = server.write(encode("efgh"));
  await client.write(encode("bye"));
  client.close();
  await assert.rejects(blocked, Deno.errors.BrokenPipe);
  await assert.rejects(server.write(encode("x")), Deno.errors.BrokenPipe);
  assert.equal(await readToEnd(server), "bye");
  server.close();
});

Deno.test("with a capacity, write() takes what fits and waits for the reader to make room", async () => {
  const [client, server] = memoryConnPair({ capacity: 4 });
  assert.equal(await client.write(encode("0123456789")), 4);
  const waiting = client.write(encode("456789"));
  assert.equal(await settled(waiting), false);
  assert.equal(await readExactly(server, 3), "012");
  assert.equal(await waiting, 3);
  assert.equal(await readExactly(server, 4), "3456");
  client.close();
  server.close();
});

Deno.test("capacity 0 hands bytes only to a read that is waiting", async () => {
  const [client, server] = memoryConnPair({ capacity: 0 });
  const writing = client.write(encode("hello"));
  assert.equal(await settled(writing), false);
  const buffer = new Uint8Array(2);
  assert.equal(await server.read(buffer), 2);
  assert.equal(await writing, 2);
  assert.equal(decode(buffer), "he");
  const reading = server.read(new Uint8Array(8));
  assert.equal(await client.write(encode("llo")), 3);
  assert.equal(await reading, 3);
  client.close();
  server.close();
});

Deno.test("memoryConnPair() refuses a capacity that is not a whole number of bytes", () => {
  assert.throws(() => memoryConnPair({ capacity: -1 }), RangeError);
  assert.throws(() => memoryConnPair({ capacity: NaN }), RangeError);
  assert.throws(() => memoryConnPair({ capacity: 2.5 }), RangeError);
});

Deno.test("reset() fails the peer's waiting and later reads and writes with ConnectionReset", async () => {
  const [client, server] = memoryConnPair({ capacity: 0 });
  const reading = server.read(new Uint8Array(8));
  const writing = server.write(encode("unread"));
  client.reset();
  await assert.rejects(reading, Deno.errors.ConnectionReset);
  await assert.rejects(writing, Deno.errors.ConnectionReset);
  await assert.rejects(server.read(new Uint8Array(8)), Deno.errors.ConnectionReset);
  await assert.rejects(server.write(encode("x")), Deno.errors.ConnectionReset);
  assert.equal(client.closed, true);
  assert.equal(server.closed, false);
  server.close();
});

Deno.test("reset() interrupts this end's own waiting read", async () => {
  const [client, server] = memoryConnPair();
  const reading = client.read(new Uint8Array(8));
  client.reset();
  await assert.rejects(reading, Deno.errors.Interrupted);
  server.close();
});

Deno.test("reset() drops bytes still buffered towards the peer", async () => {
  const [client, server] = memoryConnPair();
  await client.write(encode("unread"));
  client.reset();
  await assert.rejects(server.read(new Uint8Array(8)), Deno.errors.ConnectionReset);
  server.close();
});

Deno.test("readable and writable carry the same bytes; reaching readable's end closes the conn", async () => {
  const [client, server] = memoryConnPair({ capacity: 3 });
  const writer = client.writable.getWriter();
  const sending = (async () => {
    await writer.write(encode("streamed "));
    await writer.write(encode("bytes"));
    await writer.close();
  })();
  const chunks: string[] = [];
  for await (const chunk of server.readable) chunks.push(decode(chunk));
  await sending;
  assert.equal(chunks.join(""), "streamed bytes");
  assert.equal(client.closed, true);
  assert.equal(server.closed, true);
});

Deno.test("cancelling readable closes the conn and ends its waiting read", async () => {
  const [client, server] = memoryConnPair();
  const reader = server.readable.getReader();
  const pending = reader.read();
  await reader.cancel();
  assert.deepEqual(await pending, { value: undefined, done: true });
  assert.equal(server.closed, true);
  await assert.rejects(client.write(encode("x")), Deno.errors.BrokenPipe);
  client.close();
});

Deno.test("readable errors with ConnectionReset when the peer resets", async () => {
  const [client, server] = memoryConnPair();
  const reader = server.readable.getReader();
  const pending = reader.read();
  client.reset();
  await assert.rejects(pending, Deno.errors.ConnectionReset);
  assert.equal(server.closed, true);
});

Deno.test("addresses default to loopback, mirror across the pair, and can be chosen", () => {
  const [client, server] = memoryConnPair();
  assert.deepEqual(client.localAddr, server.remoteAddr);
  assert.deepEqual(client.remoteAddr, server.localAddr);
  assert.equal(client.localAddr.hostname, "127.0.0.1");
  assert.equal(client.remoteAddr.transport, "tcp");
  assert.notEqual(client.localAddr.port, client.remoteAddr.port);
  const localAddr: Deno.NetAddr = { transport: "tcp", hostname: "10.0.0.7", port: 40000 };
  const remoteAddr: Deno.NetAddr = { transport: "tcp", hostname: "10.0.0.1", port: 25000 };
  const [a, b] = memoryConnPair({ localAddr, remoteAddr });
  assert.deepEqual(a.localAddr, localAddr);
  assert.deepEqual(b.localAddr, remoteAddr);
  assert.deepEqual(b.remoteAddr, localAddr);
  for (const conn of [client, server, a, b]) conn.close();
});

Deno.test("ref(), unref() and the socket options do nothing; Symbol.dispose closes once", async () => {
  const [client, server] = memoryConnPair();
  client.ref();
  client.unref();
  client.setNoDelay(true);
  client.setKeepAlive(true);
  {
    using conn = server;
    assert.equal(conn.closed, false);
  }
  assert.equal(server.closed, true);
  server[Symbol.dispose]();
  assert.equal(await client.read(new Uint8Array(1)), null);
  client.close();
});

// --- handlers on memory conns ----------------------------------------------------------------

Deno.test("an echo handler runs unchanged on a memory conn and ends at the client's closeWrite()", async () => {
  const [client, server] = memoryConnPair();
  const scheduler = new Scheduler();
  const handler = scheduler.spawn(echo(server));
  const done = scheduler.run();
  await client.write(encode("ping"));
  assert.equal(await readExactly(client, 4), "ping");
  await client.write(encode("pong"));
  assert.equal(await readExactly(client, 4), "pong");
  await client.closeWrite();
  await done;
  assert.equal(await handler.result, 8);
  assert.equal(server.closed, true);
  assert.equal(await client.read(new Uint8Array(1)), null);
  client.close();
});

Deno.test("a reset by the client reaches the handler as ConnectionReset at its read", async () => {
  const [client, server] = memoryConnPair();
  const scheduler = new Scheduler();
  const handler = scheduler.spawn(function* () {
    try {
      return yield* echo(server);
    } catch (error) {
      return (error as Error).name;
    }
  }());
  const done = scheduler.run();
  await client.write(encode("hi"));
  assert.equal(await readExactly(client, 2), "hi");
  client.reset();
  await done;
  assert.equal(await handler.result, "ConnectionReset");
  assert.equal(server.closed, true);
});

Deno.test("backpressure: a handler writing to a slow reader waits, and every byte arrives in order", async () => {
  const [client, server] = memoryConnPair({ capacity: 16 });
  const payload = new Uint8Array(1000).map((_, i) => i % 251);
  const log: string[] = [];
  const scheduler = new Scheduler();
  const handler = scheduler.spawn(function* () {
    try {
      const n = yield* write(server, payload);
      log.push("written");
      return n;
    } finally {
      server.close();
    }
  }());
  const done = scheduler.run();
  await settled(handler.result);
  assert.equal(handler.state, "writing");
  const received = new Uint8Array(1000);
  let got = 0;
  for (let n; got < 960 && (n = await client.read(received.subarray(got, got + 10))) !== null;) {
    got += n;
    assert.deepEqual(log, []);
  }
  while (got < 1000) got += (await client.read(received.subarray(got)))!;
  assert.equal(await client.read(new Uint8Array(1)), null);
  await done;
  assert.deepEqual(log, ["written"]);
  assert.equal(await handler.result, 1000);
  assert.deepEqual(received, payload);
  client.close();
});

Deno.test("server.ts's echoHandler answers, then closes after its idle limit in virtual time", async () => {
  const errors: unknown[] = [];
  const { scheduler, clock } = createTestScheduler({
    autojump: true,
    onError: (error) => errors.push(error),
  });
  const [client, server] = memoryConnPair();
  scheduler.spawn(echoHandler(server, { idleTimeout: 300_000 }));
  const done = scheduler.run();
  await client.write(encode("hello"));
  assert.equal(await readExactly(client, 9), "GOT:hello");
  const started = performance.now();
  assert.equal(await client.read(new Uint8Array(8)), null);
  await done;
  assert.ok(performance.now() - started < 2_000);
  assert.equal(clock.now(), 300_000);
  assert.equal(errors.length, 1);
  assert.ok(errors[0] instanceof TimeoutError);
  assert.ok(server.closed);
  client.close();
});

// --- VirtualClock ------------------------------------------------------------------------------

Deno.test("VirtualClock stands still until advanced, and fires due timers by deadline, then by set order", async () => {
  const clock = new VirtualClock({ start: 1_000 });
  const fired: string[] = [];
  clock.setTimer(() => fired.push(`b@${clock.now()}`), 20);
  clock.setTimer(() => fired.push(`a@${clock.now()}`), 10);
  clock.setTimer(() => fired.push(`c@${clock.now()}`), 20);
  clock.setTimer(() => fired.push(`late@${clock.now()}`), 100);
  assert.equal(clock.now(), 1_000);
  assert.equal(clock.pendingTimers, 4);
  assert.equal(clock.nextTimerAt, 1_010);
  await clock.advance(50);
  assert.deepEqual(fired, ["a@1010", "b@1020", "c@1020"]);
  assert.equal(clock.now(), 1_050);
  assert.equal(clock.nextTimerAt, 1_100);
  await clock.advance(50);
  assert.deepEqual(fired.at(-1), "late@1100");
  assert.equal(clock.pendingTimers, 0);
  assert.equal(clock.nextTimerAt, null);
});

Deno.test("VirtualClock.clearTimer() cancels a timer and ignores handles it does not know", async () => {
  const clock = new VirtualClock();
  let fired = false;
  const handle = clock.setTimer(() => fired = true, 10);
  clock.clearTimer(handle);
  clock.clearTimer(handle);
  clock.clearTimer(42);
  await clock.advance(20);
  assert.equal(fired, false);
});

Deno.test("VirtualClock fires a timer set with a negative or NaN delay at the current time", async () => {
  const clock = new VirtualClock();
  const fired: number[] = [];
  clock.setTimer(() => fired.push(clock.now()), -5);
  clock.setTimer(() => fired.push(clock.now()), NaN);
  await clock.advance(0);
  assert.deepEqual(fired, [0, 0]);
});

Deno.test("VirtualClock.advance() fires timers that fired timers set, if they fall due in range", async () => {
  const clock = new VirtualClock();
  const fired: number[] = [];
  const tick = () => {
    fired.push(clock.now());
    clock.setTimer(tick, 30);
  };
  clock.setTimer(tick, 30);
  await clock.advance(100);
  assert.deepEqual(fired, [30, 60, 90]);
  assert.equal(clock.pendingTimers, 1);
});

Deno.test("VirtualClock.advance() refuses bad durations and overlapping calls", async () => {
  const clock = new VirtualClock();
  await assert.rejects(clock.advance(-1), RangeError);
  await assert.rejects(clock.advance(NaN), RangeError);
  await assert.rejects(clock.advance(Infinity), RangeError);
  clock.setTimer(() => {}, 1);
  const first = clock.advance(10);
  await assert.rejects(clock.advance(10), /already advancing/);
  await first;
  assert.equal(clock.now(), 10);
});

Deno.test("VirtualClock.advance() resolves after the tasks it woke have had their turn", async () => {
  const clock = new VirtualClock();
  const scheduler = new Scheduler({ clock });
  const [client, server] = memoryConnPair();
  const log: string[] = [];
  scheduler.spawn(function* () {
    yield* sleep(1_000);
    log.push(`woke at ${clock.now()}`);
    yield* write(server, encode("late reply"));
    yield* wait(Promise.resolve());
    log.push("wrote");
    server.close();
  }());
  const done = scheduler.run();
  await clock.advance(999);
  assert.deepEqual(log, []);
  await clock.advance(1);
  assert.deepEqual(log, ["woke at 1000", "wrote"]);
  await done;
  assert.equal(await readToEnd(client), "late reply");
  client.close();
});

Deno.test("the seed's countdowns with sleeps run in virtual time, in one fixed order", async () => {
  async function runOnce(): Promise<string[]> {
    const { scheduler, clock } = createTestScheduler({ autojump: true });
    const out: string[] = [];
    function* countdown(name: string, n: number, every: number): Operation<void> {
      for (; n > 0; n--) {
        out.push(`${clock.now()} ${name} T-minus ${n}`);
        yield* sleep(every);
      }
    }
    scheduler.spawn(countdown("a", 3, 1_000));
    scheduler.spawn(countdown("b", 4, 700));
    await scheduler.run();
    return out;
  }
  const expected = [
    "0 a T-minus 3",
    "0 b T-minus 4",
    "700 b T-minus 3",
    "1000 a T-minus 2",
    "1400 b T-minus 2",
    "2000 a T-minus 1",
    "2100 b T-minus 1",
  ];
  assert.deepEqual(await runOnce(), expected);
  assert.deepEqual(await runOnce(), expected);
});

// --- autojump ----------------------------------------------------------------------------------

Deno.test("autojump runs a 300-second idle timeout on a read in milliseconds", async () => {
  const { scheduler, clock } = createTestScheduler({ autojump: true });
  const [client, server] = memoryConnPair();
  const handler = scheduler.spawn(function* () {
    try {
      yield* timeout(300_000, read(server, new Uint8Array(8)));
      return "read";
    } catch (error) {
      if (error instanceof TimeoutError) return `timed out at ${clock.now()}`;
      throw error;
    } finally {
      server.close();
    }
  }());
  const started = performance.now();
  await scheduler.run();
  assert.ok(performance.now() - started < 1_000);
  assert.equal(await handler.result, "timed out at 300000");
  assert.equal(clock.pendingTimers, 0);
  assert.equal(await client.read(new Uint8Array(8)), null);
  client.close();
});

Deno.test("autojump with idleTimeout(): a steady client is never cut off, a silent one is", async () => {
  const { scheduler, clock } = createTestScheduler({ autojump: true });
  const [client, server] = memoryConnPair();
  const handler = scheduler.spawn(function* () {
    try {
      yield* idleTimeout(300_000, echo(server));
      return -1;
    } catch (error) {
      if (error instanceof TimeoutError) return clock.now();
      throw error;
    }
  }());
  const done = scheduler.run();
  for (const word of ["one", "two", "three"]) {
    await client.write(encode(word));
    assert.equal(await readExactly(client, word.length), word);
  }
  assert.equal(clock.now(), 0);
  await done;
  const idleAt = await handler.result;
  assert.ok(idleAt >= 300_000 && idleAt <= 337_500, `idle at ${idleAt}`);
  client.close();
});

Deno.test("autojump never jumps while a task is ready to run", async () => {
  const { scheduler, clock } = createTestScheduler({ autojump: true });
  const seen = new Set<number>();
  const log: string[] = [];
  scheduler.spawn(function* () {
    const until = performance.now() + 50;
    while (performance.now() < until) {
      seen.add(clock.now());
      yield;
    }
    log.push("busy done");
  }());
  scheduler.spawn(function* () {
    yield* sleep(1_000);
    log.push(`slept until ${clock.now()}`);
  }());
  await scheduler.run();
  assert.deepEqual([...seen], [0]);
  assert.deepEqual(log, ["busy done", "slept until 1000"]);
});

Deno.test("autojump leaves no timer behind when the run ends before a deadline", async () => {
  const { scheduler, clock } = createTestScheduler({ autojump: true });
  const [client, server] = memoryConnPair();
  scheduler.spawn(function* () {
    try {
      yield* timeout(300_000, read(server, new Uint8Array(8)));
    } finally {
      server.close();
    }
  }());
  const done = scheduler.run();
  await client.write(encode("x"));
  await done;
  assert.equal(clock.now(), 0);
  assert.equal(clock.pendingTimers, 0);
  client.close();
});

Deno.test("autojump(null) stops the jumps; advance() still moves time", async () => {
  const clock = new VirtualClock();
  const scheduler = new Scheduler({ clock });
  clock.autojump(scheduler);
  clock.autojump(null);
  const task = scheduler.spawn(function* () {
    yield* sleep(500);
    return clock.now();
  }());
  const done = scheduler.run();
  await new Promise((resolve) => setTimeout(resolve, 20));
  assert.equal(task.state, "sleeping");
  await clock.advance(500);
  await done;
  assert.equal(await task.result, 500);
});

Deno.test("createTestScheduler() passes onError to the scheduler and starts at the given time", async () => {
  const errors: unknown[] = [];
  const { scheduler, clock } = createTestScheduler({
    autojump: true,
    start: 5_000,
    onError: (error) => errors.push(error),
  });
  scheduler.spawn(function* (): Operation<void> {
    yield* sleep(100);
    throw new Error(`failed at ${clock.now()}`);
  }());
  await scheduler.run();
  assert.deepEqual(errors.map((error) => (error as Error).message), ["failed at 5100"]);
});

Deno.test("a handler's stalled write times out in virtual time when the client stops reading", async () => {
  const { scheduler, clock } = createTestScheduler({ autojump: true });
  const [client, server]: MemoryConn[] = memoryConnPair({ capacity: 64 });
  const handler = scheduler.spawn(function* () {
    try {
      yield* timeout(60_000, write(server, new Uint8Array(1_000)));
      return "written";
    } catch (error) {
      if (error instanceof TimeoutError) return `stalled at ${clock.now()}`;
      throw error;
    } finally {
      server.close();
    }
  }());
  await scheduler.run();
  assert.equal(await handler.result, "stalled at 60000");
  client.close();
});

Deno.test("a test whose run() can never finish gets the test scheduler's list of who waits on what", async () => {
  const script = new URL("./scripts/stalled_run.ts", import.meta.url).pathname;
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["test", "--no-check", script],
    env: { NO_COLOR: "1" },
  }).output();
  // Deno's test runner passes a test's console output on through its own report.
  const text = new TextDecoder().decode(stdout) + new TextDecoder().decode(stderr);
  assert.notEqual(code, 0);
  assert.match(text, /genio: the test ended with scheduler\.run\(\) still pending/);
  assert.match(text, /#1 "forgotten" reading conn 127\.0\.0\.1:\d+/);
});
