/**
 * The seed's `GOT:` echo server, as a library and as a command-line server.
 *
 * As a library: {@linkcode tcpServer} is the seed's accept loop (one child task per
 * connection), {@linkcode echoHandler} its handler, and {@linkcode serve} listens and runs
 * them on a {@linkcode Scheduler} with connection limits, idle timeouts and a graceful
 * shutdown.
 *
 * As a command: `deno run --allow-net server.ts` listens on 127.0.0.1:25000 and prints
 * `Listening on 127.0.0.1:25000`, then one line per connection opened and closed. SIGINT or
 * SIGTERM stops it gracefully; `--help` lists every flag.
 *
 * @example The seed: an accept loop and an echo handler on one scheduler
 * ```ts
 * import { echoHandler, tcpServer } from "@genio/genio/server";
 * import { Scheduler } from "@genio/genio";
 * import assert from "node:assert/strict";
 *
 * const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
 * const scheduler = new Scheduler();
 * scheduler.spawn(tcpServer(listener, echoHandler), { name: "server" });
 * const running = scheduler.run();
 *
 * const client = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
 * await client.write(new TextEncoder().encode("hello"));
 * const reply = new Uint8Array(9);
 * for (let got = 0; got < reply.length;) got += (await client.read(reply.subarray(got)))!;
 * assert.equal(new TextDecoder().decode(reply), "GOT:hello");
 *
 * client.close();
 * listener.close(); // the accept loop ends, and the server once its connections have
 * await running;
 * ```
 *
 * @module
 */
import { parseArgs } from "node:util";
import { closeQuietly } from "./_close_quietly.ts";
import denoJson from "./deno.json" with { type: "json" };
import { BusyError, Cancelled, TimeoutError } from "./errors.ts";
import {
  accept,
  cancel,
  type Deadline,
  join,
  type Operation,
  type ReadIntent,
  sleep,
  spawn,
  timeout,
  wait,
} from "./intents.ts";
import { Scheduler, type Task } from "./scheduler.ts";

const GOT: Uint8Array = new TextEncoder().encode("GOT:");
const DEFAULT_HOSTNAME = "127.0.0.1";
const DEFAULT_PORT = 25000;
const DEFAULT_MAX_CONNECTIONS = 10_000;
const DEFAULT_IDLE_TIMEOUT_MS = 300_000;
const DEFAULT_GRACE_MS = 5_000;
const DEFAULT_BUFFER_SIZE = 16 * 1024;
const MAX_BUFFER_SIZE = 1 << 30;
// How long the accept loop waits before trying again after a failure that is not one
// client's (too many open files, say): doubling up to the maximum while the failure lasts,
// so that the loop neither spins nor floods the log.
const ACCEPT_RETRY_MS = 100;
const ACCEPT_RETRY_MAX_MS = 5_000;
// The default log prints a repeated accept failure at most this often.
const ACCEPT_LOG_REPEAT_MS = 60_000;

/**
 * What a connection's handler may honour, as {@linkcode tcpServer} passes it.
 *
 * @example
 * ```ts
 * import type { HandlerOptions } from "@genio/genio/server";
 *
 * const options: HandlerOptions = { idleTimeout: 30_000, bufferSize: 4096 };
 * ```
 */
