// A binary min-heap of timers keyed by `key`, that knows each entry's position so that an
// entry can leave, or move, in O(log n).
export interface TimerEntry<T> {
  key: number;
  readonly owner: T;
  index: number;
}

export class TimerHeap<T> {
  #heap: TimerEntry<T>[] = [];

  get size(): number {
    return this.#heap.length;
  }

  peek(): TimerEntry<T> | undefined {
    return this.#heap[0];
  }

  add<E extends TimerEntry<T>>(entry: E): E {
    entry.index = this.#heap.length;
    this.#heap.push(entry);
    this.#up(entry.index);
    return entry;
  }

  pop(): TimerEntry<T> | undefined {
    const top = this.#heap[0];
    if (top !== undefined) this.remove(top);
    return top;
  }

  remove(entry: TimerEntry<T>): void {
    const i = entry.index;
    if (i < 0 || this.#heap[i] !== entry) return;
    entry.index = -1;
    const last = this.#heap.pop()!;
    if (last === entry) return;
    this.#heap[i] = last;
    last.index = i;
    this.#up(i);
    this.#down(last.index);
  }

  // Moves an entry to a later key: it can only sink.
  postpone(entry: TimerEntry<T>, key: number): void {
    entry.key = key;
    this.#down(entry.index);
  }

  // Moves an entry to an earlier key: it can only rise.
  hasten(entry: TimerEntry<T>, key: number): void {
    entry.key = key;
    this.#up(entry.index);
  }

  clear(): void {
    for (const entry of this.#heap) entry.index = -1;
    this.#heap = [];
  }

  #up(i: number): void {
    const heap = this.#heap;
    const entry = heap[i];
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (heap[parent].key <= entry.key) break;
      heap[i] = heap[parent];
      heap[i].index = i;
      i = parent;
    }
    heap[i] = entry;
    entry.index = i;
  }

  #down(i: number): void {
    const heap = this.#heap;
    const entry = heap[i];
    const n = heap.length;
    for (;;) {
      let child = 2 * i + 1;
      if (child >= n) break;
      if (child + 1 < n && heap[child + 1].key < heap[child].key) child++;
      if (heap[child].key >= entry.key) break;
      heap[i] = heap[child];
      heap[i].index = i;
      i = child;
    }
    heap[i] = entry;
    entry.index = i;
  }
}
