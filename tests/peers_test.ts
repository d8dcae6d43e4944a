// Test cases translated from the suites of genio's peers, as close in meaning as genio's API
// allows: Curio's tests/test_kernel.py, Trio's src/trio/_core/_tests/test_run.py, and
// Effection's test/spawn.test.ts and test/run.test.ts. Each test's name starts with the peer
// test it follows. Where genio deliberately differs, the test asserts genio's documented
// behaviour (README, "Semantics") and its name says so.
//
// Not translated, because genio has no such feature: Curio's disable_cancellation /
// check_cancellation (test_task_cancel_poll), interrupt() (test_interruption), custom cancel
// exceptions (test_custom_cancel), wake_at and gather; Trio's cancel shielding
// (test_cancel_shielding, test_cancel_shield_abort, test_unshield_while_cancel_propagating),
// wait_task_rescheduled and Abort (test_reschedule, test_failed_abort), TrioToken and system
// tasks; Effection's resources, scopes and halting through `return()`.
import assert from "node:assert/strict";
import {
  BusyError,
  cancel,
  Cancelled,
  type Deadline,
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
import { createTestScheduler, memoryConnPair, type VirtualClock } from "../testing.ts";
import { busyWait, lateScheduler } from "./_schedulers.ts";

// A scheduler on virtual time that jumps whenever every task waits, with failures collected
// instead of printed.
function testScheduler(): { scheduler: Scheduler; clock: VirtualClock; reported: string[] } {
  const reported: string[] = [];
  const { scheduler, clock } = createTestScheduler({
    autojump: true,
    onError: (error) => reported.push((error as Error).message),
  });
  return { scheduler, clock, reported };
}

// Curio's ignore_after: the operation's result, or null when this block's own deadline ran
// out. `error.deadline` tells this block's TimeoutError from an outer block's.
function* ignoreAfter<T>(ms: number, operation: Operation<T>): Operation<T | null> {
  const deadline = (yield { type: "deadline", ms }) as Deadline;
  try {
    return yield* operation;
  } catch (error) {
    if (error instanceof TimeoutError && error.deadline === deadline) return null;
    throw error;
  } finally {
    yield { type: "clear-deadline", deadline };
  }
}

// --- Curio: tests/test_kernel.py -----------------------------------------------------------

Deno.test("curio test_hello: a task's return value is its result", async () => {
  const { scheduler } = testScheduler();
  // deno-lint-ignore require-yield
  const task = scheduler.spawn(function* () {
    return "hello";
  }());
  await scheduler.run();
  assert.equal(await task.result, "hello");
});

Deno.test("curio test_raise: a task's error is what its result rejects with", async () => {
  const { scheduler } = testScheduler();
  class Boom extends Error {}
  // deno-lint-ignore require-yield
  const task = scheduler.spawn(function* () {
    throw new Boom();
  }());
  const outcome = assert.rejects(task.result, Boom);
  await scheduler.run();
  await outcome;
});

Deno.test("curio test_sleep: a sleep on the real clock lasts at least its duration", async () => {
  const scheduler = new Scheduler();
  const task = scheduler.spawn(function* () {
    const start = performance.now();
    yield* sleep(50);
    return performance.now() - start;
  }());
  await scheduler.run();
  assert.ok(await task.result >= 50, `slept ${await task.result} ms`);
});

Deno.test("curio test_sleep_cancel: a sleeping task that is cancelled catches Cancelled", async () => {
  const { scheduler, clock } = testScheduler();
  let cancelledAt = -1;
  scheduler.spawn(function* () {
    const sleeper = yield* spawn(function* () {
      try {
        yield* sleep(1_000);
        assert.fail("the sleep ended");
      } catch (error) {
        if (!(error instanceof Cancelled)) throw error;
        cancelledAt = clock.now();
      }
    }());
    yield* sleep(100);
    yield* cancel(sleeper);
  }());
  await scheduler.run();
  assert.equal(cancelledAt, 100);
});

Deno.test("curio test_sleep_timeout: timeout() around a longer sleep throws TimeoutError at its deadline", async () => {
  const { scheduler, clock } = testScheduler();
  const task = scheduler.spawn(function* () {
    try {
      yield* timeout(100, sleep(1_000));
      return "slept";
    } catch (error) {
      if (!(error instanceof TimeoutError)) throw error;
      return `timed out at ${clock.now()}`;
    }
  }());
  await scheduler.run();
  assert.equal(await task.result, "timed out at 100");
});

Deno.test("curio test_sleep_ignore_timeout: a block that catches its own TimeoutError is ignore_after", async () => {
  const { scheduler, clock } = testScheduler();
  const task = scheduler.spawn(function* () {
    const first = yield* ignoreAfter(100, sleep(1_000));
    const second = yield* ignoreAfter(
      100,
      function* () {
        yield* sleep(50);
        return "in time";
      }(),
    );
    return [first, second, clock.now()];
  }());
  await scheduler.run();
  assert.deepEqual(await task.result, [null, "in time", 150]);
});

Deno.test("curio test_sleep_notimeout: a block that finished in time leaves no deadline behind", async () => {
  const { scheduler, clock } = testScheduler();
  const task = scheduler.spawn(function* () {
    yield* timeout(500, sleep(100));
    yield* sleep(500); // past the block's deadline, which is gone with the block
    return clock.now();
  }());
  await scheduler.run();
  assert.equal(await task.result, 600);
});

Deno.test("curio test_task_join: join returns the child's value", async () => {
  const { scheduler } = testScheduler();
  const log: unknown[] = [];
  scheduler.spawn(function* () {
    const child = yield* spawn(function* () {
      log.push("start");
      yield* sleep(500);
      log.push("end");
      return 37;
    }());
    yield* sleep(100);
    log.push("joining");
    log.push(yield* join(child));
  }());
  await scheduler.run();
  assert.deepEqual(log, ["start", "joining", "end", 37]);
});

Deno.test("curio test_task_join_error: join throws the child's own error (Curio wraps it in TaskError, genio does not)", async () => {
  const { scheduler, reported } = testScheduler();
  const log: unknown[] = [];
  scheduler.spawn(function* () {
    const child = yield* spawn(function* () {
      log.push("start");
      yield* sleep(10);
      JSON.parse("bad");
    }());
    yield* sleep(1); // the child starts
    log.push("joining");
    try {
      yield* join(child);
    } catch (error) {
      log.push("task fail", (error as Error).name);
    }
  }());
  await scheduler.run();
  assert.deepEqual(log, ["start", "joining", "task fail", "SyntaxError"]);
  assert.deepEqual(reported, []); // the joiner received it
});

Deno.test("curio test_task_cancel: cancel() returns once the child has handled Cancelled", async () => {
  const { scheduler } = testScheduler();
  const log: string[] = [];
  scheduler.spawn(function* () {
    const child = yield* spawn(function* () {
      log.push("start");
      try {
        yield* sleep(500);
        log.push("end");
      } catch (error) {
        if (error instanceof Cancelled) log.push("cancelled");
      }
    }());
    log.push("cancel start");
    yield* sleep(100);
    log.push("cancelling");
    yield* cancel(child);
    log.push("done");
  }());
  await scheduler.run();
  assert.deepEqual(log, ["cancel start", "start", "cancelling", "cancelled", "done"]);
});

Deno.test("curio test_task_cancel_not_blocking: genio's cancel() always waits, so a cancel that must not is given its own task", async () => {
  const { scheduler } = testScheduler();
  const log: string[] = [];
  scheduler.spawn(function* () {
    const child = yield* spawn(function* () {
      try {
        yield* sleep(1_000);
      } catch (error) {
        yield* sleep(50); // Curio's child waits for an event here
        log.push("child cleaned up");
        throw error;
      }
    }());
    yield* sleep(10);
    yield* spawn(cancel(child));
    log.push("cancel requested");
    try {
      yield* join(child);
    } catch (error) {
      log.push(`join threw ${(error as Error).name}`);
    }
  }());
  await scheduler.run();
  assert.deepEqual(log, ["cancel requested", "child cleaned up", "join threw Cancelled"]);
});

Deno.test("curio test_task_cancel_join: joining a cancelled task throws Cancelled", async () => {
  const { scheduler } = testScheduler();
  const log: string[] = [];
  scheduler.spawn(function* () {
    const child = yield* spawn(function* () {
      log.push("start");
      yield* sleep(500);
      log.push("end");
    }());
    log.push("cancel start");
    yield* sleep(100);
    log.push("cancelling");
    yield* cancel(child);
    try {
      yield* join(child);
    } catch (error) {
      if (error instanceof Cancelled) log.push("join cancel");
    }
    log.push("done");
  }());
  await scheduler.run();
  assert.deepEqual(log, ["cancel start", "start", "cancelling", "join cancel", "done"]);
});

Deno.test("curio test_task_cancel_join_wait: a joiner of a task that another task cancels receives Cancelled", async () => {
  const { scheduler } = testScheduler();
  const log: string[] = [];
  scheduler.spawn(function* () {
    const child = yield* spawn(function* () {
      log.push("start");
      yield* sleep(500);
      log.push("end");
    }());
    log.push("cancel start");
    yield* spawn(function* () {
      yield* sleep(100);
      log.push("cancel");
      yield* cancel(child);
    }());
    try {
      log.push("join");
      yield* join(child);
    } catch (error) {
      if (error instanceof Cancelled) log.push("join cancel");
    }
    log.push("done");
  }());
  await scheduler.run();
  assert.deepEqual(log, ["cancel start", "join", "start", "cancel", "join cancel", "done"]);
});

Deno.test("curio test_task_child_cancel: cancels handed down by hand complete innermost first", async () => {
  const { scheduler } = testScheduler();
  const log: string[] = [];
  function* child(): Operation<void> {
    log.push("start");
    try {
      yield* sleep(500);
      log.push("end");
    } catch (error) {
      if (error instanceof Cancelled) log.push("child cancelled");
    }
  }
  function* middle(name: string, inner: () => Operation<void>): Operation<void> {
    const task = yield* spawn(inner());
    try {
      yield* sleep(500);
      log.push(`end ${name}`);
    } catch (error) {
      if (!(error instanceof Cancelled)) throw error;
      yield* cancel(task); // Cancelled came once; this cancel blocks as usual
      log.push(`${name} cancelled`);
    }
  }
  scheduler.spawn(function* () {
    const task = yield* spawn(middle("grandparent", () => middle("parent", child)));
    yield* sleep(100);
    log.push("cancel start");
    yield* sleep(100);
    log.push("cancelling");
    yield* cancel(task);
    log.push("done");
  }());
  await scheduler.run();
  assert.deepEqual(log, [
    "start",
    "cancel start",
    "cancelling",
    "child cancelled",
    "parent cancelled",
    "grandparent cancelled",
    "done",
  ]);
});

Deno.test("curio test_task_ready_cancel: a task cancelled while on the ready queue gets its wake-up first, then Cancelled", async () => {
  // Curio blocks its event loop for a second so that both sleeps end in one pass; here every
  // timer fires 600 ms late, which does the same.
  const { scheduler } = lateScheduler(600);
  const log: string[] = [];
  scheduler.spawn(function* () {
    const child = yield* spawn(function* () {
      try {
        log.push("child sleep");
        yield* sleep(1_000);
        log.push("child slept");
        yield* sleep(1_000);
        log.push("should not see this");
      } catch (error) {
        if (error instanceof Cancelled) log.push("child cancelled");
      }
    }());
    log.push("parent sleep");
    yield* sleep(500);
    log.push("cancel start");
    yield* cancel(child);
    log.push("cancel done");
  }());
  await scheduler.run();
  assert.deepEqual(log, [
    "parent sleep",
    "child sleep",
    "cancel start",
    "child slept",
    "child cancelled",
    "cancel done",
  ]);
});

Deno.test("curio test_double_cancel: a second cancel does not interrupt the cleanup of the first", async () => {
  const { scheduler } = testScheduler();
  const log: string[] = [];
  scheduler.spawn(function* () {
    const sleeper = yield* spawn(function* () {
      log.push("start");
      try {
        yield* sleep(1_000);
        log.push("not here");
      } catch {
        log.push("cancel request");
        yield* sleep(1_000);
        log.push("cancelled");
      }
    }());
    yield* sleep(500);
    try {
      yield* timeout(1_000, cancel(sleeper));
    } catch (error) {
      if (!(error instanceof TimeoutError)) throw error;
      log.push("retry");
      yield* cancel(sleeper);
      log.push("done cancel");
    }
  }());
  await scheduler.run();
  assert.deepEqual(log, ["start", "cancel request", "retry", "cancelled", "done cancel"]);
});

Deno.test("curio test_nested_timeout: an inner timeout() passes the outer block's error on, as Curio's TimeoutCancellationError", async () => {
  const { scheduler } = testScheduler();
  const log: string[] = [];
  function* coro(name: string): Operation<void> {
    log.push(`${name} start`);
    yield* sleep(1_000);
    log.push(`${name} done`);
  }
  function* child(): Operation<void> {
    try {
      yield* timeout(5_000, coro("coro1"));
      log.push("coro1 success");
    } catch (error) {
      if (!(error instanceof TimeoutError)) throw error;
      log.push(error.ms === 5_000 ? "coro1 timeout" : "coro1 timeout cancel");
    }
    yield* coro("coro2"); // its sleep fails at once: the outer deadline has passed
    log.push("coro2 success");
  }
  scheduler.spawn(function* () {
    try {
      yield* timeout(1_000, child());
    } catch (error) {
      if (error instanceof TimeoutError && error.ms === 1_000) log.push("parent timeout");
    }
  }());
  await scheduler.run();
  assert.deepEqual(log, ["coro1 start", "coro1 timeout cancel", "coro2 start", "parent timeout"]);
});

Deno.test("curio test_nested_context_timeout2: every inner block sees the outer block's error; the outer block's caller gets its own", async () => {
  const { scheduler } = testScheduler();
  const seen: string[] = [];
  function* noting(name: string, ms: number, operation: Operation<void>): Operation<void> {
    try {
      yield* timeout(ms, operation);
    } catch (error) {
      seen.push(`${name}: ${error instanceof TimeoutError ? error.ms : error}`);
      throw error;
    }
  }
  const task = scheduler.spawn(
    noting("outer", 100, noting("middle", 15_000, noting("inner", 10_000, sleep(5_000)))),
  );
  const outcome = assert.rejects(task.result, TimeoutError);
  await scheduler.run();
  await outcome;
  assert.deepEqual(seen, ["inner: 100", "middle: 100", "outer: 100"]);
});

Deno.test("curio test_nested_timeout_uncaught: an inner block's uncaught TimeoutError passes the outer block unchanged (genio has no UncaughtTimeoutError: error.ms and error.deadline tell)", async () => {
  const { scheduler } = testScheduler();
  const log: string[] = [];
  const task = scheduler.spawn(function* () {
    try {
      yield* timeout(
        10_000,
        timeout(
          1_000,
          function* () {
            log.push("coro1 start");
            yield* sleep(5_000);
            log.push("coro1 done");
          }(),
        ),
      );
    } catch (error) {
      if (!(error instanceof TimeoutError)) throw error;
      log.push(error.ms === 10_000 ? "parent timeout" : "uncaught timeout");
    }
  }());
  await scheduler.run();
  await task.result;
  assert.deepEqual(log, ["coro1 start", "uncaught timeout"]);
});

Deno.test("curio test_nested_timeout_none: timeout(Infinity) never runs out, and the outer block's does", async () => {
  const { scheduler, clock } = testScheduler();
  const log: string[] = [];
  scheduler.spawn(function* () {
    try {
      yield* timeout(
        1_000,
        function* () {
          yield* timeout(
            Infinity,
            function* () {
              log.push("coro1 start");
              yield* sleep(2_000);
              log.push("coro1 done");
            }(),
          );
          log.push("coro1 success");
        }(),
      );
    } catch (error) {
      if (error instanceof TimeoutError) log.push(`parent timeout at ${clock.now()}`);
    }
  }());
  await scheduler.run();
  assert.deepEqual(log, ["coro1 start", "parent timeout at 1000"]);
});

Deno.test("curio test_sleep_0_starvation: a task looping on sleep(0) starves neither conn traffic nor its canceller", async () => {
  const { scheduler } = testScheduler();
  const [one, two] = memoryConnPair();
  let spins = 0;
  const x = new TextEncoder().encode("x");
  function* io1(): Operation<void> {
    yield* read(one, new Uint8Array(1));
    yield* write(one, x);
    yield* read(one, new Uint8Array(1));
  }
  function* io2(): Operation<void> {
    yield* write(two, x);
    yield* read(two, new Uint8Array(1));
    yield* write(two, x);
  }
  const main = scheduler.spawn(function* () {
    const loop = yield* spawn(function* () {
      while (true) {
        spins++;
        yield* sleep(0);
      }
    }());
    yield* sleep(0);
    const a = yield* spawn(io1());
    const b = yield* spawn(io2());
    yield* join(a);
    yield* join(b);
    yield* cancel(loop);
    return loop.state;
  }());
  await scheduler.run();
  assert.equal(await main.result, "cancelled");
  assert.ok(spins > 1);
  one.close();
  two.close();
});

Deno.test("curio test_task_cancel_timeout: genio differs: a cancelled task's deadline still bounds its cleanup, and is delivered as Cancelled (Trio's choice)", async () => {
  const { scheduler, clock } = testScheduler();
  const log: string[] = [];
  function* coro(): Operation<void> {
    try {
      yield* sleep(5_000);
    } catch (error) {
      if (!(error instanceof Cancelled)) throw error;
      log.push("cancelled");
      try {
        yield* sleep(1_000); // past the deadline at 1000: Curio lets it run its course
        log.push("done cancel");
      } catch (late) {
        log.push(`cleanup got ${(late as Error).name} at ${clock.now()}`);
      }
      throw error;
    }
  }
  const child = scheduler.spawn(function* () {
    log.push("child");
    try {
      yield* timeout(1_000, coro());
    } catch (error) {
      if (error instanceof TimeoutError) log.push("timeout");
      throw error;
    }
  }());
  scheduler.spawn(function* () {
    yield* sleep(500);
    yield* cancel(child);
  }());
  await scheduler.run();
  assert.deepEqual(log, ["child", "cancelled", "cleanup got Cancelled at 1000"]);
  assert.equal(child.state, "cancelled");
});

Deno.test("curio test_reentrant_kernel: a running scheduler refuses step(), and run() again gives the same promise", async () => {
  const { scheduler } = testScheduler();
  let running: Promise<void> | null = null;
  const task = scheduler.spawn(function* () {
    yield* sleep(1);
    assert.equal(scheduler.run(), running);
    assert.throws(() => scheduler.step(), /Cannot step: the scheduler is running/);
    return "refused";
  }());
  running = scheduler.run();
  await running;
  assert.equal(await task.result, "refused");
});

Deno.test("curio test_pending_cancellation: a pending cancel is delivered at the next blocking intent, never at a non-blocking one", async () => {
  const { scheduler } = testScheduler();
  const log: string[] = [];
  const target = scheduler.spawn(function* () {
    yield; // on the ready queue when the cancel comes
    const helper = yield* spawn(sleep(1)); // spawn does not block: no Cancelled here
    log.push("spawned");
    yield* timeout(
      100,
      function* () {
        log.push("deadline set");
      }(),
    );
    log.push("deadline cleared");
    try {
      yield* sleep(1_000);
    } catch (error) {
      log.push(`sleep threw ${(error as Error).name}`);
    }
    yield* join(helper);
  }());
  scheduler.spawn(function* () {
    yield* cancel(target);
  }());
  await scheduler.run();
  assert.deepEqual(log, ["spawned", "deadline set", "deadline cleared", "sleep threw Cancelled"]);
  assert.equal(target.state, "done");
});

Deno.test("curio test_single_stepping: step() runs one task up to its next yield", async () => {
  const scheduler = new Scheduler();
  let value = 0;
  const task = scheduler.spawn(function* () {
    yield* sleep(0);
    value = 1;
    yield* sleep(5);
    value = 2;
  }());
  assert.equal(scheduler.step(), task); // up to sleep(0)
  assert.equal(value, 0);
  assert.equal(scheduler.step(), task); // up to sleep(5)
  assert.equal(value, 1);
  assert.equal(scheduler.step(), null);
  await scheduler.run();
  assert.equal(value, 2);
});

Deno.test("curio test_io_registration: a second reader of a conn gets BusyError, and a cancelled reader's bytes go to the next reader", async () => {
  const { scheduler } = testScheduler();
  const [client, server] = memoryConnPair();
  const main = scheduler.spawn(function* () {
    const first = yield* spawn(read(server, new Uint8Array(8)));
    const second = yield* spawn(read(server, new Uint8Array(8)));
    let refused = false;
    try {
      yield* join(second);
    } catch (error) {
      refused = error instanceof BusyError;
    }
    yield* cancel(first);
    yield* wait(client.write(new TextEncoder().encode("hello")));
    const buffer = new Uint8Array(8);
    const n = yield* read(server, buffer);
    return [refused, first.state, new TextDecoder().decode(buffer.subarray(0, n ?? 0))];
  }());
  await scheduler.run();
  assert.deepEqual(await main.result, [true, "cancelled", "hello"]);
  client.close();
  server.close();
});

// --- Trio: src/trio/_core/_tests/test_run.py -----------------------------------------------

Deno.test("trio test_basic: a task's value is its result, and spawn refuses what is not a generator", async () => {
  const { scheduler } = testScheduler();
  function* trivial(x: number): Operation<number> {
    yield;
    return x;
  }
  const task = scheduler.spawn(trivial(8));
  assert.throws(() => scheduler.spawn((() => 1) as unknown as Operation<void>), TypeError);
  assert.throws(() => scheduler.spawn(trivial as unknown as Operation<void>), TypeError);
  await scheduler.run();
  assert.equal(await task.result, 8);
});

Deno.test("trio test_initial_task_error: the error a task throws is its result's", async () => {
  const { scheduler } = testScheduler();
  const error = new RangeError("17");
  // deno-lint-ignore require-yield
  const task = scheduler.spawn(function* () {
    throw error;
  }());
  const outcome = assert.rejects(task.result, (thrown) => thrown === error);
  await scheduler.run();
  await outcome;
});

Deno.test("trio test_basic_interleave: tasks that checkpoint take turns, in spawn order", async () => {
  const { scheduler } = testScheduler();
  const record: string[] = [];
  function* looper(whoami: string): Operation<void> {
    for (let i = 0; i < 3; i++) {
      record.push(`${whoami}${i}`);
      yield;
    }
  }
  scheduler.spawn(looper("a"));
  scheduler.spawn(looper("b"));
  await scheduler.run();
  assert.deepEqual(record, ["a0", "b0", "a1", "b1", "a2", "b2"]);
});

Deno.test("trio test_task_crash_propagation: genio differs: a crashing child fails alone, its sibling goes on, and the crash is reported", async () => {
  const { scheduler, reported } = testScheduler();
  const record: string[] = [];
  const main = scheduler.spawn(function* () {
    const looper = yield* spawn(function* () {
      try {
        for (let i = 0; i < 5; i++) yield* sleep(1);
        record.push("looper finished");
      } catch (error) {
        if (error instanceof Cancelled) record.push("cancelled");
      }
    }());
    yield* spawn(function* () {
      throw new Error("argh");
    }());
    yield* join(looper);
    return "main finished";
  }());
  await scheduler.run();
  assert.equal(await main.result, "main finished");
  assert.deepEqual(record, ["looper finished"]);
  assert.deepEqual(reported, ["argh"]);
});

Deno.test("trio test_child_crash_wakes_parent: genio differs: a parent learns of a child's crash by joining it", async () => {
  const { scheduler, reported } = testScheduler();
  const main = scheduler.spawn(function* () {
    const crasher = yield* spawn(function* () {
      throw new Error("this is a crash");
    }());
    try {
      yield* join(crasher);
    } catch (error) {
      return (error as Error).message;
    }
  }());
  await scheduler.run();
  assert.equal(await main.result, "this is a crash");
  assert.deepEqual(reported, []);
});

Deno.test("trio test_cancel_points: a task cancelled between checkpoints gets Cancelled at its next one, a bare yield or any blocking intent", async () => {
  const { scheduler } = testScheduler();
  const seen: string[] = [];
  function* checkpointing(name: string, checkpoint: Operation<unknown>): Operation<void> {
    yield; // back to the ready queue: the cancel comes while it is there
    seen.push(`${name} resumed`);
    try {
      yield* checkpoint;
      seen.push(`${name} went on`);
    } catch (error) {
      if (error instanceof Cancelled) seen.push(`${name} cancelled`);
    }
  }
  function* bareYield(): Operation<void> {
    yield;
  }
  const checkpoints = [
    ["yield", bareYield()],
    ["sleep(0)", sleep(0)],
    ["sleep(Infinity)", sleep(Infinity)],
    ["wait", wait(Promise.resolve())],
  ] as const;
  const tasks = checkpoints.map(([name, checkpoint]) =>
    scheduler.spawn(checkpointing(name, checkpoint))
  );
  for (const task of tasks) scheduler.spawn(cancel(task));
  await scheduler.run();
  assert.deepEqual(seen, [
    "yield resumed",
    "yield cancelled",
    "sleep(0) resumed",
    "sleep(0) cancelled",
    "sleep(Infinity) resumed",
    "sleep(Infinity) cancelled",
    "wait resumed",
    "wait cancelled",
  ]);
  assert.deepEqual(tasks.map((task) => task.state), ["done", "done", "done", "done"]);
});

Deno.test("trio test_cancel_edge_cases: two cancels are one; genio differs: Cancelled is delivered once, where Trio raises it at every checkpoint", async () => {
  const { scheduler, clock } = testScheduler();
  const log: string[] = [];
  const target = scheduler.spawn(function* () {
    try {
      yield* sleep(Infinity);
    } catch (error) {
      if (error instanceof Cancelled) log.push(`cancelled at ${clock.now()}`);
    }
    yield* sleep(10); // Trio would raise Cancelled here again
    log.push(`slept on to ${clock.now()}`);
  }());
  scheduler.spawn(function* () {
    yield* sleep(5);
    yield* spawn(cancel(target));
    yield* cancel(target);
    log.push("both cancels returned");
  }());
  await scheduler.run();
  assert.deepEqual(log, ["cancelled at 5", "slept on to 15", "both cancels returned"]);
  assert.equal(target.state, "done");
});

Deno.test("trio test_precancelled_task: a task cancelled before it runs starts, and gets Cancelled at its first blocking call", async () => {
  const { scheduler } = testScheduler();
  const record: string[] = [];
  const main = scheduler.spawn(function* () {
    const blocker = yield* spawn(function* () {
      record.push("started");
      try {
        yield* sleep(Infinity);
      } finally {
        record.push("finally ran");
      }
    }());
    yield* cancel(blocker);
    return blocker.state;
  }());
  await scheduler.run();
  assert.equal(await main.result, "cancelled");
  assert.deepEqual(record, ["started", "finally ran"]);
});

Deno.test("trio test_cancel_inheritance: cancelling a task reaches its children's children", async () => {
  const { scheduler } = testScheduler();
  const record = new Set<string>();
  function* leaf(ident: string): Operation<void> {
    try {
      yield* sleep(Infinity);
    } catch (error) {
      if (error instanceof Cancelled) record.add(ident);
      throw error;
    }
  }
  function* worker(ident: string): Operation<void> {
    yield* spawn(leaf(`${ident}-l1`));
    yield* spawn(leaf(`${ident}-l2`));
    yield* sleep(Infinity);
  }
  scheduler.spawn(function* () {
    const top = yield* spawn(function* () {
      yield* spawn(worker("w1"));
      yield* spawn(worker("w2"));
      yield* sleep(Infinity);
    }());
    yield* sleep(1);
    yield* cancel(top);
  }());
  await scheduler.run();
  assert.deepEqual([...record].sort(), ["w1-l1", "w1-l2", "w2-l1", "w2-l2"]);
});

Deno.test("trio test_basic_timeout: a deadline after its block does nothing; inside it, every checkpoint after it throws", async () => {
  const { scheduler, clock } = testScheduler();
  const log: string[] = [];
  scheduler.spawn(function* () {
    yield* timeout(10, sleep(1));
    yield* sleep(20); // past the block's deadline: nothing
    log.push(`after the block at ${clock.now()}`);
    try {
      yield* timeout(
        10,
        function* () {
          for (let i = 0; i < 3; i++) {
            try {
              yield* sleep(100);
            } catch (error) {
              log.push(`${(error as Error).name} at ${clock.now()}`);
            }
          }
        }(),
      );
    } catch (error) {
      log.push(`the block threw ${(error as Error).name}`);
    }
  }());
  await scheduler.run();
  assert.deepEqual(log, [
    "after the block at 21",
    "TimeoutError at 31",
    "TimeoutError at 31",
    "TimeoutError at 31",
    "the block threw TimeoutError",
  ]);
});

Deno.test("trio test_cancel_scope_nesting: of two deadlines running out at once, the outer block's is delivered", async () => {
  const { scheduler } = testScheduler();
  const seen: number[] = [];
  const task = scheduler.spawn(function* () {
    try {
      yield* timeout(
        10,
        function* () {
          yield* sleep(5);
          try {
            yield* timeout(5, sleep(Infinity)); // runs out at 10 too
          } catch (error) {
            seen.push((error as TimeoutError).ms);
            throw error;
          }
        }(),
      );
    } catch (error) {
      seen.push((error as TimeoutError).ms);
    }
  }());
  await scheduler.run();
  await task.result;
  assert.deepEqual(seen, [10, 10]);
});

Deno.test("trio test_cancel_scope_nesting: a block left before its passed deadline was delivered does not deliver it later", async () => {
  const { scheduler, virtual } = lateScheduler(2);
  const task = scheduler.spawn(function* () {
    const inTime = yield* timeout(
      10,
      function* () {
        yield* sleep(9); // resumed at 11, after the deadline: it completed in time
        return "in time";
      }(),
    );
    yield* sleep(5);
    return `${inTime}, then slept to ${virtual.now()}`;
  }());
  await scheduler.run();
  assert.equal(await task.result, "in time, then slept to 18");
});

Deno.test("trio test_timekeeping: on the real clock, a timeout fires no earlier than its deadline", async () => {
  const scheduler = new Scheduler();
  const task = scheduler.spawn(function* () {
    const start = performance.now();
    try {
      yield* timeout(30, sleep(Infinity));
    } catch (error) {
      if (!(error instanceof TimeoutError)) throw error;
    }
    return performance.now() - start;
  }());
  await scheduler.run();
  const elapsed = await task.result;
  assert.ok(elapsed >= 30 && elapsed < 2_000, `timed out after ${elapsed} ms`);
});

Deno.test("trio test_yield_briefly_checks_for_timeout: a task that only yields gets its TimeoutError at a bare yield", async () => {
  const scheduler = new Scheduler();
  const task = scheduler.spawn(function* () {
    const start = performance.now();
    let yields = 0;
    try {
      yield* timeout(
        20,
        function* () {
          while (performance.now() - start < 2_000) {
            busyWait(1);
            yields++;
            yield;
          }
        }(),
      );
      return "never timed out";
    } catch (error) {
      if (!(error instanceof TimeoutError)) throw error;
      return { elapsed: performance.now() - start, yields };
    }
  }());
  await scheduler.run();
  const result = await task.result;
  assert.ok(typeof result === "object", "the loop of bare yields was never timed out");
  assert.ok(result.elapsed >= 20 && result.yields > 1, JSON.stringify(result));
});

Deno.test("trio test_current_statistics: stats() counts live and ready tasks, and tasks() shows a block's deadline", async () => {
  const { scheduler, clock } = testScheduler();
  const snapshots: unknown[] = [];
  scheduler.spawn(function* () {
    const child = yield* spawn(sleep(Infinity));
    yield* sleep(1);
    snapshots.push(scheduler.stats());
    yield* timeout(
      5,
      function* () {
        snapshots.push(scheduler.tasks().map((task) => task.deadline));
      }(),
    );
    yield* cancel(child);
    snapshots.push(scheduler.stats().tasks, clock.now());
  }());
  await scheduler.run();
  assert.deepEqual(snapshots, [
    { tasks: 2, byState: { running: 1, sleeping: 1 }, ready: 0, timers: 0 },
    [6, null],
    1,
    1,
  ]);
});

// --- Effection: test/spawn.test.ts and test/run.test.ts ------------------------------------

Deno.test("effection spawn: can spawn a new child task, whose result reaches its parent by join", async () => {
  const { scheduler } = testScheduler();
  const root = scheduler.spawn(function* () {
    const child = yield* spawn(function* () {
      const one = yield* wait(Promise.resolve(12));
      const two = yield* wait(Promise.resolve(55));
      return one + two;
    }());
    return yield* join(child);
  }());
  await scheduler.run();
  assert.equal(await root.result, 67);
});

Deno.test("effection spawn: halts child when halted: cancelling a task cancels its child", async () => {
  const { scheduler } = testScheduler();
  let child: Task<void> | null = null;
  const root = scheduler.spawn(function* () {
    child = yield* spawn(sleep(Infinity));
    yield* sleep(Infinity);
  }());
  scheduler.spawn(function* () {
    yield* sleep(1);
    yield* cancel(root);
  }());
  await scheduler.run();
  assert.equal(root.state, "cancelled");
  assert.equal(child!.state, "cancelled");
});

Deno.test("effection spawn: halts child when finishing normally", async () => {
  const { scheduler } = testScheduler();
  let child: Task<void> | null = null;
  const root = scheduler.spawn(function* () {
    child = yield* spawn(sleep(Infinity));
    yield* sleep(0);
    return 1;
  }());
  await scheduler.run();
  assert.equal(await root.result, 1);
  await assert.rejects(child!.result, Cancelled);
});

Deno.test("effection spawn: halts child when errored", async () => {
  const { scheduler } = testScheduler();
  let child: Task<void> | null = null;
  const root = scheduler.spawn(function* () {
    child = yield* spawn(sleep(Infinity));
    yield* sleep(0);
    throw new Error("boom");
  }());
  const outcome = assert.rejects(root.result, /boom/);
  await scheduler.run();
  await outcome;
  assert.equal(child!.state, "cancelled");
});

Deno.test("effection spawn: rejects parent when child errors: genio differs: the child fails alone and is reported", async () => {
  const { scheduler, reported } = testScheduler();
  const root = scheduler.spawn(function* () {
    yield* spawn(function* () {
      throw new Error("moo");
    }());
    yield* sleep(10);
    return "parent unharmed";
  }());
  await scheduler.run();
  assert.equal(await root.result, "parent unharmed");
  assert.deepEqual(reported, ["moo"]);
});

Deno.test("effection spawn: finishes normally when child halts", async () => {
  const { scheduler } = testScheduler();
  let child: Task<void> | null = null;
  const root = scheduler.spawn(function* () {
    child = yield* spawn(sleep(Infinity));
    yield* cancel(child);
    return "foo";
  }());
  await scheduler.run();
  assert.equal(await root.result, "foo");
  assert.equal(child!.state, "cancelled");
});

Deno.test("effection spawn: rejects when child errors during completing: genio differs: the child's cleanup error fails the child alone", async () => {
  const { scheduler, reported } = testScheduler();
  let child: Task<void> | null = null;
  const root = scheduler.spawn(function* () {
    child = yield* spawn(function* () {
      try {
        yield* sleep(Infinity);
      } finally {
        // deno-lint-ignore no-unsafe-finally
        throw new Error("moo");
      }
    }());
    yield* sleep(0);
    return "foo";
  }());
  await scheduler.run();
  assert.equal(await root.result, "foo");
  assert.equal(child!.state, "failed");
  assert.deepEqual(reported, ["moo"]);
});

Deno.test("effection spawn: halts when child finishes during asynchronous halt", async () => {
  const { scheduler } = testScheduler();
  let didFinish = false;
  const root = scheduler.spawn(function* () {
    yield* spawn(sleep(5));
    try {
      yield* sleep(Infinity);
    } finally {
      yield* sleep(20);
      didFinish = true;
    }
  }());
  scheduler.spawn(cancel(root));
  await scheduler.run();
  assert.equal(didFinish, true);
  assert.equal(root.state, "cancelled");
});

Deno.test("effection spawn: runs destructors in reverse order and in series: genio differs: in spawn order, all at once", async () => {
  const { scheduler } = testScheduler();
  const result: string[] = [];
  function* withCleanup(name: string, ms: number): Operation<void> {
    try {
      yield* sleep(Infinity);
    } finally {
      result.push(`${name} start`);
      yield* sleep(ms);
      result.push(`${name} done`);
    }
  }
  scheduler.spawn(function* () {
    yield* spawn(withCleanup("first", 5));
    yield* spawn(withCleanup("second", 10));
    yield* sleep(0);
  }());
  await scheduler.run();
  assert.deepEqual(result, ["first start", "second start", "first done", "second done"]);
});

Deno.test("effection spawn: executes tasks first in first out", async () => {
  const { scheduler } = testScheduler();
  const order: string[] = [];
  scheduler.spawn(function* () {
    yield* spawn(function* () {
      order.push("one");
    }());
    yield* spawn(function* () {
      order.push("two");
    }());
    order.push("zero");
    yield* sleep(0);
  }());
  await scheduler.run();
  assert.deepEqual(order, ["zero", "one", "two"]);
});

Deno.test("effection run: can recover from errors in promise", async () => {
  const { scheduler } = testScheduler();
  const task = scheduler.spawn(function* () {
    const one = yield* wait(Promise.resolve(12));
    let two: number;
    try {
      yield* wait(Promise.reject(new Error("boom")));
      two = 9;
    } catch {
      two = yield* wait(Promise.resolve(8));
    }
    const three = yield* wait(Promise.resolve(55));
    return one + two + three;
  }());
  await scheduler.run();
  assert.equal(await task.result, 75);
});

Deno.test("effection run: halts task when halted generator: nested finally blocks run innermost first", async () => {
  const { scheduler } = testScheduler();
  const states: string[] = [];
  const task = scheduler.spawn(function* () {
    try {
      yield* function* () {
        try {
          yield* sleep(Infinity);
        } finally {
          states.push("child halted");
        }
      }();
    } finally {
      states.push("parent halted");
    }
  }());
  scheduler.spawn(cancel(task));
  const outcome = assert.rejects(task.result, Cancelled);
  await scheduler.run();
  await outcome;
  assert.deepEqual(states, ["child halted", "parent halted"]);
});

Deno.test("effection run: can suspend in yielded finally block: a nested operation's cleanup may wait", async () => {
  const { scheduler } = testScheduler();
  const things: string[] = [];
  const task = scheduler.spawn(function* () {
    try {
      yield* function* () {
        try {
          yield* sleep(Infinity);
        } finally {
          yield* sleep(5);
          things.push("first");
        }
      }();
    } finally {
      things.push("second");
    }
  }());
  scheduler.spawn(cancel(task));
  const outcome = assert.rejects(task.result, Cancelled);
  await scheduler.run();
  await outcome;
  assert.deepEqual(things, ["first", "second"]);
});

Deno.test("effection run: can halt itself: genio differs: a task cannot cancel itself, it returns or throws instead", async () => {
  const { scheduler } = testScheduler();
  let self: Task<string> | null = null;
  self = scheduler.spawn(function* () {
    yield* sleep(3);
    try {
      yield* cancel(self!);
      return "cancelled itself";
    } catch (error) {
      return (error as Error).message;
    }
  }());
  await scheduler.run();
  assert.match(await self.result, /Cannot cancel the current task/);
});
