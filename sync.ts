/**
 * Tasks talking to each other: a bounded {@linkcode Queue}, a one-shot {@linkcode Event} and
 * a {@linkcode Semaphore} (with {@linkcode withPermit}). Their waits are the kernel's own,
 * like a read's or a sleep's: a waiting task shows in `tasks()` as `waiting` with the object
 * as its `waitingOn` (tell which kind with `instanceof`), a cancel or a `timeout()` ends the
 * wait, and a wait that ends that way takes nothing with it (an item or a permit goes to the
 * next waiter).
 *
 * Waiters are served first come, first served, and each put, get, set or release costs
 * the same however many tasks wait. An operation that can go on at once (a `get` from a
 * non-empty queue, a `put` into one with room, an `acquire` with a permit free, a `wait` on
 * a set event) returns without a checkpoint, as in Curio: only an operation that blocks is
 * where a cancel or a time limit is delivered.
 *
 * @example A producer and a consumer
 * ```ts
 * import { Queue, QueueClosed, Scheduler } from "@genio/genio";
 * import assert from "node:assert/strict";
 *
 * const queue = new Queue<number>(2);
 * const got: number[] = [];
 * const scheduler = new Scheduler();
 * scheduler.spawn(function* () {
 *   for (let i = 1; i <= 5; i++) yield* queue.put(i); // waits while 2 are queued
 *   queue.close();
 * }());
 * scheduler.spawn(function* () {
 *   try {
 *     for (;;) got.push(yield* queue.get());
 *   } catch (error) {
 *     if (!(error instanceof QueueClosed)) throw error;
 *   }
 * }());
 * await scheduler.run();
 * assert.deepEqual(got, [1, 2, 3, 4, 5]);
 * ```
 *
 * @module
 */
import { Deque } from "./_deque.ts";
import { WaitList } from "./_wait_list.ts";
import type { Operation } from "./intents.ts";

/**
 * Thrown by a {@linkcode Queue} that was closed: by `put` at once, by `get` once the queue
 * is empty, and into every task waiting in either when `close()` is called.
 *
 * @example Draining a closed queue
 * ```ts
 * import { Queue, QueueClosed, Scheduler } from "@genio/genio";
 * import assert from "node:assert/strict";
 *
 * const queue = new Queue<string>(4);
 * const scheduler = new Scheduler();
 * const task = scheduler.spawn(function* () {
 *   yield* queue.put("last words");
 *   queue.close();
 *   const item = yield* queue.get(); // what was left is still there
 *   try {
 *     yield* queue.get();
 *   } catch (error) {
 *     assert.ok(error instanceof QueueClosed && error.queue === queue);
 *   }
 *   return item;
 * }());
 * await scheduler.run();
 * assert.equal(await task.result, "last words");
 * ```
 */
export class QueueClosed extends Error {
  /** The closed queue. */
  readonly queue: Queue<unknown>;

  /**
   * Creates the error for a closed queue.
   *
   * @param queue The queue that was closed.
   */
  constructor(queue: Queue<unknown>) {
    super("Cannot use the queue: it was closed");
    this.name = "QueueClosed";
    this.queue = queue;
  }
}

/**
 * A first-in, first-out queue of items between tasks, holding at most `capacity` of them:
 * `put` waits while it is full, `get` while it is empty. Nothing is lost and nothing is
 * doubled when a waiting task is cancelled or times out: a `put` that stopped waiting did not
 * add its item, and a `get` that stopped waiting took none (the item stays for the next).
 *
 * In `tasks()`, a task waiting on a queue has `waitingOn` set to it: it waits to get when
 * the queue is empty, to put when it is full.
 *
 * @typeParam T What the queue holds.
 *
 * @example A bounded queue holds its producer back
 * ```ts
 * import { Queue, Scheduler, sleep } from "@genio/genio";
 * import assert from "node:assert/strict";
 *
 * const queue = new Queue<string>(1);
 * const scheduler = new Scheduler();
 * const producer = scheduler.spawn(function* () {
 *   yield* queue.put("a");
 *   yield* queue.put("b"); // full: waits for the consumer
 * }());
 * scheduler.spawn(function* () {
 *   yield* sleep(5);
 *   const [info] = scheduler.tasks();
 *   assert.equal(info.state, "waiting");
 *   assert.equal(info.waitingOn, queue);
 *   assert.equal(yield* queue.get(), "a");
 *   assert.equal(yield* queue.get(), "b");
 * }());
 * await scheduler.run();
 * assert.equal(producer.state, "done");
 * ```
 */
export class Queue<T> {
  #items = new Deque<T>();
  #capacity: number;
  #closed = false;
  #getters = new WaitList<void>();
  #putters = new WaitList<T>(); // each brings the item it waits to put

  /**
   * Creates an empty queue.
   *
   * @param capacity The most items it holds: a positive integer, or `Infinity`.
   * @throws {RangeError} When `capacity` is neither.
   */
  constructor(capacity: number) {
    if (!(Number.isInteger(capacity) && capacity > 0) && capacity !== Infinity) {
      throw new RangeError(
        `Cannot create a queue: capacity must be a positive integer or Infinity, got "${capacity}"`,
      );
    }
    this.#capacity = capacity;
  }

  /** How many items it holds now. */
  get size(): number {
    return this.#items.length;
  }

  /** The most items it holds. */
  get capacity(): number {
    return this.#capacity;
  }

