/**
 * A TCP server on a genio {@linkcode Scheduler}: {@linkcode tcpServer} is an accept loop
 * that runs a {@linkcode Handler} for each connection in a task of its own, and
 * {@linkcode serve} listens (on TCP, TLS or a Unix socket), runs that loop with connection
 * limits and idle timeouts, and shuts it down gracefully. The handler is
 * {@linkcode echoHandler} unless you give one.
 *
 * @example A server with a handler of your own
 * ```ts
 * import { type Handler, serve } from "@genio/genio/tcp-server";
 * import { read, write } from "@genio/genio";
 * import assert from "node:assert/strict";
 *
 * // Answers each chunk with its length in bytes, as text.
 * const lengths: Handler = function* (conn, { bufferSize }) {
 *   const buffer = new Uint8Array(bufferSize ?? 1024);
 *   let n: number | null;
 *   while ((n = yield* read(conn, buffer)) !== null) {
 *     yield* write(conn, new TextEncoder().encode(`${n}\n`));
 *   }
 * };
 *
 * await using server = serve({ hostname: "127.0.0.1", port: 0, handler: lengths, onListen() {} });
 * using client = await Deno.connect({ hostname: "127.0.0.1", port: server.addr.port });
 * await client.write(new TextEncoder().encode("hello"));
 * const reply = new Uint8Array(2);
 * for (let got = 0; got < reply.length;) got += (await client.read(reply.subarray(got)))!;
 * assert.equal(new TextDecoder().decode(reply), "5\n");
 * ```
 *
 * @module
 */
import { closeQuietly } from "./_close_quietly.ts";
import { describe, formatAddress } from "./_format.ts";
import { acceptProxied } from "./_proxied_conn.ts";
import { errorReason, LagSampler, processStats } from "./_server_stats.ts";
import {
  checkBufferSize,
  checkGrace,
  checkIdleTimeout,
  checkMaxConnections,
  checkPort,
  DEFAULT_BUFFER_SIZE,
  DEFAULT_GRACE_MS,
  DEFAULT_HOSTNAME,
  DEFAULT_IDLE_TIMEOUT_MS,
  DEFAULT_MAX_CONNECTIONS,
  DEFAULT_PORT,
} from "./_server_options.ts";
import { echoHandler } from "./echo.ts";
import { BusyError, Cancelled, TimeoutError } from "./errors.ts";
import { accept, cancel, join, type Operation, sleep, spawn, timeout, wait } from "./intents.ts";
import { ProxyHeaderError } from "./proxy_protocol.ts";
import { Scheduler, type SchedulerStats, type Task } from "./scheduler.ts";
import { Event, Semaphore } from "./sync.ts";

// How long the accept loop waits before trying again after a failure that is not one
// client's (too many open files, say): doubling up to the maximum while the failure lasts,
// so that the loop neither spins nor floods the log.
const ACCEPT_RETRY_MS = 100;
const ACCEPT_RETRY_MAX_MS = 5_000;
// The default log prints a repeated accept failure at most this often.
const ACCEPT_LOG_REPEAT_MS = 60_000;
// The longest a PROXY protocol header may take to arrive, unless the idle limit is shorter.
const PROXY_HEADER_TIMEOUT_MS = 5_000;
// The name of a task that reads a connection's PROXY protocol header, before its handler's.
const PROXY_TASK = "proxy ";

/**
 * What a connection's handler may honour, as {@linkcode tcpServer} passes it.
 *
 * @example
 * ```ts
 * import type { HandlerOptions } from "@genio/genio/tcp-server";
 *
 * const options: HandlerOptions = { idleTimeout: 30_000, bufferSize: 4096 };
 * ```
 */
export interface HandlerOptions {
  /**
   * How long one read or one write may wait, in milliseconds, before the connection is
   * closed (at most a sixteenth of it later, as with `idleTimeout()`); `0` disables
   * the limit. {@linkcode tcpServer} applies it to every handler's task itself, whatever
   * the handler, and passes `0` here; a handler run by hand (as `echoHandler` may be)
   * applies what it is given.
   *
   * @default {300_000}
   */
  idleTimeout?: number;
  /**
   * The size of the read buffer, in bytes: the largest chunk read at once.
   *
   * @default {16384}
   */
  bufferSize?: number;
}

/**
 * A connection's handler: an operation that talks to `conn` until it is done. Under
 * {@linkcode tcpServer} (and so {@linkcode serve}) every handler is treated alike: it runs
 * as the connection's own task, under the server's idle limit (a read or a write that
 * waits longer ends it with a `TimeoutError`), and `conn` is closed when it ends, even if
 * the handler forgot to. A handler spawned by hand gets neither: close `conn` in a
 * `finally`.
 *
 * @example A handler that greets and hangs up
 * ```ts
 * import { type Handler, serve } from "@genio/genio/tcp-server";
 * import { write } from "@genio/genio";
 *
 * const hello: Handler = function* (conn) {
 *   yield* write(conn, new TextEncoder().encode("hello\n"));
 * };
 * const server = serve({ hostname: "127.0.0.1", port: 0, handler: hello, onListen() {} });
 * await server.shutdown();
 * ```
 */
