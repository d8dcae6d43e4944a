// Queue, Event, Semaphore and withPermit: their waits are the kernel's (shown in tasks(),
// cancellable, under timeout()), first come first served, and nothing is lost or doubled when
// a waiter stops waiting. Time runs on the virtual clock wherever it matters.
import assert from "node:assert/strict";
import {
  cancel,
  Cancelled,
  Event,
  type Operation,
  Queue,
  QueueClosed,
  Scheduler,
  Semaphore,
  sleep,
  spawn,
  type Task,
  timeout,
  TimeoutError,
  withPermit,
} from "../mod.ts";
import { VirtualClock } from "../testing.ts";
import { runTask, testScheduler } from "./_schedulers.ts";

// The error an operation threw, or "returned".
function* outcome(operation: Operation<unknown>): Operation<unknown> {
  try {
    yield* operation;
    return "returned";
  } catch (error) {
    return error;
  }
}

// --- Queue ------------------------------------------------------------------------------

Deno.test("new Queue() takes a positive integer or Infinity as capacity, and nothing else", () => {
  for (const capacity of [0, -1, 1.5, NaN, -Infinity, "3" as unknown as number]) {
    assert.throws(() => new Queue(capacity), RangeError, String(capacity));
  }
  assert.throws(() => new Queue(0), /^RangeError: Cannot create a queue: .* got "0"$/);
  const queue = new Queue<number>(3);
  assert.equal(queue.capacity, 3);
  assert.equal(queue.size, 0);
  assert.equal(new Queue(Infinity).capacity, Infinity);
});

Deno.test("a queue hands items over first in, first out, put waiting while full, get while empty", async () => {
  const { scheduler, now } = testScheduler();
  const queue = new Queue<number>(2);
  const log: string[] = [];
  scheduler.spawn(function* () {
    for (let i = 1; i <= 4; i++) {
      yield* queue.put(i);
      log.push(`put ${i} at ${now()}`);
    }
  }());
  scheduler.spawn(function* () {
    for (let i = 1; i <= 4; i++) {
      yield* sleep(10);
      log.push(`got ${yield* queue.get()} at ${now()}`);
    }
  }());
  await scheduler.run();
  assert.deepEqual(log, [
    "put 1 at 0",
    "put 2 at 0",
    "got 1 at 10",
    "put 3 at 10",
    "got 2 at 20",
    "put 4 at 20",
    "got 3 at 30",
    "got 4 at 40",
  ]);
  assert.equal(queue.size, 0);
});

Deno.test("tasks waiting to get are served first come, first served", async () => {
  const { scheduler } = testScheduler();
  const queue = new Queue<string>(10);
  const got: string[] = [];
  for (const name of ["a", "b", "c"]) {
    scheduler.spawn(function* () {
      got.push(`${name}:${yield* queue.get()}`);
    }());
  }
  scheduler.spawn(function* () {
    yield* sleep(1);
    for (const item of ["1", "2", "3"]) yield* queue.put(item);
  }());
  await scheduler.run();
  assert.deepEqual(got, ["a:1", "b:2", "c:3"]);
});

Deno.test("tasks waiting to put are served first come, first served, after what was queued", async () => {
  const { scheduler } = testScheduler();
  const queue = new Queue<string>(1);
  for (const item of ["1", "2", "3"]) scheduler.spawn(queue.put(item));
  const got = await runTask(
    scheduler,
    function* () {
      yield* sleep(1);
      const got: string[] = [];
      for (let i = 0; i < 3; i++) got.push(yield* queue.get());
      return got;
    }(),
  );
  assert.deepEqual(got, ["1", "2", "3"]);
});

Deno.test("a get from a full queue admits the first waiting put's item, keeping the queue full", async () => {
  const { scheduler } = testScheduler();
  const queue = new Queue<string>(2);
  const putters: Task<void>[] = [];
  const result = await runTask(
    scheduler,
    function* () {
      yield* queue.put("a");
      yield* queue.put("b");
      putters.push(yield* spawn(queue.put("c")), yield* spawn(queue.put("d")));
      yield* sleep(1);
      const first = yield* queue.get();
      const sizeAfter = queue.size;
      yield* sleep(1);
      return { first, sizeAfter, c: putters[0].state, d: putters[1].state };
    }(),
  );
  assert.deepEqual(result, { first: "a", sizeAfter: 2, c: "done", d: "waiting" });
});

