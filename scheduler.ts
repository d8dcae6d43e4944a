/**
 * The kernel: a ready queue of generator tasks, explicit wait maps, and a step loop that
 * turns each yielded intent into the settling of a `Deno.Conn` / `Deno.Listener` promise.
 *
 * The classic generator server keeps a deque of tasks and `recv_wait` / `send_wait` dicts
 * for `select()`. Deno has no `select()`: a conn is "ready" when the `conn.read()` the kernel
 * started for its task settles. So each blocking intent starts one Deno call, parks the task
 * in a wait map, and the call's settlement moves exactly that task back to the ready queue.
 *
 * @example Two tasks taking turns, as in the classic Python generator server's round-robin
 * ```ts
 * import { Scheduler } from "@genio/genio/scheduler";
 * import assert from "node:assert/strict";
 *
 * const out: string[] = [];
 * function* countdown(n: number) {
 *   for (; n > 0; n--) {
 *     out.push(`T-minus ${n}`);
 *     yield;
 *   }
 * }
 * function* countup(stop: number) {
 *   for (let x = 0; x < stop; x++) {
 *     out.push(`Up ${x}`);
 *     yield;
 *   }
 * }
 * const scheduler = new Scheduler();
 * scheduler.spawn(countdown(2));
 * scheduler.spawn(countup(2));
 * await scheduler.run();
 * assert.deepEqual(out, ["T-minus 2", "Up 0", "T-minus 1", "Up 1"]);
 * ```
 *
 * @module
 */
import { AcceptWaits } from "./_accept_waits.ts";
import { ConnectWaits } from "./_connect_waits.ts";
import { ConnWaits } from "./_conn_waits.ts";
import { Deque } from "./_deque.ts";
import { BLOCKED, CONTINUE, type Kernel, NOTHING, TaskImpl, type Undo } from "./_task.ts";
import { limitError, outermostExpired, type Timer, Timers } from "./_timers.ts";
import { ParkWaits } from "./_wait_list.ts";
import { PromiseWaits } from "./_promise_waits.ts";
import { Cancelled } from "./errors.ts";
import type {
  CancelIntent,
  Intent,
  JoinIntent,
  Operation,
  ReadIntent,
  SpawnIntent,
  SpawnOptions,
  WriteIntent,
} from "./intents.ts";

/**
 * Where a task is in its life. The blocked states name the wait map (or wait) it is in.
 *
 * @example
 * ```ts
 * import type { TaskState } from "@genio/genio";
 *
 * const finished: TaskState[] = ["done", "failed", "cancelled"];
 * ```
 */
export type TaskState =
  | "ready"
  | "running"
  | "reading"
  | "writing"
  | "accepting"
  | "connecting"
  | "sleeping"
  | "joining"
  | "waiting"
  | "done"
  | "failed"
  | "cancelled";

/**
 * A running operation. Inside the scheduler, use `join` / `cancel`; from async code
 * outside it, `await task.result`.
 *
 * @typeParam T What the task returns.
 *
 * @example Awaiting a task from outside the scheduler
 * ```ts
 * import { Scheduler, sleep } from "@genio/genio";
 * import assert from "node:assert/strict";
 *
 * const scheduler = new Scheduler();
 * const task = scheduler.spawn(function* () {
 *   yield* sleep(1);
 *   return "ok";
 * }(), { name: "example" });
 * assert.equal(task.name, "example");
 * assert.equal(task.state, "ready");
 * await scheduler.run();
 * assert.equal(await task.result, "ok");
 * assert.equal(task.state, "done");
 * ```
 */
export interface Task<T = unknown> {
  /** Unique within its scheduler, in spawn order from 1. */
  readonly id: number;
  /** The name given at spawn, or `task-<id>`. */
  readonly name: string;
  /** Where the task is in its life. */
  readonly state: TaskState;
  /**
   * What a blocked task waits on: the conn, listener, task or promise; the wake-up time
   * when sleeping; its live children while it finishes. `null` otherwise.
   */
  readonly waitingOn: unknown;
  /** The task that spawned it, or `null` for a task spawned from outside. */
  readonly parent: Task<unknown> | null;
  /**
   * Settles with the task's outcome once it and its children have finished. Asking for it
   * counts as observing a failure, which is then not reported to `onError`.
   */
  readonly result: Promise<T>;
  /** Bytes its reads have returned so far. */
  readonly bytesRead: number;
  /** Bytes its writes have written so far. */
  readonly bytesWritten: number;
}