export type Handler = (conn: Deno.Conn, options: HandlerOptions) => Operation<void>;

/**
 * Options for {@linkcode tcpServer}: limits, what to pass to each handler, and hooks for
 * logging. `A` is the listener's address type: `Deno.NetAddr` for TCP and TLS,
 * `Deno.UnixAddr` for a Unix socket.
 *
 * @typeParam A The address type the hooks receive.
 *
 * @example
 * ```ts
 * import type { TcpServerOptions } from "@genio/genio/tcp-server";
 *
 * const options: TcpServerOptions = {
 *   maxConnections: 100,
 *   onConnect: (addr) => console.log(`Connection from ${addr.hostname}:${addr.port}`),
 * };
 * ```
 */
export interface TcpServerOptions<A extends Deno.Addr = Deno.NetAddr> extends HandlerOptions {
  /**
   * The most connections open at once. At the limit the loop stops accepting (newcomers
   * wait in the kernel's backlog) until a connection ends.
   *
   * @default {10_000}
   */
  maxConnections?: number;
  /**
   * Called when a connection has been accepted, before its handler starts (and, for TLS,
   * before its handshake). A Unix socket's peer has no address of its own: it gets the
   * socket's address instead.
   *
   * @default {nothing}
   */
  onConnect?: (remoteAddr: A) => void;
  /**
   * Called when a connection has ended and been closed. `error` is why it failed (a
   * `Cancelled` when the server was stopped), or `undefined` when its handler returned.
   * `task` is the connection's task, whose `bytesRead` and `bytesWritten` say how much
   * crossed the socket, or `null` when its handler never started.
   *
   * @default {one line on stderr for a failure other than `Cancelled`}
   */
  onDisconnect?: (remoteAddr: A, error: unknown, task: Task<void> | null) => void;
  /**
   * Called each time the loop reaches `maxConnections` and stops accepting, with the
   * number of connections open. It accepts again once one of them ends.
   *
   * @default {nothing}
   */
  onLimitReached?: (open: number) => void;
  /**
   * Called when `listener.accept()` failed for a reason other than the listener closing,
   * such as a client that reset before it was accepted. The loop goes on accepting; after
   * a failure that is not one client's (too many open files), it first waits 100 ms,
   * doubling up to 5 s while the failure lasts.
   *
   * @default {one line on stderr for a failure that is not one client's (a client that
   * reset before it was accepted is not worth a line); the same failure again at most once
   * a minute}
   */
  onAcceptError?: (error: unknown) => void;
  /**
   * Whether every connection begins with a PROXY protocol header, v1 or v2, as a load
   * balancer such as HAProxy writes it (`send-proxy`, `send-proxy-v2`); plain TCP only
   * ({@linkcode serve} refuses it with TLS, whose handshake would get the header). The
   * header is read in a task of its own, named `proxy <address>` (within 5 s, or
   * `idleTimeout` if shorter); the handler then runs as its child, named after the client,
   * and it, `onConnect` and `onDisconnect` see the client's own address as the conn's
   * `remoteAddr`; the handler reads the data that followed the header, none of it lost.
   * A connection whose header is invalid, cut short or late is closed and reported to
   * `onProxyError`, and never reaches the handler; a v2 `LOCAL` header (the balancer's
   * health check), or a connection that ends or resets before sending a byte, is closed
   * quietly. Turn it on only behind a balancer you trust, and let nobody else reach the
   * server: whoever can connect to it can claim any address.
   *
   * @default {false}
   */
  proxyProtocol?: boolean;
  /**
   * With `proxyProtocol`, called when a connection is closed for its header: a
   * `ProxyHeaderError` (invalid, oversized, truncated) or a `TimeoutError` (late).
   * `remoteAddr` is the conn's own peer: the balancer, or whoever connected.
   *
   * @default {one line on stderr}
   */
  onProxyError?: (remoteAddr: A, error: unknown) => void;
}

/**
 * What {@linkcode serve} takes whatever it listens on: the handler, its limits, and how to
 * shut down.
 *
 * @typeParam A The listener's address type, given to `onListen` and the hooks.
 *
 * @example
 * ```ts
 * import type { ServeBaseOptions } from "@genio/genio/tcp-server";
 *
 * const options: ServeBaseOptions<Deno.NetAddr> = { idleTimeout: 60_000, grace: 1_000 };
 * ```
 */
export interface ServeBaseOptions<A extends Deno.Addr> extends TcpServerOptions<A> {
  /**
   * Each connection's handler.
   *
   * @default {echoHandler}
   */
  handler?: Handler;
  /**
   * On shutdown, how long open connections may take to finish on their own, in
   * milliseconds, before they are cancelled.
   *
   * @default {5_000}
   */
  grace?: number;
  /** Starts a graceful shutdown when aborted. */
  signal?: AbortSignal;
  /**
   * Called once the listener is bound, with its address.
   *
   * @default {prints `Listening on HOST:PORT`, or `Listening on unix:PATH`}
   */
  onListen?: (addr: A) => void;
}

