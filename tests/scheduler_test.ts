import assert from "node:assert/strict";
import {
  accept,
  BusyError,
  cancel,
  Cancelled,
  idleTimeout,
  type Intent,
  join,
  type Operation,
  read,
  Scheduler,
  sleep,
  spawn,
  type Task,
  timeout,
  TimeoutError,
  wait,
  write,
} from "../mod.ts";
import { createTestScheduler, memoryConnPair } from "../testing.ts";
import { quietScheduler } from "./_schedulers.ts";
import { decode, encode, loopback, readExactly as readText, until } from "./_net.ts";

// --- the seed ------------------------------------------------------------------------------

Deno.test("countdown and countup interleave in the seed's round-robin order", async () => {
  const out: string[] = [];
  function* countdown(n: number): Operation<void> {
    while (n > 0) {
      out.push(`T-minus ${n}`);
      yield;
      n -= 1;
    }
  }
  function* countup(stop: number): Operation<void> {
    let x = 0;
    while (x < stop) {
      out.push(`Up we go ${x}`);
      yield;
      x += 1;
    }
  }
  const scheduler = new Scheduler();
  scheduler.spawn(countdown(10));
  scheduler.spawn(countdown(5));
  scheduler.spawn(countup(20));
  await scheduler.run();

  assert.deepEqual(out.slice(0, 7), [
    "T-minus 10",
    "T-minus 5",
    "Up we go 0",
    "T-minus 9",
    "T-minus 4",
    "Up we go 1",
    "T-minus 8",
  ]);
  // The seed's deque: rounds of every live task, until each runs out.
  const expected: string[] = [];
  for (let round = 0; round < 20; round++) {
    if (round < 10) expected.push(`T-minus ${10 - round}`);
    if (round < 5) expected.push(`T-minus ${5 - round}`);
    expected.push(`Up we go ${round}`);
  }
  assert.deepEqual(out, expected);
});

Deno.test("10,000 tasks take turns round-robin and all finish", async () => {
  const scheduler = new Scheduler();
  const turns: number[] = [];
  function* worker(id: number): Operation<number> {
    for (let i = 0; i < 5; i++) {
      turns.push(id);
      yield;
    }
    return id;
  }
  const tasks = Array.from({ length: 10_000 }, (_, id) => scheduler.spawn(worker(id)));
  await scheduler.run();
  assert.equal(turns.length, 50_000);
  for (let i = 0; i < turns.length; i++) assert.equal(turns[i], i % 10_000);
  assert.equal(await tasks[9_999].result, 9_999);
  assert.deepEqual(scheduler.tasks(), []);
});

// --- run() -----------------------------------------------------------------------------------

Deno.test("run() with nothing to do resolves at once, and a scheduler runs again", async () => {
  const scheduler = new Scheduler();
  await scheduler.run();
  const first = scheduler.spawn(function* () {
    yield* sleep(1);
    return 1;
  }());
  await scheduler.run();
  assert.equal(await first.result, 1);
  const second = scheduler.spawn(function* () {
    yield;
    return 2;
  }());
  await scheduler.run();
  assert.equal(await second.result, 2);
  assert.equal(second.id, 2);
});

Deno.test("run() called twice while running returns the same promise", async () => {
  const scheduler = new Scheduler();
  scheduler.spawn(sleep(1));
  const a = scheduler.run();
  const b = scheduler.run();
  assert.equal(a, b);
  await a;
});

// --- I/O over real loopback conns ----------------------------------------------------------

Deno.test("read, write and accept work over real loopback conns", async () => {
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const scheduler = new Scheduler();
  function* echoOnce(): Operation<string> {
    const conn = yield* accept(listener);
    try {
      const buffer = new Uint8Array(64);
      const n = yield* read(conn, buffer);
      assert.notEqual(n, null);
      const reply = encode(`GOT:${decode(buffer.subarray(0, n!))}`);
      assert.equal(yield* write(conn, reply), reply.length);
      assert.equal(yield* read(conn, buffer), null);
      return "closed by client";
    } finally {
      conn.close();
    }
  }
  const task = scheduler.spawn(echoOnce());
  const running = scheduler.run();
  using client = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
  await client.write(encode("hello"));
  assert.equal(await readText(client, 9), "GOT:hello");
  await client.closeWrite();
  await running;
  assert.equal(await task.result, "closed by client");
});

Deno.test("write() sends all of a large buffer, continuing partial writes", async () => {
  using pair = await loopback();
  const scheduler = new Scheduler();
  const data = new Uint8Array(8 * 1024 * 1024).map((_, i) => i % 251);
  const task = scheduler.spawn(write(pair.server, data));
  const running = scheduler.run();
  const received = new Uint8Array(data.length);
  let got = 0;
  while (got < data.length) got += (await pair.client.read(received.subarray(got)))!;
  await running;
  assert.equal(await task.result, data.length);
  assert.deepEqual(received, data);
});

