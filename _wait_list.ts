// A line of tasks parked on a synchronisation object (a Queue, an Event, a Semaphore): first
// come, first served, and O(1) to join, to leave from anywhere (a cancel or a timeout) and to
// serve, however long the line.
//
// Each entry knows its task's kernel, so a task running on one scheduler can wake a task
// parked on another; waking only moves that task to its ready queue.
import type { ParkIntent } from "./intents.ts";
import type { Kernel, TaskImpl } from "./_task.ts";

export interface WaitEntry<D = unknown> {
  readonly task: TaskImpl;
  readonly kernel: Kernel;
  /** What the parked task brought, such as the item of a `put` waiting for room. */
  readonly data: D;
  list: WaitList<D> | null; // null once served or gone
  prev: WaitEntry<D> | null;
  next: WaitEntry<D> | null;
}

export class WaitList<D = unknown> {
  #head: WaitEntry<D> | null = null;
  #tail: WaitEntry<D> | null = null;
  #size = 0;

  get size(): number {
    return this.#size;
  }

  /** The entry served next, or `null`. */
  first(): WaitEntry<D> | null {
    return this.#head;
  }

  /** The intent that parks the current task at the back of this line. */
  park(on: object, data?: D): ParkIntent {
    return { type: "park", on, list: this, data };
  }

  /** Takes the first entry out of line and resumes its task with `value`. */
  serve(value?: unknown): WaitEntry<D> | null {
    const entry = this.#head;
    if (entry === null) return null;
    this.remove(entry);
    entry.kernel.wake(entry.task, value);
    return entry;
  }

  /** Takes every entry out of line and throws `error` into its task. */
  failAll(error: unknown): void {
    for (let entry = this.#head; entry !== null; entry = this.#head) {
      this.remove(entry);
      entry.kernel.wake(entry.task, error, true);
    }
  }

  add(task: TaskImpl, kernel: Kernel, data: D): WaitEntry<D> {
    const entry: WaitEntry<D> = { task, kernel, data, list: this, prev: this.#tail, next: null };
    if (this.#tail === null) this.#head = entry;
    else this.#tail.next = entry;
    this.#tail = entry;
    this.#size++;
    return entry;
  }

  remove(entry: WaitEntry<D>): void {
    if (entry.list !== this) return;
    entry.list = null;
    if (entry.prev === null) this.#head = entry.next;
    else entry.prev.next = entry.next;
    if (entry.next === null) this.#tail = entry.prev;
    else entry.next.prev = entry.prev;
    entry.prev = entry.next = null;
    this.#size--;
    entry.task.parkedIn = null;
  }
}

// The kernel's side of a park intent: a task in line shows as `waiting` on the object.
export class ParkWaits {
  constructor(readonly kernel: Kernel) {}

  park = (task: TaskImpl, { on, list, data }: ParkIntent): boolean => {
    if (!(list instanceof WaitList)) {
      throw new TypeError("Cannot park: the intent's list is not a genio wait list");
    }
    task.parkedIn = list.add(task, this.kernel, data);
    return this.kernel.park(task, "waiting", on, this.#undo);
  };

  #undo = (task: TaskImpl): void => {
    const entry = task.parkedIn!;
    entry.list?.remove(entry);
  };
}
