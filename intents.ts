/**
 * Intents: the plain-data requests a task yields to the scheduler, and one typed helper per
 * intent, meant for `yield*` so that the result type flows into the task.
 *
 * | helper                 | intent                    | result                         |
 * | ---------------------- | ------------------------- | ------------------------------ |
 * | `read(conn, buffer)`   | `{ type: "read" }`        | bytes read, `null` at EOF      |
 * | `write(conn, data)`    | `{ type: "write" }`       | bytes written (all of `data`)  |
 * | `accept(listener)`     | `{ type: "accept" }`      | the new `Deno.Conn`            |
 * | `sleep(ms)`            | `{ type: "sleep" }`       | nothing                        |
 * | `spawn(op, options)`   | `{ type: "spawn" }`       | the child `Task`               |
 * | `join(task)`           | `{ type: "join" }`        | the task's result (or throws)  |
 * | `cancel(task)`         | `{ type: "cancel" }`      | nothing, once it cleaned up    |
 * | `wait(promise)`        | `{ type: "wait" }`        | the promise's value (or throws)|
 * | `timeout(ms, op)`      | `deadline` / `clear-deadline` | the op's result, or throws `TimeoutError` |
 * | `idleTimeout(ms, op)`  | `deadline` / `clear-deadline` | the same, the limit counting per wait |
 * | bare `yield`           | `undefined`               | nothing: back of the ready queue |
 *
 * @example Stepping a task by hand: intents are data
 * ```ts
 * import { read } from "@genio/genio/intents";
 * import assert from "node:assert/strict";
 *
 * const conn = {} as Deno.Conn;
 * const buffer = new Uint8Array(16);
 * const step = read(conn, buffer);
 * assert.deepEqual(step.next().value, { type: "read", conn, buffer });
 * assert.deepEqual(step.next(5), { done: true, value: 5 });
 * ```
 *
 * @module
 */
import type { Task } from "./scheduler.ts";

/**
 * A task's body: a generator that yields intents (or a bare `undefined` to let others run)
 * and returns `T`.
 *
 * @typeParam T What the operation returns.
 *
 * @example A handler as an operation
 * ```ts
 * import { type Operation, read, write } from "@genio/genio";
 *
 * function* echoOnce(conn: Deno.Conn): Operation<void> {
 *   const buffer = new Uint8Array(1024);
 *   const n = yield* read(conn, buffer);
 *   if (n !== null) yield* write(conn, buffer.subarray(0, n));
 * }
 * ```
 */
export type Operation<T> = Generator<Intent | undefined, T, unknown>;

/** Ask for one `conn.read(buffer)`. See {@linkcode read}. */
export interface ReadIntent {
  /** Discriminant. */
  readonly type: "read";
  /** The conn to read from. */
  readonly conn: Deno.Conn;
  /** Where the bytes go. */
  readonly buffer: Uint8Array;
}

/** Ask for all of `data` to be written to `conn`. See {@linkcode write}. */
export interface WriteIntent {
  /** Discriminant. */
  readonly type: "write";
  /** The conn to write to. */
  readonly conn: Deno.Conn;
  /** The bytes to write, all of them. */
  readonly data: Uint8Array;
}

/** Ask for the next connection on `listener`. See {@linkcode accept}. */
export interface AcceptIntent {
  /** Discriminant. */
  readonly type: "accept";
  /** The listener to accept on. */
  readonly listener: Deno.Listener;
}

/** Ask to be woken after `ms` milliseconds. See {@linkcode sleep}. */
export interface SleepIntent {
  /** Discriminant. */
  readonly type: "sleep";
  /** How long to sleep, in milliseconds. */
  readonly ms: number;
}

/** Ask for `operation` to start as a child task. See {@linkcode spawn}. */
export interface SpawnIntent {
  /** Discriminant. */
  readonly type: "spawn";
  /** The generator object to run. */
  readonly operation: Operation<unknown>;
  /** A name for logs and `tasks()`. */
  readonly name?: string;
  /** Called when the task has settled. See {@linkcode SpawnOptions.onSettled}. */
  readonly onSettled?: (task: Task<unknown>, error: unknown) => void;
  /** An idle limit around the whole task. See {@linkcode SpawnOptions.idleTimeout}. */
  readonly idleTimeout?: number;
}