Deno.test("the wait maps show who waits on what, and are empty afterwards", async () => {
  using pair = await loopback();
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const scheduler = new Scheduler();
  const reader = scheduler.spawn(read(pair.server, new Uint8Array(8)), { name: "reader" });
  const acceptor = scheduler.spawn(accept(listener), { name: "acceptor" });
  const sleeper = scheduler.spawn(sleep(20), { name: "sleeper" });
  assert.deepEqual(scheduler.ready.map((task) => task.name), ["reader", "acceptor", "sleeper"]);
  const running = scheduler.run();

  assert.equal(scheduler.readWaiting.get(pair.server), reader);
  assert.equal(scheduler.acceptWaiting.get(listener), acceptor);
  assert.ok(scheduler.sleeping.has(sleeper));
  assert.deepEqual(
    scheduler.tasks().map(({ name, state, waitingOn }) => ({ name, state, waitingOn })),
    [
      { name: "reader", state: "reading", waitingOn: pair.server },
      { name: "acceptor", state: "accepting", waitingOn: listener },
      { name: "sleeper", state: "sleeping", waitingOn: scheduler.sleeping.get(sleeper) },
    ],
  );

  await pair.client.write(encode("x"));
  using client = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
  await running;
  (await acceptor.result).close();
  assert.equal(await reader.result, 1);
  assert.equal(scheduler.readWaiting.size + scheduler.acceptWaiting.size, 0);
  assert.equal(scheduler.sleeping.size, 0);
  assert.deepEqual(scheduler.tasks(), []);
  client.close();
});

// --- one waiter per resource ---------------------------------------------------------------

Deno.test("a second reader of a conn gets BusyError at its yield; the first is untouched", async () => {
  using pair = await loopback();
  const scheduler = new Scheduler();
  const first = scheduler.spawn(read(pair.server, new Uint8Array(8)), { name: "first" });
  const second = scheduler.spawn(function* () {
    try {
      yield* read(pair.server, new Uint8Array(8));
      return "read";
    } catch (error) {
      assert.ok(error instanceof BusyError);
      assert.equal(error.resource, pair.server);
      assert.match(error.message, /already being read by task "first"/);
      return "busy";
    }
  }());
  const running = scheduler.run();
  await pair.client.write(encode("abc"));
  await running;
  assert.equal(await second.result, "busy");
  assert.equal(await first.result, 3);
});

Deno.test("a second writer or acceptor gets BusyError too", async () => {
  using pair = await loopback();
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const scheduler = new Scheduler();
  const big = new Uint8Array(32 * 1024 * 1024); // more than the socket buffers hold
  const writer = scheduler.spawn(write(pair.server, big));
  const secondWriter = scheduler.spawn(write(pair.server, encode("x")));
  const acceptor = scheduler.spawn(accept(listener));
  const secondAcceptor = scheduler.spawn(accept(listener));
  const refused = [secondWriter, secondAcceptor].map((task) =>
    assert.rejects(task.result, BusyError)
  );
  const running = scheduler.run();
  await Promise.all(refused);
  using client = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
  let got = 0;
  const buffer = new Uint8Array(64 * 1024);
  while (got < big.length) got += (await pair.client.read(buffer))!;
  await running;
  assert.equal(await writer.result, big.length);
  (await acceptor.result).close();
  client.close();
});

// --- failures --------------------------------------------------------------------------------

Deno.test("a failing task fails alone: the others go on", async () => {
  const { scheduler, reported } = quietScheduler();
  const log: string[] = [];
  const failing = scheduler.spawn(
    function* () {
      yield;
      throw new Error("boom");
    }(),
    { name: "failing" },
  );
  const steady = scheduler.spawn(function* () {
    for (let i = 0; i < 3; i++) {
      log.push(`tick ${i}`);
      yield* sleep(1);
    }
    return "finished";
  }());
  await scheduler.run();
  assert.deepEqual(log, ["tick 0", "tick 1", "tick 2"]);
  assert.equal(await steady.result, "finished");
  assert.equal(failing.state, "failed");
  assert.equal(reported.length, 1);
  assert.equal((reported[0] as Error).message, "boom");
});

Deno.test("an unjoined failure is reported once through onError with the task", async () => {
  const seen: { error: unknown; task: Task<unknown> }[] = [];
  const scheduler = new Scheduler({ onError: (error, task) => seen.push({ error, task }) });
  const task = scheduler.spawn(
    function* (): Operation<void> {
      yield* sleep(1);
      throw new RangeError("bad");
    }(),
    { name: "worker" },
  );
  await scheduler.run();
  assert.equal(seen.length, 1);
  assert.equal(seen[0].task, task);
  assert.ok(seen[0].error instanceof RangeError);
});

