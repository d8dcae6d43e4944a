/**
 * Operations run side by side as child tasks, ending together: {@linkcode all} waits for
 * every one and fails fast, {@linkcode race} takes the first to finish. Both follow Trio's
 * nursery and Effection's `all` / `race`: whatever ends the group early, the tasks still
 * running are cancelled, all at once, and the group returns or throws only after every one of
 * them has finished its cleanup.
 *
 * The tasks run in a group task of their own (named `all` or `race`, its children
 * `all[0]`, `all[1]`...), so `tasks()` shows the caller joining the group, the group
 * waiting on an `Event`, and each operation as a task.
 *
 * @example Two lookups at once, with a time limit on both
 * ```ts
 * import { all, Scheduler, sleep, timeout } from "@genio/genio";
 * import assert from "node:assert/strict";
 *
 * function* lookup(name: string, ms: number) {
 *   yield* sleep(ms);
 *   return name.length;
 * }
 * const scheduler = new Scheduler();
 * const task = scheduler.spawn(timeout(1_000, all([lookup("genio", 10), lookup("deno", 5)])));
 * await scheduler.run();
 * assert.deepEqual(await task.result, [5, 4]);
 * ```
 *
 * @module
 */
import { Cancelled } from "./errors.ts";
import { cancel, join, type Operation, spawn } from "./intents.ts";
import type { Task } from "./scheduler.ts";
import { Event } from "./sync.ts";

/**
 * Runs every operation at once, each as a child task, and returns their results in the
 * order given. The first to fail (or to be cancelled from elsewhere) makes `all` cancel the
 * others, wait until their cleanup has finished, and throw that first error. A later
 * failure other than `Cancelled` (another operation failing in the same turn, or in its
 * cleanup) is reported to the scheduler's `onError`, as any failure nobody receives.
 *
 * If the task calling `all` is cancelled, the operations are cancelled and `all` waits for
 * their cleanup before the `Cancelled` goes on. If a `timeout()` around it runs out, they
 * are cancelled at once too, but since every checkpoint in a block whose limit ran out
 * throws, `all` cannot wait there: their cleanup ends after the `TimeoutError` is thrown,
 * still before the calling task ends (they are its descendants).
 *
 * @typeParam T The operations, a tuple or an array.
 * @param operations The generator objects to run (call the generator functions first).
 * @returns Each operation's result, in order.
 * @throws The first failure among the operations.
 *
 * @example The first failure cancels the rest, whose cleanup has finished
 * ```ts
 * import { all, Scheduler, sleep } from "@genio/genio";
 * import assert from "node:assert/strict";
 *
 * const log: string[] = [];
 * function* slow() {
 *   try {
 *     yield* sleep(60_000);
 *   } finally {
 *     yield* sleep(5); // cleanup that takes a while
 *     log.push("slow cleaned up");
 *   }
 * }
 * function* failing() {
 *   yield* sleep(1);
 *   throw new Error("boom");
 * }
 * const scheduler = new Scheduler();
 * const task = scheduler.spawn(function* () {
 *   try {
 *     yield* all([slow(), failing()]);
 *   } catch (error) {
 *     log.push((error as Error).message);
 *   }
 * }());
 * await scheduler.run();
 * assert.deepEqual(log, ["slow cleaned up", "boom"]);
 * assert.equal(task.state, "done");
 * ```
 */
export function* all<const T extends readonly Operation<unknown>[]>(
  operations: T,
): Operation<{ -readonly [K in keyof T]: T[K] extends Operation<infer R> ? R : never }> {
  type Results = { -readonly [K in keyof T]: T[K] extends Operation<infer R> ? R : never };
  return (yield* inGroup("all", allGroup(operations))) as Results;
}

