// Reads and writes: the recv_wait / send_wait of the classic Python generator server (its
// dicts of tasks waiting to read or write a socket), as one record per conn.
//
// Deno cannot un-issue a `conn.read()` or `conn.write()`. When a task stops waiting on one
// (cancelled, timed out), the call stays in flight as a stray: a stray read's bytes go to
// the conn's next read, whichever task makes it, and a write after a stray write goes out
// after it. No byte is lost or reordered.
import { BusyError } from "./errors.ts";
import type { ReadIntent, WriteIntent } from "./intents.ts";
import { closeQuietly } from "./_close_quietly.ts";
import { CONTINUE, type Kernel, type TaskImpl } from "./_task.ts";

// A conn's entries in recv_wait and send_wait. It lives as long as the conn: a read or a
// write costs at most one lookup (none when the task's last call was on the same conn) and
// no insertion or deletion, which in a Map churned by every message cost more than the rest
// of the kernel's work for it.
interface ConnWaiters {
  reader: TaskImpl | null;
  writer: TaskImpl | null;
}

/** A Deno call in flight for a task. */
export interface InFlight {
  task: TaskImpl | null; // null once its task stopped waiting: the result is nobody's yet
  promise: Promise<unknown>;
}

// A read or a write in flight. A task waits on one at a time, so it keeps one record for
// both and reuses it from one call to the next, its settle callbacks bound once: nothing is
// allocated per read or write, and a handler that alternates reads and writes touches one
// record, not two. A record whose task stops waiting becomes a stray and is not reused.
export interface ConnCall extends InFlight {
  reading: boolean;
  conn: Deno.Conn;
  waiters: ConnWaiters; // the conn's
  // A read's:
  buffer: Uint8Array; // where Deno writes: the first reader's buffer
  target: Uint8Array; // where the waiting task wants the bytes
  // A write's:
  data: Uint8Array;
  written: number;
  queued: { task: TaskImpl; data: Uint8Array } | null; // behind a stray write
  readonly onValue: (n: number | null) => void;
  readonly onError: (error: unknown) => void;
}

export class ConnWaits {
  #conns = new WeakMap<Deno.Conn, ConnWaiters>();
  #strayReads = new Map<Deno.Conn, ConnCall>();
  #strayWrites = new Map<Deno.Conn, ConnCall>();
  // Weak, because the conn's owner may close it and never read again: the bytes go with it.
  // The count only keeps the lookup off the hot path while nothing is unread.
  #unread = new WeakMap<Deno.Conn, Uint8Array>();
  #unreadCount = 0;

  constructor(readonly kernel: Kernel) {}

  read(task: TaskImpl, { conn, buffer }: ReadIntent): boolean {
    const waiters = this.#waitersFor(task, conn);
    const reader = waiters.reader;
    if (reader !== null) {
      throw new BusyError(
        `Cannot read: the conn is already being read by task "${reader.name}"`,
        conn,
      );
    }
    if (this.#unreadCount > 0) {
      const unread = this.#unread.get(conn);
      if (unread !== undefined) {
        const n = this.#takeUnread(conn, unread, buffer);
        task.bytesRead += n;
        task.value = n;
        return CONTINUE;
      }
    }
    let op = this.#strayReads.size > 0 ? this.#strayReads.get(conn) : undefined;
    if (op !== undefined) {
      this.#strayReads.delete(conn);
      op.task = task;
      op.target = buffer;
    } else {
      op = task.connCall ??= this.#newConnCall();
      op.reading = true;
      op.task = task;
      op.conn = conn;
      op.waiters = waiters;
      op.buffer = op.target = buffer;
      const promise = conn.read(buffer);
      op.promise = promise;
      promise.then(op.onValue, op.onError);
    }
    task.io = op;
    waiters.reader = task;
    return this.kernel.park(task, "reading", conn, this.#undoRead);
  }

  #readDone(op: ConnCall, n: number | null, error: unknown): void {
    const { task, conn } = op;
    if (task === null) {
      this.#strayReads.delete(conn);
      if (n !== null && n > 0) this.#keepUnread(conn, op.buffer.slice(0, n));
      return;
    }
    task.io = null;
    op.waiters.reader = null;
    if (error !== null) return this.kernel.fail(task, error);
    if (n !== null && op.target !== op.buffer) {
      this.#keepUnread(conn, op.buffer.slice(0, n));
      n = this.#takeUnread(conn, this.#unread.get(conn)!, op.target);
    }
    if (n !== null) task.bytesRead += n;
    this.kernel.resume(task, n);
  }