Deno.test("the default onError prints the task name, then the stack, on stderr", async () => {
  const command = new Deno.Command(Deno.execPath(), {
    args: [
      "eval",
      `import { Scheduler } from "${new URL("../mod.ts", import.meta.url)}";
       const s = new Scheduler();
       s.spawn(function* () { yield; throw new Error("kaput"); }(), { name: "doomed" });
       await s.run();
       console.log("still running");`,
    ],
    stdout: "piped",
    stderr: "piped",
  });
  const { code, stdout, stderr } = await command.output();
  assert.equal(code, 0);
  assert.equal(decode(stdout), "still running\n");
  const lines = decode(stderr).split("\n");
  assert.equal(lines[0], `genio: task "doomed" (#1) failed`);
  assert.equal(lines[1], "Error: kaput");
  assert.match(lines[2], /^\s+at /);
});

Deno.test("join() returns the result or rethrows the error, which is then not reported", async () => {
  const { scheduler, reported } = quietScheduler();
  function* child(fail: boolean): Operation<string> {
    yield* sleep(1);
    if (fail) throw new Error("child failed");
    return "child ok";
  }
  const parent = scheduler.spawn(function* () {
    const good = yield* spawn(child(false));
    const bad = yield* spawn(child(true));
    const results = [yield* join(good)];
    try {
      yield* join(bad);
    } catch (error) {
      results.push((error as Error).message);
    }
    results.push(yield* join(good)); // joining a finished task again returns at once
    return results;
  }());
  await scheduler.run();
  assert.deepEqual(await parent.result, ["child ok", "child failed", "child ok"]);
  assert.deepEqual(reported, []);
});

Deno.test("a failure joined later in the same turn is not reported", async () => {
  const { scheduler, reported } = quietScheduler();
  const parent = scheduler.spawn(function* () {
    const child = yield* spawn(function* (): Operation<never> {
      throw new Error("at once");
    }());
    yield; // the child runs and fails before the join arrives
    try {
      yield* join(child);
    } catch (error) {
      return (error as Error).message;
    }
  }());
  await scheduler.run();
  assert.equal(await parent.result, "at once");
  assert.deepEqual(reported, []);
});

Deno.test("awaiting task.result from outside observes a failure", async () => {
  const { scheduler, reported } = quietScheduler();
  const task = scheduler.spawn(function* (): Operation<never> {
    yield;
    throw new Error("seen outside");
  }());
  const outcome = assert.rejects(task.result, /seen outside/);
  await scheduler.run();
  await outcome;
  assert.deepEqual(reported, []);
});

Deno.test("bad requests are thrown at the yield that made them", async () => {
  const { scheduler } = quietScheduler();
  const task = scheduler.spawn(function* () {
    const errors: string[] = [];
    const attempts: (() => Operation<unknown>)[] = [
      () => spawn((() => {}) as unknown as Operation<void>),
      () => sleep(NaN),
      () => timeout(-1, sleep(1)),
      function* () {
        yield { type: "teleport" } as unknown as Intent;
      },
      function* () {
        const self = scheduler.current!;
        yield* join(self);
      },
    ];
    for (const attempt of attempts) {
      try {
        yield* attempt();
      } catch (error) {
        errors.push((error as Error).name);
      }
    }
    return errors;
  }());
  await scheduler.run();
  assert.deepEqual(await task.result, [
    "TypeError",
    "RangeError",
    "RangeError",
    "TypeError",
    "TypeError",
  ]);
});

Deno.test("joining a task of another scheduler is refused", async () => {
  const other = new Scheduler();
  const foreign = other.spawn(sleep(0));
  await other.run();
  const scheduler = new Scheduler();
  const task = scheduler.spawn(join(foreign));
  const refused = assert.rejects(task.result, /belongs to another scheduler/);
  await scheduler.run();
  await refused;
});

// --- cancellation ------------------------------------------------------------------------------

Deno.test("cancel() runs finally blocks, which may yield, and closes the conn", async () => {
  using pair = await loopback();
  const scheduler = new Scheduler();
  const log: string[] = [];
  function* handler(conn: Deno.Conn): Operation<void> {
    try {
      yield* read(conn, new Uint8Array(16));
      log.push("read returned");
    } catch (error) {
      log.push(error instanceof Cancelled ? "cancelled" : "other error");
      throw error;
    } finally {
      yield* write(conn, encode("bye\n")); // a finally that yields
      conn.close();
      log.push("closed");
    }
  }
  const main = scheduler.spawn(function* () {
    const child = yield* spawn(handler(pair.server));
    yield* sleep(5);
    yield* cancel(child);
    log.push(`cancel returned, child ${child.state}`);
    yield* cancel(child); // idempotent
  }());
  await scheduler.run();
  await main.result;
  assert.deepEqual(log, ["cancelled", "closed", "cancel returned, child cancelled"]);
  assert.equal(await readText(pair.client, 64), "bye\n");
  assert.throws(() => pair.server.close(), Deno.errors.BadResource);
});