/**
 * Runs every operation at once, each as a child task, until the first finishes: its value
 * is returned, or its failure thrown, once the others have been cancelled and have finished
 * their cleanup. A loser that fails during its cleanup with an error other than `Cancelled`
 * is reported to the scheduler's `onError`. Cancellation and time limits reach the
 * operations as with {@linkcode all}.
 *
 * @typeParam T The operations, a tuple or an array.
 * @param operations The generator objects to run (call the generator functions first).
 * @returns The first finisher's result.
 * @throws The first finisher's failure.
 * @throws {RangeError} When `operations` is empty: such a race would never end.
 *
 * @example A reply or a time-out message, whichever comes first
 * ```ts
 * import { Event, race, Scheduler, sleep } from "@genio/genio";
 * import assert from "node:assert/strict";
 *
 * const replied = new Event();
 * function* reply() {
 *   yield* replied.wait();
 *   return "reply";
 * }
 * function* giveUp() {
 *   yield* sleep(10);
 *   return "no reply";
 * }
 * const scheduler = new Scheduler();
 * const task = scheduler.spawn(race([reply(), giveUp()]));
 * await scheduler.run();
 * assert.equal(await task.result, "no reply");
 * ```
 */
export function* race<const T extends readonly Operation<unknown>[]>(
  operations: T,
): Operation<{ [K in keyof T]: T[K] extends Operation<infer R> ? R : never }[number]> {
  if (operations.length === 0) throw new RangeError("Cannot race: no operations given");
  type Result = { [K in keyof T]: T[K] extends Operation<infer R> ? R : never }[number];
  return (yield* inGroup("race", raceGroup(operations))) as Result;
}

// Waits for the group task; if this task stops waiting (cancelled, timed out), the group is
// cancelled and, where a checkpoint still can wait, waited for.
function* inGroup<T>(name: string, group: Operation<T>): Operation<T> {
  const task = yield* spawn(group, { name });
  try {
    return yield* join(task);
  } finally {
    if (!settled(task)) {
      try {
        yield* cancel(task);
      } catch {
        // This task's time limit ran out, so its every checkpoint throws: a helper cancels
        // the group, which finishes its cleanup while the TimeoutError goes on.
        yield* spawn(cancel(task), { name: `cancel ${name}` });
      }
    }
  }
}

// Each group is a task whose children are the operations: when the group's body returns or
// throws, the kernel cancels its children still running, all at once, and settles the group
// after the last has finished (see the README's Semantics).
function* allGroup(operations: readonly Operation<unknown>[]): Operation<unknown[]> {
  const decided = new Event();
  let left = operations.length;
  let failure: { error: unknown } | null = null;
  const onSettled = (task: Task<unknown>, error: unknown): void => {
    if (task.state === "done") {
      if (--left === 0) decided.set();
    } else if (failure === null) {
      failure = { error };
      decided.set();
    } else if (!(error instanceof Cancelled)) {
      throw error; // what onSettled throws is reported: nobody else will receive it
    }
  };
  const tasks: Task<unknown>[] = [];
  for (const operation of operations) {
    tasks.push(yield* spawn(operation, { name: `all[${tasks.length}]`, onSettled }));
  }
  if (left > 0) yield* decided.wait();
  if (failure !== null) throw (failure as { error: unknown }).error;
  const results: unknown[] = [];
  for (const task of tasks) results.push(yield* join(task));
  return results;
}

function* raceGroup(operations: readonly Operation<unknown>[]): Operation<unknown> {
  const decided = new Event();
  let winner: Task<unknown> | null = null;
  const onSettled = (task: Task<unknown>, error: unknown): void => {
    if (winner === null) {
      winner = task;
      decided.set();
    } else if (task.state === "failed" && !(error instanceof Cancelled)) {
      throw error; // what onSettled throws is reported: nobody else will receive it
    }
  };
  for (let i = 0; i < operations.length; i++) {
    yield* spawn(operations[i], { name: `race[${i}]`, onSettled });
  }
  yield* decided.wait();
  return yield* join(winner!);
}

function settled(task: Task<unknown>): boolean {
  return task.state === "done" || task.state === "failed" || task.state === "cancelled";
}