/**
 * A snapshot of one live task, as returned by {@linkcode Scheduler.tasks}.
 *
 * @example
 * ```ts
 * import type { TaskInfo } from "@genio/genio";
 *
 * const info: TaskInfo = {
 *   id: 1,
 *   name: "main",
 *   state: "sleeping",
 *   waitingOn: 1500,
 *   parent: null,
 *   spawnedAt: 500,
 *   deadline: 1500,
 *   bytesRead: 0,
 *   bytesWritten: 0,
 * };
 * ```
 */
export interface TaskInfo {
  /** The task's id. */
  readonly id: number;
  /** The task's name. */
  readonly name: string;
  /** Its state when the snapshot was taken. */
  readonly state: TaskState;
  /** What it was waiting on then (see {@linkcode Task.waitingOn}). */
  readonly waitingOn: unknown;
  /** The parent's id, or `null`. */
  readonly parent: number | null;
  /** When it was spawned, on the scheduler's clock (milliseconds), to within a turn. */
  readonly spawnedAt: number;
  /**
   * When its nearest time limit or sleep runs out, on the scheduler's clock, or `null`
   * when none is set. An idle limit's moves on as the task's waits complete.
   */
  readonly deadline: number | null;
  /** Bytes its reads have returned so far. */
  readonly bytesRead: number;
  /** Bytes its writes have written so far. */
  readonly bytesWritten: number;
}

/**
 * Figures about a scheduler at one moment, as returned by {@linkcode Scheduler.stats}: what a
 * monitor or a metrics page shows.
 *
 * @example
 * ```ts
 * import type { SchedulerStats } from "@genio/genio";
 *
 * const stats: SchedulerStats = {
 *   tasks: 3,
 *   byState: { reading: 2, accepting: 1 },
 *   ready: 0,
 *   timers: 2,
 * };
 * ```
 */
export interface SchedulerStats {
  /** Live tasks. */
  readonly tasks: number;
  /** Live tasks by state; states with none are left out. */
  readonly byState: Readonly<Partial<Record<TaskState, number>>>;
  /** The ready queue's length. */
  readonly ready: number;
  /** Entries in the timer heap: sleeps, time limits, and cleared limits kept for reuse. */
  readonly timers: number;
}

/**
 * The time source for sleeps and timeouts. Replace it to run time virtually in tests.
 *
 * @example The clock genio uses by default
 * ```ts
 * import type { Clock } from "@genio/genio";
 *
 * const realClock: Clock = {
 *   now: () => performance.now(),
 *   setTimer: (callback, delay) => setTimeout(callback, delay),
 *   clearTimer: (handle) => clearTimeout(handle as number),
 * };
 * ```
 */
export interface Clock {
  /** The current time in milliseconds. */
  now(): number;
  /** Calls `callback` once, `delay` milliseconds from now; returns a handle for `clearTimer`. */
  setTimer(callback: () => void, delay: number): unknown;
  /** Cancels a timer that has not fired. */
  clearTimer(handle: unknown): void;
}

/** Options for {@linkcode Scheduler}. */
export interface SchedulerOptions {
  /**
   * Called once for each task that failed without anybody joining it or asking for its
   * `result`.
   *
   * @default {one line naming the task, then the stack, on stderr}
   */
  onError?: (error: unknown, task: Task<unknown>) => void;
  /**
   * The time source for sleeps and timeouts.
   *
   * @default {`performance.now()` and `setTimeout`}
   */
  clock?: Clock;
}

const REAL_CLOCK: Clock = {
  now: () => performance.now(),
  setTimer: (callback, delay) => setTimeout(callback, delay),
  clearTimer: (handle) => clearTimeout(handle as number),
};

// A pass that leaves tasks ready (they yield to each other without blocking) runs again at
// once; only after this long does the loop step aside so that I/O callbacks get a turn.
const SLICE_MS = 10;
// Tasks that only yield make passes of a step or two, each cheaper than a look at the
// clock, so the loop looks at it once every this many steps.
const CHECK_STEPS = 16;

// What one type of intent does. A blocking intent is where a pending cancellation or a
// time limit that ran out is delivered, before it starts.
interface IntentKind {
  readonly blocks: boolean;
  readonly perform: (task: TaskImpl, intent: Intent) => boolean;
}