/** Ask to wait for `task` to finish and receive its result. See {@linkcode join}. */
export interface JoinIntent {
  /** Discriminant. */
  readonly type: "join";
  /** The task to wait for. */
  readonly task: Task<unknown>;
}

/** Ask for `task` to be cancelled, waiting until it has cleaned up. See {@linkcode cancel}. */
export interface CancelIntent {
  /** Discriminant. */
  readonly type: "cancel";
  /** The task to cancel. */
  readonly task: Task<unknown>;
}

/** Ask to wait for a promise to settle. See {@linkcode wait}. */
export interface WaitIntent {
  /** Discriminant. */
  readonly type: "wait";
  /** The promise to wait for. */
  readonly promise: PromiseLike<unknown>;
}

/** Ask for an outbound connection. See {@linkcode connect} and {@linkcode connectTls}. */
export interface ConnectIntent {
  /** Discriminant. */
  readonly type: "connect";
  /** Where to connect, as `Deno.connect` or `Deno.connectTls` takes it. */
  readonly options: Deno.ConnectOptions | Deno.UnixConnectOptions | Deno.ConnectTlsOptions;
  /** Connect with TLS (`Deno.connectTls`). */
  readonly tls?: boolean;
}

/**
 * Wait in the line of a synchronisation object (a `Queue`, an `Event`, a `Semaphore`).
 * Their operations yield it; it is not meant to be written by hand.
 */
export interface ParkIntent {
  /** Discriminant. */
  readonly type: "park";
  /** The object the task waits on, as `tasks()` shows it. */
  readonly on: object;
  /** The object's line of waiting tasks (internal to genio). */
  readonly list: object;
  /** What the task brings to the line, such as the item of a `put` waiting for room. */
  readonly data?: unknown;
}

/**
 * Start a time limit on the current task; answered with a {@linkcode Deadline}. Used by
 * {@linkcode timeout} and {@linkcode idleTimeout}.
 */
export interface DeadlineIntent {
  /** Discriminant. */
  readonly type: "deadline";
  /** The limit, in milliseconds from now. */
  readonly ms: number;
  /** If true, the limit starts again each time one of the task's waits completes. */
  readonly idle?: boolean;
}

/** End a time limit started by a {@linkcode DeadlineIntent}. Used by {@linkcode timeout}. */
export interface ClearDeadlineIntent {
  /** Discriminant. */
  readonly type: "clear-deadline";
  /** The handle the deadline intent answered with. */
  readonly deadline: Deadline;
  /**
   * True when the block's operation returned. If the limit ran out and its error was
   * thrown inside the block, the block then fails with that error instead of returning.
   */
  readonly returned?: boolean;
}

/** A time limit in force on a task, as answered to a {@linkcode DeadlineIntent}. */
export interface Deadline {
  /** When it runs out, on the scheduler's clock (milliseconds). */
  readonly at: number;
  /** The limit it was started with, in milliseconds. */
  readonly ms: number;
}

/**
 * Everything a task can yield besides a bare `yield`: a discriminated union on `type`.
 *
 * @example Checking what a handler asks for
 * ```ts
 * import { type Intent, sleep } from "@genio/genio";
 * import assert from "node:assert/strict";
 *
 * const intent = sleep(250).next().value as Intent;
 * assert.equal(intent.type, "sleep");
 * ```
 */
export type Intent =
  | ReadIntent
  | WriteIntent
  | AcceptIntent
  | SleepIntent
  | SpawnIntent
  | JoinIntent
  | CancelIntent
  | WaitIntent
  | ConnectIntent
  | ParkIntent
  | DeadlineIntent
  | ClearDeadlineIntent;

/**
 * Options for {@linkcode spawn} and `Scheduler.spawn`.
 *
 * @example A supervisor that counts its children's failures without joining them
 * ```ts
 * import { Scheduler, sleep, type SpawnOptions } from "@genio/genio";
 * import assert from "node:assert/strict";
 *
 * function* worker(ms: number) {
 *   yield* sleep(ms);
 *   if (ms > 1) throw new Error(`gave up after ${ms} ms`);
 * }
 * const failures: string[] = [];
 * const options: SpawnOptions = {
 *   name: "worker",
 *   onSettled(_task, error) {
 *     if (error !== undefined) failures.push((error as Error).message);
 *   },
 * };
 * const scheduler = new Scheduler(); // the failure is not reported: onSettled saw it
 * scheduler.spawn(worker(1), options);
 * scheduler.spawn(worker(2), options);
 * await scheduler.run();
 * assert.deepEqual(failures, ["gave up after 2 ms"]);
 * ```
 */