Deno.test("cancellation thrown at the yield survives a finally that yields inside yield*", async () => {
  // With generator.return(), the outer generator would resume after `yield* inner()`.
  const scheduler = new Scheduler();
  const log: string[] = [];
  function* inner(): Operation<void> {
    try {
      yield* sleep(60_000);
    } finally {
      yield* sleep(1);
      log.push("inner cleaned up");
    }
  }
  function* outer(): Operation<void> {
    try {
      yield* inner();
      log.push("outer resumed as if nothing happened");
    } finally {
      log.push("outer cleaned up");
    }
  }
  const task = scheduler.spawn(outer());
  scheduler.spawn(function* () {
    yield* sleep(1);
    yield* cancel(task);
  }());
  await scheduler.run();
  assert.deepEqual(log, ["inner cleaned up", "outer cleaned up"]);
  assert.equal(task.state, "cancelled");
});

Deno.test("a ready task gets its result, then the cancellation at its next blocking yield", async () => {
  const scheduler = new Scheduler();
  const log: string[] = [];
  const child = scheduler.spawn(function* () {
    yield;
    return "value";
  }());
  const target = scheduler.spawn(function* () {
    const value = yield* join(child);
    log.push(`got ${value}`);
    try {
      yield; // any yield that could suspend is a cancellation point
      log.push("not reached");
    } catch (error) {
      log.push((error as Error).name);
      throw error;
    }
  }());
  scheduler.spawn(function* () {
    yield; // meanwhile the child returns, so the target is in the ready queue with a result
    assert.equal(target.state, "ready");
    yield* cancel(target);
  }());
  await scheduler.run();
  assert.deepEqual(log, ["got value", "Cancelled"]);
  assert.equal(target.state, "cancelled");
});

Deno.test("a task cancelled before it first ran still starts, and gets Cancelled at its first blocking intent", async () => {
  const scheduler = new Scheduler();
  const log: string[] = [];
  const main = scheduler.spawn(function* () {
    const child = yield* spawn(function* () {
      log.push("started");
      try {
        yield;
        log.push("went on");
      } catch (error) {
        log.push((error as Error).name);
        throw error;
      } finally {
        log.push("finally");
      }
    }());
    yield* cancel(child);
    return child.state;
  }());
  await scheduler.run();
  assert.equal(await main.result, "cancelled");
  assert.deepEqual(log, ["started", "Cancelled", "finally"]);
});

Deno.test("cancelling a finished task returns at once; cancelling yourself is refused", async () => {
  const scheduler = new Scheduler();
  const main = scheduler.spawn(function* () {
    const child = yield* spawn(function* () {
      yield;
      return 1;
    }());
    yield* join(child);
    yield* cancel(child);
    try {
      yield* cancel(scheduler.current!);
    } catch (error) {
      return [child.state, (error as Error).message];
    }
  }());
  await scheduler.run();
  assert.deepEqual(await main.result, ["done", 'Cannot cancel the current task "task-1"']);
});

Deno.test("a cancelled wait() ignores its promise's late result", async () => {
  const scheduler = new Scheduler();
  let resolve!: (value: number) => void;
  const target = scheduler.spawn(wait(new Promise<number>((r) => resolve = r)));
  scheduler.spawn(function* () {
    yield;
    yield* cancel(target);
    resolve(1);
  }());
  await scheduler.run();
  assert.equal(target.state, "cancelled");
  await assert.rejects(target.result, Cancelled);
});

// --- structured concurrency ----------------------------------------------------------------

Deno.test("children are cancelled when their parent ends, and the parent settles after them", async () => {
  const { scheduler } = quietScheduler();
  const log: string[] = [];
  function* child(name: string): Operation<void> {
    try {
      yield* sleep(60_000);
    } finally {
      yield* sleep(2);
      log.push(`${name} cleaned up`);
    }
  }
  const parent = scheduler.spawn(function* () {
    const a = yield* spawn(child("a"));
    yield* spawn(child("b"));
    yield* sleep(1);
    assert.equal(a.parent, scheduler.current);
    log.push("parent returns");
    return "parent value";
  }());
  const watcher = scheduler.spawn(function* () {
    const value = yield* join(parent);
    log.push(`joined parent: ${value}`);
  }());
  await scheduler.run();
  await watcher.result;
  assert.deepEqual(log, [
    "parent returns",
    "a cleaned up",
    "b cleaned up",
    "joined parent: parent value",
  ]);
  assert.equal(parent.state, "done");
});