let KERNEL: Kernel;

function blocking<I extends Intent>(perform: (task: TaskImpl, intent: I) => boolean): IntentKind {
  return { blocks: true, perform: perform as IntentKind["perform"] };
}

function immediate<I extends Intent>(perform: (task: TaskImpl, intent: I) => boolean): IntentKind {
  return { blocks: false, perform: perform as IntentKind["perform"] };
}

/**
 * Runs generator tasks. Spawn tasks, then `await run()`; the queue and wait maps are
 * readable at any time.
 *
 * @example An echo server for one client
 * ```ts
 * import { accept, read, Scheduler, write } from "@genio/genio";
 * import assert from "node:assert/strict";
 *
 * function* echoOne(listener: Deno.Listener) {
 *   const conn = yield* accept(listener);
 *   const buffer = new Uint8Array(1024);
 *   try {
 *     let n: number | null;
 *     while ((n = yield* read(conn, buffer)) !== null) {
 *       yield* write(conn, buffer.subarray(0, n));
 *     }
 *   } finally {
 *     conn.close();
 *   }
 * }
 * const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
 * const scheduler = new Scheduler();
 * scheduler.spawn(echoOne(listener));
 * const done = scheduler.run();
 * const client = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
 * await client.write(new TextEncoder().encode("ping"));
 * const reply = new Uint8Array(4);
 * await client.read(reply);
 * assert.equal(new TextDecoder().decode(reply), "ping");
 * client.close();
 * await done;
 * listener.close();
 * ```
 */
export class Scheduler {
  #ready = new Deque<TaskImpl>();
  #tasks = new Set<TaskImpl>();
  #conns: ConnWaits;
  #accepts: AcceptWaits;
  #connects: ConnectWaits;
  #timers: Timers;
  // Every type of intent and what it does: a new kind of wait is one more line here.
  #intents: ReadonlyMap<unknown, IntentKind>;

  #onError: (error: unknown, task: Task<unknown>) => void;
  #nextId = 1;
  #current: TaskImpl | null = null;
  #looping = false;
  #loopQueued = false;
  #sliceTimer: ReturnType<typeof setTimeout> | null = null;
  #unreported: TaskImpl[] = [];
  #running: PromiseWithResolvers<void> | null = null;

