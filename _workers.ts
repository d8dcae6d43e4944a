// `server.ts --workers N`: N copies of the server, each a scheduler in a Web Worker of its
// own with its own listener on the same address and port (SO_REUSEPORT: Linux spreads new
// connections over the listeners). The main thread only starts, watches and stops them.
//
// Web Workers rather than processes: one PID for operators and service managers to signal
// and watch, no `--allow-run`, a worker ready in milliseconds, memory shared by one runtime,
// and a worker's death seen by the main thread as a message carrying its reason. What it
// costs: `--allow-read` for the worker's module, and a crash that takes the whole process
// (a V8 out-of-memory) takes every worker with it, where processes would lose one.
//
// The worker runs server.ts itself: `serveInWorker` waits for its options, then starts the
// server with server.ts's own `startServer`, so every flag means the same in a worker.
//
// Test hook: with `--allow-env` and GENIO_TEST_CRASH=WORD in the environment, a worker
// whose connection sends exactly WORD as its first chunk throws an uncaught error, outside
// any task, as a bug in the runtime would: tests/workers_test.ts uses it to kill one worker.
import { describe, formatAddress } from "./_format.ts";
import { echoHandler } from "./echo.ts";
import { read, write } from "./intents.ts";
import type { Handler, ServeOptions, Server, ShutdownResult } from "./tcp_server.ts";

const RESTART_MS = 100;
const RESTART_MAX_MS = 5_000;
// A worker that ran this long before dying is restarted after the shortest pause again.
const STABLE_MS = 30_000;
// How long after the grace period a worker may take to report that it stopped.
const STOP_MARGIN_MS = 5_000;
const MAX_WORKERS = 1024;

/** What server.ts's main thread needs of the options it passes to each worker. */
export interface WorkerOptions {
  hostname: string;
  port: number;
  grace: number;
  monitor: number | undefined;
  metrics: number | undefined;
}

/** The workers, as server.ts's main thread holds them: to shut them all down. */
export interface Workers {
  readonly workers: number;
  readonly finished: Promise<void>;
  shutdown(): Promise<ShutdownResult>;
}

type ToWorker<T> =
  | { type: "start"; index: number; options: T; port: number }
  | { type: "consoles"; note: string }
  | { type: "shutdown" };

type FromWorker =
  | { type: "listening"; addr: Deno.NetAddr }
  | { type: "failed" }
  | { type: "consoles"; started: boolean }
  | { type: "stopped"; drained: number; cancelled: number; served: number }
  | { type: "died"; reason: string; served: number };

/** Whether this code runs in a Web Worker rather than on the main thread. */
export function inWorker(): boolean {
  return "WorkerGlobalScope" in globalThis;
}

/**
 * Parses `--workers`: an integer from 1 to 1024, or `auto` for the number of CPUs. Returns
 * what is wrong with it instead, for a usage line.
 */
export function parseWorkers(text: string | undefined): number | string {
  if (text === undefined) return 1;
  const count = text === "auto" ? navigator.hardwareConcurrency : Number(text);
  if (!/^(\d+|auto)$/.test(text) || count < 1 || count > MAX_WORKERS) {
    return `--workers must be an integer from 1 to ${MAX_WORKERS} or "auto", got "${text}"`;
  }
  if (count > 1 && Deno.build.os !== "linux") {
    return `--workers above 1 needs Linux (SO_REUSEPORT), not ${Deno.build.os}`;
  }
  return count;
}

/**
 * Runs on the main thread: starts `count` workers running `module` (server.ts) with
 * `options`, the first on `options.port` and the others on the port it got, then prints
 * `Listening on HOST:PORT`, then has worker 1 start the monitor and the metrics page if
 * asked: theirs are worker 1's figures, and their lines say so. Returns a handle to shut
 * them all down, or undefined once one line has said why they could not start.
 */