export interface SpawnOptions {
  /**
   * A name for the task in logs and `tasks()`.
   *
   * @default {`task-${id}`}
   */
  name?: string;
  /**
   * Called once the task has settled (it and its children have finished), before any task
   * joining it runs: with the error it failed or was cancelled with, or `undefined` when it
   * returned (`task.state` tells which). For a supervisor that keeps count of many children
   * without a task to join each, like `tcpServer`. A failure passed here counts as observed:
   * it is not reported to `onError`. It must not throw; an error it throws goes to
   * `onError`.
   *
   * @default {none}
   */
  onSettled?: (task: Task<unknown>, error: unknown) => void;
  /**
   * An idle limit on the whole task, in milliseconds, as if its operation ran inside
   * {@linkcode idleTimeout} but with no generator in between: the task fails with a
   * `TimeoutError` when one of its waits takes longer. `0` or `Infinity`: no limit. This is
   * how `tcpServer` gives every handler its idle timeout.
   *
   * @default {0}
   */
  idleTimeout?: number;
}

/**
 * Reads once from `conn` into `buffer`, like one `conn.read(buffer)`.
 *
 * Only one task may read a conn at a time: a second gets a `BusyError`. If the task stops
 * waiting (cancelled, timed out), the read stays in flight and its bytes go to the next read
 * of the conn; `buffer` stays lent to it until then, so do not reuse it for other data.
 *
 * @param conn The conn to read from.
 * @param buffer Where to put the bytes.
 * @returns The number of bytes read, or `null` at end of stream.
 *
 * @example Reading a greeting
 * ```ts
 * import { read, Scheduler } from "@genio/genio";
 * import assert from "node:assert/strict";
 *
 * const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
 * const client = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
 * const server = await listener.accept();
 * await client.write(new TextEncoder().encode("hello"));
 * const buffer = new Uint8Array(64);
 * const scheduler = new Scheduler();
 * const task = scheduler.spawn(read(server, buffer));
 * await scheduler.run();
 * assert.equal(await task.result, 5);
 * for (const resource of [client, server, listener]) resource.close();
 * ```
 */
export function* read(
  conn: Deno.Conn,
  buffer: Uint8Array,
): Operation<number | null> {
  return (yield { type: "read", conn, buffer }) as number | null;
}

/**
 * Writes all of `data` to `conn`, continuing partial writes until every byte is out.
 * Do not change `data` until it returns.
 *
 * @param conn The conn to write to.
 * @param data The bytes to write.
 * @returns `data.length`.
 *
 * @example Writing a reply
 * ```ts
 * import { Scheduler, write } from "@genio/genio";
 * import assert from "node:assert/strict";
 *
 * const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
 * const client = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
 * const server = await listener.accept();
 * const scheduler = new Scheduler();
 * scheduler.spawn(write(server, new TextEncoder().encode("hi")));
 * await scheduler.run();
 * const buffer = new Uint8Array(8);
 * assert.equal(await client.read(buffer), 2);
 * for (const resource of [client, server, listener]) resource.close();
 * ```
 */
export function* write(conn: Deno.Conn, data: Uint8Array): Operation<number> {
  return (yield { type: "write", conn, data }) as number;
}

/**
 * Waits for the next connection on `listener`.
 *
 * @param listener The listener to accept on.
 * @returns The accepted conn.
 *
 * @example Accepting one client
 * ```ts
 * import { accept, Scheduler } from "@genio/genio";
 * import assert from "node:assert/strict";
 *
 * const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
 * const scheduler = new Scheduler();
 * const task = scheduler.spawn(accept(listener));
 * const done = scheduler.run();
 * const client = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
 * await done;
 * const conn = await task.result;
 * assert.equal((conn.remoteAddr as Deno.NetAddr).port, (client.localAddr as Deno.NetAddr).port);
 * for (const resource of [client, conn, listener]) resource.close();
 * ```
 */
export function* accept(listener: Deno.Listener): Operation<Deno.Conn> {
  return (yield { type: "accept", listener }) as Deno.Conn;
}

