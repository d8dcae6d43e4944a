/**
 * The echo server as a command: `deno run --allow-net server.ts` listens on
 * 127.0.0.1:25000 and answers every chunk a client sends with `GOT:` followed by that chunk,
 * as the classic Python generator echo server (generator tasks driven by a `select()` loop)
 * does. It prints `Listening on 127.0.0.1:25000`, then one line per connection opened and
 * closed. `--cert` and `--key` serve TLS; `--unix` listens on a Unix socket. SIGINT or
 * SIGTERM stops it gracefully; `--help` lists every flag.
 *
 * As a library this entry point re-exports {@linkcode serve}, {@linkcode tcpServer} and
 * their types from `@genio/genio/tcp-server`, and {@linkcode echoHandler} from
 * `@genio/genio/echo`.
 *
 * @example An accept loop and the echo handler on one scheduler
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
import { integerFlag, parseFlags, UsageError } from "./_flags.ts";
import { describe, formatAddress } from "./_format.ts";
import { inWorker, parseWorkers, serveInWorker, startWorkers, type Workers } from "./_workers.ts";
import {
  DEFAULT_BUFFER_SIZE,
  DEFAULT_GRACE_MS,
  DEFAULT_HOSTNAME,
  DEFAULT_IDLE_TIMEOUT_MS,
  DEFAULT_MAX_CONNECTIONS,
  DEFAULT_PORT,
  MAX_BUFFER_SIZE,
} from "./_server_options.ts";
import denoJson from "./deno.json" with { type: "json" };
import { Cancelled, TimeoutError } from "./errors.ts";
import { serveMetrics } from "./metrics.ts";
import { serveMonitor } from "./monitor.ts";
import { serve, type ServeOptions, type Server, type ShutdownResult } from "./tcp_server.ts";

export * from "./echo.ts";
export * from "./tcp_server.ts";

const VERSION: string = denoJson.version;

const HELP =
  `genio echo server ${VERSION}: answers every chunk a client sends with "GOT:" and that chunk.

Usage: deno run --allow-net server.ts [options]

Options:
  -p, --port <port>          Port to listen on; 0 picks a free one (default ${DEFAULT_PORT})
      --hostname <address>   Address to listen on (default ${DEFAULT_HOSTNAME}); 0.0.0.0 or ::
                             exposes the server to the network
      --max-connections <n>  Connections open at once; more wait in the kernel's backlog
                             until one ends (default ${DEFAULT_MAX_CONNECTIONS})
      --idle-timeout <s>     Close a connection whose read or write waited this long;
                             0 disables (default ${DEFAULT_IDLE_TIMEOUT_MS / 1000})
      --grace <s>            On SIGINT/SIGTERM, time open connections get to finish
                             before they are closed (default ${DEFAULT_GRACE_MS / 1000})
      --buffer-size <bytes>  Largest chunk read and answered at once (default ${DEFAULT_BUFFER_SIZE})
      --cert <file>          Serve TLS with this PEM certificate chain; needs --key and
                             --allow-read
      --key <file>           The PEM private key of --cert
      --unix <path>          Listen on this Unix socket instead of TCP, replacing a stale
                             socket file; needs --allow-read --allow-write
      --workers <n|auto>     Schedulers, one per Web Worker, each listening on the address
                             (SO_REUSEPORT, Linux); auto: one per CPU (default 1). Above 1
                             needs deno run --allow-read --unstable-net; limits are per worker
      --proxy-protocol       Every connection begins with a PROXY protocol header (v1 or v2,
                             as HAProxy's send-proxy writes it) naming the client: only
                             behind a trusted load balancer; not with --cert or --unix
  -q, --quiet                Do not print a line per connection opened and closed
      --monitor <port>       Serve a console (ps, where, stats, cancel) on 127.0.0.1:<port>
                             for nc; 0 picks a free port (default off)
      --metrics <port>       Serve Prometheus metrics at http://127.0.0.1:<port>/metrics
                             (default off)
      --metrics-hostname <address>
                             Address for --metrics instead of 127.0.0.1
                             (with --workers, --monitor and --metrics show worker 1 only)
  -h, --help                 Print this help and exit
  -V, --version              Print the version and exit

Output: "Listening on HOST:PORT" (or unix:PATH) first ("Monitor on HOST:PORT" and
"Metrics on URL" next with --monitor and --metrics), then "Connection from ADDR" and
"Connection closed ADDR" on stdout; failures, one line each, on stderr.

Exit status: 0 after a shutdown by SIGINT/SIGTERM, 1 when the server cannot listen or fails,
2 for a bad command line, 130 (SIGINT) or 143 (SIGTERM) when a second signal cuts the
shutdown short.`;

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
  cert: string | null;
  key: string | null;
  unix: string | null;
  monitor: number | undefined;
  metrics: number | undefined;
  metricsHostname: string;
  workers: number;
  proxyProtocol: boolean;
}

function parseCommandLine(args: readonly string[]): CommandLine {
  const values = parseFlags(args, {
    port: { type: "string", short: "p" },
    hostname: { type: "string" },
    "max-connections": { type: "string" },
    "idle-timeout": { type: "string" },
    grace: { type: "string" },
    "buffer-size": { type: "string" },
    cert: { type: "string" },
    key: { type: "string" },
    unix: { type: "string" },
    monitor: { type: "string" },
    metrics: { type: "string" },
    "metrics-hostname": { type: "string" },
    workers: { type: "string" },
    "proxy-protocol": { type: "boolean" },
    quiet: { type: "boolean", short: "q" },
    help: { type: "boolean", short: "h" },
    version: { type: "boolean", short: "V" },
  });
  const hostname = values.hostname ?? DEFAULT_HOSTNAME;
  if (hostname === "") throw new UsageError(`--hostname must not be empty`);
  const { cert = null, key = null, unix = null } = values;
  for (const [flag, value] of [["--cert", cert], ["--key", key], ["--unix", unix]]) {
    if (value === "") throw new UsageError(`${flag} must not be empty`);
  }
  if ((cert === null) !== (key === null)) {
    throw new UsageError(cert === null ? "--key needs --cert" : "--cert needs --key");
  }
  if (unix !== null) {
    const tcpFlag = [
      ["--port", values.port],
      ["--hostname", values.hostname],
      ["--cert", cert],
    ].find(([, value]) => value != null)?.[0];
    if (tcpFlag !== undefined) throw new UsageError(`--unix cannot be used with ${tcpFlag}`);
  }
  const metricsHostname = values["metrics-hostname"];
  if (metricsHostname !== undefined && values.metrics === undefined) {
    throw new UsageError(`--metrics-hostname needs --metrics`);
  }
  if (metricsHostname === "") throw new UsageError(`--metrics-hostname must not be empty`);
  const workers = parseWorkers(values.workers);
  if (typeof workers === "string") throw new UsageError(workers);
  if (workers > 1 && unix !== null) throw new UsageError(`--unix cannot be used with --workers`);
  const proxyProtocol = values["proxy-protocol"] ?? false;
  const notBehindProxy = unix !== null ? "--unix" : cert !== null ? "--cert" : null;
  if (proxyProtocol && notBehindProxy !== null) {
    throw new UsageError(`--proxy-protocol cannot be used with ${notBehindProxy}`);
  }
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
    cert,
    key,
    unix,
    monitor: optionalPort("--monitor", values.monitor),
    metrics: optionalPort("--metrics", values.metrics),
    metricsHostname: metricsHostname ?? DEFAULT_HOSTNAME,
    workers,
    proxyProtocol,
  };
}

function optionalPort(flag: string, text: string | undefined): number | undefined {
  return text === undefined ? undefined : integerFlag(flag, text, 0, 0, 65535);
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

// Why listening or reading a file failed, for an operator: Deno's error, said shortly.
function why(error: unknown): string {
  if (error instanceof Deno.errors.AddrInUse) return "address already in use";
  if (error instanceof Deno.errors.NotCapable) {
    const [, access = "net", flag = "--allow-net"] =
      error.message.match(/Requires (\w+) access.*(--allow-[\w-]+)/) ?? [];
    return `no ${access} permission (run with ${flag})`;
  }
  if (error instanceof Deno.errors.PermissionDenied) return "permission denied";
  if (error instanceof Deno.errors.AddrNotAvailable) return "address not available here";
  if (error instanceof Deno.errors.NotFound) return "no such file";
  if (error instanceof Deno.errors.IsADirectory) return "is a directory";
  return error instanceof Error ? error.message.split("\n", 1)[0] : String(error);
}

class StartError extends Error {}

function readFlagFile(flag: string, file: string): string {
  try {
    return Deno.readTextFileSync(file);
  } catch (error) {
    throw new StartError(`Cannot read ${flag} "${file}": ${why(error)}`);
  }
}

// A socket file whose server died is stale: nothing answers on it, so it can go. A live
// server's stays, and this one cannot listen there. A file that is not a socket is never
// removed: listening fails on it.
async function removeStaleSocket(path: string): Promise<void> {
  try {
    if (!Deno.lstatSync(path).isSocket) return;
    if (await answers(path)) throw new Deno.errors.AddrInUse();
    Deno.removeSync(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return; // nothing there, or gone meanwhile
    throw new StartError(`Cannot listen on unix:${path}: ${why(error)}`);
  }
}

async function answers(path: string): Promise<boolean> {
  try {
    (await Deno.connect({ path, transport: "unix" })).close();
    return true;
  } catch (error) {
    if (error instanceof Deno.errors.ConnectionRefused) return false;
    throw error;
  }
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

  let tls: { cert: string; key: string } | undefined;
  try {
    if (options.cert !== null && options.key !== null) {
      tls = { cert: readFlagFile("--cert", options.cert), key: readFlagFile("--key", options.key) };
    }
    if (options.unix !== null) await removeStaleSocket(options.unix);
  } catch (error) {
    if (!(error instanceof StartError)) throw error;
    console.error(`error: ${error.message}`);
    return 1;
  }

  // Listen for signals before the listener exists, so that none can arrive unhandled
  // between the "Listening on" line and the first shutdown.
  let server: Server<Deno.NetAddr> | Server<Deno.UnixAddr> | Workers | undefined;
  let stopping: Promise<ShutdownResult> | null | undefined;
  const signals: Deno.Signal[] = Deno.build.os === "windows" ? ["SIGINT"] : ["SIGINT", "SIGTERM"];
  const listeners = signals.map((signal) => {
    const listener = () => {
      if (stopping !== undefined) Deno.exit(signal === "SIGINT" ? 130 : 143);
      // null: it came while the workers were starting; they are shut down once they have.
      stopping = server?.shutdown() ?? null;
      stopping?.catch(() => {}); // a failure reaches `finished`, reported below
    };
    Deno.addSignalListener(signal, listener);
    return () => Deno.removeSignalListener(signal, listener);
  });
  try {
    server = options.workers > 1
      ? await startWorkers(new URL(import.meta.url), options.workers, { ...options, tls })
      : startServer(options, tls);
    if (server === undefined) return 1;
    if (stopping === null) stopping = server.shutdown();
    stopping?.catch(() => {});
    // The workers' consoles are worker 1's, started by startWorkers.
    const consoles = "workers" in server ? Promise.resolve() : startConsoles(server, options);
    if (consoles === undefined) {
      await server.shutdown();
      return 1;
    }
    await server.finished;
    await consoles;
    if (stopping) {
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

// `extra`, from a worker: its port, reusePort, and hooks that report to the main thread.
function startServer(
  options: CommandLine,
  tls: { cert: string; key: string } | undefined,
  extra: ServeOptions = {},
): Server<Deno.NetAddr> | Server<Deno.UnixAddr> | undefined {
  const { quiet, idleTimeout, hostname, unix, proxyProtocol } = options;
  const { maxConnections, grace, bufferSize } = options;
  const port = extra.port ?? options.port;
  const counted = extra.onConnect as ((remoteAddr: Deno.Addr) => void) | undefined;
  const common = {
    maxConnections,
    idleTimeout,
    grace,
    bufferSize,
    onConnect: quiet ? counted : (remoteAddr: Deno.Addr) => {
      counted?.(remoteAddr);
      console.log(`Connection from ${formatAddress(remoteAddr)}`);
    },
    onDisconnect(remoteAddr: Deno.Addr, error: unknown) {
      const peer = formatAddress(remoteAddr);
      if (error instanceof TimeoutError) {
        console.error(`Connection ${peer} timed out after ${idleTimeout / 1000} s idle`);
      } else if (error !== undefined && !(error instanceof Cancelled)) {
        console.error(`Connection ${peer} failed: ${describe(error)}`);
      }
      if (!quiet) console.log(`Connection closed ${peer}`);
    },
  };
  const address = unix !== null
    ? `unix:${unix}`
    : formatAddress({ transport: "tcp", hostname, port });
  try {
    // serve()'s own onListen prints the "Listening on HOST:PORT" line.
    return serve(
      unix !== null ? { ...common, path: unix } : {
        ...common,
        hostname,
        port,
        proxyProtocol,
        ...tls,
        ...extra,
        onConnect: common.onConnect,
      },
    );
  } catch (error) {
    if (tls !== undefined && !isListenError(error)) {
      const files = `--cert "${options.cert}" and --key "${options.key}"`;
      console.error(`error: Cannot serve TLS with ${files}: ${why(error)}`);
    } else {
      console.error(`error: Cannot listen on ${address}: ${why(error)}`);
    }
    return undefined;
  }
}

// Failures of the address or the permissions, as opposed to the TLS certificate and key.
function isListenError(error: unknown): boolean {
  return error instanceof Deno.errors.AddrInUse || error instanceof Deno.errors.NotCapable ||
    error instanceof Deno.errors.PermissionDenied ||
    error instanceof Deno.errors.AddrNotAvailable;
}

// The monitor and the metrics page, after "Listening on"; both end with the server. Resolves
// once they have, or is undefined when one could not listen. `note` ends their lines.
function startConsoles(
  server: Server<Deno.Addr>,
  options: CommandLine,
  note = "",
): Promise<void> | undefined {
  const { monitor, metrics, metricsHostname, idleTimeout } = options;
  // With a note, the lines are printed here; without, by the consoles themselves.
  const lineWithNote = (line: (addr: Deno.NetAddr) => string) =>
    note === "" ? {} : { onListen: (addr: Deno.NetAddr) => console.log(line(addr) + note) };
  if (monitor !== undefined) {
    const started = listenFor("--monitor", DEFAULT_HOSTNAME, monitor, () => {
      return serveMonitor(server, {
        port: monitor,
        idleTimeout,
        ...lineWithNote((addr) => `Monitor on ${formatAddress(addr)}`),
      });
    });
    if (started === undefined) return undefined;
  }
  if (metrics === undefined) return Promise.resolve();
  return listenFor("--metrics", metricsHostname, metrics, () => {
    return serveMetrics(server, {
      hostname: metricsHostname,
      port: metrics,
      ...lineWithNote((addr) => `Metrics on http://${formatAddress(addr)}/metrics`),
    });
  })?.finished;
}

function listenFor<T>(flag: string, hostname: string, port: number, start: () => T): T | undefined {
  try {
    return start();
  } catch (error) {
    const address = formatAddress({ transport: "tcp", hostname, port });
    console.error(`error: Cannot listen on ${address} for ${flag}: ${why(error)}`);
    return undefined;
  }
}

if (import.meta.main && inWorker()) {
  serveInWorker<CommandLine & { tls?: { cert: string; key: string } }>(
    (options, extra) => startServer(options, options.tls, extra),
    startConsoles,
  );
} else if (import.meta.main) Deno.exit(await main(Deno.args));
