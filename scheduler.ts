/**
 * The kernel: a ready queue of generator tasks, explicit wait maps, and a step loop that
 * turns each yielded intent into the settling of a `Deno.Conn` / `Deno.Listener` promise.
 *
 * The classic generator server keeps a deque of tasks and `recv_wait` / `send_wait` dicts
 * for `select()`. Deno has no `select()`: a conn is "ready" when the `conn.read()` the kernel
 * started for its task settles. So each blocking intent starts one Deno call, parks the task
 * in a wait map, and the call's settlement moves exactly that task back to the ready queue.
 *
 * @example The seed's round-robin, two tasks taking turns
 * ```ts
import { Scheduler } from "@genio/genio/scheduler";
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
import { closeQuietly } from "./_close_quietly.ts";
import { Deque } from "./_deque.ts";
import { type TimerEntry, TimerHeap } from "./_timer_heap.ts";
import { BusyError, Cancelled, TimeoutError } from "./errors.ts";
import type {
  AcceptIntent,
  Deadline,
  Intent,
  Operation,
  ReadIntent,
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
}

/**
 * A snapshot of one live task, as returned by {@linkcode Scheduler.tasks}.
 *
 * @example
 * ```ts
 * import type { TaskInfo } from "@genio/genio";
 *
 * const info: TaskInfo = { id: 1, name: "main", state: "sleeping", waitingOn: 1500, parent: null };
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
// How often an idle deadline looks at its task while waits keep completing: every this
// many-th of its limit, which is how late it may fire.
const IDLE_LOOKS = 16;
const NOTHING: unique symbol = Symbol("nothing");
const BLOCKED = false;
const CONTINUE = true;

// A sleep, or a deadline of `timeout()`. A deadline pushed later keeps its place in the heap
// (its `key`) and only moves when it reaches the top: `at` is when it really runs out.
interface Timer extends TimerEntry<TaskImpl>, Deadline {
  at: number;
  ms: number;
  readonly sleep: boolean;
  active: boolean;
  // An idle deadline starts again each time a wait of its task completes. Reading the clock
  // for every completed wait would cost more than the rest of the kernel's work for it, so
  // a completed wait only counts itself on the task (`waits`) and the deadline looks at the
  // count from the heap: every `ms / IDLE_LOOKS` while waits keep completing (a wait seen
  // to have completed at a look runs out `ms` after that look), and otherwise once, at `at`.
  // A wait that completes while the deadline sleeps until `at` brings the look forward to
  // at once. So an idle deadline never fires early, and late by at most `ms / IDLE_LOOKS`.
  idle: boolean;
  seen: number; // the task's `waits` at the last look
  watching: boolean; // looking every ms / IDLE_LOOKS, not asleep until `at`
  outerIdle: Timer | null; // the idle deadline this one is nested in
}

class TaskImpl<T = unknown> implements Task<T> {
  state: TaskState = "ready";
  waitingOn: unknown = null;
  // What the next step sends in: a value, or an error to throw at the yield.
  value: unknown = undefined;
  error: unknown = NOTHING;
  started = false;
  finished = false; // the generator is done; the task may still wait for its children
  cancelRequested = false;
  cancelDelivered = false;
  observed = false;
  pendingTimeout: Timer | null = null;
  sleepTimer: Timer | null = null;
  spareTimer: Timer | null = null; // a cleared deadline still in the heap, ready for reuse
  idleTimer: Timer | null = null;
  waits = 0; // waits completed while an idle deadline is on (see Timer)
  idleWatched = false; // every idle deadline of the task is watching: none to wake
  waitSeq = 0;
  io: InFlight | null = null; // the Deno call it waits on when reading, writing or accepting
  // Its record of a read or a write, reused call after call (see ConnCall).
  connCall: ConnCall | null = null;
  children: Set<TaskImpl> | null = null;
  joiners: TaskImpl[] | null = null;
  onSettled: ((task: Task<unknown>, error: unknown) => void) | null = null;
  cancellers: TaskImpl[] | null = null;
  outcome: unknown = undefined;
  finalState: TaskState = "done";
  #result: PromiseWithResolvers<unknown> | null = null;

  constructor(
    readonly owner: Scheduler,
    readonly id: number,
    readonly gen: Operation<T>,
    readonly parent: TaskImpl | null,
    readonly givenName: string | undefined,
  ) {}

  get name(): string {
    return this.givenName ?? `task-${this.id}`;
  }

  get settled(): boolean {
    return this.state === "done" || this.state === "failed" ||
      this.state === "cancelled";
  }

  get result(): Promise<T> {
    this.observed = true;
    if (this.#result === null) {
      this.#result = Promise.withResolvers<unknown>();
      if (this.settled) this.settleResult();
    }
    return this.#result.promise as Promise<T>;
  }

  settleResult(): void {
    if (this.#result === null) return;
    if (this.state === "done") this.#result.resolve(this.outcome);
    else this.#result.reject(this.outcome);
  }
}

// A conn's entries in the seed's recv_wait and send_wait.
interface ConnWaiters {
  reader: TaskImpl | null;
  writer: TaskImpl | null;
}

interface InFlight {
  task: TaskImpl | null; // null once its task stopped waiting: the result is nobody's yet
  promise: Promise<unknown>;
}

// A read or a write in flight. A task waits on one at a time, so it keeps one record for
// both and reuses it from one call to the next, its settle callbacks bound once: the
// kernel allocates nothing of its own per read or write, and a handler that alternates
// reads and writes touches one record, not two. A record whose task stops waiting becomes
// a stray and is not reused.
interface ConnCall extends InFlight {
  reading: boolean;
  conn: Deno.Conn;
  waiters: ConnWaiters; // the conn's
  // A read's:
  buffer: Uint8Array; // where Deno writes: the first reader's buffer
  target: Uint8Array; // where the waiting task wants the bytes
  // A write's:
  data: Uint8Array;
  written: number;
  queued: { task: TaskImpl; data: Uint8Array } | null; // behind an abandoned write
  readonly onValue: (n: number | null) => void;
  readonly onError: (error: unknown) => void;
}

type InFlightAccept = InFlight;

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
  // The seed's recv_wait / send_wait: who reads and who writes each conn, in one record per
  // conn that lives as long as the conn. A read or a write costs at most one lookup (none
  // when the task's last call was on the same conn) and no insertion or deletion, which in a
  // Map churned by every message cost more than the rest of the kernel's work for it.
  // `readWaiting` / `writeWaiting` show them as maps.
  #conns = new WeakMap<Deno.Conn, ConnWaiters>();
  #acceptWaiting = new Map<Deno.Listener, TaskImpl>();
  #sleeping = new Map<TaskImpl, number>();
  #timers = new TimerHeap<TaskImpl>();
  #tasks = new Set<TaskImpl>();

  // Stray calls: Deno calls whose task stopped waiting (Deno cannot un-issue them), kept for
  // the next taker of the same conn or listener, and results that arrived for nobody.
  #strayReads = new Map<Deno.Conn, ConnCall>();
  #strayWrites = new Map<Deno.Conn, ConnCall>();
  #strayAccepts = new Map<Deno.Listener, InFlightAccept>();
  // Weak, because the conn's owner may close it and never read again: the bytes go with it.
  // The count only keeps the lookup off the hot path while nothing is unread.
  #unread = new WeakMap<Deno.Conn, Uint8Array>();
  #unreadCount = 0;
  #unaccepted = new Map<Deno.Listener, Deno.Conn[]>();

  #clock: Clock;
  #onError: (error: unknown, task: Task<unknown>) => void;
  #nextId = 1;
  #current: TaskImpl | null = null;
  #looping = false;
  #sliceTimer: ReturnType<typeof setTimeout> | null = null;
  #alarm: unknown = null;
  #alarmAt = Infinity;
  #timerAdded = false; // only a new timer can be due before the alarm: #arm looks then
  #time = NaN; // the clock's reading for the microtasks now queued (see #now)
  #unreported: TaskImpl[] = [];
  #running: PromiseWithResolvers<void> | null = null;

  /**
   * Creates an idle scheduler.
   *
   * @param options Error reporting and the clock.
   */
  constructor(options: SchedulerOptions = {}) {
    this.#clock = options.clock ?? REAL_CLOCK;
    this.#onError = options.onError ?? reportToStderr;
  }

  /** The ready queue, front first (a snapshot). */
  get ready(): readonly Task<unknown>[] {
    return this.#ready.toArray();
  }

  /** Tasks waiting for a read, by conn (the seed's `recv_wait`; a snapshot). */
  get readWaiting(): ReadonlyMap<Deno.Conn, Task<unknown>> {
    return this.#waitingIn("reading");
  }

  /** Tasks waiting for a write to finish, by conn (the seed's `send_wait`; a snapshot). */
  get writeWaiting(): ReadonlyMap<Deno.Conn, Task<unknown>> {
    return this.#waitingIn("writing");
  }

  // Built from the tasks' states: the kernel keeps each conn's reader and writer in the
  // conn's own record (#conns), which a read or a write updates in place.
  #waitingIn(state: TaskState): Map<Deno.Conn, Task<unknown>> {
    const map = new Map<Deno.Conn, Task<unknown>>();
    for (const task of this.#tasks) {
      if (task.state === state) map.set(task.waitingOn as Deno.Conn, task);
    }
    return map;
  }

  #waiters(conn: Deno.Conn): ConnWaiters {
    let waiters = this.#conns.get(conn);
    if (waiters === undefined) this.#conns.set(conn, waiters = { reader: null, writer: null });
    return waiters;
  }

  /** Tasks waiting for a connection, by listener. */
  get acceptWaiting(): ReadonlyMap<Deno.Listener, Task<unknown>> {
    return this.#acceptWaiting;
  }

  /** Sleeping tasks and the clock time each wakes at. */
  get sleeping(): ReadonlyMap<Task<unknown>, number> {
    return this.#sleeping;
  }

  /** The task whose step is running now, or `null` between steps. */
  get current(): Task<unknown> | null {
    return this.#current;
  }

  /**
   * A snapshot of every live task (not yet done, failed or cancelled), in spawn order.
   *
   * @returns One {@linkcode TaskInfo} per live task.
   */
  tasks(): TaskInfo[] {
    return [...this.#tasks].map((task) => ({
      id: task.id,
      name: task.name,
      state: task.state,
      waitingOn: task.waitingOn,
      parent: task.parent?.id ?? null,
    }));
  }

  /**
   * Adds a task with no parent to the back of the ready queue. It starts when `run()` runs.
   *
   * @typeParam T What the task returns.
   * @param operation The generator object to run (call the generator function first).
   * @param options A name for logs and `tasks()`.
   * @returns The new task.
   */
  spawn<T>(operation: Operation<T>, options: SpawnOptions = {}): Task<T> {
    const task = this.#spawn(operation, options, null);
    if (this.#running !== null) this.#wake();
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
   *
   * assert.deepEqual(scheduler.ready, [task]);
   * assert.equal(scheduler.step(), task); // ran up to the bare yield
   * assert.deepEqual(scheduler.ready, [task]);
   * scheduler.step(); // ran up to the sleep
   * assert.equal(scheduler.ready.length, 0);
   * assert.equal(task.state, "sleeping");
   * assert.ok(scheduler.sleeping.has(task));
   *
   * await new Promise((resolve) => setTimeout(resolve, 5)); // the sleep ends
   * assert.deepEqual(scheduler.ready, [task]);
   * scheduler.step(); // returns
   * assert.equal(task.state, "done");
   * assert.equal(scheduler.step(), null);
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
      this.#time = NaN; // the caller may move a virtual clock before the next step
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

  #endTurn(): void {
    if (this.#unreported.length > 0) this.#report();
    if (this.#tasks.size === 0) this.#stop();
    else if (this.#timerAdded) this.#arm();
  }

  #wake(): void {
    if (!this.#looping && this.#running !== null) this.#loop();
  }

  #step(task: TaskImpl): void {
    this.#current = task;
    task.state = "running";
    if (!task.started) {
      task.started = true;
      if (task.cancelRequested) this.#interrupt(task);
    }
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
  // when it is parked in the ready queue or a wait map.
  #perform(task: TaskImpl, intent: Intent | undefined): boolean {
    try {
      if (intent === undefined) {
        if (this.#interrupt(task)) return CONTINUE;
        return this.#enqueue(task);
      }
      // Every intent that may block delivers a pending cancel or timeout first. Reads and
      // writes come first: they are nearly every intent a server's tasks yield.
      switch (intent.type) {
        case "read":
          return this.#interrupt(task) || this.#read(task, intent);
        case "write":
          return this.#interrupt(task) || this.#write(task, intent);
        case "spawn":
          task.value = this.#spawn(intent.operation, intent, task);
          return CONTINUE;
        case "deadline":
          task.value = this.#setDeadline(task, intent.ms, intent.idle === true);
          return CONTINUE;
        case "clear-deadline":
          this.#clearDeadline(task, intent.deadline as Timer);
          return CONTINUE;
      }
      if (this.#interrupt(task)) return CONTINUE;
      switch (intent.type) {
        case "accept":
          return this.#accept(task, intent);
        case "sleep":
          return this.#sleep(task, intent.ms);
        case "join":
          return this.#join(task, this.#own(intent.task, "join"));
        case "cancel":
          return this.#cancel(task, this.#own(intent.task, "cancel"));
        case "wait":
          return this.#wait(task, intent.promise);
        default:
          throw new TypeError(
            `Cannot perform intent: unknown type "${(intent as { type: unknown }).type}"`,
          );
      }
    } catch (error) {
      task.error = error;
      return CONTINUE;
    }
  }

  #enqueue(task: TaskImpl): boolean {
    task.state = "ready";
    task.waitingOn = null;
    this.#ready.push(task);
    return BLOCKED;
  }

  #block(task: TaskImpl, state: TaskState, on: unknown): boolean {
    task.state = state;
    task.waitingOn = on;
    return BLOCKED;
  }

  #resume(task: TaskImpl, value: unknown): void {
    task.value = value;
    if (task.idleTimer !== null) this.#noteWait(task);
    if (this.#looping || this.#running === null || this.#ready.length > 0) {
      this.#enqueue(task);
      return this.#wake();
    }
    // The common case: one Deno call settled while no task is ready. Run its task at once
    // rather than queue it and start the loop for a queue of one.
    task.waitingOn = null;
    this.#looping = true;
    this.#step(task);
    this.#looping = false;
    if (this.#ready.length > 0) this.#loop();
    else this.#endTurn();
  }

  #resumeThrow(task: TaskImpl, error: unknown): void {
    task.error = error;
    if (task.idleTimer !== null) this.#noteWait(task);
    this.#enqueue(task);
    this.#wake();
  }

  // The clock, read only when a sleep or a deadline needs it, and then kept until the
  // microtasks queued by then have run: the tasks resumed in one event-loop turn, each
  // setting a sleep or a deadline, share one reading instead of one each.
  #now(): number {
    if (Number.isNaN(this.#time)) {
      this.#time = this.#clock.now();
      queueMicrotask(this.#forgetTime);
    }
    return this.#time;
  }

  #forgetTime = (): void => {
    this.#time = NaN;
  };

  // --- spawn, finish, join, cancel ----------------------------------------------------

  #spawn<T>(
    operation: Operation<T>,
    { name, onSettled }: SpawnOptions,
    parent: TaskImpl | null,
  ): TaskImpl<T> {
    if (
      typeof operation?.next !== "function" ||
      typeof operation.throw !== "function"
    ) {
      throw new TypeError(
        "Cannot spawn: expected a generator object (call the generator function first)",
      );
    }
    if (onSettled !== undefined && typeof onSettled !== "function") {
      throw new TypeError("Cannot spawn: onSettled must be a function");
    }
    const task = new TaskImpl<T>(this, this.#nextId++, operation, parent, name);
    if (onSettled !== undefined) {
      task.onSettled = onSettled;
      task.observed = true;
    }
    this.#tasks.add(task);
    if (parent !== null) (parent.children ??= new Set()).add(task);
    this.#ready.push(task);
    return task;
  }

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
    task.outcome = outcome;
    task.finalState = ok
      ? "done"
      : task.cancelRequested && outcome instanceof Cancelled
      ? "cancelled"
      : "failed";
    if (task.children !== null && task.children.size > 0) {
      this.#block(task, "joining", task.children);
      for (const child of task.children) this.#requestCancel(child);
      return;
    }
    this.#settle(task);
  }

  #settle(task: TaskImpl): void {
    if (task.spareTimer !== null) this.#timers.remove(task.spareTimer);
    task.spareTimer = null;
    task.state = task.finalState;
    task.waitingOn = null;
    this.#tasks.delete(task);
    const failed = task.state !== "done";
    if (task.onSettled !== null) this.#callOnSettled(task, failed ? task.outcome : undefined);
    if (task.joiners !== null) {
      for (const joiner of task.joiners) {
        if (failed) this.#resumeThrow(joiner, task.outcome);
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

  #callOnSettled(task: TaskImpl, error: unknown): void {
    const onSettled = task.onSettled!;
    task.onSettled = null;
    try {
      onSettled(task, error);
    } catch (thrown) {
      this.#reportError(thrown, task);
    }
  }

  #join(task: TaskImpl, target: TaskImpl): boolean {
    target.observed = true;
    if (target.settled) {
      if (target.state === "done") task.value = target.outcome;
      else task.error = target.outcome;
      return CONTINUE;
    }
    (target.joiners ??= []).push(task);
    return this.#block(task, "joining", target);
  }

  #stopJoining(task: TaskImpl): void {
    const target = task.waitingOn as TaskImpl;
    remove(target.joiners, task);
    remove(target.cancellers, task);
  }

  #cancel(task: TaskImpl, target: TaskImpl): boolean {
    if (target.settled) return CONTINUE;
    this.#requestCancel(target);
    (target.cancellers ??= []).push(task);
    return this.#block(task, "joining", target);
  }

  #requestCancel(task: TaskImpl): void {
    if (task.finished || task.cancelRequested) return;
    task.cancelRequested = true;
    if (task.state !== "ready" && task.state !== "running") {
      this.#stopWaiting(task);
      this.#interrupt(task);
      this.#enqueue(task);
    }
  }

  // Delivers a pending cancellation (first) or timeout as the error the task's next step
  // throws. Returns whether there was one.
  #interrupt(task: TaskImpl): boolean {
    if (task.cancelRequested && !task.cancelDelivered) {
      task.cancelDelivered = true;
      task.value = undefined;
      task.error = new Cancelled(`Task "${task.name}" was cancelled`);
      return true;
    }
    const timer = task.pendingTimeout;
    if (timer !== null) {
      task.pendingTimeout = null;
      task.value = undefined;
      task.error = new TimeoutError(timer.ms);
      return true;
    }
    return false;
  }

  // Takes a blocked task out of whatever it waits on, leaving any Deno call in flight.
  #stopWaiting(task: TaskImpl): void {
    switch (task.state) {
      case "reading":
        return this.#stopReading(task);
      case "writing":
        return this.#stopWriting(task);
      case "accepting":
        return this.#stopAccepting(task);
      case "sleeping":
        return this.#stopSleeping(task);
      case "joining":
        return this.#stopJoining(task);
      case "waiting":
        task.waitSeq++;
        return;
    }
  }

  // --- wait: any promise -------------------------------------------------------------

  #wait(task: TaskImpl, promise: PromiseLike<unknown>): boolean {
    const seq = ++task.waitSeq;
    Promise.resolve(promise).then(
      (value) => {
        if (task.waitSeq === seq) this.#resume(task, value);
      },
      (error) => {
        if (task.waitSeq === seq) this.#resumeThrow(task, error);
      },
    );
    return this.#block(task, "waiting", promise);
  }

  // --- read: readWaiting ----------------------------------------------------------------

  #read(task: TaskImpl, { conn, buffer }: ReadIntent): boolean {
    const waiters = this.#waitersFor(task, conn);
    const reader = waiters.reader;
    if (reader !== null) {
      throw new BusyError(
        `Cannot read: the conn is already being read by task "${reader.name}"`,
        conn,
      );
    }
    if (this.#unreadCount > 0) {
      const unread = this.#unread.get(conn);
      if (unread !== undefined) {
        task.value = this.#takeUnread(conn, unread, buffer);
        return CONTINUE;
      }
    }
    let op = this.#strayReads.size > 0 ? this.#strayReads.get(conn) : undefined;
    if (op !== undefined) {
      this.#strayReads.delete(conn);
      op.task = task;
      op.target = buffer;
    } else {
      op = task.connCall ??= this.#newConnCall();
      op.reading = true;
      op.task = task;
      op.conn = conn;
      op.waiters = waiters;
      op.buffer = op.target = buffer;
      const promise = conn.read(buffer);
      op.promise = promise;
      promise.then(op.onValue, op.onError);
    }
    task.io = op;
    waiters.reader = task;
    return this.#block(task, "reading", conn);
  }

  #newConnCall(): ConnCall {
    const op: ConnCall = {
      task: null,
      promise: null!,
      reading: true,
      conn: null!,
      waiters: null!,
      buffer: null!,
      target: null!,
      data: null!,
      written: 0,
      queued: null,
      onValue: (n) => op.reading ? this.#readDone(op, n, null) : this.#writeDone(op, n!, null),
      onError: (error) =>
        op.reading ? this.#readDone(op, null, error) : this.#writeDone(op, 0, error),
    };
    return op;
  }

  // The conn's record, without a lookup when the task's last call was on the same conn.
  #waitersFor(task: TaskImpl, conn: Deno.Conn): ConnWaiters {
    const last = task.connCall;
    return last !== null && last.conn === conn ? last.waiters : this.#waiters(conn);
  }

  #readDone(op: ConnCall, n: number | null, error: unknown): void {
    const { task, conn } = op;
    if (task === null) {
      this.#strayReads.delete(conn);
      if (n !== null && n > 0) this.#keepUnread(conn, op.buffer.slice(0, n));
      return;
    }
    task.io = null;
    op.waiters.reader = null;
    if (error !== null) return this.#resumeThrow(task, error);
    if (n !== null && op.target !== op.buffer) {
      this.#keepUnread(conn, op.buffer.slice(0, n));
      n = this.#takeUnread(conn, this.#unread.get(conn)!, op.target);
    }
    this.#resume(task, n);
  }

  #stopReading(task: TaskImpl): void {
    const conn = task.waitingOn as Deno.Conn;
    this.#conns.get(conn)!.reader = null;
    this.#strayReads.set(conn, this.#abandon(task) as ConnCall);
  }

  #keepUnread(conn: Deno.Conn, bytes: Uint8Array): void {
    const before = this.#unread.get(conn);
    if (before === undefined) {
      this.#unreadCount++;
      return void this.#unread.set(conn, bytes);
    }
    const joined = new Uint8Array(before.length + bytes.length);
    joined.set(before);
    joined.set(bytes, before.length);
    this.#unread.set(conn, joined);
  }

  #takeUnread(conn: Deno.Conn, unread: Uint8Array, buffer: Uint8Array): number {
    const n = Math.min(unread.length, buffer.length);
    buffer.set(unread.subarray(0, n));
    if (n === unread.length) {
      this.#unread.delete(conn);
      this.#unreadCount--;
    } else this.#unread.set(conn, unread.subarray(n));
    return n;
  }

  #abandon(task: TaskImpl): InFlight {
    const op = task.io!;
    op.task = null;
    task.io = null;
    if (task.connCall === op) task.connCall = null;
    return op;
  }

  // --- write: writeWaiting --------------------------------------------------------------

  #write(task: TaskImpl, { conn, data }: WriteIntent): boolean {
    const waiters = this.#waitersFor(task, conn);
    const writer = waiters.writer;
    if (writer !== null) {
      throw new BusyError(
        `Cannot write: the conn is already being written by task "${writer.name}"`,
        conn,
      );
    }
    if (data.length === 0) {
      task.value = 0;
      return CONTINUE;
    }
    // Bytes must not overtake an abandoned write that is still going out.
    const stray = this.#strayWrites.size > 0 ? this.#strayWrites.get(conn) : undefined;
    if (stray !== undefined) stray.queued = { task, data };
    else this.#writeMore(conn, waiters, task, data, 0);
    waiters.writer = task;
    return this.#block(task, "writing", conn);
  }

  #writeMore(
    conn: Deno.Conn,
    waiters: ConnWaiters,
    task: TaskImpl,
    data: Uint8Array,
    written: number,
  ): void {
    let promise: Promise<number>;
    try {
      promise = conn.write(written === 0 ? data : data.subarray(written));
    } catch (error) {
      promise = Promise.reject(error);
    }
    const op = task.connCall ??= this.#newConnCall();
    op.reading = false;
    op.task = task;
    op.conn = conn;
    op.waiters = waiters;
    op.promise = promise;
    op.data = data;
    op.written = written;
    op.queued = null;
    task.io = op;
    promise.then(op.onValue, op.onError);
  }

  #writeDone(op: ConnCall, n: number, error: unknown): void {
    const { task, conn } = op;
    if (task === null) {
      this.#strayWrites.delete(conn);
      const queued = op.queued;
      if (queued !== null && op.waiters.writer === queued.task) {
        this.#writeMore(conn, op.waiters, queued.task, queued.data, 0);
      }
      return;
    }
    const written = op.written + n;
    if (error === null && written < op.data.length) {
      return this.#writeMore(conn, op.waiters, task, op.data, written);
    }
    task.io = null;
    op.waiters.writer = null;
    if (error !== null) this.#resumeThrow(task, error);
    else this.#resume(task, written);
  }

  #stopWriting(task: TaskImpl): void {
    const conn = task.waitingOn as Deno.Conn;
    this.#conns.get(conn)!.writer = null;
    // A writer queued behind a stray write has no call of its own yet.
    if (task.io !== null) this.#strayWrites.set(conn, this.#abandon(task) as ConnCall);
  }

  // --- accept: acceptWaiting ------------------------------------------------------------

  #accept(task: TaskImpl, { listener }: AcceptIntent): boolean {
    const acceptor = this.#acceptWaiting.get(listener);
    if (acceptor !== undefined) {
      throw new BusyError(
        `Cannot accept: the listener is already used by task "${acceptor.name}"`,
        listener,
      );
    }
    const unaccepted = this.#unaccepted.get(listener);
    if (unaccepted !== undefined) {
      task.value = unaccepted.shift();
      if (unaccepted.length === 0) this.#unaccepted.delete(listener);
      return CONTINUE;
    }
    let op = this.#strayAccepts.get(listener);
    if (op !== undefined) {
      this.#strayAccepts.delete(listener);
      op.task = task;
    } else {
      const promise = listener.accept();
      const fresh: InFlightAccept = { task, promise };
      promise.then(
        (conn) => this.#acceptDone(listener, fresh, conn, null),
        (error) => this.#acceptDone(listener, fresh, null, error),
      );
      op = fresh;
    }
    task.io = op;
    this.#acceptWaiting.set(listener, task);
    return this.#block(task, "accepting", listener);
  }

  #acceptDone(
    listener: Deno.Listener,
    op: InFlightAccept,
    conn: Deno.Conn | null,
    error: unknown,
  ): void {
    const task = op.task;
    if (task === null) {
      this.#strayAccepts.delete(listener);
      if (conn === null) return;
      const kept = this.#unaccepted.get(listener);
      if (kept === undefined) this.#unaccepted.set(listener, [conn]);
      else kept.push(conn);
      return;
    }
    task.io = null;
    this.#acceptWaiting.delete(listener);
    if (error !== null) this.#resumeThrow(task, error);
    else this.#resume(task, conn);
  }

  #stopAccepting(task: TaskImpl): void {
    const listener = task.waitingOn as Deno.Listener;
    this.#acceptWaiting.delete(listener);
    this.#strayAccepts.set(listener, this.#abandon(task));
  }

  // --- sleep and deadlines: sleeping, the timer heap -----------------------------------

  #sleep(task: TaskImpl, ms: number): boolean {
    if (Number.isNaN(ms)) throw new RangeError("Cannot sleep: ms is NaN");
    if (ms <= 0) return this.#enqueue(task);
    const at = this.#now() + ms;
    if (ms !== Infinity) {
      this.#timerAdded = true;
      task.sleepTimer = this.#timers.add(newTimer(task, at, ms, true, false));
    }
    this.#sleeping.set(task, at);
    return this.#block(task, "sleeping", at);
  }

  #stopSleeping(task: TaskImpl): void {
    if (task.sleepTimer !== null) this.#timers.remove(task.sleepTimer);
    task.sleepTimer = null;
    this.#sleeping.delete(task);
  }

  #setDeadline(task: TaskImpl, ms: number, idle: boolean): Deadline {
    if (Number.isNaN(ms) || ms < 0) {
      throw new RangeError(`Cannot set a timeout of ${ms} ms`);
    }
    const now = this.#now();
    const at = now + ms;
    let timer = task.spareTimer;
    // A handler timing every read and write re-arms one deadline per message: reusing the
    // cleared entry, which is due no later than the new deadline, makes that O(1).
    if (timer !== null && timer.key <= at) {
      task.spareTimer = null;
      timer.at = at;
      timer.ms = ms;
      timer.active = true;
      timer.idle = idle;
      timer.watching = false;
    } else {
      timer = newTimer(task, at, ms, false, idle);
      this.#timers.add(timer);
      this.#timerAdded = true;
    }
    if (idle) {
      task.idleWatched = false;
      timer.seen = task.waits;
      timer.outerIdle = task.idleTimer;
      task.idleTimer = timer;
    }
    return timer;
  }

  // A wait of a task with an idle deadline completed: counted, for the deadline to see at
  // its next look (see Timer).
  #noteWait(task: TaskImpl): void {
    task.waits++;
    if (!task.idleWatched) this.#watchIdle(task);
  }

  // A deadline asleep until its limit looks at once instead, since its limit has moved.
  #watchIdle(task: TaskImpl): void {
    task.idleWatched = true;
    for (let timer = task.idleTimer; timer !== null; timer = timer.outerIdle) {
      if (timer.watching) continue;
      timer.watching = true;
      const lastLook = timer.at - timer.ms;
      if (timer.index >= 0 && lastLook < timer.key) {
        this.#timers.hasten(timer, lastLook);
        this.#timerAdded = true;
      }
    }
  }

  // An idle deadline at the top of the heap looks at its task. Returns whether it has run
  // out; if not, it has moved to its next look.
  #idleRanOut(timer: Timer, now: number): boolean {
    const waits = timer.owner.waits;
    if (waits !== timer.seen) {
      timer.seen = waits; // the last of them completed no later than now
      timer.at = now + timer.ms;
      timer.watching = true;
    } else {
      timer.watching = false; // none since the last look: asleep until `at`
      timer.owner.idleWatched = false;
    }
    if (timer.at <= now) return true;
    const next = timer.watching ? Math.min(now + timer.ms / IDLE_LOOKS, timer.at) : timer.at;
    this.#timers.postpone(timer, next);
    return false;
  }

  #clearDeadline(task: TaskImpl, timer: Timer): void {
    if (!timer.active) return;
    timer.active = false;
    if (timer.idle) {
      task.idleTimer = timer.outerIdle;
      timer.outerIdle = null;
    }
    if (task.pendingTimeout === timer) task.pendingTimeout = null;
    if (timer.index < 0) return;
    if (task.spareTimer === null && !task.finished) task.spareTimer = timer;
    else this.#timers.remove(timer);
  }

  #expire(timer: Timer): void {
    const task = timer.owner;
    if (timer.sleep) {
      task.sleepTimer = null;
      this.#sleeping.delete(task);
      return this.#resume(task, undefined);
    }
    if (task.finished) return;
    task.pendingTimeout = timer;
    if (task.state !== "ready" && task.state !== "running") {
      this.#stopWaiting(task);
      this.#interrupt(task);
      this.#enqueue(task);
    }
  }

  // One real timer, set for the earliest deadline whenever that moves earlier.
  #arm(): void {
    this.#timerAdded = false;
    const next = this.#timers.peek();
    if (next === undefined || next.key >= this.#alarmAt) return;
    if (this.#alarm !== null) this.#clock.clearTimer(this.#alarm);
    this.#alarmAt = next.key;
    const delay = Math.max(0, Math.ceil(next.key - this.#now()));
    this.#alarm = this.#clock.setTimer(this.#ring, delay);
  }

  #ring = (): void => {
    this.#alarm = null;
    this.#alarmAt = Infinity;
    this.#timerAdded = true;
    this.#time = NaN;
    const now = this.#now();
    this.#looping = true; // wake-ups below join the one loop that follows
    let timer: Timer | undefined;
    while ((timer = this.#timers.peek() as Timer | undefined) && timer.key <= now) {
      if (timer.active && timer.idle) {
        if (!this.#idleRanOut(timer, now)) continue;
      } else if (timer.active && timer.at > now) {
        this.#timers.postpone(timer, timer.at);
        continue;
      }
      this.#timers.remove(timer);
      if (timer.active) this.#expire(timer);
      else if (timer.owner.spareTimer === timer) timer.owner.spareTimer = null;
    }
    this.#looping = false;
    this.#wake();
  };

  // --- ending a run ---------------------------------------------------------------------

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

  // No task is left, so nobody can take the result of an abandoned Deno call: close its
  // resource so the call ends, then finish the run once those calls have settled.
  #stop(): void {
    const running = this.#running;
    this.#running = null;
    if (this.#alarm !== null) this.#clock.clearTimer(this.#alarm);
    this.#alarm = null;
    this.#alarmAt = Infinity;
    if (this.#sliceTimer !== null) clearTimeout(this.#sliceTimer);
    this.#sliceTimer = null;
    this.#timers.clear();
    const pending: Promise<unknown>[] = [];
    for (const strays of [this.#strayReads, this.#strayWrites, this.#strayAccepts]) {
      for (const [resource, op] of strays) {
        pending.push(op.promise);
        closeQuietly(resource);
      }
      strays.clear();
    }
    for (const conns of this.#unaccepted.values()) conns.forEach(closeQuietly);
    this.#unaccepted.clear();
    this.#unread = new WeakMap();
    this.#unreadCount = 0;
    if (running === null) return;
    if (pending.length === 0) return running.resolve();
    Promise.allSettled(pending).then(() => running.resolve());
  }
}

function newTimer(owner: TaskImpl, at: number, ms: number, sleep: boolean, idle: boolean): Timer {
  return {
    key: at,
    at,
    owner,
    index: -1,
    ms,
    sleep,
    active: true,
    idle,
    seen: 0,
    watching: false,
    outerIdle: null,
  };
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