export async function startWorkers<T extends WorkerOptions>(
  module: URL,
  count: number,
  options: T,
): Promise<Workers | undefined> {
  const missing = missingForWorkers(module);
  if (missing !== null) {
    console.error(
      `error: Cannot start ${count} workers without ${missing}: deno run --allow-net ` +
        `--allow-read --unstable-net server.ts --workers ${count}`,
    );
    return undefined;
  }
  const { hostname, port } = options;
  // Listeners with SO_REUSEPORT share a port with any other such listener of the same user,
  // a second copy of this server included: a plain listen first finds the port taken.
  if (port !== 0 && portTaken(hostname, port)) {
    const address = formatAddress({ transport: "tcp", hostname, port });
    console.error(`error: Cannot listen on ${address}: address already in use`);
    return undefined;
  }
  const workers = Array.from({ length: count }, (_, i) => new ServerWorker(module, i + 1, options));
  const first = await workers[0].start(port);
  const rest = first === null ? [] : await Promise.all(
    workers.slice(1).map((worker) => worker.start(first.port)),
  );
  if (first === null || rest.includes(null)) {
    for (const worker of workers) worker.terminate();
    return undefined;
  }
  console.log(`Listening on ${formatAddress(first)}`);
  let stopping: Promise<ShutdownResult> | null = null;
  const stopped = Promise.withResolvers<void>();
  const group: Workers = {
    workers: count,
    finished: stopped.promise,
    shutdown() {
      stopping ??= Promise.all(workers.map((worker) => worker.stop())).then((results) => {
        for (const worker of workers) console.log(worker.summary());
        stopped.resolve();
        return {
          drained: results.reduce((sum, result) => sum + result.drained, 0),
          cancelled: results.reduce((sum, result) => sum + result.cancelled, 0),
        };
      });
      return stopping;
    },
  };
  if (options.monitor === undefined && options.metrics === undefined) return group;
  if (await workers[0].startConsoles(` (worker 1 of ${count})`)) return group;
  await group.shutdown();
  return undefined;
}

function missingForWorkers(module: URL): string | null {
  const missing: string[] = [];
  // Deno exits with status 70 on `reusePort` without `--unstable-net`; an API that exists
  // only under that flag tells beforehand.
  if (!("listenDatagram" in Deno)) missing.push("--unstable-net (for SO_REUSEPORT)");
  if (
    module.protocol === "file:" &&
    Deno.permissions.querySync({ name: "read", path: module }).state !== "granted"
  ) {
    missing.push(`--allow-read (to load the workers' module, ${module.pathname})`);
  }
  return missing.length === 0 ? null : missing.join(" and ");
}

function portTaken(hostname: string, port: number): boolean {
  try {
    Deno.listen({ hostname, port }).close();
    return false;
  } catch (error) {
    return error instanceof Deno.errors.AddrInUse;
  }
}

// One worker as the main thread sees it, through the incarnations its restarts make. What it
// does with a worker's message depends on the phase: starting, running, stopping.
class ServerWorker {
  #module: URL;
  #index: number;
  #options: WorkerOptions;
  #port = 0;
  #worker: Worker | null = null;
  #onMessage: (message: FromWorker) => void = () => {};
  #startedAt = 0;
  #pause = RESTART_MS;
  #restartTimer: ReturnType<typeof setTimeout> | undefined;
  #restarts = 0;
  #served = 0; // by the incarnations that have ended
  #stopped: PromiseWithResolvers<ShutdownResult> | null = null;
  #result: ShutdownResult = { drained: 0, cancelled: 0 };
  #consoles: string | null = null; // their note, once asked for: a restart starts them again

  constructor(module: URL, index: number, options: WorkerOptions) {
    this.#module = module;
    this.#index = index;
    this.#options = options;
  }