Deno.test("an item put while a task waits to get goes to that task, not to a later get", async () => {
  const { scheduler } = testScheduler();
  const queue = new Queue<string>(1);
  const got: string[] = [];
  scheduler.spawn(function* () {
    got.push(`waiter:${yield* queue.get()}`);
  }());
  scheduler.spawn(function* () {
    yield* sleep(1);
    yield* queue.put("x"); // the waiter is now ready, but has not run yet
    yield* queue.put("y");
    got.push(`latecomer:${yield* queue.get()}`); // must not take "x"
  }());
  await scheduler.run();
  assert.deepEqual(got.sort(), ["latecomer:y", "waiter:x"]);
});

Deno.test("a get or a put from a task that can go on at once is not a checkpoint", () => {
  const scheduler = new Scheduler();
  const queue = new Queue<number>(2);
  const task = scheduler.spawn(function* () {
    yield* queue.put(1);
    yield* queue.put(2);
    return (yield* queue.get()) + (yield* queue.get());
  }());
  assert.equal(scheduler.step(), task);
  assert.equal(task.state, "done", "the whole body ran in one step, never yielding");
});

// Every waiting state, ended by a cancel and by a timeout: the wait is the kernel's, and
// what the waiter brought or would have taken stays where it belongs.
interface Waiting {
  what: string;
  // Sets up an object with one task about to wait on it.
  setUp(): {
    on: object;
    prepare?: () => Operation<void>;
    wait: () => Operation<unknown>;
    check: () => Operation<void>;
  };
}

const WAITING: Waiting[] = [
  {
    what: "a put on a full queue",
    setUp() {
      const queue = new Queue<string>(1);
      return {
        on: queue,
        prepare: () => queue.put("first"),
        wait: () => queue.put("waiter's"),
        *check() {
          assert.equal(yield* queue.get(), "first");
          assert.equal(queue.size, 0, "a waiting put's item would have been let in");
        },
      };
    },
  },
  {
    what: "a get on an empty queue",
    setUp() {
      const queue = new Queue<string>(1);
      return {
        on: queue,
        wait: () => queue.get(),
        *check() {
          yield* queue.put("kept");
          assert.equal(queue.size, 1, "the item stayed in the queue");
          assert.equal(yield* queue.get(), "kept");
        },
      };
    },
  },
  {
    what: "a wait on an event",
    setUp() {
      const event = new Event();
      return {
        on: event,
        wait: () => event.wait(),
        *check() {
          event.set();
          assert.equal(event.isSet, true);
          yield* event.wait(); // set: returns at once
        },
      };
    },
  },
  {
    what: "an acquire on a semaphore",
    setUp() {
      const semaphore = new Semaphore(0);
      return {
        on: semaphore,
        wait: () => semaphore.acquire(),
        *check() {
          semaphore.release();
          assert.equal(semaphore.available, 1, "the permit was not taken by the gone waiter");
          yield* semaphore.acquire();
          assert.equal(semaphore.available, 0);
        },
      };
    },
  },
];

for (const { what, setUp } of WAITING) {
  for (const how of ["cancel", "timeout"] as const) {
    Deno.test(`${what} shows as waiting on the object and ends by ${how}, taking nothing`, async () => {
      const { scheduler, now } = testScheduler();
      const { on, prepare, wait, check } = setUp();
      if (prepare !== undefined) scheduler.spawn(prepare());
      const waiter = scheduler.spawn(
        outcome(how === "timeout" ? timeout(50, wait()) : wait()),
        { name: "waiter" },
      );
      await runTask(
        scheduler,
        function* () {
          yield* sleep(10);
          const info = scheduler.tasks().find((task) => task.name === "waiter")!;
          assert.equal(info.state, "waiting");
          assert.equal(info.waitingOn, on);
          if (how === "cancel") yield* cancel(waiter);
          else yield* sleep(100);
          yield* check();
        }(),
      );
      const error = await waiter.result;
      if (how === "cancel") {
        assert.ok(error instanceof Cancelled, String(error));
        assert.equal(now(), 10);
      } else {
        assert.ok(error instanceof TimeoutError, String(error));
      }
    });
  }
}

Deno.test("a getter served and cancelled before it runs still gets its item, then Cancelled", async () => {
  const { scheduler } = testScheduler();
  const queue = new Queue<string>(1);
  const log: string[] = [];
  const getter = scheduler.spawn(function* () {
    log.push(`got ${yield* queue.get()}`);
    yield* sleep(1); // the next checkpoint
    log.push("not reached");
  }());
  await runTask(
    scheduler,
    function* () {
      yield* sleep(1);
      yield* queue.put("x"); // the getter is on the ready queue with "x"
      yield* cancel(getter);
    }(),
  );
  assert.deepEqual(log, ["got x"]);
  assert.equal(getter.state, "cancelled");
  assert.equal(queue.size, 0);
});