export interface HandlerOptions {
  /**
   * How long one read or one write may wait, in milliseconds, before the connection is
   * closed (at most a sixteenth of it later, as with `idleTimeout()`); `0` disables
   * the limit.
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
 * A connection's handler: an operation that talks to `conn` until it is done. It runs in
 * its own task, which owns `conn`: {@linkcode tcpServer} closes it when the handler ends,
 * even if the handler forgot to.
 *
 * @example A handler that greets and hangs up
 * ```ts
 * import { type Handler, serve } from "@genio/genio/server";
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
 * logging.
 *
 * @example
 * ```ts
 * import type { TcpServerOptions } from "@genio/genio/server";
 *
 * const options: TcpServerOptions = {
 *   maxConnections: 100,
 *   onConnect: (addr) => console.log(`Connection from ${addr.hostname}:${addr.port}`),
 * };
 * ```
 */
export interface TcpServerOptions extends HandlerOptions {
  /**
   * The most connections open at once. At the limit the loop stops accepting (newcomers
   * wait in the kernel's backlog) until a connection ends.
   *
   * @default {10_000}
   */
  maxConnections?: number;
  /**
   * Called when a connection has been accepted, before its handler starts.
   *
   * @default {nothing}
   */
  onConnect?: (remoteAddr: Deno.NetAddr) => void;
  /**
   * Called when a connection has ended and been closed. `error` is why it failed (a
   * `Cancelled` when the server was stopped), or `undefined` when its handler returned.
   *
   * @default {one line on stderr for a failure other than `Cancelled`}
   */
  onDisconnect?: (remoteAddr: Deno.NetAddr, error: unknown) => void;
  /**
   * Called when `listener.accept()` failed for a reason other than the listener closing,
   * such as a client that reset before it was accepted. The loop goes on accepting; after
   * a failure that is not one client's (too many open files), it first waits 100 ms,
   * doubling up to 5 s while the failure lasts.
   *
   * @default {one line on stderr; the same failure again at most once a minute}
   */
  onAcceptError?: (error: unknown) => void;
}

/**
 * Options for {@linkcode serve}: where to listen (named as in `Deno.serve`), the handler,
 * its limits, and how to shut down.
 *
 * @example
 * ```ts
 * import type { ServeOptions } from "@genio/genio/server";
 *
 * const options: ServeOptions = { port: 0, idleTimeout: 60_000, grace: 1_000 };
 * ```
 */
export interface ServeOptions extends TcpServerOptions {
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
   * @default {prints `Listening on HOST:PORT`}
   */
  onListen?: (addr: Deno.NetAddr) => void;
}

/**
 * What a graceful shutdown did, as {@linkcode Server.shutdown} reports it.
 *
 * @example
 * ```ts
 * import type { ShutdownResult } from "@genio/genio/server";
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
 * A running server, as returned by {@linkcode serve}. `await using` shuts it down.
 *
 * @example
 * ```ts
 * import { serve } from "@genio/genio/server";
 *
 * await using server = serve({ hostname: "127.0.0.1", port: 0, onListen() {} });
 * console.log(`serving on port ${server.addr.port}, ${server.connections} connections`);
 * ```
 */
export interface Server extends AsyncDisposable {
  /** The address the listener is bound to, with the real port. */
  readonly addr: Deno.NetAddr;
  /** The scheduler running the server's tasks, to inspect its queue and wait maps. */
  readonly scheduler: Scheduler;
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
}

/**
 * The seed's `echo_handler`: answers every chunk it reads with `GOT:` followed by that
 * chunk, as one write, until the client ends the stream; then closes `conn`.
 *
 * It does not read the next chunk before the reply to the last one is written, so a client
 * that sends without reading is held back by TCP instead of filling memory; the reply
 * buffer is allocated once per connection. A read or a write that waits longer than
 * `idleTimeout` milliseconds ends the connection with a `TimeoutError`: so does a silent
 * client, or one that never reads its replies.
 *
 * @param conn The client's connection; closed when the handler ends.
 * @param options The idle timeout and the read buffer size.
 * @throws {TimeoutError} When a read or a write waited longer than `idleTimeout`.
 * @throws {RangeError} When `bufferSize` or `idleTimeout` is out of range.
 *
 * @example Echoing one client on a scheduler of its own
 * ```ts
 * import { echoHandler } from "@genio/genio/server";
 * import { Scheduler } from "@genio/genio";
 * import assert from "node:assert/strict";
 *
 * const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
 * const client = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
 * const conn = await listener.accept();
 * const scheduler = new Scheduler();
 * scheduler.spawn(echoHandler(conn, { idleTimeout: 1_000 }));
 * const running = scheduler.run();
 *
 * await client.write(new TextEncoder().encode("ping"));
 * await client.closeWrite();
 * const reply = new Uint8Array(16);
 * let got = 0;
 * for (let n; (n = await client.read(reply.subarray(got))) !== null;) got += n;
 * assert.equal(new TextDecoder().decode(reply.subarray(0, got)), "GOT:ping");
 *
 * await running;
 * client.close();
 * listener.close();
 * ```
 */
export function* echoHandler(
  conn: Deno.Conn,
  options: HandlerOptions = {},
): Operation<void> {
  const bufferSize = checkBufferSize(options.bufferSize ?? DEFAULT_BUFFER_SIZE);
  const idleTimeout = checkIdleTimeout(options.idleTimeout ?? DEFAULT_IDLE_TIMEOUT_MS);
  const reply = new Uint8Array(GOT.length + bufferSize);
  reply.set(GOT);
  const buffer = reply.subarray(GOT.length);
  // Every message takes this loop, so it yields its intents itself rather than through
  // `read()`, `write()` and `idleTimeout()`, each of which is one more generator to resume
  // per message: one idle deadline for the whole connection, restarted by the kernel each
  // time a read or a write completes, costs next to nothing per message.
  const readIntent: ReadIntent = { type: "read", conn, buffer };
  const writeIntent = { type: "write" as const, conn, data: reply };
  let deadline: Deadline | null = null;
  try {
    if (idleTimeout > 0 && idleTimeout !== Infinity) {
      deadline = (yield { type: "deadline", ms: idleTimeout, idle: true }) as Deadline;
    }
    let n: number | null;
    while ((n = (yield readIntent) as number | null) !== null) {
      writeIntent.data = reply.subarray(0, GOT.length + n);
      yield writeIntent;
    }
  } finally {
    if (deadline !== null) yield { type: "clear-deadline", deadline };
    closeQuietly(conn);
  }
}

/**
 * The seed's `tcp_server`: accepts connections on `listener` and runs `handler` for each
 * in a child task of its own, named `conn <address>`. The conn is closed when the handler
 * ends, and a failure (reset by peer, broken pipe, a handler that throws) ends that
 * connection only.
 *
 * Accept failures that belong to one client (it reset before it was accepted) are skipped;
 * only the listener's closing ends the loop. The operation then waits for its open
 * connections to end and returns. Cancel its task to stop them at once.
 *
 * @param listener Where connections come from. The caller closes it.
 * @param handler What runs for each connection.
 * @param options Limits, handler options and logging hooks.
 * @throws {RangeError} When an option is out of range.
 *
 * @example The seed's server, with a hook that counts connections
 * ```ts
 * import { echoHandler, tcpServer } from "@genio/genio/server";
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
export function* tcpServer(
  listener: Deno.Listener,
  handler: Handler = echoHandler,
  options: TcpServerOptions = {},
): Operation<void> {
  const maxConnections = checkMaxConnections(options.maxConnections ?? DEFAULT_MAX_CONNECTIONS);
  const handlerOptions: HandlerOptions = {
    idleTimeout: checkIdleTimeout(options.idleTimeout ?? DEFAULT_IDLE_TIMEOUT_MS),
    bufferSize: checkBufferSize(options.bufferSize ?? DEFAULT_BUFFER_SIZE),
  };
  const onConnect = options.onConnect;
  const onDisconnect = options.onDisconnect ?? logDisconnect;
  const onAcceptError = options.onAcceptError ?? acceptErrorLog();

  let open = 0;
  let connectionEnded: PromiseWithResolvers<void> | null = null;
  const ended = (): void => {
    open--;
    connectionEnded?.resolve();
    connectionEnded = null;
  };
  const nextEnd = (): Promise<void> => (connectionEnded ??= Promise.withResolvers()).promise;

  let retryMs = ACCEPT_RETRY_MS;
  for (;;) {
    while (open >= maxConnections) yield* wait(nextEnd());
    let conn: Deno.Conn;
    try {
      conn = yield* accept(listener);
    } catch (error) {
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
    const remoteAddr = conn.remoteAddr as Deno.NetAddr;
    // The handler runs as the connection's task itself, not inside a wrapper that would
    // resume it through `yield*` on every message: its end is seen by `onSettled`.
    const disconnected = (_task: unknown, error: unknown): void => {
      closeQuietly(conn);
      ended();
      onDisconnect(remoteAddr, error);
    };
    try {
      onConnect?.(remoteAddr);
      yield* spawn(handler(conn, handlerOptions), {
        name: `conn ${formatAddress(remoteAddr)}`,
        onSettled: disconnected,
      });
    } catch (error) {
      // onConnect threw, or the handler did not give a generator: this connection only.
      if (error instanceof Cancelled) throw error;
      disconnected(null, error);
    }
  }
  while (open > 0) yield* wait(nextEnd());
}

/**
 * Listens on `hostname:port` and runs {@linkcode tcpServer} with the handler on a new
 * {@linkcode Scheduler}, until {@linkcode Server.shutdown} or `signal` stops it.
 *
 * @param options Where to listen, the handler and its limits, and the shutdown grace.
 * @returns The running server.
 * @throws {Deno.errors.AddrInUse} When the address is taken.
 * @throws {Deno.errors.NotCapable} Without net permission for the address.
 * @throws {RangeError} When an option is out of range.
 *
 * @example Serving, talking to it, and shutting down
 * ```ts
 * import { serve } from "@genio/genio/server";
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
 * import { serve } from "@genio/genio/server";
 *
 * const controller = new AbortController();
 * const server = serve({ port: 0, signal: controller.signal, grace: 0, onListen() {} });
 * controller.abort();
 * await server.finished;
 * ```
 */
export function serve(options: ServeOptions = {}): Server {
  const hostname = options.hostname ?? DEFAULT_HOSTNAME;
  const port = options.port ?? DEFAULT_PORT;
  if (!(Number.isInteger(port) && port >= 0 && port <= 65535)) {
    throw new RangeError(`Cannot serve: port must be an integer from 0 to 65535, got "${port}"`);
  }
  const grace = options.grace ?? DEFAULT_GRACE_MS;
  if (!(grace >= 0)) {
    throw new RangeError(
      `Cannot serve: grace must be a number of milliseconds >= 0, got "${grace}"`,
    );
  }
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
  const serverOptions: TcpServerOptions = {
    ...options,
    onConnect(remoteAddr) {
      open++;
      options.onConnect?.(remoteAddr);
    },
    onDisconnect(remoteAddr, error) {
      open--;
      if (stopping) error instanceof Cancelled ? cancelled++ : drained++;
      onDisconnect(remoteAddr, error);
    },
  };
  const handler = options.handler ?? echoHandler;

  const listener = Deno.listen({ hostname, port, transport: "tcp" });
  const addr = listener.addr;
  const scheduler = new Scheduler();
  let task: Task<void>;
  try {
    task = scheduler.spawn(tcpServer(listener, handler, serverOptions), { name: "tcp-server" });
    onListen(addr);
  } catch (error) {
    listener.close();
    throw error;
  }

  let stopped = false;
  const outcome = task.result.catch((error) => {
    if (!(error instanceof Cancelled)) throw error;
  });
  const finished = scheduler.run().then(() => outcome).finally(() => {
    stopped = true;
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

  return {
    addr,
    scheduler,
    get connections() {
      return open;
    },
    finished,
    shutdown,
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

function checkMaxConnections(maxConnections: number): number {
  if (!(Number.isInteger(maxConnections) && maxConnections >= 1) && maxConnections !== Infinity) {
    throw new RangeError(
      `Cannot serve: maxConnections must be a positive integer, got "${maxConnections}"`,
    );
  }
  return maxConnections;
}

function checkBufferSize(bufferSize: number): number {
  if (!(Number.isInteger(bufferSize) && bufferSize >= 1 && bufferSize <= MAX_BUFFER_SIZE)) {
    throw new RangeError(
      `Cannot serve: bufferSize must be an integer from 1 to ${MAX_BUFFER_SIZE}, got "${bufferSize}"`,
    );
  }
  return bufferSize;
}

function checkIdleTimeout(idleTimeout: number): number {
  if (!(idleTimeout >= 0)) {
    throw new RangeError(
      `Cannot serve: idleTimeout must be a number of milliseconds >= 0, got "${idleTimeout}"`,
    );
  }
  return idleTimeout;
}

function listenerClosed(error: unknown): boolean {
  return error instanceof Deno.errors.BadResource || error instanceof Deno.errors.Interrupted;
}

function failedBeforeAccept(error: unknown): boolean {
  return error instanceof Deno.errors.NotConnected ||
    error instanceof Deno.errors.ConnectionReset ||
    error instanceof Deno.errors.ConnectionAborted;
}

function formatAddress(addr: Deno.NetAddr): string {
  return addr.hostname.includes(":")
    ? `[${addr.hostname}]:${addr.port}`
    : `${addr.hostname}:${addr.port}`;
}

function describe(error: unknown): string {
  const text = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
  return text.split("\n", 1)[0];
}

function logListening(addr: Deno.NetAddr): void {
  console.log(`Listening on ${formatAddress(addr)}`);
}

function logDisconnect(remoteAddr: Deno.NetAddr, error: unknown): void {
  if (error === undefined || error instanceof Cancelled) return;
  console.error(`Connection ${formatAddress(remoteAddr)} failed: ${describe(error)}`);
}

// A server out of file descriptors fails every accept for as long as that lasts: one line
// says so, and the same line again only once a minute, with how often it was left out.
function acceptErrorLog(): (error: unknown) => void {
  let last = "";
  let printedAt = -Infinity;
  let leftOut = 0;
  return (error) => {
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

// --- the command line ------------------------------------------------------------------

const VERSION: string = denoJson.version;

const HELP =
  `genio echo server ${VERSION}: answers every chunk a client sends with "GOT:" and that chunk.

Usage: deno run --allow-net server.ts [options]

Options:
  -p, --port <port>          Port to listen on; 0 picks a free one (default 25000)
      --hostname <address>   Address to listen on (default 127.0.0.1); 0.0.0.0 or ::
                             exposes the server to the network
      --max-connections <n>  Connections open at once; more wait in the kernel's backlog
                             until one ends (default 10000)
      --idle-timeout <s>     Close a connection whose read or write waited this long;
                             0 disables (default 300)
      --grace <s>            On SIGINT/SIGTERM, time open connections get to finish
                             before they are closed (default 5)
      --buffer-size <bytes>  Largest chunk read and answered at once (default 16384)
  -q, --quiet                Do not print a line per connection opened and closed
  -h, --help                 Print this help and exit
  -V, --version              Print the version and exit

Output: "Listening on HOST:PORT" first, then "Connection from ADDR" and
"Connection closed ADDR" on stdout; failures, one line each, on stderr.

Exit status: 0 after a shutdown by SIGINT/SIGTERM, 1 when the server cannot listen or fails,
2 for a bad command line, 130 (SIGINT) or 143 (SIGTERM) when a second signal cuts the
shutdown short.`;

class UsageError extends Error {}

interface CommandLine {
  help: boolean;
  version: boolean;
  quiet: boolean;
  hostname: string;
  port: number;
  maxConnections: number;
  idleTimeout: number;
  grace: number;
  bufferSize: number;
}

const VALUE_FLAGS: readonly string[] = [
  "--port",
  "-p",
  "--hostname",
  "--max-connections",
  "--idle-timeout",
  "--grace",
  "--buffer-size",
];

function parseCommandLine(args: readonly string[]): CommandLine {
  // parseArgs refuses "--grace -1" as ambiguous; read it as "--grace=-1" and say what is wrong.
  const joined: string[] = [];
  for (let i = 0; i < args.length; i++) {
    if (VALUE_FLAGS.includes(args[i]) && /^-[\d.]/.test(args[i + 1] ?? "")) {
      joined.push(`${args[i]}=${args[++i]}`);
    } else {
      joined.push(args[i]);
    }
  }
  let values;
  try {
    ({ values } = parseArgs({
      args: joined,
      strict: true,
      allowPositionals: false,
      options: {
        port: { type: "string", short: "p" },
        hostname: { type: "string" },
        "max-connections": { type: "string" },
        "idle-timeout": { type: "string" },
        grace: { type: "string" },
        "buffer-size": { type: "string" },
        quiet: { type: "boolean", short: "q" },
        help: { type: "boolean", short: "h" },
        version: { type: "boolean", short: "V" },
      },
    }));
  } catch (error) {
    const message = (error as Error).message.split(/\.?\n|\. /, 1)[0];
    throw new UsageError(message.charAt(0).toLowerCase() + message.slice(1));
  }
  const hostname = values.hostname ?? DEFAULT_HOSTNAME;
  if (hostname === "") throw new UsageError(`--hostname must not be empty`);
  return {
    help: values.help ?? false,
    version: values.version ?? false,
    quiet: values.quiet ?? false,
    hostname,
    port: integerFlag("--port", values.port, DEFAULT_PORT, 0, 65535),
    maxConnections: integerFlag(
      "--max-connections",
      values["max-connections"],
      DEFAULT_MAX_CONNECTIONS,
      1,
      Number.MAX_SAFE_INTEGER,
    ),
    idleTimeout: secondsFlag("--idle-timeout", values["idle-timeout"], DEFAULT_IDLE_TIMEOUT_MS),
    grace: secondsFlag("--grace", values.grace, DEFAULT_GRACE_MS),
    bufferSize: integerFlag(
      "--buffer-size",
      values["buffer-size"],
      DEFAULT_BUFFER_SIZE,
      1,
      MAX_BUFFER_SIZE,
    ),
  };
}

function integerFlag(
  flag: string,
  text: string | undefined,
  fallback: number,
  min: number,
  max: number,
): number {
  if (text === undefined) return fallback;
  const value = Number(text);
  if (!/^\d+$/.test(text) || value < min || value > max) {
    const range = max === Number.MAX_SAFE_INTEGER ? `>= ${min}` : `from ${min} to ${max}`;
    throw new UsageError(`${flag} must be an integer ${range}, got "${text}"`);
  }
  return value;
}

// Seconds on the command line, milliseconds in the library. The cap keeps timers in range.
function secondsFlag(flag: string, text: string | undefined, fallbackMs: number): number {
  if (text === undefined) return fallbackMs;
  const seconds = Number(text);
  if (!/^(\d+\.?\d*|\.\d+)$/.test(text) || seconds > 2_000_000) {
    throw new UsageError(`${flag} must be a number of seconds from 0 to 2000000, got "${text}"`);
  }
  return Math.round(seconds * 1000);
}

function whyNotListening(error: unknown): string {
  if (error instanceof Deno.errors.AddrInUse) return "address already in use";
  if (error instanceof Deno.errors.NotCapable) return "no net permission (run with --allow-net)";
  if (error instanceof Deno.errors.PermissionDenied) return "permission denied";
  if (error instanceof Deno.errors.AddrNotAvailable) return "address not available here";
  return error instanceof Error ? error.message.split("\n", 1)[0] : String(error);
}

function plural(n: number, noun: string): string {
  return `${n} ${noun}${n === 1 ? "" : "s"}`;
}

async function main(args: readonly string[]): Promise<number> {
  let options: CommandLine;
  try {
    options = parseCommandLine(args);
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    console.error(`error: ${error.message} (see --help)`);
    return 2;
  }
  if (options.help) {
    console.log(HELP);
    return 0;
  }
  if (options.version) {
    console.log(`genio ${VERSION}`);
    return 0;
  }

  // Listen for signals before the listener exists, so that none can arrive unhandled
  // between the "Listening on" line and the first shutdown.
  let server: Server | undefined;
  let stopping: Promise<ShutdownResult> | undefined;
  const signals: Deno.Signal[] = Deno.build.os === "windows" ? ["SIGINT"] : ["SIGINT", "SIGTERM"];
  const listeners = signals.map((signal) => {
    const listener = () => {
      if (stopping !== undefined) Deno.exit(signal === "SIGINT" ? 130 : 143);
      stopping = server?.shutdown();
      stopping?.catch(() => {}); // a failure reaches `finished`, reported below
    };
    Deno.addSignalListener(signal, listener);
    return () => Deno.removeSignalListener(signal, listener);
  });
  try {
    server = startServer(options);
    if (server === undefined) return 1;
    await server.finished;
    if (stopping !== undefined) {
      const { drained, cancelled } = await stopping;
      console.log(`Shut down: ${plural(drained, "connection")} drained, ${cancelled} cancelled`);
    }
    return 0;
  } catch (error) {
    console.error(`error: The server failed: ${describe(error)}`);
    return 1;
  } finally {
    for (const removeListener of listeners) removeListener();
  }
}

function startServer(options: CommandLine): Server | undefined {
  const { quiet, idleTimeout } = options;
  try {
    return serve({
      ...options,
      onListen: logListening,
      onConnect: quiet ? undefined : (remoteAddr) => {
        console.log(`Connection from ${formatAddress(remoteAddr)}`);
      },
      onDisconnect(remoteAddr, error) {
        const peer = formatAddress(remoteAddr);
        if (error instanceof TimeoutError) {
          console.error(`Connection ${peer} timed out after ${idleTimeout / 1000} s idle`);
        } else if (error !== undefined && !(error instanceof Cancelled)) {
          console.error(`Connection ${peer} failed: ${describe(error)}`);
        }
        if (!quiet) console.log(`Connection closed ${peer}`);
      },
    });
  } catch (error) {
    const { hostname, port } = options;
    const address = formatAddress({ transport: "tcp", hostname, port });
    console.error(`error: Cannot listen on ${address}: ${whyNotListening(error)}`);
    return undefined;
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