  #undoRead = (task: TaskImpl): void => {
    const op = abandon(task) as ConnCall;
    op.waiters.reader = null;
    this.#strayReads.set(op.conn, op);
  };

  #keepUnread(conn: Deno.Conn, bytes: Uint8Array): void {
    const before = this.#unread.get(conn);
    if (before === undefined) {
      this.#unreadCount++;
      return void this.#unread.set(conn, bytes);
    }
    const joined = new Uint8Array(before.length + bytes.length);
    joined.set(before);
    joined.set(bytes, before.length);
    this.#unread.set(conn, joined);
  }

  #takeUnread(conn: Deno.Conn, unread: Uint8Array, buffer: Uint8Array): number {
    const n = Math.min(unread.length, buffer.length);
    buffer.set(unread.subarray(0, n));
    if (n === unread.length) {
      this.#unread.delete(conn);
      this.#unreadCount--;
    } else this.#unread.set(conn, unread.subarray(n));
    return n;
  }

  write(task: TaskImpl, { conn, data }: WriteIntent): boolean {
    const waiters = this.#waitersFor(task, conn);
    const writer = waiters.writer;
    if (writer !== null) {
      throw new BusyError(
        `Cannot write: the conn is already being written by task "${writer.name}"`,
        conn,
      );
    }
    if (data.length === 0) {
      task.value = 0;
      return CONTINUE;
    }
    // Bytes must not overtake a stray write that is still going out.
    const stray = this.#strayWrites.size > 0 ? this.#strayWrites.get(conn) : undefined;
    if (stray !== undefined) stray.queued = { task, data };
    else this.#writeMore(conn, waiters, task, data, 0);
    waiters.writer = task;
    return this.kernel.park(task, "writing", conn, this.#undoWrite);
  }

  #writeMore(
    conn: Deno.Conn,
    waiters: ConnWaiters,
    task: TaskImpl,
    data: Uint8Array,
    written: number,
  ): void {
    let promise: Promise<number>;
    try {
      promise = conn.write(written === 0 ? data : data.subarray(written));
    } catch (error) {
      promise = Promise.reject(error);
    }
    const op = task.connCall ??= this.#newConnCall();
    op.reading = false;
    op.task = task;
    op.conn = conn;
    op.waiters = waiters;
    op.promise = promise;
    op.data = data;
    op.written = written;
    op.queued = null;
    task.io = op;
    promise.then(op.onValue, op.onError);
  }

  #writeDone(op: ConnCall, n: number, error: unknown): void {
    const { task, conn } = op;
    if (task === null) {
      this.#strayWrites.delete(conn);
      const queued = op.queued;
      if (queued !== null && op.waiters.writer === queued.task) {
        this.#writeMore(conn, op.waiters, queued.task, queued.data, 0);
      }
      return;
    }
    const written = op.written + n;
    if (error === null && written < op.data.length) {
      return this.#writeMore(conn, op.waiters, task, op.data, written);
    }
    task.io = null;
    op.waiters.writer = null;
    task.bytesWritten += written;
    if (error !== null) this.kernel.fail(task, error);
    else this.kernel.resume(task, written);
  }

  #undoWrite = (task: TaskImpl): void => {
    const conn = task.waitingOn as Deno.Conn;
    this.#conns.get(conn)!.writer = null;
    // A writer queued behind a stray write has no call of its own yet.
    if (task.io !== null) this.#strayWrites.set(conn, abandon(task) as ConnCall);
  };

  #newConnCall(): ConnCall {
    const op: ConnCall = {
      task: null,
      promise: null!,
      reading: true,
      conn: null!,
      waiters: null!,
      buffer: null!,
      target: null!,
      data: null!,
      written: 0,
      queued: null,
      onValue: (n) => op.reading ? this.#readDone(op, n, null) : this.#writeDone(op, n!, null),
      onError: (error) =>
        op.reading ? this.#readDone(op, null, error) : this.#writeDone(op, 0, error),
    };
    return op;
  }

  // The conn's record, without a lookup when the task's last call was on the same conn.
  #waitersFor(task: TaskImpl, conn: Deno.Conn): ConnWaiters {
    const last = task.connCall;
    if (last !== null && last.conn === conn) return last.waiters;
    let waiters = this.#conns.get(conn);
    if (waiters === undefined) this.#conns.set(conn, waiters = { reader: null, writer: null });
    return waiters;
  }

  // No task is left to take a stray's result: closing its conn ends the call. Returns the
  // calls to wait for.
  stop(): Promise<unknown>[] {
    const pending: Promise<unknown>[] = [];
    for (const strays of [this.#strayReads, this.#strayWrites]) {
      for (const [conn, op] of strays) {
        pending.push(op.promise);
        closeQuietly(conn);
      }
      strays.clear();
    }
    this.#unread = new WeakMap();
    this.#unreadCount = 0;
    return pending;
  }
}

/** Detaches a parked task from its Deno call, which goes on as a stray. */
export function abandon(task: TaskImpl): InFlight {
  const op = task.io!;
  op.task = null;
  task.io = null;
  if (task.connCall === op) task.connCall = null;
  return op;
}