/**
 * Options for {@linkcode serve} on TCP: where to listen (named as in `Deno.serve`), and
 * with `cert` and `key`, TLS.
 *
 * @example
 * ```ts
 * import type { ServeOptions } from "@genio/genio/tcp-server";
 *
 * const options: ServeOptions = { port: 0, idleTimeout: 60_000, grace: 1_000 };
 * ```
 */
export interface ServeOptions extends ServeBaseOptions<Deno.NetAddr> {
  /**
   * The address to listen on. `0.0.0.0` or `::` exposes the server to the network.
   *
   * @default {"127.0.0.1"}
   */
  hostname?: string;
  /**
   * The port to listen on; `0` picks a free one (read it from `addr`).
   *
   * @default {25000}
   */
  port?: number;
  /**
   * Whether to set `SO_REUSEPORT` on the listener, so that several servers (in workers
   * or processes) listen on the same address and port and the OS spreads new connections
   * over them. Linux only (elsewhere Deno ignores it); needs Deno's `--unstable-net` flag.
   *
   * @default {false}
   */
  reusePort?: boolean;
  /**
   * The certificate chain, PEM-encoded (the file's contents, as `Deno.serve` takes it).
   * With `key`, the server speaks TLS (`Deno.listenTls`): each connection's handshake is
   * the first wait of its task, under the idle limit, and a handshake that fails ends that
   * connection only.
   *
   * @default {no TLS}
   */
  cert?: string;
  /**
   * The certificate's private key, PEM-encoded; given with `cert`.
   *
   * @default {no TLS}
   */
  key?: string;
}

/**
 * Options for {@linkcode serve} on a Unix socket, named as in `Deno.serve`. The socket file
 * must not exist (`Deno.errors.AddrInUse` otherwise); it is removed when the listener
 * closes. Listening needs `--allow-read` and `--allow-write` for the path.
 *
 * @example
 * ```ts
 * import type { ServeUnixOptions } from "@genio/genio/tcp-server";
 *
 * const options: ServeUnixOptions = { path: "/tmp/genio.sock", idleTimeout: 60_000 };
 * ```
 */
export interface ServeUnixOptions extends ServeBaseOptions<Deno.UnixAddr> {
  /** The socket's path. */
  path: string;
  /**
   * The transport; a `path` implies it.
   *
   * @default {"unix"}
   */
  transport?: "unix";
}

/**
 * What a graceful shutdown did, as {@linkcode Server.shutdown} reports it.
 *
 * @example
 * ```ts
 * import type { ShutdownResult } from "@genio/genio/tcp-server";
 *
 * const result: ShutdownResult = { drained: 3, cancelled: 1 };
 * ```
 */
export interface ShutdownResult {
  /** Connections that ended on their own after the shutdown began. */
  readonly drained: number;
  /** Connections that were still open when the grace period ran out, and were cancelled. */
  readonly cancelled: number;
}

/**
 * Why a connection ended in failure, as {@linkcode ServerStats} counts it: `reset` (the
 * peer reset the connection or went away during a write), `timeout` (the idle limit ran
 * out), `tls` (a failed handshake or a corrupt record) or `other`. A connection whose
 * handler returned, or that was cancelled (by a shutdown or an operator), did not fail.
 *
 * @example
 * ```ts
 * import type { ConnectionErrorReason } from "@genio/genio/tcp-server";
 *
 * const reasons: ConnectionErrorReason[] = ["reset", "timeout", "tls", "other"];
 * ```
 */
export type ConnectionErrorReason = "reset" | "timeout" | "tls" | "other";

/**
 * How late the event loop runs, in milliseconds, as {@linkcode ServerStats} reports it: a
 * timer set every 100 ms records how far past its time it fired. Measuring starts with the
 * first `stats()` call and stops with the server.
 *
 * @example
 * ```ts
 * import type { EventLoopLag } from "@genio/genio/tcp-server";
 *
 * const lag: EventLoopLag = {
 *   latest: 0.4,
 *   maxLastMinute: 12,
 *   buckets: [{ le: 1, count: 590 }, { le: 25, count: 600 }, { le: Infinity, count: 600 }],
 *   sum: 310,
 *   count: 600,
 * };
 * ```
 */
export interface EventLoopLag {
  /** The latest measure. */
  readonly latest: number;
  /** The largest measure in the last minute. */
  readonly maxLastMinute: number;
  /**
   * A histogram of every measure: how many were at most `le` milliseconds, cumulative as in
   * Prometheus, the last bucket's `le` being `Infinity`.
   */
  readonly buckets: readonly { readonly le: number; readonly count: number }[];
  /** The sum of every measure. */
  readonly sum: number;
  /** How many measures were taken. */
  readonly count: number;
}

/**
 * What the process holds, as {@linkcode ServerStats} reports it.
 *
 * @example
 * ```ts
 * import type { ProcessStats } from "@genio/genio/tcp-server";
 *
 * const process: ProcessStats = {
 *   residentMemory: 48_000_000,
 *   openFds: null,
 *   startTime: Date.now(),
 * };
 * ```
 */
