// Timers: every sleep and every time limit of every task, in one heap behind one real timer.
//
// Why it looks the way it does:
// - One real timer (the alarm) is set for the earliest entry whenever that moves earlier.
//   When it rings, every entry due by then is handled in order (key, then the order set),
//   and the alarm is set again for the next at the end of the scheduler's turn.
// - The clock is read when a sleep or a limit is set, never cached: a task that ran for a
//   while must not start its sleep from an older reading, or the sleep would end early.
//   Nothing here ever ends before its full duration; a late alarm only makes it late.
// - An entry has a place in the heap (`key`) and a time it really runs out (`at`). A limit
//   pushed later keeps its place and only moves when it reaches the top, so pushing it
//   costs nothing.
// - A spare entry: a limit cleared before it ran out stays in the heap as the task's spare,
//   and the task's next limit that runs out no earlier than its key takes it over. A
//   handler timing every read re-arms one entry per message in O(1), with no heap work.
// - Idle limits start again each time a wait of their task completes. Reading the clock for
//   every completed wait would cost more than the rest of the kernel's work for it, so a
//   completed wait only counts itself on its task (`completedWaits`), and the limit checks
//   the count from the heap: every `ms / IDLE_CHECKS` while waits keep completing (a wait
//   seen at a check runs the limit out `ms` after that check), and otherwise once, at `at`.
//   A wait that completes while the limit sleeps until `at` brings its check forward to at
//   once. So an idle limit never fires early, and late by at most `ms / IDLE_CHECKS`.
// - A limit that runs out stays in force, `expired`, until its block clears it: the
//   scheduler throws its error at every blocking intent inside the block (level-triggered,
//   as Curio's and Trio's), so catching it once does not make the limit go away.
import type { Clock, Task } from "./scheduler.ts";
import type { ClearDeadlineIntent, Deadline, DeadlineIntent, SleepIntent } from "./intents.ts";
import { Cancelled, TimeoutError } from "./errors.ts";
import { CONTINUE, type Kernel, type TaskImpl } from "./_task.ts";
import { TimerHeap } from "./_timer_heap.ts";

const IDLE_CHECKS = 16;

export type TimerKind = "sleep" | "deadline" | "idle";

export interface Timer extends Deadline {
  key: number;
  seq: number;
  index: number;
  readonly owner: TaskImpl;
  kind: TimerKind;
  at: number;
  ms: number;
  active: boolean; // set and not cleared
  expired: boolean; // a limit that ran out while active
  delivered: boolean; // its error has been thrown into the task at least once
  outer: Timer | null; // the limit this one is nested in
  checkedWaits: number; // an idle limit's: the task's completedWaits at its last check
  checking: boolean; // an idle limit's: checks every ms / IDLE_CHECKS, not asleep until `at`
}

export class Timers {
  readonly sleeping: Map<Task<unknown>, number> = new Map();
  #heap = new TimerHeap<Timer>();
  #seq = 0;
  #alarm: unknown = null;
  #alarmAt = Infinity;
  #added = false; // only an entry added or hastened can be due before the alarm
  #turnTime = NaN;

  constructor(
    readonly kernel: Kernel,
    readonly clock: Clock,
    // Called for each sleep that ended and each limit that ran out, then `afterRing` once.
    readonly expire: (timer: Timer) => void,
    readonly afterRing: () => void,
  ) {}

  get size(): number {
    return this.#heap.size;
  }

  // The intent that starts a limit: its handle is what the task gets back.
  setLimitIntent = (task: TaskImpl, { ms, idle }: DeadlineIntent): boolean => {
    if (!(ms >= 0)) throw new RangeError(`Cannot set a timeout of ${ms} ms`);
    task.value = this.setLimit(task, ms, idle === true ? "idle" : "deadline");
    return CONTINUE;
  };

