// Connects: tasks waiting for an outbound connection (TCP, TLS or Unix).
//
// A connect cannot be taken over by another task the way a read can: when its task stops
// waiting (cancelled, timed out), the conn it brings is nobody's, so it is closed the moment
// it arrives. The run waits for such connects to settle, so none outlives it.
import type { ConnectIntent } from "./intents.ts";
import { closeQuietly } from "./_close_quietly.ts";
import { abandon, type InFlight } from "./_conn_waits.ts";
import type { Kernel, TaskImpl } from "./_task.ts";

export class ConnectWaits {
  readonly waiting: Map<TaskImpl, Deno.Addr> = new Map();
  #abandoned = new Set<Promise<unknown>>();

  constructor(readonly kernel: Kernel) {}

  connect = (task: TaskImpl, intent: ConnectIntent): boolean => {
    const { options } = intent;
    const promise: Promise<Deno.Conn> = intent.tls
      ? Deno.connectTls(options as Deno.ConnectTlsOptions)
      : "path" in options
      ? Deno.connect(options)
      : Deno.connect(options as Deno.ConnectOptions);
    const op: InFlight = { task, promise };
    promise.then(
      (conn) => this.#done(op, conn, null),
      (error) => this.#done(op, null, error),
    );
    task.io = op;
    const to = addressOf(intent);
    this.waiting.set(task, to);
    return this.kernel.park(task, "connecting", to, this.#undo);
  };

  #done(op: InFlight, conn: Deno.Conn | null, error: unknown): void {
    const task = op.task;
    if (task === null) {
      this.#abandoned.delete(op.promise);
      if (conn !== null) closeQuietly(conn);
      return;
    }
    task.io = null;
    this.waiting.delete(task);
    if (error !== null) this.kernel.fail(task, error);
    else this.kernel.resume(task, conn);
  }

  #undo = (task: TaskImpl): void => {
    this.waiting.delete(task);
    this.#abandoned.add(abandon(task).promise);
  };

  // The connects whose conns will be closed when they arrive: the run waits for them.
  stop(): Promise<unknown>[] {
    const pending = [...this.#abandoned];
    this.#abandoned.clear();
    return pending;
  }
}

function addressOf({ options }: ConnectIntent): Deno.Addr {
  if ("path" in options) return { transport: "unix", path: options.path };
  const { hostname = "127.0.0.1", port } = options as Deno.ConnectOptions;
  return { transport: "tcp", hostname, port };
}