/**
 * Suspends the task for `ms` milliseconds; `0` or less just lets the other ready tasks run
 * first, and `Infinity` sleeps until the task is cancelled.
 *
 * @param ms How long to sleep, in milliseconds.
 *
 * @example Sleeping
 * ```ts
 * import { Scheduler, sleep } from "@genio/genio";
 *
 * const scheduler = new Scheduler();
 * scheduler.spawn(sleep(10));
 * await scheduler.run();
 * ```
 */
export function* sleep(ms: number): Operation<void> {
  yield { type: "sleep", ms };
}

/**
 * Starts `operation` as a child of the current task and returns at once. The child is
 * cancelled when its parent ends, and the parent's own outcome settles only after that.
 *
 * @typeParam T What the child returns.
 * @param operation The generator object to run (call the generator function first).
 * @param options A name for logs and `tasks()`.
 * @returns The child task.
 *
 * @example Starting a child and waiting for it
 * ```ts
 * import { join, Scheduler, sleep, spawn } from "@genio/genio";
 * import assert from "node:assert/strict";
 *
 * function* double(x: number) {
 *   yield* sleep(1);
 *   return 2 * x;
 * }
 * const scheduler = new Scheduler();
 * const main = scheduler.spawn(function* () {
 *   const child = yield* spawn(double(21), { name: "double" });
 *   return yield* join(child);
 * }());
 * await scheduler.run();
 * assert.equal(await main.result, 42);
 * ```
 */
export function* spawn<T>(
  operation: Operation<T>,
  options?: SpawnOptions,
): Operation<Task<T>> {
  return (yield {
    type: "spawn",
    operation,
    name: options?.name,
    onSettled: options?.onSettled,
    idleTimeout: options?.idleTimeout,
  }) as Task<T>;
}

/**
 * Waits for `task` to finish (children included) and returns its result, or throws its
 * error. A failure that is joined is not reported to `onError`.
 *
 * @typeParam T What the task returns.
 * @param task The task to wait for.
 * @returns The task's return value.
 * @throws The task's error, if it failed or was cancelled (`Cancelled`).
 *
 * @example A child's error reaches the joiner
 * ```ts
 * import { join, Scheduler, spawn } from "@genio/genio";
 * import assert from "node:assert/strict";
 *
 * function* fail(): Generator<never, never> {
 *   throw new Error("boom");
 * }
 * const scheduler = new Scheduler();
 * const main = scheduler.spawn(function* () {
 *   const child = yield* spawn(fail());
 *   try {
 *     yield* join(child);
 *   } catch (error) {
 *     return (error as Error).message;
 *   }
 * }());
 * await scheduler.run();
 * assert.equal(await main.result, "boom");
 * ```
 */
export function* join<T>(task: Task<T>): Operation<T> {
  return (yield { type: "join", task }) as T;
}

/**
 * Cancels `task` and waits until it has finished its cleanup. The task receives a
 * `Cancelled` error at its blocking `yield`; cancelling a finished task does nothing.
 *
 * @param task The task to cancel.
 *
 * @example Stopping a ticker
 * ```ts
 * import { cancel, Scheduler, sleep, spawn } from "@genio/genio";
 * import assert from "node:assert/strict";
 *
 * let ticks = 0;
 * function* ticker() {
 *   while (true) {
 *     yield* sleep(1);
 *     ticks++;
 *   }
 * }
 * const scheduler = new Scheduler();
 * scheduler.spawn(function* () {
 *   const task = yield* spawn(ticker());
 *   yield* sleep(20);
 *   yield* cancel(task);
 *   assert.equal(task.state, "cancelled");
 * }());
 * await scheduler.run();
 * assert.ok(ticks > 0);
 * ```
 */
export function* cancel(task: Task<unknown>): Operation<void> {
  yield { type: "cancel", task };
}

/**
 * Waits for a promise: the bridge to every promise-based API (`Deno.connect`, files, DNS).
 *
 * @typeParam T The promise's value.
 * @param promise The promise to wait for.
 * @returns Its value.
 * @throws Its rejection reason.
 *
 * @example Connecting from a task
 * ```ts
 * import { Scheduler, wait } from "@genio/genio";
 *
 * const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
 * const scheduler = new Scheduler();
 * const task = scheduler.spawn(wait(Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port })));
 * await scheduler.run();
 * (await task.result).close();
 * listener.close();
 * ```
 */
export function* wait<T>(promise: PromiseLike<T>): Operation<T> {
  return (yield { type: "wait", promise }) as T;
}