export interface ProcessStats {
  /** Resident memory (RSS), in bytes. */
  readonly residentMemory: number;
  /**
   * Open file descriptors, counted in `/proc/self/fd` on Linux when Deno lets the program
   * read it, which takes `--allow-all`; else `null`. It never asks for permission.
   */
  readonly openFds: number | null;
  /** When the process started, in milliseconds since the Unix epoch. */
  readonly startTime: number;
}

/**
 * A server's figures at one moment, as {@linkcode Server.stats} returns them: what a console
 * or a metrics page shows. Counts and bytes are since the server started; bytes are counted
 * as they cross the socket (an echo's `GOT:` included; over TLS, the plaintext) by each
 * connection's own task.
 *
 * @example
 * ```ts
 * import type { ServerStats } from "@genio/genio/tcp-server";
 *
 * function summary(stats: ServerStats): string {
 *   return `${stats.connectionsOpen} open, ${stats.bytesReceived} bytes in`;
 * }
 * ```
 */
export interface ServerStats {
  /** Connections open now. */
  readonly connectionsOpen: number;
  /** Connections accepted since the server started. */
  readonly connectionsTotal: number;
  /**
   * Times the accept loop reached `maxConnections` and stopped accepting. The server refuses
   * nobody itself: at the limit newcomers wait in the kernel's listen backlog until a
   * connection ends (the kernel refuses or drops them only when the backlog is full, which
   * the process cannot see). Each pause counts once, however many waited.
   */
  readonly limitReached: number;
  /** Bytes read from clients, by connections open and ended. */
  readonly bytesReceived: number;
  /** Bytes written to clients, by connections open and ended. */
  readonly bytesSent: number;
  /** Connections that ended in failure, by reason. */
  readonly connectionErrors: Readonly<Record<ConnectionErrorReason, number>>;
  /** The scheduler's figures: tasks by state, the ready queue, timers. */
  readonly scheduler: SchedulerStats;
  /** How late the event loop runs. */
  readonly eventLoopLag: EventLoopLag;
  /** What the process holds. */
  readonly process: ProcessStats;
}

/**
 * A running server, as returned by {@linkcode serve}. `await using` shuts it down.
 *
 * @typeParam A The listener's address type: `Deno.NetAddr` (TCP, TLS) or `Deno.UnixAddr`.
 *
 * @example
 * ```ts
 * import { serve } from "@genio/genio/tcp-server";
 *
 * await using server = serve({ hostname: "127.0.0.1", port: 0, onListen() {} });
 * console.log(`serving on port ${server.addr.port}, ${server.connections} connections`);
 * ```
 */
export interface Server<A extends Deno.Addr = Deno.NetAddr> extends AsyncDisposable {
  /** The address the listener is bound to, with the real port (or the socket's path). */
  readonly addr: A;
  /** The scheduler running the server's tasks, to inspect its queue and wait maps. */
  readonly scheduler: Scheduler;
  /**
   * The accept loop's task, named `tcp-server` (`unix-server` on a Unix socket): every
   * connection's task is its child, and cancelling it stops the server at once.
   */
  readonly task: Task<void>;
  /** How many connections are open now. */
  readonly connections: number;
  /** Settles when the server has stopped: the listener closed and every connection ended. */
  readonly finished: Promise<void>;
  /**
   * Stops the server gracefully: closes the listener at once (new connections are refused),
   * gives open connections `grace` milliseconds to end on their own, then cancels the rest
   * (their `finally` blocks run, their conns close). Calling it again returns the same
   * outcome.
   *
   * @returns What the shutdown did, once the server has stopped.
   */
  shutdown(): Promise<ShutdownResult>;
  /**
   * The server's figures now, from counters kept per connection (never per message) and
   * one walk over the scheduler's live tasks. The first call starts measuring the event
   * loop's lag, with an unref'd timer every 100 ms that stops with the server.
   *
   * @returns The figures.
   *
   * @example Counting what a client sent
   * ```ts
   * import { serve } from "@genio/genio/tcp-server";
   * import assert from "node:assert/strict";
   *
   * const server = serve({ hostname: "127.0.0.1", port: 0, onListen() {} });
   * const client = await Deno.connect({ hostname: "127.0.0.1", port: server.addr.port });
   * await client.write(new TextEncoder().encode("hello"));
   * const reply = new Uint8Array(9);
   * for (let got = 0; got < reply.length;) got += (await client.read(reply.subarray(got)))!;
   * assert.equal(server.stats().connectionsOpen, 1);
   *
   * client.close();
   * await server.shutdown();
   * const stats = server.stats();
   * assert.equal(stats.connectionsTotal, 1);
   * assert.equal(stats.connectionsOpen, 0);
   * assert.equal(stats.bytesReceived, 5); // "hello"
   * assert.equal(stats.bytesSent, 9); // "GOT:hello"
   * assert.equal(stats.scheduler.tasks, 0);
   * ```
   */
  stats(): ServerStats;
}

