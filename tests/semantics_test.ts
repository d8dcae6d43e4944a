// The kernel's promises about time, timeouts, cancellation and failure reports, each as it is
// written in the README's Semantics section, with the minimal program that once broke it.
import assert from "node:assert/strict";
import {
  accept,
  cancel,
  idleTimeout,
  join,
  type Operation,
  read,
  Scheduler,
  sleep,
  spawn,
  timeout,
  TimeoutError,
  wait,
} from "../mod.ts";
import { createTestScheduler, memoryConnPair, VirtualClock } from "../testing.ts";
import { busyWait, lateClock, quietScheduler } from "./_schedulers.ts";

// --- time: nothing ends before its full duration -------------------------------------------

Deno.test("a sleep set after a long synchronous stretch lasts its full duration", async () => {
  const scheduler = new Scheduler();
  scheduler.spawn(sleep(5));
  const task = scheduler.spawn(function* () {
    busyWait(50);
    const start = performance.now();
    yield* sleep(30);
    return performance.now() - start;
  }());
  await scheduler.run();
  assert.ok(await task.result >= 30, `slept ${await task.result} ms`);
});

Deno.test("a timeout set after a long synchronous stretch does not fire early", async () => {
  const scheduler = new Scheduler();
  scheduler.spawn(sleep(5));
  const task = scheduler.spawn(function* () {
    busyWait(50);
    const settlesIn10ms = new Promise((resolve) => setTimeout(() => resolve("settled"), 10));
    return yield* timeout(30, wait(settlesIn10ms));
  }());
  await scheduler.run();
  assert.equal(await task.result, "settled");
});

Deno.test("an idle limit set after a long synchronous stretch does not fire early", async () => {
  const scheduler = new Scheduler();
  scheduler.spawn(sleep(5));
  const task = scheduler.spawn(function* () {
    busyWait(50);
    yield* idleTimeout(30, sleep(10));
    return "in time";
  }());
  await scheduler.run();
  assert.equal(await task.result, "in time");
});

// --- timeouts are level-triggered, and each block knows its own ----------------------------

Deno.test("catching an inner TimeoutError does not swallow an outer timeout", async () => {
  const { scheduler, clock } = createTestScheduler({ autojump: true });
  const task = scheduler.spawn(timeout(
    10,
    function* () {
      try {
        yield* timeout(1000, sleep(20));
      } catch {
        // An outer timeout passing through is not this block's to swallow.
      }
      yield* sleep(20);
      return "late";
    }(),
  ));
  const outcome = assert.rejects(task.result, (error) => {
    assert.ok(error instanceof TimeoutError);
    assert.equal(error.ms, 10);
    return true;
  });
  await scheduler.run();
  await outcome;
  assert.equal(clock.now(), 10);
});

Deno.test("after its deadline, every blocking intent in the block fails, finally blocks too", async () => {
  const { scheduler, clock } = createTestScheduler({ autojump: true });
  const log: string[] = [];
  const task = scheduler.spawn(timeout(
    10,
    function* () {
      try {
        yield* sleep(20);
      } finally {
        try {
          yield* sleep(5);
          log.push("cleanup slept");
        } catch (error) {
          log.push(`cleanup got ${(error as Error).name} at ${clock.now()}`);
        }
      }
    }(),
  ));
  const outcome = assert.rejects(task.result, TimeoutError);
  await scheduler.run();
  await outcome;
  assert.deepEqual(log, ["cleanup got TimeoutError at 10"]);
});

Deno.test("a block whose TimeoutError was caught inside it still fails when it returns", async () => {
  const { scheduler } = createTestScheduler({ autojump: true });
  const task = scheduler.spawn(timeout(
    10,
    function* () {
      try {
        yield* sleep(20);
      } catch {
        return "swallowed";
      }
    }(),
  ));
  const outcome = assert.rejects(task.result, TimeoutError);
  await scheduler.run();
  await outcome;
});