Deno.test("a getter served just before its time limit runs out returns the item, not a timeout", async () => {
  const clock = new VirtualClock();
  const scheduler = new Scheduler({ clock });
  const queue = new Queue<string>(1);
  const getter = scheduler.spawn(function* () {
    try {
      return yield* timeout(10, queue.get());
    } catch (error) {
      return error;
    }
  }());
  scheduler.spawn(function* () {
    yield* sleep(5);
    yield* queue.put("x");
  }());
  scheduler.step(); // the getter waits, its limit at t=10
  scheduler.step(); // the putter sleeps until t=5
  await clock.advance(5);
  scheduler.step(); // the putter hands "x" over: the getter is ready, not yet run
  await clock.advance(5); // its limit runs out while it is on the ready queue
  assert.equal(getter.state, "ready");
  scheduler.step();
  assert.equal(await getter.result, "x");
  assert.equal(queue.size, 0);
});

Deno.test("a putter admitted and cancelled before it runs has its item in the queue", async () => {
  const { scheduler } = testScheduler();
  const queue = new Queue<string>(1);
  const log: string[] = [];
  const result = await runTask(
    scheduler,
    function* () {
      yield* queue.put("a");
      const putter = yield* spawn(function* () {
        yield* queue.put("b");
        log.push("put b returned");
        yield* sleep(1);
      }());
      yield* sleep(1);
      const first = yield* queue.get(); // admits "b"
      yield* cancel(putter);
      return [first, yield* queue.get(), putter.state];
    }(),
  );
  assert.deepEqual(result, ["a", "b", "cancelled"]);
  assert.deepEqual(log, ["put b returned"]);
});

Deno.test("close() wakes every waiting getter and putter with QueueClosed", async () => {
  const { scheduler } = testScheduler();
  const empty = new Queue<string>(1);
  const full = new Queue<string>(1);
  const waiters: Task<unknown>[] = [];
  const result = await runTask(
    scheduler,
    function* () {
      yield* full.put("held");
      for (let i = 0; i < 3; i++) {
        waiters.push(yield* spawn(outcome(empty.get())), yield* spawn(outcome(full.put("x"))));
      }
      yield* sleep(1);
      empty.close();
      full.close();
      yield* sleep(1);
      return waiters.map((task) => task.state);
    }(),
  );
  assert.deepEqual(result, Array(6).fill("done"));
  for (const waiter of waiters) {
    const error = await waiter.result;
    assert.ok(error instanceof QueueClosed);
  }
  assert.equal(((await waiters[0].result) as QueueClosed).queue, empty);
  assert.equal(((await waiters[1].result) as QueueClosed).queue, full);
});

Deno.test("a closed queue refuses puts, lets gets drain it, then throws QueueClosed", async () => {
  const { scheduler } = testScheduler();
  const queue = new Queue<number>(3);
  const result = await runTask(
    scheduler,
    function* () {
      yield* queue.put(1);
      yield* queue.put(2);
      queue.close();
      queue.close(); // again: nothing happens
      const refused = yield* outcome(queue.put(3));
      const drained = [yield* queue.get(), yield* queue.get()];
      const after = yield* outcome(queue.get());
      return { refused, drained, after, closed: queue.closed };
    }(),
  );
  assert.ok(result.refused instanceof QueueClosed);
  assert.match(String(result.refused), /^QueueClosed: Cannot use the queue: it was closed$/);
  assert.deepEqual(result.drained, [1, 2]);
  assert.ok(result.after instanceof QueueClosed);
  assert.equal(result.closed, true);
});

Deno.test("a task on one scheduler wakes a task waiting on another", async () => {
  const queue = new Queue<string>(1);
  const one = new Scheduler();
  const two = new Scheduler();
  const getter = two.spawn(queue.get());
  const running = two.run();
  one.spawn(function* () {
    yield* sleep(1);
    yield* queue.put("across");
  }());
  await one.run();
  await running;
  assert.equal(await getter.result, "across");
});

// --- Event ------------------------------------------------------------------------------

Deno.test("an event wakes every waiter when set, in the order they came, and stays set", async () => {
  const { scheduler, now } = testScheduler();
  const event = new Event();
  const woke: string[] = [];
  for (const name of ["a", "b", "c"]) {
    scheduler.spawn(function* () {
      yield* event.wait();
      woke.push(`${name} at ${now()}`);
    }());
  }
  await runTask(
    scheduler,
    function* () {
      yield* sleep(20);
      assert.equal(event.isSet, false);
      event.set();
      event.set(); // again: nothing happens
      yield* sleep(5);
      yield* event.wait(); // set: returns at once
      woke.push(`late at ${now()}`);
    }(),
  );
  assert.deepEqual(woke, ["a at 20", "b at 20", "c at 20", "late at 25"]);
  assert.equal(event.isSet, true);
});