/**
 * Accepts connections on `listener` and runs `handler` for each in a child task of its
 * own, named `conn <address>`: the `tcp_server` of the classic Python generator echo server,
 * with limits and logging. The conn is closed when the handler
 * ends, and a failure (reset by peer, broken pipe, a handler that throws) ends that
 * connection only.
 *
 * On a TLS listener (`Deno.listenTls`), a connection's handshake is the first wait of its
 * task, under its idle limit: a client that never finishes it is cut like a silent one, a
 * handshake that fails (a client that does not speak TLS) ends that connection with
 * `Deno.errors.InvalidData`, and the accept loop never waits for either.
 *
 * Accept failures that belong to one client (it reset before it was accepted) are skipped;
 * only the listener's closing ends the loop. The operation then waits for its open
 * connections to end and returns. Cancel its task to stop them at once.
 *
 * @typeParam A The listener's address type, given to the hooks.
 * @param listener Where connections come from: TCP, TLS or Unix. The caller closes it.
 * @param handler What runs for each connection; {@linkcode echoHandler} if left out.
 * @param options Limits, handler options and logging hooks.
 * @throws {RangeError} When an option is out of range.
 *
 * @example An accept loop with a hook that counts connections
 * ```ts
 * import { tcpServer } from "@genio/genio/tcp-server";
 * import { echoHandler } from "@genio/genio/echo";
 * import { Scheduler } from "@genio/genio";
 * import assert from "node:assert/strict";
 *
 * let connections = 0;
 * const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
 * const scheduler = new Scheduler();
 * scheduler.spawn(tcpServer(listener, echoHandler, { onConnect: () => connections++ }));
 * const running = scheduler.run();
 *
 * const client = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
 * await client.write(new TextEncoder().encode("hi"));
 * await client.read(new Uint8Array(6));
 * client.close();
 * listener.close();
 * await running;
 * assert.equal(connections, 1);
 * ```
 */
export function* tcpServer<A extends Deno.Addr = Deno.NetAddr>(
  listener: Deno.Listener<Deno.Conn, A>,
  handler?: Handler,
  options?: TcpServerOptions<A>,
): Operation<void> {
  const handle = handler ?? echoHandler;
  const maxConnections = checkMaxConnections(options?.maxConnections ?? DEFAULT_MAX_CONNECTIONS);
  const idleTimeout = checkIdleTimeout(options?.idleTimeout ?? DEFAULT_IDLE_TIMEOUT_MS);
  const handlerOptions: HandlerOptions = {
    idleTimeout: 0, // applied to the handler's task below
    bufferSize: checkBufferSize(options?.bufferSize ?? DEFAULT_BUFFER_SIZE),
  };
  const onConnect = options?.onConnect;
  const onDisconnect = options?.onDisconnect ?? logDisconnect;
  const onAcceptError = options?.onAcceptError ?? acceptErrorLog();
  const onLimitReached = options?.onLimitReached;
  const proxyProtocol = options?.proxyProtocol ?? false;
  const onProxyError = options?.onProxyError ?? logProxyError;
  const headerTimeout = idleTimeout > 0
    ? Math.min(PROXY_HEADER_TIMEOUT_MS, idleTimeout)
    : PROXY_HEADER_TIMEOUT_MS;

  // A slot per connection: at the limit the loop waits for one on the semaphore, where
  // `tasks()` shows it, and after the listener closed it waits for the last to end.
  const slots = new Semaphore(maxConnections);
  let open = 0;
  let lastEnded: Event | null = null;
  const ended = (): void => {
    open--;
    slots.release();
    if (open === 0) lastEnded?.set();
  };

  let retryMs = ACCEPT_RETRY_MS;
  for (;;) {
    if (slots.available === 0) onLimitReached?.(open);
    yield* slots.acquire();
    let conn: Deno.Conn;
    try {
      conn = yield* accept(listener);
    } catch (error) {
      slots.release();
      if (listenerClosed(error)) break;
      if (error instanceof Cancelled || error instanceof TimeoutError) throw error;
      if (error instanceof BusyError) throw error;
      onAcceptError(error);
      if (failedBeforeAccept(error)) continue;
      yield* sleep(retryMs);
      retryMs = Math.min(retryMs * 2, ACCEPT_RETRY_MAX_MS);
      continue;
    }
    retryMs = ACCEPT_RETRY_MS;
    open++;
    if (proxyProtocol) {
      const accepted = conn;
      yield* spawn(proxied(accepted), {
        name: PROXY_TASK + formatAddress(peerAddress(accepted)),
        onSettled() {
          closeQuietly(accepted);
          ended();
        },
      });
    } else {
      yield* start(conn, ended);
    }
  }
  if (open > 0) yield* (lastEnded = new Event()).wait();

  // The handler runs as the connection's task itself, not inside a wrapper that would
  // resume it through `yield*` on every message: its idle limit is the task's own, and
  // its end is seen by `onSettled`. TLS is the exception: its crypto costs far more.
  function* start(conn: Deno.Conn, release: () => void): Operation<Task<void> | null> {
    const remoteAddr = peerAddress(conn) as A;
    const disconnected = (task: Task<unknown> | null, error: unknown): void => {
      closeQuietly(conn);
      release();
      onDisconnect(remoteAddr, error, task as Task<void> | null);
    };
    try {
      onConnect?.(remoteAddr);
      const operation = isTls(conn)
        ? handshakeFirst(conn, handle, handlerOptions)
        : handle(conn, handlerOptions);
      return yield* spawn(operation, {
        name: `conn ${formatAddress(remoteAddr)}`,
        onSettled: disconnected,
        idleTimeout,
      });
    } catch (error) {
      // onConnect threw, or the handler did not give a generator: this connection only.
      if (error instanceof Cancelled) throw error;
      disconnected(null, error);
      return null;
    }
  }

  // Reads the PROXY protocol header, then starts the handler as a child task and waits for
  // it: the handler reads its conn directly, so once the header is read this task costs
  // nothing per message. The conn holds its slot from its accept on.
  function* proxied(conn: Deno.Conn): Operation<void> {
    let client;
    try {
      client = yield* acceptProxied(conn, headerTimeout);
    } catch (error) {
      if (error instanceof Cancelled) throw error;
      if (!sentNothing(error)) onProxyError(peerAddress(conn) as A, error);
      return;
    }
    if (client === null) return; // LOCAL: the balancer's health check
    const task = yield* start(client, () => {});
    if (task === null) return;
    try {
      yield* join(task);
    } catch (error) {
      // The handler's own onSettled has reported its failure.
      if (error instanceof Cancelled) throw error;
    }
  }
}

