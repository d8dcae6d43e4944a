import { type Clock, Scheduler, type SchedulerOptions } from "./scheduler.ts";
import { formatTasks } from "./_task_table.ts";

/** Options for {@linkcode VirtualClock}. */
export interface VirtualClockOptions {
  /**
   * The time the clock starts at, in milliseconds.
   *
   * @default {0}
   */
  start?: number;
}

interface VirtualTimer {
  readonly at: number;
  readonly callback: () => void;
}

/**
 * A {@linkcode Clock} whose time moves only when told to, for testing sleeps and timeouts
 * without waiting. Give it to a `Scheduler`, then {@linkcode VirtualClock.advance} it, or
 * let it {@linkcode VirtualClock.autojump} to each deadline whenever every task is blocked.
 *
 * Timers due at the same time fire in the order they were set.
 *
 * @example Stepping a sleeping task through virtual time
 * ```ts
 * import { Scheduler, sleep } from "@genio/genio";
 * import { VirtualClock } from "@genio/genio/testing";
 * import assert from "node:assert/strict";
 *
 * const clock = new VirtualClock();
 * const scheduler = new Scheduler({ clock });
 * const log: number[] = [];
 * scheduler.spawn(function* () {
 *   yield* sleep(60_000);
 *   log.push(clock.now());
 * }());
 * const done = scheduler.run();
 * await clock.advance(59_999);
 * assert.deepEqual(log, []);
 * await clock.advance(1);
 * assert.deepEqual(log, [60_000]);
 * await done;
 * ```
 */
export class VirtualClock implements Clock {
  #now: number;
  #timers: VirtualTimer[] = []; // by time due, then by when set
  #activity = 0;
  #advancing = false;
  #autojump: Scheduler | null = null;
  #check: ReturnType<typeof setTimeout> | null = null;
  #checkedActivity = 0;

  /**
   * Creates a clock that stands still at `options.start`.
   *
   * @param options Where time starts.
   */
  constructor(options?: VirtualClockOptions) {
    this.#now = options?.start ?? 0;
  }

  /**
   * The virtual time, in milliseconds.
   *
   * @returns The time now.
   */
  now(): number {
    return this.#now;
  }

  /** How many timers are set and have not fired. */
  get pendingTimers(): number {
    return this.#timers.length;
  }

  /** When the next timer is due, or `null` if none is set. */
  get nextTimerAt(): number | null {
    return this.#timers[0]?.at ?? null;
  }

