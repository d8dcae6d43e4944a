// A growable ring buffer: O(1) push and shift at any length, unlike Array.prototype.shift.
export class Deque<T> {
  #items: (T | undefined)[] = new Array(16);
  #head = 0;
  #length = 0;

  get length(): number {
    return this.#length;
  }

  push(item: T): void {
    if (this.#length === this.#items.length) this.#grow();
    this.#items[(this.#head + this.#length) & (this.#items.length - 1)] = item;
    this.#length++;
  }

  shift(): T | undefined {
    if (this.#length === 0) return undefined;
    const item = this.#items[this.#head];
    this.#items[this.#head] = undefined;
    this.#head = (this.#head + 1) & (this.#items.length - 1);
    this.#length--;
    return item;
  }

  toArray(): T[] {
    const out: T[] = [];
    const mask = this.#items.length - 1;
    for (let i = 0; i < this.#length; i++) {
      out.push(this.#items[(this.#head + i) & mask] as T);
    }
    return out;
  }

  #grow(): void {
    const items = this.toArray() as (T | undefined)[];
    items.length = this.#items.length * 2;
    this.#items = items;
    this.#head = 0;
  }
}