/**
 * Listens on the Unix socket at `path` and runs {@linkcode tcpServer} there, as the TCP
 * form does. The hooks get the socket's address for every connection (a Unix socket's peer
 * has none of its own), and the socket file is removed when the listener closes.
 *
 * @param options The socket's path, the handler and its limits, and the shutdown grace.
 * @returns The running server; its `addr` is the socket's.
 * @throws {Deno.errors.AddrInUse} When a file is at `path`, a stale socket included.
 * @throws {Deno.errors.NotCapable} Without read, write and net permission for the path.
 * @throws {TypeError} When `transport` is not `"unix"`, or a TCP option is given too.
 * @throws {RangeError} When an option is out of range.
 *
 * @example Serving on a Unix socket
 * ```ts
 * import { serve } from "@genio/genio/tcp-server";
 * import assert from "node:assert/strict";
 *
 * const path = `${Deno.makeTempDirSync()}/echo.sock`;
 * const server = serve({ path, onListen() {} });
 * const client = await Deno.connect({ path, transport: "unix" });
 * await client.write(new TextEncoder().encode("hi"));
 * const reply = new Uint8Array(6);
 * for (let got = 0; got < reply.length;) got += (await client.read(reply.subarray(got)))!;
 * assert.equal(new TextDecoder().decode(reply), "GOT:hi");
 *
 * client.close();
 * await server.shutdown();
 * assert.throws(() => Deno.lstatSync(path), Deno.errors.NotFound);
 * ```
 */
export function serve(options: ServeUnixOptions): Server<Deno.UnixAddr>;
/**
 * Listens on `hostname:port` and runs {@linkcode tcpServer} with the handler on a new
 * {@linkcode Scheduler}, until {@linkcode Server.shutdown} or `signal` stops it. With
 * `cert` and `key` it speaks TLS (`connectTls()` has an example).
 *
 * @param options Where to listen, the handler and its limits, and the shutdown grace; the
 * echo server on 127.0.0.1:25000 if left out.
 * @returns The running server.
 * @throws {Deno.errors.AddrInUse} When the address is taken.
 * @throws {Deno.errors.NotCapable} Without net permission for the address.
 * @throws {Deno.errors.InvalidData} When `cert` or `key` holds no PEM certificate or key.
 * @throws {TypeError} When only one of `cert` and `key` is given, or `proxyProtocol` with
 * them.
 * @throws {RangeError} When an option is out of range.
 *
 * @example Serving, talking to it, and shutting down
 * ```ts
 * import { serve } from "@genio/genio/tcp-server";
 * import assert from "node:assert/strict";
 *
 * const server = serve({ hostname: "127.0.0.1", port: 0, onListen() {} });
 * const client = await Deno.connect({ hostname: "127.0.0.1", port: server.addr.port });
 * await client.write(new TextEncoder().encode("hello"));
 * const reply = new Uint8Array(9);
 * for (let got = 0; got < reply.length;) got += (await client.read(reply.subarray(got)))!;
 * assert.equal(new TextDecoder().decode(reply), "GOT:hello");
 *
 * client.close();
 * const { drained, cancelled } = await server.shutdown();
 * assert.equal(drained + cancelled, 1);
 * ```
 *
 * @example Stopping with an AbortSignal
 * ```ts
 * import { serve } from "@genio/genio/tcp-server";
 *
 * const controller = new AbortController();
 * const server = serve({ port: 0, signal: controller.signal, grace: 0, onListen() {} });
 * controller.abort();
 * await server.finished;
 * ```
 */