  /**
   * Sets a timer that fires once the virtual time reaches now plus `delay`.
   *
   * @param callback What to call.
   * @param delay In milliseconds; negative or NaN counts as `0`.
   * @returns A handle for {@linkcode VirtualClock.clearTimer}.
   */
  setTimer(callback: () => void, delay: number): unknown {
    const timer: VirtualTimer = { at: this.#now + (delay > 0 ? delay : 0), callback };
    let i = this.#timers.length;
    while (i > 0 && this.#timers[i - 1].at > timer.at) i--;
    this.#timers.splice(i, 0, timer);
    this.#activity++;
    this.#scheduleCheck();
    return timer;
  }

  /**
   * Cancels a timer that has not fired; does nothing for any other handle.
   *
   * @param handle What {@linkcode VirtualClock.setTimer} returned.
   */
  clearTimer(handle: unknown): void {
    const i = this.#timers.indexOf(handle as VirtualTimer);
    if (i < 0) return;
    this.#timers.splice(i, 1);
    this.#activity++;
    if (this.#timers.length === 0) this.#cancelCheck();
  }

  /**
   * Moves time forward by `ms`, firing each timer that falls due in deadline order, with
   * the clock reading that timer's time. After each, it waits one real macrotask, so the
   * tasks the timer woke run (and settle whatever memory conns they touch) before the next
   * fires and before the promise resolves.
   *
   * @param ms How far to move, in milliseconds.
   * @returns A promise that resolves once time has moved and woken tasks had their turn.
   * @throws {RangeError} If `ms` is negative, NaN or infinite.
   * @throws {Error} If called while another `advance()` is in progress.
   *
   * @example Timeouts fire exactly at their deadline
   * ```ts
   * import { Scheduler, sleep, timeout, TimeoutError } from "@genio/genio";
   * import { VirtualClock } from "@genio/genio/testing";
   * import assert from "node:assert/strict";
   *
   * const clock = new VirtualClock();
   * const scheduler = new Scheduler({ clock });
   * const task = scheduler.spawn(function* () {
   *   try {
   *     yield* timeout(5_000, sleep(10_000));
   *   } catch (error) {
   *     if (!(error instanceof TimeoutError)) throw error;
   *     return clock.now();
   *   }
   * }());
   * const done = scheduler.run();
   * await clock.advance(4_999);
   * assert.equal(task.state, "sleeping");
   * await clock.advance(1);
   * assert.equal(task.state, "done");
   * await done;
   * assert.equal(await task.result, 5_000);
   * ```
   */
  async advance(ms: number): Promise<void> {
    if (!(ms >= 0 && ms < Infinity)) {
      throw new RangeError(`Cannot advance the clock by ${ms} ms`);
    }
    if (this.#advancing) throw new Error("Cannot advance the clock: it is already advancing");
    this.#advancing = true;
    try {
      const target = this.#now + ms;
      let next: VirtualTimer | undefined;
      while ((next = this.#timers[0]) !== undefined && next.at <= target) {
        this.#fire(next);
        await macrotask();
      }
      this.#now = Math.max(this.#now, target);
    } finally {
      this.#advancing = false;
      this.#scheduleCheck();
    }
  }

  /**
   * Makes time jump straight to the next timer whenever every task of `scheduler` is
   * blocked, so a test of a five-minute timeout takes milliseconds, always the same way.
   * `null` turns it off.
   *
   * "Blocked" is judged after a real macrotask, when the scheduler's ready queue is empty:
   * everything that settles through promises alone (memory conns, other tasks) has settled
   * by then. A task waiting on real I/O, a real timer or any promise outside the scheduler
   * looks blocked too, so time may jump past deadlines while it waits: keep tests that use
   * autojump in memory. No real timer is left pending once no virtual timer is set (as when
   * the scheduler's `run()` resolves).
   *
   * @param scheduler The scheduler whose idleness lets time jump, or `null` to stop.
   *
   * @example An hour of heartbeats, instantly
   * ```ts
   * import { Scheduler, sleep } from "@genio/genio";
   * import { VirtualClock } from "@genio/genio/testing";
   * import assert from "node:assert/strict";
   *
   * const clock = new VirtualClock();
   * const scheduler = new Scheduler({ clock });
   * clock.autojump(scheduler);
   * let beats = 0;
   * scheduler.spawn(function* () {
   *   for (let minute = 0; minute < 60; minute++) {
   *     yield* sleep(60_000);
   *     beats++;
   *   }
   * }());
   * await scheduler.run();
   * assert.equal(beats, 60);
   * assert.equal(clock.now(), 3_600_000);
   * ```
   */
  autojump(scheduler: Scheduler | null): void {
    this.#autojump = scheduler;
    if (scheduler === null) this.#cancelCheck();
    else this.#scheduleCheck();
  }

  #fire(timer: VirtualTimer): void {
    this.#timers.splice(this.#timers.indexOf(timer), 1);
    this.#now = Math.max(this.#now, timer.at);
    timer.callback();
  }

  #scheduleCheck(): void {
    if (
      this.#autojump === null || this.#check !== null || this.#advancing ||
      this.#timers.length === 0
    ) return;
    this.#checkedActivity = this.#activity;
    this.#check = setTimeout(this.#jumpIfIdle, 0);
  }

  #cancelCheck(): void {
    if (this.#check === null) return;
    clearTimeout(this.#check);
    this.#check = null;
  }

  #jumpIfIdle = (): void => {
    this.#check = null;
    const next = this.#timers[0];
    if (next === undefined || this.#autojump === null || this.#advancing) return;
    const quiet = this.#activity === this.#checkedActivity;
    if (quiet && this.#autojump.ready.length === 0) this.#fire(next);
    this.#scheduleCheck();
  };
}

/** Options for {@linkcode createTestScheduler}. */
export interface TestSchedulerOptions extends Omit<SchedulerOptions, "clock"> {
  /**
   * Jump time to the next deadline whenever every task is blocked (see
   * {@linkcode VirtualClock.autojump} for the caveat about real I/O).
   *
   * @default {false}
   */
  autojump?: boolean;
  /**
   * The virtual time at the start, in milliseconds.
   *
   * @default {0}
   */
  start?: number;
}

/** A scheduler on virtual time, as made by {@linkcode createTestScheduler}. */
export interface TestScheduler {
  /** The scheduler, using {@linkcode TestScheduler.clock}. */
  readonly scheduler: Scheduler;
  /** Its clock: read it, advance it. */
  readonly clock: VirtualClock;
}

/**
 * Creates a scheduler whose sleeps and timeouts run on a {@linkcode VirtualClock}, with
 * autojump wired up if asked for. If a test ends while its `run()` is still pending (every
 * task waits on something that cannot come, such as a conn the test forgot to close), the
 * scheduler prints its tasks and what each waits on to stderr, under Deno's own "Promise
 * resolution is still pending". With a plain `Scheduler`, the same list is one line away:
 * `addEventListener("unload", () => console.table(scheduler.tasks()))`.
 *
 * @param options Autojump, the start time, and the scheduler's `onError`.
 * @returns The scheduler and its clock.
 *
 * @example A 300-second idle timeout, tested in milliseconds
 * ```ts
 * import { read, timeout, TimeoutError } from "@genio/genio";
 * import { createTestScheduler, memoryConnPair } from "@genio/genio/testing";
 * import assert from "node:assert/strict";
 *
 * const { scheduler, clock } = createTestScheduler({ autojump: true });
 * const [client, server] = memoryConnPair();
 * const handler = scheduler.spawn(function* () {
 *   try {
 *     yield* timeout(300_000, read(server, new Uint8Array(64)));
 *     return "read";
 *   } catch (error) {
 *     if (error instanceof TimeoutError) return `idle at ${clock.now()} ms`;
 *     throw error;
 *   } finally {
 *     server.close();
 *   }
 * }());
 * const started = performance.now();
 * await scheduler.run();
 * assert.equal(await handler.result, "idle at 300000 ms");
 * assert.ok(performance.now() - started < 1_000);
 * client.close();
 * ```
 */
export function createTestScheduler(options?: TestSchedulerOptions): TestScheduler {
  const { autojump = false, start, ...schedulerOptions } = options ?? {};
  const clock = new VirtualClock({ start });
  const scheduler = new StallReportingScheduler({ ...schedulerOptions, clock });
  if (autojump) clock.autojump(scheduler);
  return { scheduler, clock };
}

// A test whose run can never finish (every task waits on something that cannot come, such as
// a conn the test forgot to close) ends with Deno saying only "Promise resolution is still
// pending". Deno fires `unload` then, so the test scheduler says who waits on what.
class StallReportingScheduler extends Scheduler {
  override run(): Promise<void> {
    const running = super.run();
    globalThis.addEventListener("unload", this.#explain);
    running.then(() => globalThis.removeEventListener("unload", this.#explain));
    return running;
  }

  #explain = (): void => {
    console.error(
      "genio: the test ended with scheduler.run() still pending; its tasks wait on:\n" +
        formatTasks(this.tasks()),
    );
  };
}

function macrotask(): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, 0));
}