/**
 * Opens an outbound connection: TCP (`hostname` defaults to `127.0.0.1`) or, with
 * `{ path, transport: "unix" }`, a Unix socket. The connect is a wait like any other: it
 * shows in `tasks()` as `connecting`, and a cancel or a `timeout()` around it ends it; a conn
 * that arrives after its task stopped waiting is closed by the kernel. A refused connection
 * throws Deno's `ConnectionRefused` at the `yield*`.
 *
 * @param options Where to connect, as `Deno.connect` takes it.
 * @returns The new conn.
 * @throws {Deno.errors.ConnectionRefused} When nothing listens there.
 *
 * @example A client with a time limit per request
 * ```ts
 * import { connect, read, Scheduler, timeout, write } from "@genio/genio";
 * import { echoHandler, tcpServer } from "@genio/genio/server";
 * import assert from "node:assert/strict";
 *
 * const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
 * const scheduler = new Scheduler();
 * const server = scheduler.spawn(tcpServer(listener, echoHandler));
 * const client = scheduler.spawn(function* () {
 *   const conn = yield* timeout(1_000, connect({ port: listener.addr.port }));
 *   try {
 *     yield* write(conn, new TextEncoder().encode("ping"));
 *     const reply = new Uint8Array(8);
 *     const n = yield* timeout(1_000, read(conn, reply));
 *     return new TextDecoder().decode(reply.subarray(0, n ?? 0));
 *   } finally {
 *     conn.close();
 *     listener.close(); // the server ends once its connection has
 *   }
 * }());
 * await scheduler.run();
 * assert.equal(await client.result, "GOT:ping");
 * assert.equal(server.state, "done");
 * ```
 */
export function connect(options: Deno.ConnectOptions): Operation<Deno.TcpConn>;
/**
 * Opens a Unix-socket connection.
 *
 * @param options The socket's path, with `transport: "unix"`.
 * @returns The new conn.
 */
export function connect(options: Deno.UnixConnectOptions): Operation<Deno.UnixConn>;
export function* connect(
  options: Deno.ConnectOptions | Deno.UnixConnectOptions,
): Operation<Deno.Conn> {
  return (yield { type: "connect", options }) as Deno.Conn;
}

/**
 * Opens a TLS connection, as `Deno.connectTls` does (`hostname` defaults to `127.0.0.1`;
 * `caCerts` adds trusted certificates, `alpnProtocols` offers protocols), as a wait like
 * {@linkcode connect}'s.
 *
 * @param options Where to connect, and the TLS options.
 * @returns The new TLS conn, its handshake started.
 * @throws {Deno.errors.ConnectionRefused} When nothing listens there.
 *
 * @example A TLS client of a TLS server, on one scheduler
 * ```ts
 * import { connectTls, read, Scheduler, write } from "@genio/genio";
 * import { echoHandler, tcpServer } from "@genio/genio/server";
 * import assert from "node:assert/strict";
 *
 * // A self-signed certificate for 127.0.0.1, for this example only: its key is public.
 * const cert = `-----BEGIN CERTIFICATE-----
 * MIIBKzCB3qADAgECAgEBMAUGAytlcDAYMRYwFAYDVQQDDA1nZW5pbyBleGFtcGxl
 * MCAXDTAwMDEwMTAwMDAwMFoYDzk5OTkxMjMxMjM1OTU5WjAYMRYwFAYDVQQDDA1n
 * ZW5pbyBleGFtcGxlMCowBQYDK2VwAyEAimyaVd3W+pMjFCWKwUeI6y7m4PBaA4r0
 * HbHCKTjVTJKjSzBJMBoGA1UdEQQTMBGHBH8AAAGCCWxvY2FsaG9zdDAMBgNVHRMB
 * Af8EAjAAMB0GA1UdDgQWBBTjoGF4NGcTACaLRl/j5lX56B+OrTAFBgMrZXADQQAf
 * 3+pISPmCLDdRLHDKcimVYqRl0b6EL21wLb+gKVIVAL/RwfsmQACiNJR+peUTTPM6
 * CyL6GqG8AiqTBuORs24L
 * -----END CERTIFICATE-----`;
 * const key = `-----BEGIN PRIVATE KEY-----
 * MC4CAQAwBQYDK2VwBCIEIAbrL7wizTqBz6BwttBRGLHLNXNli2WKbPjjxJO/b8WL
 * -----END PRIVATE KEY-----`;
 *
 * const listener = Deno.listenTls({ hostname: "127.0.0.1", port: 0, cert, key });
 * const scheduler = new Scheduler();
 * scheduler.spawn(tcpServer(listener, echoHandler));
 * const client = scheduler.spawn(function* () {
 *   // caCerts: trust this certificate, which no certificate authority signed
 *   const conn = yield* connectTls({ port: listener.addr.port, caCerts: [cert] });
 *   try {
 *     yield* write(conn, new TextEncoder().encode("ping"));
 *     const reply = new Uint8Array(8);
 *     const n = yield* read(conn, reply);
 *     return new TextDecoder().decode(reply.subarray(0, n ?? 0));
 *   } finally {
 *     conn.close();
 *     listener.close(); // the server ends once its connection has
 *   }
 * }());
 * await scheduler.run();
 * assert.equal(await client.result, "GOT:ping");
 * ```
 */
