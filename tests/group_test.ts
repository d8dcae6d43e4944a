// all() and race(): the operations run as child tasks at once; whatever ends the group early
// cancels the rest, all together, and the group returns or throws only after their cleanup.
// Time runs on the virtual clock.
import assert from "node:assert/strict";
import {
  all,
  cancel,
  Cancelled,
  Event,
  type Operation,
  race,
  sleep,
  spawn,
  timeout,
  TimeoutError,
} from "../mod.ts";
import { runTask, testScheduler } from "./_schedulers.ts";

function* outcome(operation: Operation<unknown>): Operation<unknown> {
  try {
    return yield* operation;
  } catch (error) {
    return error;
  }
}

// Sleeps `ms`, then returns `value`; `log` records how it ended and when, after a cleanup
// that itself takes `cleanupMs` when it did not finish.
function* worker<T>(
  name: string,
  ms: number,
  value: T,
  log: string[],
  now: () => number,
  cleanupMs = 0,
): Operation<T> {
  let finished = false;
  try {
    yield* sleep(ms);
    finished = true;
    return value;
  } finally {
    if (!finished && cleanupMs > 0) yield* sleep(cleanupMs);
    log.push(`${name} ${finished ? "finished" : "cleaned up"} at ${now()}`);
  }
}

function* failAfter(ms: number, message: string): Operation<never> {
  yield* sleep(ms);
  throw new Error(message);
}

// --- all ----------------------------------------------------------------------------------

Deno.test("all() runs its operations at once and returns their results in order", async () => {
  const { scheduler, now } = testScheduler();
  const log: string[] = [];
  const results = await runTask(
    scheduler,
    all([worker("a", 30, 1, log, now), worker("b", 10, "two", log, now), sleep(20)]),
  );
  const [one, two, nothing]: [number, string, void] = results; // typed per position
  assert.deepEqual([one, two, nothing], [1, "two", undefined]);
  assert.deepEqual(log, ["b finished at 10", "a finished at 30"]);
  assert.equal(now(), 30);
});

Deno.test("all() of nothing returns an empty array", async () => {
  const { scheduler } = testScheduler();
  assert.deepEqual(await runTask(scheduler, all([])), []);
});

Deno.test("all() cancels the others on the first failure and throws it after their cleanup", async () => {
  const { scheduler, now, reported } = testScheduler();
  const log: string[] = [];
  const result = await runTask(
    scheduler,
    function* () {
      const error = yield* outcome(all([
        worker("slow", 60_000, 1, log, now, 5),
        failAfter(10, "first"),
        worker("slower", 60_000, 2, log, now, 7),
        failAfter(11, "second, never reached"),
      ]));
      log.push(`all threw at ${now()}`);
      return error;
    }(),
  );
  assert.equal((result as Error).message, "first");
  // Both cleanups ran at once (done at 15 and 17, not 15 and 22), and before all() threw.
  assert.deepEqual(log, ["slow cleaned up at 15", "slower cleaned up at 17", "all threw at 17"]);
  assert.deepEqual(reported, []);
});

Deno.test("all() reports a sibling that fails in its cleanup with another error", async () => {
  const { scheduler, reported } = testScheduler();
  function* failsInCleanup(): Operation<void> {
    try {
      yield* sleep(60_000);
    } catch {
      yield* sleep(1);
      throw new Error("cleanup failed");
    }
  }
  const result = await runTask(scheduler, outcome(all([failsInCleanup(), failAfter(10, "first")])));
  assert.equal((result as Error).message, "first");
  assert.deepEqual(reported.map((error) => (error as Error).message), ["cleanup failed"]);
});

Deno.test("all() cancelled from outside cancels its operations and waits for their cleanup", async () => {
  const { scheduler, now } = testScheduler();
  const log: string[] = [];
  await runTask(
    scheduler,
    function* () {
      const caller = yield* spawn(function* () {
        const error = yield* outcome(all([
          worker("a", 60_000, 1, log, now, 5),
          worker("b", 60_000, 2, log, now, 3),
        ]));
        log.push(`all threw ${(error as Error).name} at ${now()}`);
      }());
      yield* sleep(10);
      yield* cancel(caller);
      log.push(`cancel returned at ${now()}`);
    }(),
  );
  assert.deepEqual(log, [
    "b cleaned up at 13",
    "a cleaned up at 15",
    "all threw Cancelled at 15",
    "cancel returned at 15",
  ]);
});

Deno.test("all() under a timeout throws TimeoutError and its operations are cancelled", async () => {
  const { scheduler, now } = testScheduler();
  const log: string[] = [];
  const main = scheduler.spawn(
    function* () {
      const error = yield* outcome(timeout(
        10,
        all([
          worker("a", 60_000, 1, log, now, 5),
          worker("b", 5, 2, log, now),
        ]),
      ));
      log.push(`timeout threw at ${now()}`);
      yield* sleep(100); // the caller goes on with other work
      return error;
    }(),
    { onSettled: () => log.push(`main settled at ${now()}`) },
  );
  const result = main.result;
  await scheduler.run();
  assert.ok(await result instanceof TimeoutError);
  // Every checkpoint of an expired block throws, so all() cannot wait for the cleanup there,
  // but the cancel went out at once.
  assert.deepEqual(log, [
    "b finished at 5",
    "timeout threw at 10",
    "a cleaned up at 15",
    "main settled at 110",
  ]);
});