  /**
   * Creates an idle scheduler.
   *
   * @param options Error reporting and the clock.
   */
  constructor(options?: SchedulerOptions) {
    this.#onError = options?.onError ?? reportToStderr;
    this.#conns = new ConnWaits(KERNEL);
    this.#accepts = new AcceptWaits(KERNEL);
    this.#connects = new ConnectWaits(KERNEL);
    const parks = new ParkWaits(KERNEL);
    const promises = new PromiseWaits(KERNEL);
    this.#timers = new Timers(KERNEL, options?.clock ?? REAL_CLOCK, this.#expire, this.#wake);
    this.#intents = new Map<Intent["type"], IntentKind>([
      ["read", blocking((task, intent: ReadIntent) => this.#conns.read(task, intent))],
      ["write", blocking((task, intent: WriteIntent) => this.#conns.write(task, intent))],
      ["accept", blocking(this.#accepts.accept)],
      ["sleep", blocking(this.#timers.sleepIntent)],
      ["join", blocking(this.#join)],
      ["cancel", blocking(this.#cancel)],
      ["wait", blocking(promises.wait)],
      ["connect", blocking(this.#connects.connect)],
      ["park", blocking(parks.park)],
      ["spawn", immediate(this.#spawnChild)],
      ["deadline", immediate(this.#timers.setLimitIntent)],
      ["clear-deadline", immediate(this.#timers.clearLimitIntent)],
    ]);
  }

  // What the wait units may ask of a task's scheduler. One object for every scheduler, so
  // that a unit's calls into the kernel always reach the same functions.
  static {
    KERNEL = {
      park: (task, state, on, undo) => task.owner.#park(task, state, on, undo),
      ready: (task) => task.owner.#enqueue(task),
      resume: (task, value) => task.owner.#resume(task, value),
      fail: (task, error) => task.owner.#fail(task, error),
      wake: (task, value, failed) => task.owner.#wakeLater(task, value, failed),
    };
  }

  /** The ready queue, front first (a snapshot). */
  get ready(): readonly Task<unknown>[] {
    return this.#ready.toArray();
  }

  /** Tasks waiting for a read, by conn: the Python generator server's `recv_wait` (a snapshot). */
  get readWaiting(): ReadonlyMap<Deno.Conn, Task<unknown>> {
    return this.#waitingIn("reading");
  }

  /** Tasks waiting for a write, by conn: the Python generator server's `send_wait` (a snapshot). */
  get writeWaiting(): ReadonlyMap<Deno.Conn, Task<unknown>> {
    return this.#waitingIn("writing");
  }

  /** Tasks waiting for a connection, by listener. */
  get acceptWaiting(): ReadonlyMap<Deno.Listener, Task<unknown>> {
    return this.#accepts.waiting;
  }

  /** Sleeping tasks and the clock time each wakes at. */
  get sleeping(): ReadonlyMap<Task<unknown>, number> {
    return this.#timers.sleeping;
  }

  /** The task whose step is running now, or `null` between steps. */
  get current(): Task<unknown> | null {
    return this.#current;
  }

  // Reads and writes keep their waiters in each conn's own record (see _conn_waits.ts); the
  // map is built from the tasks' states.
  #waitingIn<K>(state: TaskState): Map<K, Task<unknown>> {
    const map = new Map<K, Task<unknown>>();
    for (const task of this.#tasks) {
      if (task.state === state) map.set(task.waitingOn as K, task);
    }
    return map;
  }

  /**
   * A snapshot of every live task (not yet done, failed or cancelled), in spawn order.
   *
   * @returns One {@linkcode TaskInfo} per live task.
   */
  tasks(): TaskInfo[] {
    return [...this.#tasks].map(snapshot);
  }

  /**
   * The live task with this id (as `tasks()` shows it), to cancel it from a console, say.
   *
   * @param id A task's id.
   * @returns The task, or `undefined` when no live task has that id.
   *
   * @example Finding a task by the id a snapshot shows
   * ```ts
   * import { Scheduler, sleep } from "@genio/genio";
   *
   * const scheduler = new Scheduler();
   * const task = scheduler.spawn(sleep(1));
   * console.assert(scheduler.task(scheduler.tasks()[0].id) === task);
   * await scheduler.run();
   * ```
   */
  task(id: number): Task<unknown> | undefined {
    for (const task of this.#tasks) if (task.id === id) return task;
    return undefined;
  }

  /**
   * Counts of what the scheduler holds now, for a monitor or a metrics page.
   *
   * @returns The figures.
   *
   * @example Tasks by state
   * ```ts
   * import { Scheduler, sleep } from "@genio/genio";
   * import assert from "node:assert/strict";
   *
   * const scheduler = new Scheduler();
   * scheduler.spawn(sleep(5));
   * scheduler.spawn(sleep(5));
   * assert.deepEqual(scheduler.stats(), { tasks: 2, byState: { ready: 2 }, ready: 2, timers: 0 });
   * await scheduler.run();
   * ```
   */
  stats(): SchedulerStats {
    const byState: Partial<Record<TaskState, number>> = {};
    for (const task of this.#tasks) byState[task.state] = (byState[task.state] ?? 0) + 1;
    return {
      tasks: this.#tasks.size,
      byState,
      ready: this.#ready.length,
      timers: this.#timers.size,
    };
  }

  /**
   * The time on the scheduler's clock, the one `TaskInfo.spawnedAt` and `deadline` use.
   *
   * @returns The time now, in milliseconds.
   */
  now(): number {
    return this.#timers.clock.now();
  }

  /**
   * Adds a task with no parent to the back of the ready queue. It starts on the scheduler's
   * next turn: in `run()`, or in a microtask when `run()` is already running, so the caller
   * can look at the task (and ask for its `result`) first.
   *
   * @typeParam T What the task returns.
   * @param operation The generator object to run (call the generator function first).
   * @param options A name for logs and `tasks()`, an idle limit, a callback when it settles.
   * @returns The new task.
   * @throws {TypeError} When `operation` is not a generator object (an async generator, or
   * a generator function not called, say).
   */
  spawn<T>(operation: Operation<T>, options?: SpawnOptions): Task<T> {
    const task = this.#spawn(operation, options ?? {}, null);
    this.#queueLoop();
    return task;
  }

  /**
   * Runs tasks until none is ready or waiting. Resolves at once if there is nothing to do;
   * calling it again while it runs returns the same promise. Once it resolves, any conn or
   * listener left with an abandoned Deno call in flight has been closed, since no task is
   * left to take its result.
   *
   * @returns A promise that resolves when every task has finished.
   */
  run(): Promise<void> {
    if (this.#running !== null) return this.#running.promise;
    if (this.#tasks.size === 0) return Promise.resolve();
    this.#running = Promise.withResolvers<void>();
    const { promise } = this.#running;
    this.#loop();
    return promise;
  }

  /**
   * Runs one step by hand: takes the task at the front of the ready queue and runs it until
   * it blocks, yields, or ends, then returns it. Between calls, the ready queue, the wait
   * maps and `tasks()` show exactly where every task is. I/O completions and timers that
   * arrive meanwhile only move their tasks to the ready queue; nothing runs until the next
   * `step()` (or `run()`).
   *
   * @returns The task that ran, or `null` if no task is ready.
   * @throws {Error} While `run()` is running: the loop and single steps cannot mix.
   *
   * @example Watching a task move between the ready queue and the sleepers
   * ```ts
   * import { Scheduler, sleep } from "@genio/genio";
   * import assert from "node:assert/strict";
   *
   * const scheduler = new Scheduler();
   * const task = scheduler.spawn(function* () {
   *   yield; // to the back of the ready queue
   *   yield* sleep(1);
   * }(), { name: "napper" });
   * assert.equal(scheduler.step(), task); // ran up to the bare yield
   * assert.deepEqual(scheduler.ready, [task]);
   * scheduler.step(); // ran up to the sleep
   * assert.ok(scheduler.sleeping.has(task));
   * await new Promise((resolve) => setTimeout(resolve, 5)); // the sleep ends
   * assert.deepEqual(scheduler.ready, [task]);
   * scheduler.step(); // returns
   * assert.equal(task.state, "done");
   * ```
   */
  step(): Task<unknown> | null {
    if (this.#running !== null || this.#looping) {
      throw new Error("Cannot step: the scheduler is running; step() is for when run() is not");
    }
    const task = this.#ready.shift();
    if (task === undefined) return null;
    this.#looping = true;
    try {
      this.#step(task);
    } finally {
      this.#looping = false;
      this.#endTurn();
    }
    return task;
  }

  // --- the step loop -------------------------------------------------------------------

  #loop = (): void => {
    if (this.#looping) return;
    this.#looping = true;
    if (this.#sliceTimer !== null) clearTimeout(this.#sliceTimer);
    this.#sliceTimer = null;
    let sliceEnd = 0;
    let unchecked = 0; // steps run since the clock was last read
    for (;;) {
      const n = this.#ready.length;
      for (let i = 0; i < n; i++) this.#step(this.#ready.shift()!);
      if (this.#ready.length === 0) break;
      if ((unchecked += n) < CHECK_STEPS) continue;
      unchecked = 0;
      const now = performance.now();
      if (sliceEnd === 0) sliceEnd = now + SLICE_MS;
      else if (now > sliceEnd) {
        this.#sliceTimer = setTimeout(this.#loop, 0);
        break;
      }
    }
    this.#looping = false;
    this.#endTurn();
  };

  // A turn ends: failures nobody observed during it are reported, then either the run is
  // over or the alarm is set for the earliest timer.
  #endTurn(): void {
    if (this.#unreported.length > 0) this.#report();
    if (this.#tasks.size === 0) this.#stop();
    else this.#timers.arm();
  }

  #wake = (): void => {
    if (!this.#looping && this.#running !== null) this.#loop();
  };

  #step(task: TaskImpl): void {
    this.#current = task;
    task.state = "running";
    const gen = task.gen;
    for (;;) {
      let step: IteratorResult<Intent | undefined, unknown>;
      try {
        if (task.error === NOTHING) {
          const value = task.value;
          task.value = undefined;
          step = gen.next(value);
        } else {
          const error = task.error;
          task.error = NOTHING;
          step = gen.throw(error);
        }
      } catch (error) {
        this.#finish(task, false, error);
        break;
      }
      if (step.done) {
        this.#finish(task, true, step.value);
        break;
      }
      if (this.#perform(task, step.value) === BLOCKED) break;
    }
    this.#current = null;
  }

  // Returns CONTINUE when the task can go on at once (its value or error is set), BLOCKED
  // when it is parked in the ready queue or a wait.
  #perform(task: TaskImpl, intent: Intent | undefined): boolean {
    try {
      if (intent === undefined) return this.#interrupt(task) || this.#enqueue(task);
      // Discussion: reads and writes are nearly every intent a server's tasks yield, so they
      // skip the registry's lookup and call their unit directly, a call V8 can inline. The
      // registry has them too: this is only a shortcut to the same place.
      const type = intent?.type;
      if (type === "read") return this.#interrupt(task) || this.#conns.read(task, intent);
      if (type === "write") return this.#interrupt(task) || this.#conns.write(task, intent);
      const kind = this.#intents.get(type);
      if (kind === undefined) throw misuse(intent);
      if (kind.blocks && this.#interrupt(task)) return CONTINUE;
      return kind.perform(task, intent);
    } catch (error) {
      task.error = error;
      return CONTINUE;
    }
  }

  #park(task: TaskImpl, state: TaskState, on: unknown, undo: Undo): boolean {
    task.state = state;
    task.waitingOn = on;
    task.undo = undo;
    return BLOCKED;
  }

  #enqueue(task: TaskImpl): boolean {
    task.state = "ready";
    task.waitingOn = null;
    task.undo = null;
    this.#ready.push(task);
    return BLOCKED;
  }

  #resume(task: TaskImpl, value: unknown): void {
    task.value = value;
    if (task.idleLimits > 0) this.#timers.noteWait(task);
    if (this.#looping || this.#running === null || this.#ready.length > 0) {
      this.#enqueue(task);
      return this.#wake();
    }
    // The common case: one Deno call settled while no task is ready. Run its task at once
    // rather than queue it and start the loop for a queue of one.
    task.waitingOn = null;
    task.undo = null;
    this.#looping = true;
    this.#step(task);
    this.#looping = false;
    if (this.#ready.length > 0) this.#loop();
    else this.#endTurn();
  }

  #fail(task: TaskImpl, error: unknown): void {
    this.#requeue(task, error, true);
    this.#wake();
  }

  // A wait completed by code that may be outside any task: the task runs on the next turn.
  #wakeLater(task: TaskImpl, value: unknown, failed = false): void {
    this.#requeue(task, value, failed);
    this.#queueLoop();
  }

  #requeue(task: TaskImpl, value: unknown, failed: boolean): void {
    if (failed) task.error = value;
    else task.value = value;
    if (task.idleLimits > 0) this.#timers.noteWait(task);
    this.#enqueue(task);
  }

  #queueLoop(): void {
    if (this.#running === null || this.#looping || this.#loopQueued) return;
    this.#loopQueued = true;
    queueMicrotask(() => {
      this.#loopQueued = false;
      this.#wake();
    });
  }

  // --- cancellation and time limits ---------------------------------------------------

  // Delivers a pending cancellation (first) or a time limit that ran out as the error the
  // task's next step throws. Returns whether there was one.
  #interrupt(task: TaskImpl): boolean {
    if (task.cancelRequested && !task.cancelDelivered) {
      task.cancelDelivered = true;
      return throwInto(task, new Cancelled(`Task "${task.name}" was cancelled`));
    }
    if (task.expiredLimits === 0) return false;
    // The outermost: an inner block that catches it does not make an outer one go away.
    const limit = outermostExpired(task);
    limit.delivered = true;
    return throwInto(task, limitError(task, limit));
  }

  // A parked task that has something to be told: out of its wait, back on the ready queue.
  #interruptParked(task: TaskImpl): void {
    if (task.undo === null) return;
    task.undo(task);
    this.#interrupt(task);
    this.#enqueue(task);
  }

  #expire = (timer: Timer): void => {
    const task = timer.owner;
    if (timer.kind !== "sleep") return this.#interruptParked(task);
    task.value = undefined;
    if (task.idleLimits > 0) this.#timers.noteWait(task);
    this.#enqueue(task);
  };

  #requestCancel(task: TaskImpl): void {
    if (task.finished || task.cancelRequested) return;
    task.cancelRequested = true;
    this.#interruptParked(task);
  }

  // --- spawn, finish, join, cancel ----------------------------------------------------

  #spawn<T>(
    operation: Operation<T>,
    { name, onSettled, idleTimeout }: SpawnOptions,
    parent: TaskImpl | null,
  ): TaskImpl<T> {
    checkOperation(operation);
    if (onSettled !== undefined && typeof onSettled !== "function") {
      throw new TypeError("Cannot spawn: onSettled must be a function");
    }
    if (idleTimeout !== undefined && !(idleTimeout >= 0)) {
      throw new RangeError(`Cannot spawn: idleTimeout must be >= 0, got "${idleTimeout}"`);
    }
    const task = new TaskImpl<T>(this, this.#nextId++, operation, parent, name);
    task.spawnedAt = this.#timers.turnTime();
    if (onSettled !== undefined) {
      task.onSettled = onSettled;
      task.observed = true;
    }
    if (idleTimeout !== undefined && idleTimeout > 0 && idleTimeout !== Infinity) {
      task.taskLimit = this.#timers.setLimit(task, idleTimeout, "idle");
    }
    this.#tasks.add(task);
    if (parent !== null) (parent.children ??= new Set()).add(task);
    this.#ready.push(task);
    return task;
  }

  #spawnChild = (task: TaskImpl, intent: SpawnIntent): boolean => {
    task.value = this.#spawn(intent.operation, intent, task);
    return CONTINUE;
  };

  #own(task: Task<unknown>, verb: string): TaskImpl {
    if (!(task instanceof TaskImpl) || task.owner !== this) {
      throw new TypeError(`Cannot ${verb}: the task belongs to another scheduler`);
    }
    if (task === this.#current) {
      throw new TypeError(`Cannot ${verb} the current task "${task.name}"`);
    }
    return task;
  }

  // The generator is done; the task's outcome waits until its children have finished.
  #finish(task: TaskImpl, ok: boolean, outcome: unknown): void {
    task.finished = true;
    const limit = task.taskLimit;
    if (ok && limit !== null && limit.active && limit.delivered) {
      ok = false;
      outcome = limitError(task, limit);
    }
    this.#timers.clearTask(task);
    task.outcome = outcome;
    task.finalState = ok
      ? "done"
      : task.cancelRequested && outcome instanceof Cancelled
      ? "cancelled"
      : "failed";
    if (task.children !== null && task.children.size > 0) {
      task.state = "joining";
      task.waitingOn = task.children;
      for (const child of task.children) this.#requestCancel(child);
      return;
    }
    this.#settle(task);
  }

  #settle(task: TaskImpl): void {
    task.state = task.finalState;
    task.waitingOn = null;
    this.#tasks.delete(task);
    const failed = task.state !== "done";
    const onSettled = task.onSettled;
    task.onSettled = null;
    try {
      onSettled?.(task, failed ? task.outcome : undefined);
    } catch (thrown) {
      this.#reportError(thrown, task);
    }
    if (task.joiners !== null && task.joiners.length > 0) {
      if (failed) task.observed = true;
      for (const joiner of task.joiners) {
        if (failed) this.#fail(joiner, task.outcome);
        else this.#resume(joiner, task.outcome);
      }
    }
    if (task.cancellers !== null) {
      for (const canceller of task.cancellers) this.#resume(canceller, undefined);
    }
    task.joiners = task.cancellers = null;
    task.settleResult();
    if (task.state === "failed" && !task.observed) this.#unreported.push(task);
    const parent = task.parent;
    if (parent !== null) {
      parent.children!.delete(task);
      if (parent.finished && parent.children!.size === 0) this.#settle(parent);
    }
  }

  #join = (task: TaskImpl, intent: JoinIntent): boolean => {
    const target = this.#own(intent.task, "join");
    if (!target.settled) {
      (target.joiners ??= []).push(task);
      return this.#park(task, "joining", target, this.#undoJoin);
    }
    if (target.state === "done") task.value = target.outcome;
    else {
      target.observed = true;
      task.error = target.outcome;
    }
    return CONTINUE;
  };

  #cancel = (task: TaskImpl, intent: CancelIntent): boolean => {
    const target = this.#own(intent.task, "cancel");
    if (target.settled) return CONTINUE;
    this.#requestCancel(target);
    (target.cancellers ??= []).push(task);
    return this.#park(task, "joining", target, this.#undoJoin);
  };

  // A joiner that stops waiting observes nothing: a failure it would have received is
  // still reported unless another joiner takes it.
  #undoJoin = (task: TaskImpl): void => {
    const target = task.waitingOn as TaskImpl;
    remove(target.joiners, task);
    remove(target.cancellers, task);
  };

  // --- ending a turn and a run --------------------------------------------------------

  #report(): void {
    const unreported = this.#unreported;
    this.#unreported = [];
    for (const task of unreported) {
      if (!task.observed) this.#reportError(task.outcome, task);
    }
  }

  #reportError(error: unknown, task: TaskImpl): void {
    try {
      this.#onError(error, task);
    } catch (thrown) {
      console.error("genio: onError threw:", thrown);
    }
  }

  // No task is left, so nobody can take the result of an abandoned Deno call: its resource
  // is closed so that the call ends, and the run ends once those calls have settled.
  #stop(): void {
    const running = this.#running;
    this.#running = null;
    this.#timers.stop();
    if (this.#sliceTimer !== null) clearTimeout(this.#sliceTimer);
    this.#sliceTimer = null;
    const pending = [...this.#conns.stop(), ...this.#accepts.stop(), ...this.#connects.stop()];
    if (running === null) return;
    if (pending.length === 0) return running.resolve();
    Promise.allSettled(pending).then(() => running.resolve());
  }
}

function snapshot(task: TaskImpl): TaskInfo {
  return {
    id: task.id,
    name: task.name,
    state: task.state,
    waitingOn: task.waitingOn,
    parent: task.parent?.id ?? null,
    spawnedAt: task.spawnedAt,
    deadline: nearestDeadline(task),
    bytesRead: task.bytesRead,
    bytesWritten: task.bytesWritten,
  };
}

function nearestDeadline(task: TaskImpl): number | null {
  let nearest = task.sleepTimer?.at ?? Infinity;
  for (let limit = task.limits; limit !== null; limit = limit.outer) {
    if (limit.at < nearest) nearest = limit.at;
  }
  return nearest === Infinity ? null : nearest;
}

function throwInto(task: TaskImpl, error: unknown): boolean {
  task.value = undefined;
  task.error = error;
  return CONTINUE;
}

// What every `function*` generator object inherits from: the common case, checked first.
const GENERATOR_PROTOTYPE: object = Object.getPrototypeOf(function* () {}.prototype);

function checkOperation(operation: unknown): void {
  const gen = operation as Partial<Operation<unknown>> | null;
  if (typeof gen?.next === "function" && typeof gen.throw === "function") {
    if (Object.getPrototypeOf(Object.getPrototypeOf(gen)) === GENERATOR_PROTOTYPE) return;
    if (Symbol.asyncIterator in gen) {
      throw new TypeError(
        "Cannot spawn: got an async generator (an `async function*`): write a plain " +
          "`function*`, and wait for a promise with `yield* wait(promise)`",
      );
    }
    return;
  }
  if (typeof operation === "function") {
    throw new TypeError(
      "Cannot spawn: got a function: call the generator function first, " +
        "as in `spawn(handler(conn))`",
    );
  }
  throw new TypeError(
    "Cannot spawn: expected a generator object (call the generator function first)",
  );
}

// What a task yielded that is not an intent, and what to write instead.
function misuse(value: unknown): TypeError {
  const object = value as { next?: unknown; then?: unknown; type?: unknown } | null;
  if (typeof object?.next === "function") {
    return new TypeError(
      "Cannot perform intent: yielded a generator: use `yield*` " +
        "(write `yield* read(conn, buffer)`, not `yield read(conn, buffer)`)",
    );
  }
  if (typeof object?.then === "function") {
    return new TypeError("Cannot perform intent: yielded a Promise: use `yield* wait(promise)`");
  }
  if (object !== null && typeof object === "object" && "type" in object) {
    return new TypeError(`Cannot perform intent: unknown type "${String(object.type)}"`);
  }
  return new TypeError(
    `Cannot perform intent: yielded ${typeof value === "string" ? `"${value}"` : String(value)}` +
      ", which is not an intent (a bare `yield` lets the other tasks run)",
  );
}

function remove<T>(list: T[] | null, item: T): void {
  if (list === null) return;
  const i = list.indexOf(item);
  if (i >= 0) list.splice(i, 1);
}

function reportToStderr(error: unknown, task: Task<unknown>): void {
  const detail = error instanceof Error ? error.stack ?? String(error) : String(error);
  console.error(`genio: task "${task.name}" (#${task.id}) failed\n${detail}`);
}