Deno.test("an inner timeout's own error can be caught, and the outer block goes on", async () => {
  const { scheduler, clock } = createTestScheduler({ autojump: true });
  const task = scheduler.spawn(timeout(
    100,
    function* () {
      let inner: TimeoutError | null = null;
      try {
        yield* timeout(5, sleep(20));
      } catch (error) {
        inner = error as TimeoutError;
      }
      yield* sleep(10);
      return `inner gave up after ${inner?.ms} ms; done at ${clock.now()}`;
    }(),
  ));
  await scheduler.run();
  assert.equal(await task.result, "inner gave up after 5 ms; done at 15");
});

Deno.test("a TimeoutError names the deadline of the block it belongs to", async () => {
  const { scheduler } = createTestScheduler({ autojump: true });
  const task = scheduler.spawn(function* (): Operation<boolean> {
    const deadline = yield { type: "deadline", ms: 10 };
    try {
      yield* sleep(20);
      return false;
    } catch (error) {
      return error instanceof TimeoutError && error.deadline === deadline;
    } finally {
      yield { type: "clear-deadline", deadline: deadline as never };
    }
  }());
  await scheduler.run();
  assert.equal(await task.result, true);
});

Deno.test("two deadlines due in one late timer callback are both kept", async () => {
  const { clock, virtual } = lateClock(2);
  const { scheduler } = quietScheduler(clock);
  virtual.autojump(scheduler);
  const task = scheduler.spawn(timeout(
    10,
    function* () {
      yield* timeout(11, sleep(9));
      yield* sleep(8);
      return "late";
    }(),
  ));
  const outcome = assert.rejects(task.result, (error) => {
    assert.ok(error instanceof TimeoutError);
    assert.equal(error.ms, 10);
    return true;
  });
  await scheduler.run();
  await outcome;
  assert.equal(virtual.now(), 11);
});

Deno.test("an operation that completed in time returns even if it resumes after the deadline", async () => {
  const { clock, virtual } = lateClock(2);
  const { scheduler } = quietScheduler(clock);
  virtual.autojump(scheduler);
  const task = scheduler.spawn(timeout(
    10,
    function* () {
      yield* sleep(9);
      return "in time";
    }(),
  ));
  await scheduler.run();
  assert.equal(await task.result, "in time");
  assert.equal(virtual.now(), 11);
});

Deno.test("every handler's idle limit: spawn({ idleTimeout }) limits each wait of the whole task", async () => {
  const { scheduler, clock } = createTestScheduler({ autojump: true });
  const steady = scheduler.spawn(
    function* () {
      for (let i = 0; i < 5; i++) yield* sleep(90);
      return clock.now();
    }(),
    { idleTimeout: 100 },
  );
  const stalled = scheduler.spawn(
    function* () {
      yield* sleep(90);
      yield* sleep(1_000);
    }(),
    { idleTimeout: 100 },
  );
  const outcome = assert.rejects(stalled.result, TimeoutError);
  await scheduler.run();
  assert.equal(await steady.result, 450);
  await outcome;
  assert.throws(() => scheduler.spawn(sleep(1), { idleTimeout: -1 }), RangeError);
});

// --- cancellation --------------------------------------------------------------------------

Deno.test("a deadline that runs out during a cancelled task's cleanup delivers Cancelled, not TimeoutError", async () => {
  const { scheduler, clock } = createTestScheduler({ autojump: true });
  const seen: string[] = [];
  function* recorded(operation: Operation<void>): Operation<void> {
    try {
      yield* operation;
    } catch (error) {
      seen.push(`${(error as Error).name} at ${clock.now()}`);
      throw error;
    }
  }
  let cancelReturnedAt = -1;
  const worker = scheduler.spawn(function* () {
    try {
      return yield* timeout(
        10,
        function* () {
          try {
            yield* sleep(1_000);
          } finally {
            yield* recorded(sleep(20));
          }
        }(),
      );
    } catch (error) {
      if (error instanceof TimeoutError) return "timed out";
      throw error;
    }
  }());
  scheduler.spawn(function* () {
    yield* sleep(5);
    yield* cancel(worker);
    cancelReturnedAt = clock.now();
  }());
  await scheduler.run();
  assert.equal(worker.state, "cancelled");
  assert.deepEqual(seen, ["Cancelled at 10"]);
  assert.equal(cancelReturnedAt, 10);
});

