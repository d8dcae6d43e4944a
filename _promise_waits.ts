// `wait(promise)`: a task waiting for any promise, the bridge to promise-based APIs.
//
// A promise cannot be un-awaited: when its task stops waiting (cancelled, timed out), the
// task's wait count moves on, and the late settlement finds it changed and is dropped.
import type { WaitIntent } from "./intents.ts";
import type { Kernel, TaskImpl } from "./_task.ts";

export class PromiseWaits {
  constructor(readonly kernel: Kernel) {}

  wait = (task: TaskImpl, { promise }: WaitIntent): boolean => {
    const seq = ++task.waitSeq;
    Promise.resolve(promise).then(
      (value) => {
        if (task.waitSeq === seq) this.kernel.resume(task, value);
      },
      (error) => {
        if (task.waitSeq === seq) this.kernel.fail(task, error);
      },
    );
    return this.kernel.park(task, "waiting", promise, this.#undo);
  };

  #undo = (task: TaskImpl): void => {
    task.waitSeq++;
  };
}