  // Leaving a block: a limit that ran out and was delivered inside it turns a normal
  // return into its error, so that code which caught the error cannot end the block as if
  // it had been in time. A limit that ran out while nothing was waiting is not an error.
  clearLimitIntent = (task: TaskImpl, { deadline, returned }: ClearDeadlineIntent): boolean => {
    const limit = deadline as Timer;
    if (limit?.owner !== task) {
      throw new TypeError("Cannot clear a deadline: it is not one of this task's");
    }
    const delivered = limit.active && limit.delivered;
    this.clearLimit(task, limit);
    if (returned === true && delivered) task.error = limitError(task, limit);
    return CONTINUE;
  };

  // A task's age needs no more precision than the turn it was spawned in, so the tasks
  // spawned in one turn share one clock reading (forgotten once the turn's microtasks have
  // run). Sleeps and limits never use it: they read the clock each time.
  turnTime(): number {
    if (Number.isNaN(this.#turnTime)) {
      this.#turnTime = this.clock.now();
      queueMicrotask(this.#forgetTurnTime);
    }
    return this.#turnTime;
  }

  #forgetTurnTime = (): void => {
    this.#turnTime = NaN;
  };

  sleepIntent = (task: TaskImpl, { ms }: SleepIntent): boolean => {
    if (typeof ms !== "number" || Number.isNaN(ms)) {
      throw new RangeError(`Cannot sleep: ms must be a number, got "${ms}"`);
    }
    if (ms <= 0) return this.kernel.ready(task);
    return this.kernel.park(task, "sleeping", this.sleep(task, ms), this.stopSleeping);
  };

  sleep(task: TaskImpl, ms: number): number {
    const at = this.clock.now() + ms;
    if (ms !== Infinity) task.sleepTimer = this.#add(this.#entry(task, "sleep", at, ms));
    this.sleeping.set(task, at);
    return at;
  }

  stopSleeping = (task: TaskImpl): void => {
    if (task.sleepTimer !== null) this.#heap.remove(task.sleepTimer);
    task.sleepTimer = null;
    this.sleeping.delete(task);
  };

  setLimit(task: TaskImpl, ms: number, kind: "deadline" | "idle"): Timer {
    const at = this.clock.now() + ms;
    let timer = task.spareTimer;
    if (timer !== null && timer.key <= at) {
      task.spareTimer = null;
      timer.kind = kind;
      timer.at = at;
      timer.ms = ms;
      timer.active = true;
      timer.delivered = false;
      timer.checking = false;
    } else {
      timer = this.#add(this.#entry(task, kind, at, ms));
    }
    timer.outer = task.limits;
    task.limits = timer;
    if (kind === "idle") {
      task.idleLimits++;
      task.idleChecking = false;
      timer.checkedWaits = task.completedWaits;
    }
    return timer;
  }

  clearLimit(task: TaskImpl, timer: Timer): void {
    if (!timer.active) return;
    timer.active = false;
    if (task.limits === timer) task.limits = timer.outer;
    else {
      let inner = task.limits;
      while (inner !== null && inner.outer !== timer) inner = inner.outer;
      if (inner !== null) inner.outer = timer.outer;
    }
    timer.outer = null;
    if (timer.kind === "idle") task.idleLimits--;
    if (timer.expired) {
      task.expiredLimits--;
      timer.expired = false;
    }
    if (timer.index < 0) return;
    if (task.spareTimer === null && !task.finished) task.spareTimer = timer;
    else this.#heap.remove(timer);
  }

  // Every limit of a task that has finished, and its spare.
  clearTask(task: TaskImpl): void {
    while (task.limits !== null) this.clearLimit(task, task.limits);
    if (task.spareTimer !== null) this.#heap.remove(task.spareTimer);
    task.spareTimer = null;
  }

  // A wait of a task with an idle limit completed.
  noteWait(task: TaskImpl): void {
    task.completedWaits++;
    if (!task.idleChecking) this.#checkSoon(task);
  }

  // An idle limit asleep until its `at` checks at once instead, since its limit moved.
  #checkSoon(task: TaskImpl): void {
    task.idleChecking = true;
    for (let timer = task.limits; timer !== null; timer = timer.outer) {
      if (timer.kind !== "idle" || timer.checking) continue;
      timer.checking = true;
      const lastCheck = timer.at - timer.ms;
      if (timer.index >= 0 && lastCheck < timer.key) {
        this.#heap.hasten(timer, lastCheck);
        this.#added = true;
      }
    }
  }

