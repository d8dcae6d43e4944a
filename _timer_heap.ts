// A binary min-heap of timers ordered by `key`, then by `seq` (entries due at the same time
// come out in the order they were made), that knows each entry's position so that an entry
// can leave, or move, in O(log n).
export interface TimerEntry {
  key: number;
  readonly seq: number;
  index: number;
}

function before(a: TimerEntry, b: TimerEntry): boolean {
  return a.key < b.key || (a.key === b.key && a.seq < b.seq);
}

export class TimerHeap<E extends TimerEntry> {
  #heap: E[] = [];

  get size(): number {
    return this.#heap.length;
  }

  peek(): E | undefined {
    return this.#heap[0];
  }

  add(entry: E): E {
    entry.index = this.#heap.length;
    this.#heap.push(entry);
    this.#up(entry.index);
    return entry;
  }

  remove(entry: E): void {
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
  postpone(entry: E, key: number): void {
    entry.key = key;
    this.#down(entry.index);
  }

  // Moves an entry to an earlier key: it can only rise.
  hasten(entry: E, key: number): void {
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
      if (!before(entry, heap[parent])) break;
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
      if (child + 1 < n && before(heap[child + 1], heap[child])) child++;
      if (!before(heap[child], entry)) break;
      heap[i] = heap[child];
      heap[i].index = i;
      i = child;
    }
    heap[i] = entry;
    entry.index = i;
  }
}
