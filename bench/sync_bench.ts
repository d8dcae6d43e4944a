/**
 * A queue hand-off between two tasks, a producer putting and a consumer getting, next to the
 * same pair of async functions over a promise-based queue of the same design (the group's
 * baseline): what a `put` / `get` pair costs once the kernel parks and wakes the tasks. At
 * capacity 1 nearly every pair is a task switch; at capacity 64 the tasks take turns per 64
 * items. Every name starts with how many pairs one iteration moves.
 *
 * ```sh
 * deno bench bench/sync_bench.ts
 * ```
 *
 * @module
 */
import { type Operation, Queue, Scheduler } from "../mod.ts";

const PAIRS = 10_000;

// The promise-based equivalent of `Queue`: items in an array, waiting getters and putters
// as resolvers, handed over the same way (a put to a waiting getter, a get admitting the
// first waiting put).
class PromiseQueue<T> {
  #items: T[] = [];
  #getters: ((item: T) => void)[] = [];
  #putters: { item: T; resolve: () => void }[] = [];

  constructor(readonly capacity: number) {}

  put(item: T): Promise<void> {
    const getter = this.#getters.shift();
    if (getter !== undefined) getter(item);
    else if (this.#items.length < this.capacity) this.#items.push(item);
    else return new Promise((resolve) => this.#putters.push({ item, resolve }));
    return Promise.resolve();
  }

  get(): Promise<T> {
    if (this.#items.length === 0) return new Promise((resolve) => this.#getters.push(resolve));
    const item = this.#items.shift()!;
    const putter = this.#putters.shift();
    if (putter !== undefined) {
      this.#items.push(putter.item);
      putter.resolve();
    }
    return Promise.resolve(item);
  }
}

async function asyncProducer(queue: PromiseQueue<number>, n: number): Promise<void> {
  for (let i = 0; i < n; i++) await queue.put(i);
}

async function asyncConsumer(queue: PromiseQueue<number>, n: number): Promise<number> {
  let sum = 0;
  for (let i = 0; i < n; i++) sum += await queue.get();
  return sum;
}

function* producer(queue: Queue<number>, n: number): Operation<void> {
  for (let i = 0; i < n; i++) yield* queue.put(i);
}

function* consumer(queue: Queue<number>, n: number): Operation<number> {
  let sum = 0;
  for (let i = 0; i < n; i++) sum += yield* queue.get();
  return sum;
}

const SUM = (PAIRS * (PAIRS - 1)) / 2;

for (const capacity of [1, 64]) {
  const group = `queue hand-off, capacity ${capacity}`;

  Deno.bench({
    name: `async: ${PAIRS} put/get pairs between two async functions (promise-based queue)`,
    group,
    baseline: true,
    async fn() {
      const queue = new PromiseQueue<number>(capacity);
      const [, sum] = await Promise.all([
        asyncProducer(queue, PAIRS),
        asyncConsumer(queue, PAIRS),
      ]);
      if (sum !== SUM) throw new Error("wrong sum");
    },
  });

  Deno.bench({
    name: `genio: ${PAIRS} put/get pairs between two tasks (Queue)`,
    group,
    async fn() {
      const queue = new Queue<number>(capacity);
      const scheduler = new Scheduler();
      scheduler.spawn(producer(queue, PAIRS));
      const task = scheduler.spawn(consumer(queue, PAIRS));
      await scheduler.run();
      if (await task.result !== SUM) throw new Error("wrong sum");
    },
  });
}