Deno.test("all() shows in tasks() as a group task waiting on an event, its operations as children", async () => {
  const { scheduler } = testScheduler();
  const rows = await runTask(
    scheduler,
    function* () {
      const group = yield* spawn(all([sleep(100), sleep(100)]));
      yield* sleep(1);
      const rows = scheduler.tasks().map(({ name, state, waitingOn, parent }) => ({
        name,
        state,
        on: waitingOn instanceof Event ? "Event" : typeof waitingOn,
        parent,
      }));
      yield* cancel(group);
      return rows;
    }(),
  );
  assert.deepEqual(rows, [
    { name: "main", state: "running", on: "object", parent: null },
    { name: "task-2", state: "joining", on: "object", parent: 1 },
    { name: "all", state: "waiting", on: "Event", parent: 2 },
    { name: "all[0]", state: "sleeping", on: "number", parent: 3 },
    { name: "all[1]", state: "sleeping", on: "number", parent: 3 },
  ]);
});

// --- race ---------------------------------------------------------------------------------

Deno.test("race() returns the first to finish after the others' cleanup", async () => {
  const { scheduler, now } = testScheduler();
  const log: string[] = [];
  const result = await runTask(
    scheduler,
    function* () {
      const winner: number | string = yield* race([
        worker("slow", 30, 1, log, now, 5),
        worker("fast", 10, "fast", log, now),
        worker("slower", 40, 3, log, now, 2),
      ]);
      log.push(`race returned at ${now()}`);
      return winner;
    }(),
  );
  assert.equal(result, "fast");
  assert.deepEqual(log, [
    "fast finished at 10",
    "slower cleaned up at 12",
    "slow cleaned up at 15",
    "race returned at 15",
  ]);
});

Deno.test("race() throws when the first to finish fails, after the others' cleanup", async () => {
  const { scheduler, now, reported } = testScheduler();
  const log: string[] = [];
  const result = await runTask(
    scheduler,
    function* () {
      const error = yield* outcome(race([
        worker("slow", 30, 1, log, now, 5),
        failAfter(10, "lost"),
      ]));
      log.push(`race threw at ${now()}`);
      return error;
    }(),
  );
  assert.equal((result as Error).message, "lost");
  assert.deepEqual(log, ["slow cleaned up at 15", "race threw at 15"]);
  assert.deepEqual(reported, []);
});

Deno.test("race() of nothing is refused with a RangeError", async () => {
  const { scheduler } = testScheduler();
  const error = await runTask(scheduler, outcome(race([])));
  assert.ok(error instanceof RangeError);
  assert.match(String(error), /^RangeError: Cannot race: no operations given$/);
});

Deno.test("race() cancelled from outside cancels every operation and waits for their cleanup", async () => {
  const { scheduler, now } = testScheduler();
  const log: string[] = [];
  const result = await runTask(
    scheduler,
    function* () {
      const racing = yield* spawn(race([
        worker("a", 60_000, 1, log, now, 5),
        worker("b", 60_000, 2, log, now, 3),
      ]));
      yield* sleep(10);
      yield* cancel(racing);
      log.push(`cancel returned at ${now()}`);
      return racing.state;
    }(),
  );
  assert.equal(result, "cancelled");
  assert.deepEqual(log, ["b cleaned up at 13", "a cleaned up at 15", "cancel returned at 15"]);
});

Deno.test("race() under a timeout throws TimeoutError and its operations are cancelled at once", async () => {
  const { scheduler, now } = testScheduler();
  const log: string[] = [];
  const ready = new Event();
  const main = scheduler.spawn(
    function* () {
      const error = yield* outcome(timeout(
        10,
        race([
          function* () {
            yield* ready.wait();
            return "never";
          }(),
          worker("a", 60_000, 1, log, now, 5),
        ]),
      ));
      log.push(`timeout threw at ${now()}`);
      yield* sleep(100);
      return error;
    }(),
    { onSettled: () => log.push(`main settled at ${now()}`) },
  );
  const result = main.result;
  await scheduler.run();
  assert.ok(await result instanceof TimeoutError);
  assert.deepEqual(log, ["timeout threw at 10", "a cleaned up at 15", "main settled at 110"]);
});

Deno.test("a race() failing inside an all() fails the all() with its own error, nothing reported", async () => {
  const { scheduler, reported } = testScheduler();
  const result = await runTask(
    scheduler,
    outcome(all([
      race([sleep(60_000), failAfter(5, "inner")]),
      sleep(60_000),
    ])),
  );
  assert.equal((result as Error).message, "inner");
  assert.ok(!(result instanceof Cancelled));
  assert.deepEqual(reported, []);
});