Deno.test("an event set by code outside any task wakes its waiters", async () => {
  const scheduler = new Scheduler();
  const event = new Event();
  const waiter = scheduler.spawn(event.wait());
  const running = scheduler.run();
  setTimeout(() => event.set(), 5);
  await running;
  assert.equal(waiter.state, "done");
});

// --- Semaphore and withPermit -----------------------------------------------------------

Deno.test("new Semaphore() takes an integer >= 0 or Infinity as permits, and nothing else", () => {
  for (const permits of [-1, 0.5, NaN, -Infinity]) {
    assert.throws(() => new Semaphore(permits), RangeError, String(permits));
  }
  assert.throws(() => new Semaphore(-1), /^RangeError: Cannot create a semaphore: .* got "-1"$/);
  assert.equal(new Semaphore(0).available, 0);
  assert.equal(new Semaphore(Infinity).available, Infinity);
});

Deno.test("a semaphore lets in as many as it has permits, the others first come, first served", async () => {
  const { scheduler, now } = testScheduler();
  const semaphore = new Semaphore(2);
  const log: string[] = [];
  for (const name of ["a", "b", "c", "d", "e"]) {
    scheduler.spawn(function* () {
      yield* semaphore.acquire();
      log.push(`${name} in at ${now()}`);
      yield* sleep(10);
      semaphore.release();
    }());
  }
  await scheduler.run();
  assert.deepEqual(log, [
    "a in at 0",
    "b in at 0",
    "c in at 10",
    "d in at 10",
    "e in at 20",
  ]);
  assert.equal(semaphore.available, 2);
});

Deno.test("a released permit goes to the waiting task, not to a task that asks after", async () => {
  const { scheduler } = testScheduler();
  const semaphore = new Semaphore(1);
  const log: string[] = [];
  scheduler.spawn(function* () {
    yield* semaphore.acquire();
    yield* sleep(1);
    semaphore.release(); // to the waiter, which has not run yet
    const other = yield* spawn(function* () {
      yield* semaphore.acquire();
      log.push("latecomer in");
    }());
    yield* sleep(1);
    log.push(`latecomer ${other.state}, ${semaphore.available} available`);
    semaphore.release();
  }());
  scheduler.spawn(function* () {
    yield* semaphore.acquire();
    log.push("waiter in");
  }());
  await scheduler.run();
  assert.deepEqual(log, ["waiter in", "latecomer waiting, 0 available", "latecomer in"]);
});

Deno.test("a semaphore released by code outside any task wakes its waiter", async () => {
  const scheduler = new Scheduler();
  const semaphore = new Semaphore(0);
  const waiter = scheduler.spawn(semaphore.acquire());
  const running = scheduler.run();
  setTimeout(() => semaphore.release(), 5);
  await running;
  assert.equal(waiter.state, "done");
  assert.equal(semaphore.available, 0);
});

Deno.test("withPermit releases the permit when the operation returns, throws or is cancelled", async () => {
  const { scheduler } = testScheduler();
  const semaphore = new Semaphore(1);
  const result = await runTask(
    scheduler,
    function* () {
      const returned = yield* withPermit(
        semaphore,
        function* () {
          yield* sleep(1);
          return semaphore.available;
        }(),
      );
      const thrown = yield* outcome(withPermit(
        semaphore,
        function* () {
          yield* sleep(1);
          throw new Error("boom");
        }(),
      ));
      const holder = yield* spawn(withPermit(semaphore, sleep(60_000)));
      yield* sleep(1);
      const heldWhileSleeping = semaphore.available;
      yield* cancel(holder);
      return [returned, (thrown as Error).message, heldWhileSleeping, semaphore.available];
    }(),
  );
  assert.deepEqual(result, [0, "boom", 0, 1]);
});

Deno.test("withPermit cancelled while waiting for its permit neither runs nor releases", async () => {
  const { scheduler } = testScheduler();
  const semaphore = new Semaphore(1);
  let ran = false;
  const result = await runTask(
    scheduler,
    function* () {
      yield* semaphore.acquire();
      const waiter = yield* spawn(withPermit(
        semaphore,
        function* () {
          ran = true;
          yield* sleep(1);
        }(),
      ));
      yield* sleep(1);
      yield* cancel(waiter);
      const afterCancel = semaphore.available;
      semaphore.release();
      return [waiter.state, afterCancel, semaphore.available];
    }(),
  );
  assert.deepEqual(result, ["cancelled", 0, 1]);
  assert.equal(ran, false);
});