export function* connectTls(options: Deno.ConnectTlsOptions): Operation<Deno.TlsConn> {
  return (yield { type: "connect", options, tls: true }) as Deno.TlsConn;
}

/**
 * Runs `operation` in the current task with a time limit. When `ms` runs out, the
 * operation receives a `TimeoutError` wherever it is waiting (its `finally` blocks run), and
 * that error reaches the caller.
 *
 * @typeParam T What the operation returns.
 * @param ms The limit, in milliseconds.
 * @param operation The generator object to run.
 * @returns The operation's result.
 * @throws {TimeoutError} If the limit ran out first.
 *
 * @example A read that gives up
 * ```ts
 * import { read, Scheduler, timeout, TimeoutError } from "@genio/genio";
 * import assert from "node:assert/strict";
 *
 * const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
 * const client = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
 * const server = await listener.accept();
 * const scheduler = new Scheduler();
 * const task = scheduler.spawn(function* () {
 *   try {
 *     yield* timeout(10, read(server, new Uint8Array(8)));
 *   } catch (error) {
 *     return error instanceof TimeoutError;
 *   } finally {
 *     server.close();
 *   }
 * }());
 * await scheduler.run();
 * assert.equal(await task.result, true);
 * client.close();
 * listener.close();
 * ```
 */
export function* timeout<T>(ms: number, operation: Operation<T>): Operation<T> {
  const deadline = (yield { type: "deadline", ms }) as Deadline;
  let returned = false;
  try {
    const result = yield* operation;
    returned = true;
    return result;
  } finally {
    yield { type: "clear-deadline", deadline, returned };
  }
}

/**
 * Runs `operation` in the current task with an idle limit: it fails with a `TimeoutError`
 * when any one of its waits (a read, a write, a sleep...) has not completed within `ms`.
 * The limit starts again each time a wait completes, at almost no cost per wait, which
 * suits a connection's idle timeout far better than a {@linkcode timeout} per read: a
 * stalled wait fails no earlier than `ms` after the last wait completed (or the operation
 * began), and at most `ms / 16` later. The kernel does not read the clock for each
 * completed wait; it looks at the task every sixteenth of the limit instead.
 *
 * @typeParam T What the operation returns.
 * @param ms The longest a single wait may take, in milliseconds.
 * @param operation The generator object to run.
 * @returns The operation's result.
 * @throws {TimeoutError} If one wait took longer than `ms`.
 *
 * @example Steady progress never times out; a stall does
 * ```ts
 * import { idleTimeout, Scheduler, sleep, TimeoutError } from "@genio/genio";
 * import assert from "node:assert/strict";
 *
 * function* steps(pauses: number[]) {
 *   for (const ms of pauses) yield* sleep(ms);
 *   return "finished";
 * }
 * const scheduler = new Scheduler();
 * const steady = scheduler.spawn(idleTimeout(20, steps([10, 10, 10, 10])));
 * const stalled = scheduler.spawn(idleTimeout(20, steps([10, 60_000])));
 * const stalledOutcome = assert.rejects(stalled.result, TimeoutError);
 * await scheduler.run();
 * assert.equal(await steady.result, "finished");
 * await stalledOutcome;
 * ```
 */
export function* idleTimeout<T>(ms: number, operation: Operation<T>): Operation<T> {
  const deadline = (yield { type: "deadline", ms, idle: true }) as Deadline;
  let returned = false;
  try {
    const result = yield* operation;
    returned = true;
    return result;
  } finally {
    yield { type: "clear-deadline", deadline, returned };
  }
}