  /** Whether {@linkcode Queue.close} was called. */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Adds `item` at the back, waiting while the queue is full. An item put while a task
   * waits to get goes straight to that task.
   *
   * @param item What to add.
   * @throws {QueueClosed} When the queue is closed, or is closed while this waits; the item
   * was not added.
   */
  *put(item: T): Operation<void> {
    if (this.#closed) throw new QueueClosed(this);
    if (this.#getters.serve(item) !== null) return;
    if (this.#items.length < this.#capacity) this.#items.push(item);
    else yield this.#putters.park(this, item);
  }

  /**
   * Takes the item at the front, waiting while the queue is empty. Taking from a full queue
   * lets the first waiting `put` add its item.
   *
   * @returns The item.
   * @throws {QueueClosed} When the queue is closed and empty, or is closed while this waits.
   */
  *get(): Operation<T> {
    if (this.#items.length > 0) {
      const item = this.#items.shift()!;
      const putter = this.#putters.serve();
      if (putter !== null) this.#items.push(putter.data);
      return item;
    }
    if (this.#closed) throw new QueueClosed(this);
    return (yield this.#getters.park(this)) as T;
  }

  /**
   * Closes the queue: every task waiting to put or get gets {@linkcode QueueClosed}, later
   * `put`s throw it, and later `get`s take what is left, then throw it. Closing again does
   * nothing.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#putters.failAll(new QueueClosed(this));
    this.#getters.failAll(new QueueClosed(this));
  }
}

/**
 * A flag that tasks wait for: {@linkcode Event.wait} returns once {@linkcode Event.set} has
 * been called, by a task or by code outside any task. Once set it stays set (like Trio's
 * `Event`); make a new one to wait again.
 *
 * @example Starting workers together
 * ```ts
 * import { Event, Scheduler, sleep } from "@genio/genio";
 * import assert from "node:assert/strict";
 *
 * const go = new Event();
 * const started: number[] = [];
 * const scheduler = new Scheduler();
 * for (const id of [1, 2, 3]) {
 *   scheduler.spawn(function* () {
 *     yield* go.wait();
 *     started.push(id);
 *   }());
 * }
 * scheduler.spawn(function* () {
 *   yield* sleep(5);
 *   assert.deepEqual(started, []);
 *   go.set();
 * }());
 * await scheduler.run();
 * assert.deepEqual(started, [1, 2, 3]);
 * ```
 */
export class Event {
  #set = false;
  #waiters = new WaitList<void>();

  /** Whether {@linkcode Event.set} was called. */
  get isSet(): boolean {
    return this.#set;
  }

  /** Sets the event, waking every task waiting for it. Setting it again does nothing. */
  set(): void {
    this.#set = true;
    while (this.#waiters.serve() !== null);
  }

  /** Waits until the event is set; returns at once if it is. */
  *wait(): Operation<void> {
    if (!this.#set) yield this.#waiters.park(this);
  }
}

/**
 * A count of permits: {@linkcode Semaphore.acquire} takes one, waiting while none is left,
 * and {@linkcode Semaphore.release} gives one back, straight to the first waiting task if
 * there is one. Use {@linkcode withPermit} to be sure a permit is released.
 *
 * @example At most two at a time
 * ```ts
 * import { Scheduler, Semaphore, sleep, withPermit } from "@genio/genio";
 * import assert from "node:assert/strict";
 *
 * const slots = new Semaphore(2);
 * let running = 0;
 * let most = 0;
 * function* job() {
 *   running++;
 *   most = Math.max(most, running);
 *   yield* sleep(5);
 *   running--;
 * }
 * const scheduler = new Scheduler();
 * for (let i = 0; i < 5; i++) scheduler.spawn(withPermit(slots, job()));
 * await scheduler.run();
 * assert.equal(most, 2);
 * assert.equal(slots.available, 2);
 * ```
 */
export class Semaphore {
  #available: number;
  #waiters = new WaitList<void>();

  /**
   * Creates a semaphore holding `permits` permits.
   *
   * @param permits How many permits are free at first: an integer, 0 or more, or `Infinity`.
   * @throws {RangeError} When `permits` is neither.
   */
  constructor(permits: number) {
    if (!(Number.isInteger(permits) && permits >= 0) && permits !== Infinity) {
      throw new RangeError(
        `Cannot create a semaphore: permits must be an integer >= 0 or Infinity, got "${permits}"`,
      );
    }
    this.#available = permits;
  }

  /** How many permits are free now. */
  get available(): number {
    return this.#available;
  }

  /** Takes a permit, waiting while none is free. */
  *acquire(): Operation<void> {
    if (this.#available > 0) {
      this.#available--;
      return;
    }
    yield this.#waiters.park(this);
  }

  /**
   * Gives a permit back: to the first waiting task, or to the count. It may be called from
   * code outside any task.
   */
  release(): void {
    if (this.#waiters.serve() === null) this.#available++;
  }
}

/**
 * Runs `operation` holding a permit of `semaphore`: acquires one first (waiting if need be)
 * and releases it however the operation ends, by returning, throwing or being cancelled.
 *
 * @typeParam T What the operation returns.
 * @param semaphore Where the permit comes from.
 * @param operation What to run while holding it.
 * @returns The operation's result.
 * @throws Whatever the operation throws, after the permit is released.
 *
 * @example The permit comes back when the operation fails
 * ```ts
 * import { Scheduler, Semaphore, withPermit } from "@genio/genio";
 * import assert from "node:assert/strict";
 *
 * const lock = new Semaphore(1);
 * // deno-lint-ignore require-yield
 * function* fails(): Generator<never, never> {
 *   throw new Error("boom");
 * }
 * const scheduler = new Scheduler();
 * const task = scheduler.spawn(withPermit(lock, fails()));
 * const failed = assert.rejects(task.result, /boom/);
 * await scheduler.run();
 * await failed;
 * assert.equal(lock.available, 1);
 * ```
 */
export function* withPermit<T>(semaphore: Semaphore, operation: Operation<T>): Operation<T> {
  yield* semaphore.acquire();
  try {
    return yield* operation;
  } finally {
    semaphore.release();
  }
}