Deno.test("a task cancelled while it holds a fresh conn still runs its handler's finally", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const scheduler = new Scheduler();
  let closed = 0;
  function* handler(conn: Deno.Conn): Operation<void> {
    try {
      yield* read(conn, new Uint8Array(16));
    } finally {
      conn.close();
      closed++;
    }
  }
  const server = scheduler.spawn(function* () {
    while (true) yield* spawn(handler(yield* accept(listener)));
  }());
  assert.equal(scheduler.step(), server); // accepting
  scheduler.spawn(cancel(server)); // runs first once the conn arrives, while the loop is ready
  const client = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
  while (scheduler.ready.length < 2) await new Promise((resolve) => setTimeout(resolve, 1));
  await scheduler.run();
  assert.equal(server.state, "cancelled");
  assert.equal(closed, 1);
  assert.equal(await client.read(new Uint8Array(1)), null);
  client.close();
  listener.close();
});

Deno.test("a task that catches Cancelled and blocks again keeps its canceller waiting", async () => {
  const { scheduler, clock } = createTestScheduler({ autojump: true });
  const log: string[] = [];
  const main = scheduler.spawn(function* () {
    const stubborn = yield* spawn(function* () {
      try {
        yield* sleep(1_000);
      } catch (error) {
        log.push(`${(error as Error).name} at ${clock.now()}`);
      }
      yield* sleep(50); // cancellation is delivered once: this sleep runs its course
      log.push(`finished at ${clock.now()}`);
    }());
    yield* sleep(10);
    yield* cancel(stubborn);
    log.push(`cancel returned at ${clock.now()}`);
    return stubborn.state;
  }());
  await scheduler.run();
  assert.equal(await main.result, "done");
  assert.deepEqual(log, ["Cancelled at 10", "finished at 60", "cancel returned at 60"]);
});

Deno.test("live children are cancelled in spawn order when their parent ends, before it settles", async () => {
  const { scheduler } = createTestScheduler({ autojump: true });
  const log: string[] = [];
  function* child(name: string): Operation<void> {
    try {
      yield* sleep(1_000);
    } finally {
      log.push(`${name} cleaned up`);
    }
  }
  const parent = scheduler.spawn(function* () {
    yield* spawn(child("first"));
    yield* spawn(child("second"));
    yield* spawn(child("third"));
    yield* sleep(1);
    log.push("parent returned");
    return "parent's value";
  }());
  parent.result.then(() => log.push("parent settled"));
  await scheduler.run();
  await parent.result;
  assert.deepEqual(log, [
    "parent returned",
    "first cleaned up",
    "second cleaned up",
    "third cleaned up",
    "parent settled",
  ]);
});

// --- failures: reported unless observed by the end of the turn -----------------------------

Deno.test("a failure whose join was abandoned is reported", async () => {
  const clock = new VirtualClock();
  const { scheduler, reported } = quietScheduler(clock);
  clock.autojump(scheduler);
  scheduler.spawn(function* () {
    const worker = yield* spawn(function* () {
      yield* sleep(10);
      throw new Error("worker failed");
    }());
    try {
      yield* timeout(5, join(worker));
    } catch {
      // Gave up waiting: the failure is nobody's now.
    }
    yield* sleep(20);
  }());
  await scheduler.run();
  assert.deepEqual(reported.map((error) => (error as Error).message), ["worker failed"]);
});