export function serve(options?: ServeOptions): Server;
/**
 * Listens on TCP or on a Unix socket, whichever `options` says.
 *
 * @param options {@linkcode ServeOptions} or {@linkcode ServeUnixOptions}.
 * @returns The running server.
 */
export function serve(
  options: ServeOptions | ServeUnixOptions,
): Server<Deno.NetAddr> | Server<Deno.UnixAddr>;
export function serve(
  options: ServeOptions | ServeUnixOptions = {},
): Server<Deno.NetAddr> | Server<Deno.UnixAddr> {
  if ("path" in options) return start(options, "unix-server", () => listenUnix(options));
  return start(options, "tcp-server", () => listenTcp(options));
}

function listenTcp(options: ServeOptions): Deno.Listener<Deno.Conn, Deno.NetAddr> {
  const hostname = options.hostname ?? DEFAULT_HOSTNAME;
  const port = checkPort(options.port ?? DEFAULT_PORT);
  const { cert, key, reusePort } = options;
  if (cert === undefined && key === undefined) return Deno.listen({ hostname, port, reusePort });
  if (cert === undefined || key === undefined) {
    const given = cert === undefined ? "key" : "cert";
    throw new TypeError(`Cannot serve: "cert" and "key" go together, got only "${given}"`);
  }
  // The header comes before the TLS handshake, in the clear, and Deno's TLS listener
  // would take it for the handshake's first bytes.
  if (options.proxyProtocol) {
    throw new TypeError(`Cannot serve: "proxyProtocol" does not go with "cert" and "key"`);
  }
  return Deno.listenTls({ hostname, port, cert, key, reusePort });
}

function listenUnix(options: ServeUnixOptions): Deno.Listener<Deno.Conn, Deno.UnixAddr> {
  const { path, transport = "unix" } = options;
  if (transport !== "unix") {
    throw new TypeError(`Cannot serve: a path needs transport "unix", got "${transport}"`);
  }
  const tcpOnly = ["hostname", "port", "cert", "key", "reusePort", "proxyProtocol"].find((name) =>
    Reflect.get(options, name) !== undefined
  );
  if (tcpOnly !== undefined) {
    throw new TypeError(`Cannot serve: "path" does not go with "${tcpOnly}"`);
  }
  return Deno.listen({ path, transport });
}

function start<A extends Deno.Addr>(
  options: ServeBaseOptions<A>,
  name: string,
  listen: () => Deno.Listener<Deno.Conn, A>,
): Server<A> {
  const grace = checkGrace(options.grace ?? DEFAULT_GRACE_MS);
  checkMaxConnections(options.maxConnections ?? DEFAULT_MAX_CONNECTIONS);
  checkIdleTimeout(options.idleTimeout ?? DEFAULT_IDLE_TIMEOUT_MS);
  checkBufferSize(options.bufferSize ?? DEFAULT_BUFFER_SIZE);
  const { signal } = options;
  const onListen = options.onListen ?? logListening;
  const onDisconnect = options.onDisconnect ?? logDisconnect;

  let open = 0;
  let stopping = false;
  let drained = 0;
  let cancelled = 0;
  // The figures of stats(), counted per connection; the bytes of open connections are
  // read from their tasks when asked for.
  let total = 0;
  let limitReached = 0;
  let bytesReceived = 0;
  let bytesSent = 0;
  const errors: Record<ConnectionErrorReason, number> = { reset: 0, timeout: 0, tls: 0, other: 0 };
  const serverOptions: TcpServerOptions<A> = {
    ...options,
    onConnect(remoteAddr) {
      open++;
      total++;
      options.onConnect?.(remoteAddr);
    },
    onDisconnect(remoteAddr, error, task) {
      open--;
      if (stopping) error instanceof Cancelled ? cancelled++ : drained++;
      if (task !== null) {
        bytesReceived += task.bytesRead;
        bytesSent += task.bytesWritten;
      }
      const reason = errorReason(error);
      if (reason !== null) errors[reason]++;
      onDisconnect(remoteAddr, error, task);
    },
    onLimitReached(n) {
      limitReached++;
      options.onLimitReached?.(n);
    },
  };
  const handler = options.handler ?? echoHandler;

  const listener = listen();
  const addr = listener.addr;
  const scheduler = new Scheduler();
  let task: Task<void>;
  try {
    task = scheduler.spawn(tcpServer(listener, handler, serverOptions), { name });
    onListen(addr);
  } catch (error) {
    listener.close();
    throw error;
  }

  let stopped = false;
  let lag: LagSampler | null = null;
  const outcome = task.result.catch((error) => {
    if (!(error instanceof Cancelled)) throw error;
  });
  const finished = scheduler.run().then(() => outcome).finally(() => {
    stopped = true;
    lag?.stop();
    closeQuietly(listener);
    signal?.removeEventListener("abort", onAbort);
  });
  const shutdown = (): Promise<ShutdownResult> => {
    if (!stopping) {
      stopping = true;
      closeQuietly(listener);
      if (!stopped) scheduler.spawn(drain(task, grace), { name: "shutdown" });
    }
    return finished.then(() => ({ drained, cancelled }));
  };
  const onAbort = (): void => void shutdown().catch(() => {});
  if (signal?.aborted) onAbort();
  else signal?.addEventListener("abort", onAbort, { once: true });

  const stats = (): ServerStats => {
    if (lag === null) {
      lag = new LagSampler();
      if (!stopped) lag.start();
    }
    let liveReceived = 0;
    let liveSent = 0;
    // The connections' tasks: the accept loop's children, and the handlers under PROXY
    // header tasks (whose header is the balancer's, not counted). Parents come first.
    const parents = new Set([task.id]);
    for (const info of scheduler.tasks()) {
      if (info.parent === null || !parents.has(info.parent)) continue;
      if (info.name.startsWith(PROXY_TASK)) {
        parents.add(info.id);
        continue;
      }
      liveReceived += info.bytesRead;
      liveSent += info.bytesWritten;
    }
    return {
      connectionsOpen: open,
      connectionsTotal: total,
      limitReached,
      bytesReceived: bytesReceived + liveReceived,
      bytesSent: bytesSent + liveSent,
      connectionErrors: { ...errors },
      scheduler: scheduler.stats(),
      eventLoopLag: lag.snapshot(),
      process: processStats(),
    };
  };

  return {
    addr,
    scheduler,
    task,
    get connections() {
      return open;
    },
    finished,
    shutdown,
    stats,
    async [Symbol.asyncDispose]() {
      await shutdown();
    },
  };
}

