// Schedulers as the kernel's tests make them: ones that keep what they report, ones on
// virtual time, one whose timers fire late; and a task run to its end.
import { type Clock, type Operation, Scheduler } from "../mod.ts";
import { createTestScheduler, VirtualClock } from "../testing.ts";

// A scheduler whose unobserved failures are kept in `reported` instead of printed.
export function quietScheduler(clock?: Clock): { scheduler: Scheduler; reported: unknown[] } {
  const reported: unknown[] = [];
  const scheduler = new Scheduler({ clock, onError: (error) => reported.push(error) });
  return { scheduler, reported };
}

// The same on virtual time that jumps to each deadline whenever every task waits.
export function testScheduler(): {
  scheduler: Scheduler;
  now: () => number;
  reported: unknown[];
} {
  const reported: unknown[] = [];
  const { scheduler, clock } = createTestScheduler({
    autojump: true,
    onError: (error) => reported.push(error),
  });
  return { scheduler, now: () => clock.now(), reported };
}

// A virtual clock whose timers fire `lateMs` after they are due, as `setTimeout` does on a
// busy event loop; give it a scheduler to jump for with `virtual.autojump(scheduler)`.
export function lateClock(lateMs: number): { clock: Clock; virtual: VirtualClock } {
  const virtual = new VirtualClock();
  const clock: Clock = {
    now: () => virtual.now(),
    setTimer: (callback, delay) => virtual.setTimer(callback, delay + lateMs),
    clearTimer: (handle) => virtual.clearTimer(handle),
  };
  return { clock, virtual };
}

// A scheduler on such a clock, time jumping whenever every task waits.
export function lateScheduler(lateMs: number): { scheduler: Scheduler; virtual: VirtualClock } {
  const { clock, virtual } = lateClock(lateMs);
  const scheduler = new Scheduler({ clock });
  virtual.autojump(scheduler);
  return { scheduler, virtual };
}

// Runs `body` as a task, with the scheduler's other tasks, to the end; returns its result.
export async function runTask<T>(scheduler: Scheduler, body: Operation<T>): Promise<T> {
  const task = scheduler.spawn(body, { name: "main" });
  const result = task.result;
  await scheduler.run();
  return await result;
}

// A task that computes for a while without yielding.
export function busyWait(ms: number): void {
  const end = performance.now() + ms;
  while (performance.now() < end) {
    // Spinning on purpose.
  }
}