Deno.test("a failure is reported at the end of its turn; a join after that still receives it", async () => {
  const { scheduler, reported } = quietScheduler();
  const main = scheduler.spawn(function* () {
    const worker = yield* spawn(function* () {
      throw new Error("early failure");
    }());
    yield* sleep(5); // the worker fails in this turn and is reported at its end
    try {
      yield* join(worker);
    } catch (error) {
      return (error as Error).message;
    }
  }());
  await scheduler.run();
  assert.equal(await main.result, "early failure");
  assert.equal(reported.length, 1);
});

Deno.test("Scheduler.spawn() during run() queues the task for the next turn instead of running it", async () => {
  const { scheduler, reported } = quietScheduler();
  scheduler.spawn(sleep(10));
  const running = scheduler.run();
  // deno-lint-ignore require-yield
  const task = scheduler.spawn(function* () {
    throw new Error("bad input");
  }());
  assert.equal(task.state, "ready");
  assert.deepEqual(scheduler.ready, [task]);
  const outcome = assert.rejects(task.result, /bad input/);
  await running;
  await outcome;
  assert.equal(reported.length, 0);
});

// --- results for nobody --------------------------------------------------------------------

Deno.test("a conn that an abandoned accept brings after run() ended is closed", async () => {
  // A listener whose accept settles when the test says, as one can when the accept's
  // callback runs after the turn in which its task was cancelled and the run ended.
  const accepted = Promise.withResolvers<Deno.Conn>();
  const closed: string[] = [];
  const listener = {
    accept: () => accepted.promise,
    close: () => closed.push("listener"),
  } as unknown as Deno.Listener;
  const conn = { close: () => closed.push("conn") } as unknown as Deno.Conn;
  const scheduler = new Scheduler();
  const acceptor = scheduler.spawn(accept(listener));
  scheduler.spawn(function* () {
    yield; // the acceptor is accepting
    yield* cancel(acceptor);
  }());
  const running = scheduler.run();
  await new Promise((resolve) => setTimeout(resolve, 0));
  assert.deepEqual(scheduler.tasks(), []);
  assert.deepEqual(closed, ["listener"]); // so that a real accept ends; run() waits for it
  accepted.resolve(conn);
  await running;
  assert.deepEqual(closed, ["listener", "conn"]);
});

// --- misuse fails loudly -------------------------------------------------------------------

Deno.test("spawning an async generator is refused with what to write instead", () => {
  const scheduler = new Scheduler();
  async function* handler() {
    yield await Promise.resolve(1);
  }
  assert.throws(
    () => scheduler.spawn(handler() as unknown as Operation<void>),
    (error) => error instanceof TypeError && /async function\*/.test(error.message),
  );
  assert.throws(
    () => scheduler.spawn(sleep as unknown as Operation<void>),
    (error) =>
      error instanceof TypeError && /call the generator function first/.test(error.message),
  );
  assert.deepEqual(scheduler.tasks(), []);
});

Deno.test("yielding a generator or a Promise says what was yielded and the fix", async () => {
  const { scheduler } = quietScheduler();
  const [client, server] = memoryConnPair();
  const task = scheduler.spawn(function* (): Operation<string[]> {
    const messages: string[] = [];
    for (
      const wrong of [read(server, new Uint8Array(1)), Promise.resolve(1), 42, { type: "nap" }]
    ) {
      try {
        yield wrong as never;
      } catch (error) {
        messages.push((error as Error).message);
      }
    }
    return messages;
  }());
  await scheduler.run();
  const [generator, promise, number, unknown] = await task.result;
  assert.match(generator, /yielded a generator: use `yield\*`/);
  assert.match(promise, /yielded a Promise: use `yield\* wait\(promise\)`/);
  assert.match(number, /yielded 42/);
  assert.match(unknown, /unknown type "nap"/);
  client.close();
  server.close();
});