  // An idle limit at the top of the heap checks its task. Returns whether it has run out;
  // if not, it has moved to its next check.
  #idleRanOut(timer: Timer, now: number): boolean {
    const task = timer.owner;
    if (task.completedWaits !== timer.checkedWaits) {
      timer.checkedWaits = task.completedWaits; // the last of them completed by now
      timer.at = now + timer.ms;
      timer.checking = true;
    } else {
      timer.checking = false; // none since the last check: asleep until `at`
      task.idleChecking = false;
    }
    if (timer.at <= now) return true;
    const next = timer.checking ? Math.min(now + timer.ms / IDLE_CHECKS, timer.at) : timer.at;
    this.#heap.postpone(timer, next);
    return false;
  }

  // Sets the alarm for the earliest entry if an entry was added since the last call.
  arm(): void {
    if (!this.#added) return;
    this.#added = false;
    const next = this.#heap.peek();
    if (next === undefined || next.key >= this.#alarmAt) return;
    if (this.#alarm !== null) this.clock.clearTimer(this.#alarm);
    this.#alarmAt = next.key;
    const delay = Math.max(0, Math.ceil(next.key - this.clock.now()));
    this.#alarm = this.clock.setTimer(this.#ring, delay);
  }

  #ring = (): void => {
    this.#alarm = null;
    this.#alarmAt = Infinity;
    this.#added = true;
    const now = this.clock.now();
    let timer: Timer | undefined;
    while ((timer = this.#heap.peek()) !== undefined && timer.key <= now) {
      if (!timer.active) {
        this.#heap.remove(timer);
        if (timer.owner.spareTimer === timer) timer.owner.spareTimer = null;
        continue;
      }
      if (timer.kind === "idle" && !this.#idleRanOut(timer, now)) continue;
      // An entry whose place is earlier than its time (a reused spare, an idle limit between
      // checks) moves to its time first, so that a late ring handles entries in the order
      // they really came due: a sleep that ended before a deadline ends normally, and an
      // outer deadline due before an inner one is the one delivered.
      if (timer.key < timer.at) {
        this.#heap.postpone(timer, timer.at);
        continue;
      }
      this.#heap.remove(timer);
      const task = timer.owner;
      if (timer.kind === "sleep") {
        task.sleepTimer = null;
        this.sleeping.delete(task);
      } else {
        timer.expired = true;
        task.expiredLimits++;
      }
      this.expire(timer);
    }
    this.afterRing();
  };

  stop(): void {
    if (this.#alarm !== null) this.clock.clearTimer(this.#alarm);
    this.#alarm = null;
    this.#alarmAt = Infinity;
    this.#heap.clear();
  }

  #add(timer: Timer): Timer {
    this.#added = true;
    return this.#heap.add(timer);
  }

  #entry(owner: TaskImpl, kind: TimerKind, at: number, ms: number): Timer {
    return {
      key: at,
      seq: this.#seq++,
      index: -1,
      owner,
      kind,
      at,
      ms,
      active: true,
      expired: false,
      delivered: false,
      outer: null,
      checkedWaits: 0,
      checking: false,
    };
  }
}

// A cancelled task's limits may still bound its cleanup, but what reaches its code is
// `Cancelled`: a TimeoutError there could be caught and let it return as if not cancelled.
export function limitError(task: TaskImpl, limit: Timer): Error {
  if (!task.cancelRequested) return new TimeoutError(limit.ms, limit);
  return new Cancelled(
    `Task "${task.name}" was cancelled, and its ${limit.ms} ms time limit ran out in cleanup`,
  );
}

/** The outermost limit of the task that has run out: the one whose block ends first. */
export function outermostExpired(task: TaskImpl): Timer {
  let found: Timer | null = null;
  for (let timer = task.limits; timer !== null; timer = timer.outer) {
    if (timer.expired) found = timer;
  }
  return found!;
}