  // Starts the worker on `port`; resolves with its address once it listens, or with null
  // once it has said why it cannot (its own line) or has died (a line here).
  start(port: number): Promise<Deno.NetAddr | null> {
    this.#port = port;
    const { promise, resolve } = Promise.withResolvers<Deno.NetAddr | null>();
    this.#spawn((message) => {
      if (message.type === "listening") {
        this.#port = message.addr.port; // where a restart listens: the port 0 picked
        this.#onMessage = this.#running;
        return resolve(message.addr);
      }
      if (message.type === "died") {
        console.error(`error: Worker ${this.#index} died as it started: ${message.reason}`);
      }
      resolve(null);
    });
    return promise;
  }

  #spawn(onMessage: (message: FromWorker) => void): void {
    const worker = new Worker(this.#module, { type: "module", name: `genio ${this.#index}` });
    this.#worker = worker;
    this.#startedAt = performance.now();
    this.#onMessage = onMessage;
    worker.onmessage = (event: MessageEvent<FromWorker>) => this.#onMessage(event.data);
    // What the worker could not catch itself, such as its module failing to load.
    worker.onerror = (event) => {
      event.preventDefault();
      this.#onMessage({ type: "died", reason: event.message, served: 0 });
    };
    this.#post({ type: "start", index: this.#index, options: this.#options, port: this.#port });
  }

  #post(message: ToWorker<WorkerOptions>): void {
    this.#worker?.postMessage(message);
  }

  // Has the worker start the monitor and the metrics page; resolves with whether it could.
  startConsoles(note: string): Promise<boolean> {
    this.#consoles = note;
    const { promise, resolve } = Promise.withResolvers<boolean>();
    const running = this.#onMessage;
    this.#onMessage = (message) => {
      if (message.type !== "consoles") return running(message);
      this.#onMessage = running;
      resolve(message.started);
    };
    this.#post({ type: "consoles", note });
    return promise;
  }

  // A worker that dies once started is restarted after a pause that doubles while it keeps
  // dying, with one line each time.
  #running = (message: FromWorker): void => {
    if (message.type !== "died" && message.type !== "failed") return;
    const ranMs = performance.now() - this.#startedAt;
    this.terminate();
    if (message.type === "died") this.#served += message.served;
    if (ranMs >= STABLE_MS) this.#pause = RESTART_MS;
    const why = message.type === "died" ? `died: ${message.reason}` : "could not start again";
    console.error(`Worker ${this.#index} ${why}; restarting it in ${this.#pause / 1000} s`);
    this.#restartTimer = setTimeout(() => {
      this.#restarts++;
      this.#spawn((message) => {
        if (message.type !== "listening") return this.#running(message);
        this.#onMessage = this.#running;
        // Its own line says why, if they cannot listen again.
        if (this.#consoles !== null) this.#post({ type: "consoles", note: this.#consoles });
      });
    }, this.#pause);
    this.#pause = Math.min(this.#pause * 2, RESTART_MAX_MS);
  };

  // Tells the worker to shut down gracefully; resolves with what it drained and cancelled.
  stop(): Promise<ShutdownResult> {
    if (this.#stopped !== null) return this.#stopped.promise;
    const stopped = this.#stopped = Promise.withResolvers();
    clearTimeout(this.#restartTimer);
    if (this.#worker === null) {
      stopped.resolve(this.#result);
      return stopped.promise;
    }
    const limit = setTimeout(() => {
      console.error(`Worker ${this.#index} did not stop in time; ended it`);
      this.terminate();
      stopped.resolve(this.#result);
    }, this.#options.grace + STOP_MARGIN_MS);
    this.#onMessage = (message) => {
      if (message.type === "listening") return;
      clearTimeout(limit);
      this.terminate();
      if (message.type === "stopped") {
        this.#served += message.served;
        this.#result = { drained: message.drained, cancelled: message.cancelled };
      } else if (message.type === "died") {
        this.#served += message.served;
        console.error(`Worker ${this.#index} died as it stopped: ${message.reason}`);
      }
      stopped.resolve(this.#result);
    };
    this.#post({ type: "shutdown" });
    return stopped.promise;
  }

  terminate(): void {
    this.#worker?.terminate();
    this.#worker = null;
  }

  summary(): string {
    const { drained, cancelled } = this.#result;
    const restarted = this.#restarts === 0 ? "" : ` (restarted ${plural(this.#restarts, "time")})`;
    return `Worker ${this.#index}: served ${plural(this.#served, "connection")}, ` +
      `${drained} drained, ${cancelled} cancelled${restarted}`;
  }
}

function plural(n: number, noun: string): string {
  return `${n} ${noun}${n === 1 ? "" : "s"}`;
}

/**
 * Runs in a worker: starts the server with `start` (server.ts's `startServer`) when the main
 * thread says so, on the port it gives and with SO_REUSEPORT, and shuts it down when told,
 * reporting each step. An error that escapes everything is reported as the worker's death,
 * in one line, instead of a stack trace.
 */
export function serveInWorker<T>(
  start: (options: T, extra: ServeOptions) => Server<Deno.Addr> | undefined,
  consoles: (server: Server<Deno.Addr>, options: T, note: string) => Promise<void> | undefined,
): void {
  const scope = globalThis as unknown as {
    postMessage(message: FromWorker): void;
    addEventListener(type: "message", listener: (event: MessageEvent<ToWorker<T>>) => void): void;
  };
  let server: Server<Deno.Addr> | undefined;
  let options: T;
  let served = 0;
  let stopping = false;
  let dead = false;
  const die = (error: unknown): void => {
    if (dead) return;
    dead = true;
    scope.postMessage({ type: "died", reason: describe(error), served });
    // Close the listener now, not when the main thread ends this worker: connections that
    // reach a listener nobody accepts on are lost when it closes.
    try {
      server?.shutdown().catch(() => {});
    } catch {
      // Broken beyond that: the main thread ends the worker anyway.
    }
  };
  globalThis.addEventListener("error", (event) => {
    event.preventDefault();
    die(event.error ?? event.message);
  });
  globalThis.addEventListener("unhandledrejection", (event) => {
    event.preventDefault();
    die(event.reason);
  });
  scope.addEventListener("message", ({ data: message }) => {
    if (message.type === "start") {
      options = message.options;
      server = start(options, {
        port: message.port,
        reusePort: true,
        onListen: (addr) => scope.postMessage({ type: "listening", addr }),
        onConnect: () => served++,
        handler: crashHandler(),
      });
      if (server === undefined) return scope.postMessage({ type: "failed" });
      server.finished.then(() => {
        if (!stopping) die(new Error("Cannot serve: the server stopped by itself"));
      }, die);
    } else if (message.type === "consoles") {
      const started = server !== undefined && consoles(server, options, message.note);
      scope.postMessage({ type: "consoles", started: Boolean(started) });
    } else {
      stopping = true;
      server?.shutdown().then((result) => {
        scope.postMessage({ type: "stopped", ...result, served });
      }, die);
    }
  });
}

const CRASH_VARIABLE = "GENIO_TEST_CRASH";

// The test hook described at the top: echoHandler, unless the first chunk is the word.
function crashHandler(): Handler | undefined {
  const permission = Deno.permissions.querySync({ name: "env", variable: CRASH_VARIABLE });
  const word = permission.state === "granted" ? Deno.env.get(CRASH_VARIABLE) : undefined;
  if (!word) return undefined;
  return function* (conn, options) {
    const chunk = new Uint8Array(options.bufferSize ?? 1024);
    const n = yield* read(conn, chunk);
    if (n === null) return;
    if (new TextDecoder().decode(chunk.subarray(0, n)) === word) {
      setTimeout(() => {
        throw new Error(`Crashed on purpose: a client sent ${CRASH_VARIABLE}`);
      });
      return;
    }
    yield* write(
      conn,
      new Uint8Array([...new TextEncoder().encode("GOT:"), ...chunk.subarray(0, n)]),
    );
    yield* echoHandler(conn, options);
  };
}
