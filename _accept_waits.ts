// Accepts: who waits for a connection on each listener.
//
// As with reads, Deno cannot un-issue a `listener.accept()`: when its task stops waiting,
// the call stays in flight as a stray, and a conn it brings waits for the listener's next
// acceptor. A conn that arrives for nobody once the run is over is closed.
import { BusyError } from "./errors.ts";
import type { AcceptIntent } from "./intents.ts";
import { closeQuietly } from "./_close_quietly.ts";
import { abandon, type InFlight } from "./_conn_waits.ts";
import { CONTINUE, type Kernel, type TaskImpl } from "./_task.ts";

interface AcceptCall extends InFlight {
  orphaned: boolean; // a stray left when the run ended: nobody can take its conn
}

export class AcceptWaits {
  readonly waiting: Map<Deno.Listener, TaskImpl> = new Map();
  #strays = new Map<Deno.Listener, AcceptCall>();
  #unaccepted = new Map<Deno.Listener, Deno.Conn[]>();

  constructor(readonly kernel: Kernel) {}

  accept = (task: TaskImpl, { listener }: AcceptIntent): boolean => {
    const acceptor = this.waiting.get(listener);
    if (acceptor !== undefined) {
      throw new BusyError(
        `Cannot accept: the listener is already used by task "${acceptor.name}"`,
        listener,
      );
    }
    const unaccepted = this.#unaccepted.get(listener);
    if (unaccepted !== undefined) {
      task.value = unaccepted.shift();
      if (unaccepted.length === 0) this.#unaccepted.delete(listener);
      return CONTINUE;
    }
    let op = this.#strays.get(listener);
    if (op !== undefined) {
      this.#strays.delete(listener);
      op.task = task;
    } else {
      const promise = listener.accept();
      const fresh: AcceptCall = { task, promise, orphaned: false };
      promise.then(
        (conn) => this.#done(listener, fresh, conn, null),
        (error) => this.#done(listener, fresh, null, error),
      );
      op = fresh;
    }
    task.io = op;
    this.waiting.set(listener, task);
    return this.kernel.park(task, "accepting", listener, this.#undo);
  };

  #done(listener: Deno.Listener, op: AcceptCall, conn: Deno.Conn | null, error: unknown): void {
    const task = op.task;
    if (task === null) {
      if (op.orphaned) {
        if (conn !== null) closeQuietly(conn);
        return;
      }
      this.#strays.delete(listener);
      if (conn === null) return;
      const kept = this.#unaccepted.get(listener);
      if (kept === undefined) this.#unaccepted.set(listener, [conn]);
      else kept.push(conn);
      return;
    }
    task.io = null;
    this.waiting.delete(listener);
    if (error !== null) this.kernel.fail(task, error);
    else this.kernel.resume(task, conn);
  }

  #undo = (task: TaskImpl): void => {
    const listener = task.waitingOn as Deno.Listener;
    this.waiting.delete(listener);
    this.#strays.set(listener, abandon(task) as AcceptCall);
  };

  // No task is left to accept: close the listeners with a stray accept, so the call ends,
  // and the conns nobody took. Returns the calls to wait for.
  stop(): Promise<unknown>[] {
    const pending: Promise<unknown>[] = [];
    for (const [listener, op] of this.#strays) {
      op.orphaned = true;
      pending.push(op.promise);
      closeQuietly(listener);
    }
    this.#strays.clear();
    for (const conns of this.#unaccepted.values()) conns.forEach(closeQuietly);
    this.#unaccepted.clear();
    return pending;
  }
}