Deno.test("withPermit under a timeout gives the permit back when the time runs out", async () => {
  const { scheduler } = testScheduler();
  const semaphore = new Semaphore(1);
  const result = await runTask(
    scheduler,
    outcome(timeout(10, withPermit(semaphore, sleep(60_000)))),
  );
  assert.ok(result instanceof TimeoutError);
  assert.equal(semaphore.available, 1);
});

// --- O(1) per operation ------------------------------------------------------------------

// The same 10,000 tasks wait either in one line or in 100 lines of 100, so that both runs
// touch as much memory and only the length of a line differs: each operation then costs
// the same on both (measured: within 10%), where a line that walks its entries (an indexOf,
// a splice) measured 4 to 6 times slower on the long one. The factor allowed is 3. Each
// figure is the fastest of three runs: a shared machine only ever makes a run slower.
const TASKS = 10_000;
const SHORT_LINE = 100;

// One permit goes round: a task woken in line k releases line k + 1 (the same line when
// there is one), then waits at the back of its line again. Returns the time per release.
async function msPerRelease(lines: number): Promise<number> {
  const rounds = 20_000;
  const scheduler = new Scheduler();
  const semaphores = Array.from({ length: lines }, () => new Semaphore(0));
  let left = rounds;
  let started = 0;
  let ended = 0;
  for (let i = 0; i < TASKS; i++) {
    const k = i % lines;
    scheduler.spawn(function* () {
      for (;;) {
        yield* semaphores[k].acquire();
        const last = left === 0; // then the permit only goes round to end every task
        if (!last && --left === 0) ended = performance.now();
        semaphores[(k + 1) % lines].release();
        if (last) return;
      }
    }());
  }
  // deno-lint-ignore require-yield
  scheduler.spawn(function* () { // runs once every task is in line
    started = performance.now();
    semaphores[0].release();
  }());
  await scheduler.run();
  return (ended - started) / rounds;
}

// Half the getters are cancelled, picked all over their lines, then a put goes to each of
// the others. Returns the time per getter.
async function msPerGetterLeaving(lines: number): Promise<number> {
  const scheduler = new Scheduler();
  const queues = Array.from({ length: lines }, () => new Queue<number>(1));
  const getters: Task<unknown>[] = [];
  for (let i = 0; i < TASKS; i++) getters.push(scheduler.spawn(outcome(queues[i % lines].get())));
  const main = scheduler.spawn(function* () {
    const started = performance.now();
    for (let i = 0; i < TASKS; i++) {
      const index = (i * 7919) % TASKS; // 7919 is prime: every index once, scattered
      if (Math.floor(index / lines) % 2 === 0) yield* cancel(getters[index]); // every other in line
    }
    for (let i = 0; i < TASKS / 2; i++) yield* queues[i % lines].put(i);
    return (performance.now() - started) / TASKS;
  }());
  await scheduler.run();
  const outcomes = await Promise.all(getters.map((getter) => getter.result));
  assert.equal(outcomes.filter((got) => got instanceof Cancelled).length, TASKS / 2);
  assert.ok(queues.every((queue) => queue.size === 0), "every item went to a getter");
  return await main.result;
}

async function fastest(measure: () => Promise<number>): Promise<number> {
  let best = Infinity;
  for (let i = 0; i < 3; i++) best = Math.min(best, await measure());
  return best;
}

Deno.test("a release costs the same with 10,000 tasks in a semaphore's line as with 100", async () => {
  await msPerRelease(TASKS / SHORT_LINE); // the JIT warms up
  const short = await fastest(() => msPerRelease(TASKS / SHORT_LINE));
  const long = await fastest(() => msPerRelease(1));
  assert.ok(long < short * 3, `${long.toFixed(5)} ms vs ${short.toFixed(5)} ms per release`);
});

Deno.test("leaving a queue's line from anywhere costs the same with 10,000 getters as with 100", async () => {
  await msPerGetterLeaving(TASKS / SHORT_LINE);
  const short = await fastest(() => msPerGetterLeaving(TASKS / SHORT_LINE));
  const long = await fastest(() => msPerGetterLeaving(1));
  assert.ok(long < short * 3, `${long.toFixed(5)} ms vs ${short.toFixed(5)} ms per getter`);
});