function* drain(server: Task<void>, grace: number): Operation<void> {
  try {
    if (grace === Infinity) return yield* join(server);
    if (grace > 0) return yield* timeout(grace, join(server));
  } catch (error) {
    // The server's own failure reaches `finished`; only running out of time matters here.
    if (!(error instanceof TimeoutError)) return;
  }
  yield* cancel(server);
}

// A Unix socket's peer is unnamed (Deno gives its path as null): it is named by the socket
// it came in on, so that logs and task names say where it is.
function peerAddress(conn: Deno.Conn): Deno.Addr {
  const remote = conn.remoteAddr;
  return remote.transport === "unix" && !remote.path ? conn.localAddr : remote;
}

function isTls(conn: Deno.Conn): conn is Deno.TlsConn {
  return typeof (conn as Partial<Deno.TlsConn>).handshake === "function";
}

// Deno shakes hands lazily, inside the first read or write; doing it first, as a wait, puts
// it under the task's idle limit whatever the handler does, and names what failed.
function* handshakeFirst(
  conn: Deno.TlsConn,
  handler: Handler,
  options: HandlerOptions,
): Operation<void> {
  try {
    yield* wait(conn.handshake());
  } catch (error) {
    if (!(error instanceof Deno.errors.InvalidData)) throw error;
    throw new Deno.errors.InvalidData(`TLS handshake failed: ${error.message}`, { cause: error });
  }
  yield* handler(conn, options);
}

function listenerClosed(error: unknown): boolean {
  return error instanceof Deno.errors.BadResource || error instanceof Deno.errors.Interrupted;
}

// A connection that ended or reset before it sent a byte of its header, as TCP health checks
// and port scanners do, is closed quietly.
function sentNothing(error: unknown): boolean {
  if (error instanceof ProxyHeaderError) {
    return error.reason === "truncated" && error.received === 0;
  }
  return failedBeforeAccept(error);
}

function failedBeforeAccept(error: unknown): boolean {
  return error instanceof Deno.errors.NotConnected ||
    error instanceof Deno.errors.ConnectionReset ||
    error instanceof Deno.errors.ConnectionAborted;
}

function logListening(addr: Deno.Addr): void {
  console.log(`Listening on ${formatAddress(addr)}`);
}

function logDisconnect(remoteAddr: Deno.Addr, error: unknown): void {
  if (error === undefined || error instanceof Cancelled) return;
  console.error(`Connection ${formatAddress(remoteAddr)} failed: ${describe(error)}`);
}

function logProxyError(remoteAddr: Deno.Addr, error: unknown): void {
  const why = error instanceof TimeoutError
    ? `no PROXY protocol header within ${error.ms / 1000} s`
    : error instanceof ProxyHeaderError
    ? error.message
    : describe(error);
  console.error(`Connection ${formatAddress(remoteAddr)} refused: ${why}`);
}

// A server out of file descriptors fails every accept for as long as that lasts: one line
// says so, and the same line again only once a minute, with how often it was left out.
function acceptErrorLog(): (error: unknown) => void {
  let last = "";
  let printedAt = -Infinity;
  let leftOut = 0;
  return (error) => {
    if (failedBeforeAccept(error)) return;
    const line = `Accept failed: ${describe(error)}`;
    const now = performance.now();
    if (line === last && now - printedAt < ACCEPT_LOG_REPEAT_MS) {
      leftOut++;
      return;
    }
    const repeats = line === last && leftOut > 0 ? ` (${leftOut} more since)` : "";
    console.error(line + repeats);
    last = line;
    printedAt = now;
    leftOut = 0;
  };
}
