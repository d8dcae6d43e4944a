// A task as the kernel keeps it, and what a kind of wait may ask of the kernel.
import type { Operation } from "./intents.ts";
import type { Scheduler, Task, TaskState } from "./scheduler.ts";
import type { ConnCall, InFlight } from "./_conn_waits.ts";
import type { Timer } from "./_timers.ts";
import type { WaitEntry } from "./_wait_list.ts";

/** What a step sends into a task when it has no error to throw. */
export const NOTHING: unique symbol = Symbol("nothing");
/** A kind of wait's answer when it parked the task (or put it on the ready queue). */
export const BLOCKED = false;
/** A kind of wait's answer when the task can go on at once (its value or error is set). */
export const CONTINUE = true;

/** Takes a parked task out of its wait, leaving any Deno call in flight. */
export type Undo = (task: TaskImpl) => void;

/** What a kind of wait needs from the kernel. */
export interface Kernel {
  /** Parks `task` as `state`, waiting on `on`; `undo` takes it out again. Returns BLOCKED. */
  park(task: TaskImpl, state: TaskState, on: unknown, undo: Undo): boolean;
  /** Puts `task` at the back of the ready queue, as a bare `yield` does. Returns BLOCKED. */
  ready(task: TaskImpl): boolean;
  /** The task's wait completed with `value`. */
  resume(task: TaskImpl, value: unknown): void;
  /** The task's wait failed with `error`, thrown at its yield. */
  fail(task: TaskImpl, error: unknown): void;
  /**
   * Like `resume` (or `fail`, when `failed`: `value` is the error), for a wait completed by other code (a task putting into a
   * queue, or code outside any task setting an event): the task goes on the ready queue and
   * runs on the scheduler's next turn, never inside the caller.
   */
  wake(task: TaskImpl, value: unknown, failed?: boolean): void;
}

export class TaskImpl<T = unknown> implements Task<T> {
  state: TaskState = "ready";
  spawnedAt = 0; // on the scheduler's clock
  bytesRead = 0;
  bytesWritten = 0;
  waitingOn: unknown = null;
  undo: Undo | null = null; // set while parked in a wait
  // What the next step sends in: a value, or an error to throw at the yield.
  value: unknown = undefined;
  error: unknown = NOTHING;
  finished = false; // the generator is done; the task may still wait for its children
  cancelRequested = false;
  cancelDelivered = false;
  observed = false;

  // Time (see _timers.ts).
  limits: Timer | null = null; // the innermost time limit in force
  expiredLimits = 0; // limits in force that have run out
  taskLimit: Timer | null = null; // the spawn option's idle limit, around the whole task
  sleepTimer: Timer | null = null;
  spareTimer: Timer | null = null;
  idleLimits = 0;
  completedWaits = 0; // counted while an idle limit is in force
  idleChecking = false; // every idle limit of the task checks often: none to hasten

  // Deno calls (see _conn_waits.ts).
  io: InFlight | null = null; // the call it waits on when reading, writing or connecting
  parkedIn: WaitEntry | null = null; // its place in a Queue's, Event's or Semaphore's line
  connCall: ConnCall | null = null; // its read/write record, reused call after call
  waitSeq = 0; // tells a `wait()` whose task stopped waiting from the current one

  children: Set<TaskImpl> | null = null;
  joiners: TaskImpl[] | null = null;
  cancellers: TaskImpl[] | null = null;
  onSettled: ((task: Task<unknown>, error: unknown) => void) | null = null;
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
    return this.state === "done" || this.state === "failed" || this.state === "cancelled";
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
