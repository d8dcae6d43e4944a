// A binary min-heap of timers that knows each entry's position, so that a timeout cleared
// before it fires (the common case: a read that completed in time) leaves in O(log n) instead
// of lingering until its deadline.
export interface TimerEntry<T> {
  at: number;
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

  clear(): void {
    for (const entry of this.#heap) entry.index = -1;
    this.#heap = [];
  }

  #up(i: number): void {
    const heap = this.#heap;
    const entry = heap[i];
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (heap[parent].at <= entry.at) break;
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
      if (child + 1 < n && heap[child + 1].at < heap[child].at) child++;
      if (heap[child].at >= entry.at) break;
      heap[i] = heap[child];
      heap[i].index = i;
      i = child;
    }
    heap[i] = entry;
    entry.index = i;
  }
}