Deno.test("cancelling a parent cancels its whole tree before cancel() returns", async () => {
  const scheduler = new Scheduler();
  const log: string[] = [];
  function* level(depth: number): Operation<void> {
    try {
      if (depth < 3) yield* spawn(level(depth + 1));
      yield* sleep(60_000);
    } finally {
      log.push(`level ${depth} finally`);
    }
  }
  const root = scheduler.spawn(level(0));
  scheduler.spawn(function* () {
    yield* sleep(1);
    assert.equal(scheduler.tasks().length, 5);
    yield* cancel(root);
    assert.equal(scheduler.tasks().length, 1); // only this task is left
  }());
  await scheduler.run();
  assert.equal(log.length, 4);
  assert.equal(log[0], "level 0 finally"); // the parent's own finally runs first,
  assert.deepEqual(new Set(log), new Set([0, 1, 2, 3].map((d) => `level ${d} finally`)));
  assert.equal(root.state, "cancelled");
});

Deno.test("onSettled sees each outcome once, after the children, before joiners; failures count as observed", async () => {
  const reported: unknown[] = [];
  const { scheduler } = createTestScheduler({
    autojump: true,
    onError: (error) => reported.push(error),
  });
  const log: string[] = [];
  const onSettled = (task: Task<unknown>, error: unknown) =>
    log.push(`${task.name} ${task.state}: ${error instanceof Error ? error.message : error}`);
  function* child(): Operation<void> {
    try {
      yield* sleep(60_000);
    } finally {
      log.push("child cleaned up");
    }
  }
  const returns = scheduler.spawn(
    function* () {
      yield* spawn(child());
      yield* sleep(10);
      return "value";
    }(),
    { name: "returns", onSettled },
  );
  const fails = scheduler.spawn(
    function* () {
      yield* sleep(20);
      throw new Error("boom");
    }(),
    { name: "fails", onSettled },
  );
  const sleeper = scheduler.spawn(sleep(60_000), { name: "sleeper", onSettled });
  scheduler.spawn(
    function* () {
      const value = yield* join(returns);
      log.push(`joined: ${value}`);
      yield* sleep(50);
      yield* cancel(sleeper);
      log.push("cancel returned");
    }(),
    { name: "main" },
  );
  await scheduler.run();
  assert.deepEqual(log, [
    "child cleaned up",
    "returns done: undefined",
    "joined: value",
    "fails failed: boom",
    'sleeper cancelled: Task "sleeper" was cancelled',
    "cancel returned",
  ]);
  assert.deepEqual(reported, []); // the failure went to onSettled, not onError
  assert.equal(fails.state, "failed");
});

Deno.test("an onSettled that throws is reported to onError; one that is not a function is refused", async () => {
  const { scheduler, reported } = quietScheduler();
  scheduler.spawn(sleep(1), {
    onSettled() {
      throw new Error("onSettled bug");
    },
  });
  const after = scheduler.spawn(sleep(2));
  await scheduler.run();
  assert.equal(reported.length, 1);
  assert.equal((reported[0] as Error).message, "onSettled bug");
  assert.equal(after.state, "done");
  assert.throws(
    () => scheduler.spawn(sleep(1), { onSettled: "log" as unknown as () => void }),
    { name: "TypeError", message: "Cannot spawn: onSettled must be a function" },
  );
  assert.deepEqual(scheduler.tasks(), []);
});

// --- time ------------------------------------------------------------------------------------

// On the testing kit's virtual clock, so that every time below is exact.

Deno.test("sleepers wake in deadline order, each at its own time", async () => {
  const { scheduler, clock } = createTestScheduler({ autojump: true });
  const woke: string[] = [];
  for (const ms of [30, 10, 20, 0]) {
    scheduler.spawn(function* () {
      yield* sleep(ms);
      woke.push(`${ms} at ${clock.now()}`);
    }());
  }
  await scheduler.run();
  assert.deepEqual(woke, ["0 at 0", "10 at 10", "20 at 20", "30 at 30"]);
});

Deno.test("timeout() returns the result when the operation is in time", async () => {
  const { scheduler, clock } = createTestScheduler({ autojump: true });
  const task = scheduler.spawn(function* () {
    const value = yield* timeout(
      1_000,
      function* () {
        yield* sleep(999);
        return "in time";
      }(),
    );
    yield* sleep(5_000); // the cleared deadline must not fire later
    return value;
  }());
  await scheduler.run();
  assert.equal(await task.result, "in time");
  assert.equal(clock.now(), 5_999);
});

Deno.test("timeout() throws TimeoutError at its limit and cancels what the operation waited on", async () => {
  const [client, server] = memoryConnPair();
  const { scheduler, clock } = createTestScheduler({ autojump: true });
  const log: string[] = [];
  const task = scheduler.spawn(function* () {
    try {
      yield* timeout(
        10_000,
        function* () {
          try {
            yield* read(server, new Uint8Array(8));
          } finally {
            log.push("operation cleaned up");
          }
        }(),
      );
    } catch (error) {
      assert.ok(error instanceof TimeoutError);
      log.push(`timed out after ${error.ms} ms, at ${clock.now()}`);
      assert.equal(scheduler.readWaiting.size, 0);
    } finally {
      server.close();
    }
  }());
  await scheduler.run();
  await task.result;
  client.close();
  assert.deepEqual(log, ["operation cleaned up", "timed out after 10000 ms, at 10000"]);
});

Deno.test("nested timeouts: the earlier one fires, the later one is cleared", async () => {
  const { scheduler, clock } = createTestScheduler({ autojump: true });
  const task = scheduler.spawn(function* () {
    try {
      yield* timeout(1_000, timeout(5, sleep(60_000)));
    } catch (error) {
      return `${(error as TimeoutError).ms} at ${clock.now()}`;
    }
  }());
  await scheduler.run();
  assert.equal(await task.result, "5 at 5");
});

Deno.test("idleTimeout() restarts its limit each time a wait completes", async () => {
  const { scheduler, clock } = createTestScheduler({ autojump: true });
  const task = scheduler.spawn(idleTimeout(
    40,
    function* () {
      for (let i = 0; i < 10; i++) yield* sleep(39); // 390 ms in all, never 40 ms idle
      return "finished";
    }(),
  ));
  await scheduler.run();
  assert.equal(await task.result, "finished");
  assert.equal(clock.now(), 390);
});

Deno.test("idleTimeout() fails a stalled read its limit after the last wait completed", async () => {
  const [client, server] = memoryConnPair();
  const { scheduler, clock } = createTestScheduler();
  const task = scheduler.spawn(function* () {
    try {
      yield* idleTimeout(
        800,
        function* () {
          const buffer = new Uint8Array(8);
          yield* read(server, buffer); // answered at 500
          yield* read(server, buffer); // never answered
        }(),
      );
    } catch (error) {
      assert.ok(error instanceof TimeoutError);
      assert.equal(error.ms, 800);
      return clock.now();
    } finally {
      server.close();
    }
  }());
  const running = scheduler.run();
  await clock.advance(500);
  await client.write(encode("x"));
  await clock.advance(799); // 1299: not yet 800 ms since the read at 500
  assert.equal(task.state, "reading");
  clock.autojump(scheduler);
  await running;
  client.close();
  assert.equal(await task.result, 500 + 800);
});

Deno.test("idleTimeout() fires no earlier than its limit after the last completed wait, at most a sixteenth later", async () => {
  const { scheduler, clock } = createTestScheduler({ autojump: true });
  let lastWait = NaN;
  const task = scheduler.spawn(function* () {
    try {
      yield* idleTimeout(
        160,
        function* () {
          for (const ms of [3, 7, 11, 50, 13]) {
            yield* sleep(ms); // waits completing at 3, 10, 21, 71 and 84
            lastWait = clock.now();
          }
          yield* sleep(1_000); // stalled
        }(),
      );
      return NaN;
    } catch (error) {
      assert.ok(error instanceof TimeoutError);
      return clock.now();
    }
  }());
  await scheduler.run();
  const firedAt = await task.result;
  assert.equal(lastWait, 84);
  assert.ok(firedAt >= 84 + 160 && firedAt <= 84 + 160 + 10, `fired at ${firedAt}`);
});

Deno.test("nested idleTimeout()s each count the task's waits against their own limit", async () => {
  const { scheduler, clock } = createTestScheduler({ autojump: true });
  const times: Record<string, number> = {};
  const task = scheduler.spawn(function* () {
    try {
      yield* idleTimeout(
        1_000,
        function* () {
          try {
            yield* idleTimeout(
              100,
              function* () {
                for (let i = 0; i < 3; i++) yield* sleep(50);
                times.lastWait = clock.now();
                yield* sleep(10_000);
              }(),
            );
          } catch (error) {
            assert.ok(error instanceof TimeoutError);
            assert.equal(error.ms, 100);
            times.inner = clock.now();
          }
          yield* sleep(10_000); // no wait completes from here on
        }(),
      );
    } catch (error) {
      assert.ok(error instanceof TimeoutError);
      assert.equal(error.ms, 1_000);
      times.outer = clock.now();
    }
  }());
  await scheduler.run();
  await task.result;
  const { lastWait, inner, outer } = times;
  assert.equal(lastWait, 150);
  assert.ok(inner >= lastWait + 100 && inner <= lastWait + 100 + 100 / 16, `inner at ${inner}`);
  assert.ok(
    outer >= lastWait + 1_000 && outer <= lastWait + 1_000 + 1_000 / 16,
    `outer at ${outer}`,
  );
});

// --- no byte lost ------------------------------------------------------------------------------

Deno.test("bytes that arrive after a read timed out go to the next read of the conn", async () => {
  using pair = await loopback();
  const scheduler = new Scheduler();
  const task = scheduler.spawn(function* () {
    const first = new Uint8Array(16);
    try {
      yield* timeout(5, read(pair.server, first));
      return "no timeout?";
    } catch (error) {
      assert.ok(error instanceof TimeoutError);
    }
    yield* wait(pair.client.write(encode("late bytes")));
    const second = new Uint8Array(4); // smaller: the rest stays for the read after
    const parts: string[] = [];
    let n: number | null;
    while ((n = yield* read(pair.server, second)) !== null) {
      parts.push(decode(second.subarray(0, n)));
      if (parts.join("") === "late bytes") break;
    }
    return parts;
  }());
  await scheduler.run();
  assert.deepEqual(await task.result, ["late", " byt", "es"]);
});

Deno.test("a cancelled reader's bytes go to the conn's next reader, another task", async () => {
  using pair = await loopback();
  const scheduler = new Scheduler();
  const first = scheduler.spawn(read(pair.server, new Uint8Array(16)), { name: "first" });
  const main = scheduler.spawn(function* () {
    yield* sleep(1);
    yield* cancel(first);
    const second = yield* spawn(function* () {
      const buffer = new Uint8Array(16);
      const n = yield* read(pair.server, buffer);
      return decode(buffer.subarray(0, n!));
    }());
    yield* sleep(1);
    yield* wait(pair.client.write(encode("for second")));
    return yield* join(second);
  }());
  await scheduler.run();
  assert.equal(first.state, "cancelled");
  assert.equal(await main.result, "for second");
});

Deno.test("a task whose read timed out reads another conn, then the first one's late bytes", async () => {
  using a = await loopback();
  using b = await loopback();
  const scheduler = new Scheduler();
  const task = scheduler.spawn(function* () {
    try {
      yield* timeout(5, read(a.server, new Uint8Array(16)));
    } catch (error) {
      assert.ok(error instanceof TimeoutError);
    }
    // The read of `a` is still in flight while the task reads `b`, then `a` again.
    yield* wait(b.client.write(encode("from b")));
    const buffer = new Uint8Array(16);
    const fromB = decode(buffer.subarray(0, (yield* read(b.server, buffer))!));
    yield* wait(a.client.write(encode("from a")));
    const fromA = decode(buffer.subarray(0, (yield* read(a.server, buffer))!));
    return [fromB, fromA];
  }());
  await scheduler.run();
  assert.deepEqual(await task.result, ["from b", "from a"]);
});

Deno.test("a task whose write timed out writes to another conn while the first write goes on", async () => {
  using a = await loopback();
  using b = await loopback();
  const scheduler = new Scheduler();
  const big = new Uint8Array(16 * 1024 * 1024).fill(1);
  scheduler.spawn(function* () {
    try {
      yield* timeout(20, write(a.server, big)); // nobody reads `a` yet
    } catch (error) {
      assert.ok(error instanceof TimeoutError);
    }
    yield* write(b.server, encode("to b"));
    yield* write(a.server, encode("END"));
    a.server.close();
  }());
  const running = scheduler.run();
  assert.equal(await readText(b.client, 4), "to b");
  let total = 0;
  let tail = "";
  for await (const chunk of a.client.readable) {
    total += chunk.length;
    tail = (tail + decode(chunk)).slice(-3);
  }
  await running;
  assert.equal(tail, "END");
  assert.ok(total > 3 && total < big.length + 3, "the abandoned write was not continued");
});

Deno.test("a write after a timed-out write goes out after what the abandoned one sent", async () => {
  using pair = await loopback();
  const scheduler = new Scheduler();
  const big = new Uint8Array(16 * 1024 * 1024).map((_, i) => i % 200);
  const task = scheduler.spawn(function* () {
    try {
      yield* timeout(20, write(pair.server, big)); // the client is not reading yet
    } catch (error) {
      assert.ok(error instanceof TimeoutError);
    }
    yield* write(pair.server, encode("END"));
    pair.server.close();
  }());
  const running = scheduler.run();
  const chunks: Uint8Array[] = [];
  await new Promise((resolve) => setTimeout(resolve, 50));
  for await (const chunk of pair.client.readable) chunks.push(chunk);
  await running;
  await task.result;
  const received = new Uint8Array(chunks.reduce((sum, chunk) => sum + chunk.length, 0));
  chunks.reduce((offset, chunk) => (received.set(chunk, offset), offset + chunk.length), 0);
  const body = received.subarray(0, received.length - 3);
  assert.equal(decode(received.subarray(body.length)), "END");
  assert.ok(body.length < big.length, "the abandoned write was not continued");
  assert.deepEqual(body, big.subarray(0, body.length));
});

Deno.test("bytes of an abandoned read on a conn nobody reads again are not kept", async () => {
  // 200 abandoned reads of 512 KiB each would hold 100 MiB if the kernel kept them.
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--v8-flags=--expose-gc",
      new URL("./scripts/abandoned_reads.ts", import.meta.url).href,
    ],
  }).output();
  assert.equal(code, 0, decode(stderr));
  const grewMiB = Number(decode(stdout).trim());
  assert.ok(grewMiB < 32, `external memory grew by ${grewMiB} MiB`);
});

Deno.test("a conn left with an abandoned read is closed when run() finishes", async () => {
  using pair = await loopback();
  const scheduler = new Scheduler();
  scheduler.spawn(function* () {
    try {
      yield* timeout(5, read(pair.server, new Uint8Array(8)));
    } catch {
      // Give up without closing the conn: nobody will ever read it again.
    }
  }());
  await scheduler.run();
  assert.throws(() => pair.server.close(), Deno.errors.BadResource);
});

// --- single-stepping -----------------------------------------------------------------------

Deno.test("step() runs one task turn at a time; the queue and wait maps show every move", async () => {
  using pair = await loopback();
  const scheduler = new Scheduler();
  const got: string[] = [];
  const reader = scheduler.spawn(
    function* () {
      const buffer = new Uint8Array(16);
      const n = yield* read(pair.server, buffer);
      got.push(decode(buffer.subarray(0, n!)));
      yield* write(pair.server, encode("ok"));
    }(),
    { name: "reader" },
  );
  const other = scheduler.spawn(
    function* () {
      yield;
    }(),
    { name: "other" },
  );

  assert.deepEqual(scheduler.ready, [reader, other]);
  assert.equal(scheduler.step(), reader);
  assert.deepEqual(scheduler.ready, [other]);
  assert.equal(scheduler.readWaiting.get(pair.server), reader);
  assert.equal(reader.state, "reading");

  assert.equal(scheduler.step(), other);
  assert.deepEqual(scheduler.ready, [other]);
  assert.equal(scheduler.step(), other);
  assert.equal(other.state, "done");
  assert.equal(scheduler.step(), null);

  // The read completes, but nothing runs until the next step.
  await pair.client.write(encode("hi"));
  await until(() => scheduler.ready.length === 1);
  assert.deepEqual(scheduler.ready, [reader]);
  assert.equal(scheduler.readWaiting.size, 0);
  assert.deepEqual(got, []);

  assert.equal(scheduler.step(), reader);
  assert.deepEqual(got, ["hi"]);
  assert.equal(scheduler.writeWaiting.get(pair.server), reader);
  await until(() => scheduler.ready.length === 1);
  assert.equal(scheduler.step(), reader);
  assert.equal(reader.state, "done");
  assert.deepEqual(scheduler.tasks(), []);
  assert.equal(await readText(pair.client, 2), "ok");
});

Deno.test("step() refuses to run while run() is running, and run() finishes a stepped task", async () => {
  const scheduler = new Scheduler();
  const task = scheduler.spawn(function* () {
    yield;
    yield* sleep(1);
    return "finished";
  }());
  scheduler.step();
  const running = scheduler.run();
  assert.throws(() => scheduler.step(), /Cannot step: the scheduler is running/);
  await running;
  assert.equal(await task.result, "finished");
  assert.equal(scheduler.step(), null);
});

Deno.test("a failure in a stepped task is reported once, at the end of its step", () => {
  const { scheduler, reported } = quietScheduler();
  scheduler.spawn(function* () {
    yield;
    throw new Error("boom");
  }());
  scheduler.step();
  assert.equal(reported.length, 0);
  scheduler.step();
  assert.equal(reported.length, 1);
  assert.match(String(reported[0]), /boom/);
});

Deno.test("a task's bytesRead and bytesWritten count its reads and writes; task(id) finds it while it lives", async () => {
  const [client, server] = memoryConnPair();
  const scheduler = new Scheduler();
  const task = scheduler.spawn(
    function* () {
      const buffer = new Uint8Array(64);
      let n: number | null;
      while ((n = yield* read(server, buffer)) !== null) {
        yield* write(server, encode(`GOT:${decode(buffer.subarray(0, n))}`));
      }
    }(),
    { name: "echo" },
  );
  assert.equal(scheduler.task(task.id), task);
  const done = scheduler.run();
  await client.write(encode("hello"));
  assert.equal(await readText(client, 9), "GOT:hello");
  await until(() => task.bytesWritten === 9, "the write to complete");
  assert.equal(task.bytesRead, 5);
  assert.deepEqual(
    scheduler.tasks().map(({ id, bytesRead, bytesWritten }) => ({ id, bytesRead, bytesWritten })),
    [{ id: task.id, bytesRead: 5, bytesWritten: 9 }],
  );
  await client.closeWrite();
  await done;
  assert.equal(scheduler.task(task.id), undefined);
  assert.equal(task.bytesRead, 5);
  client.close();
  server.close();
});
