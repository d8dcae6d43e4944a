/**
 * A Prometheus metrics page for a running {@linkcode Server}: {@linkcode serveMetrics}
 * serves `/metrics` with `Deno.serve`, and {@linkcode formatMetrics} writes
 * {@linkcode ServerStats} in the text exposition format, for a page of your own.
 *
 * | metric | type | what |
 * | --- | --- | --- |
 * | `genio_connections_open` | gauge | connections open now |
 * | `genio_connections_total` | counter | connections accepted |
 * | `genio_connections_refused_total` | counter | times the server reached max-connections and paused accepting |
 * | `genio_connection_errors_total{reason}` | counter | failed connections: `reset`, `timeout`, `tls`, `other` |
 * | `genio_bytes_received_total`, `genio_bytes_sent_total` | counter | bytes as they cross the sockets |
 * | `genio_tasks{state}` | gauge | live tasks by state |
 * | `genio_ready_queue_length` | gauge | the scheduler's ready queue |
 * | `genio_event_loop_lag_seconds` | histogram | how late a 100 ms timer fires |
 * | `process_resident_memory_bytes`, `process_start_time_seconds` | gauge | the process |
 * | `process_open_fds` | gauge | only under `--allow-all`, which reading `/proc/self/fd` takes |
 *
 * @example Scraping the page
 * ```ts
 * import { serve } from "@genio/genio/tcp-server";
 * import { serveMetrics } from "@genio/genio/metrics";
 * import assert from "node:assert/strict";
 *
 * const server = serve({ hostname: "127.0.0.1", port: 0, onListen() {} });
 * const metrics = serveMetrics(server, { port: 0, onListen() {} });
 *
 * const response = await fetch(`http://127.0.0.1:${metrics.addr.port}/metrics`);
 * const text = await response.text();
 * assert.match(text, /^# TYPE genio_connections_total counter$/m);
 * assert.match(text, /^genio_connections_total 0$/m);
 *
 * await server.shutdown();
 * await metrics.finished; // the page closes with the server
 * ```
 *
 * @module
 */
import { formatAddress } from "./_format.ts";
import { LIVE_STATES } from "./_server_stats.ts";
import type { Server, ServerStats } from "./tcp_server.ts";

/**
 * Options for {@linkcode serveMetrics}.
 *
 * @example
 * ```ts
 * import type { MetricsOptions } from "@genio/genio/metrics";
 *
 * const options: MetricsOptions = { hostname: "0.0.0.0", port: 9100 };
 * ```
 */
export interface MetricsOptions {
  /**
   * The address to listen on. Anything but loopback shows the figures to the network:
   * an explicit choice.
   *
   * @default {"127.0.0.1"}
   */
  hostname?: string;
  /**
   * The port to listen on; `0` picks a free one (read it from `addr`).
   *
   * @default {0}
   */
  port?: number;
  /**
   * Called once the page listens, with its address.
   *
   * @default {prints `Metrics on http://HOST:PORT/metrics`}
   */
  onListen?: (addr: Deno.NetAddr) => void;
}

const CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

/**
 * Serves `GET /metrics` for `server` with `Deno.serve`, until the server has finished:
 * each request reads {@linkcode Server.stats} once. Other paths answer 404, other methods
 * 405.
 *
 * @param server The server whose figures to serve.
 * @param options Where to listen.
 * @returns The HTTP server; it shuts down by itself once `server` has finished.
 * @throws {Deno.errors.AddrInUse} When the address is taken.
 * @throws {Deno.errors.NotCapable} Without net permission for it.
 *
 * @example Metrics on a port of their own
 * ```ts
 * import { serve } from "@genio/genio/tcp-server";
 * import { serveMetrics } from "@genio/genio/metrics";
 * import assert from "node:assert/strict";
 *
 * await using server = serve({ hostname: "127.0.0.1", port: 0, onListen() {} });
 * const { addr } = serveMetrics(server, { port: 0, onListen() {} });
 * const response = await fetch(`http://127.0.0.1:${addr.port}/`);
 * assert.equal(response.status, 404);
 * await response.body?.cancel();
 * ```
 */
export function serveMetrics(
  server: Server<Deno.Addr>,
  options?: MetricsOptions,
): Deno.HttpServer<Deno.NetAddr> {
  const hostname = options?.hostname ?? "127.0.0.1";
  const port = options?.port ?? 0;
  const onListen = options?.onListen ?? logListening;
  const controller = new AbortController();
  const http = Deno.serve(
    { hostname, port, signal: controller.signal, onListen() {} },
    (request) => respond(server, request),
  );
  const stop = () => controller.abort();
  server.finished.then(stop, stop);
  onListen(http.addr);
  return http;
}

function respond(server: Server<Deno.Addr>, request: Request): Response {
  if (new URL(request.url).pathname !== "/metrics") {
    return new Response("Not found: the metrics are at /metrics\n", { status: 404 });
  }
  if (request.method !== "GET" && request.method !== "HEAD") {
    return new Response("Method not allowed\n", { status: 405, headers: { allow: "GET, HEAD" } });
  }
  return new Response(formatMetrics(server.stats()), {
    headers: { "content-type": CONTENT_TYPE },
  });
}

/**
 * Writes {@linkcode ServerStats} in Prometheus' text exposition format (version 0.0.4), with
 * `# HELP` and `# TYPE` lines and the names in this module's table. `process_open_fds` is
 * left out when the figure is unknown.
 *
 * @param stats The figures, from {@linkcode Server.stats}.
 * @returns The page, ending with a newline.
 *
 * @example
 * ```ts
 * import { serve } from "@genio/genio/tcp-server";
 * import { formatMetrics } from "@genio/genio/metrics";
 * import assert from "node:assert/strict";
 *
 * await using server = serve({ hostname: "127.0.0.1", port: 0, onListen() {} });
 * const page = formatMetrics(server.stats());
 * assert.match(page, /^genio_tasks\{state="accepting"\} 1$/m);
 * assert.match(page, /^genio_event_loop_lag_seconds_bucket\{le="\+Inf"\} \d+$/m);
 * ```
 */
export function formatMetrics(stats: ServerStats): string {
  const { scheduler, eventLoopLag: lag, process } = stats;
  const lines: string[] = [];
  const metric = (name: string, type: string, help: string, samples: [string, number][]) => {
    lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    for (const [labels, value] of samples) lines.push(`${name}${labels} ${value}`);
  };
  metric("genio_connections_open", "gauge", "Connections open now.", [
    ["", stats.connectionsOpen],
  ]);
  metric("genio_connections_total", "counter", "Connections accepted.", [
    ["", stats.connectionsTotal],
  ]);
  metric(
    "genio_connections_refused_total",
    "counter",
    "Times the server reached max-connections and paused accepting; newcomers wait in the " +
      "listen backlog meanwhile.",
    [["", stats.limitReached]],
  );
  metric(
    "genio_connection_errors_total",
    "counter",
    "Connections that ended in failure, by reason.",
    Object.entries(stats.connectionErrors).map(([reason, n]) => [`{reason="${reason}"}`, n]),
  );
  metric("genio_bytes_received_total", "counter", "Bytes read from clients.", [
    ["", stats.bytesReceived],
  ]);
  metric("genio_bytes_sent_total", "counter", "Bytes written to clients.", [
    ["", stats.bytesSent],
  ]);
  metric(
    "genio_tasks",
    "gauge",
    "Live tasks by state.",
    LIVE_STATES.map((state) => [`{state="${state}"}`, scheduler.byState[state] ?? 0]),
  );
  metric("genio_ready_queue_length", "gauge", "Tasks on the scheduler's ready queue.", [
    ["", scheduler.ready],
  ]);
  metric(
    "genio_event_loop_lag_seconds",
    "histogram",
    "How late a timer set every 100 ms fires.",
    [],
  );
  for (const { le, count } of lag.buckets) {
    const bound = le === Infinity ? "+Inf" : String(le / 1000);
    lines.push(`genio_event_loop_lag_seconds_bucket{le="${bound}"} ${count}`);
  }
  lines.push(
    `genio_event_loop_lag_seconds_sum ${lag.sum / 1000}`,
    `genio_event_loop_lag_seconds_count ${lag.count}`,
  );
  metric("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", [
    ["", process.residentMemory],
  ]);
  if (process.openFds !== null) {
    metric("process_open_fds", "gauge", "Number of open file descriptors.", [
      ["", process.openFds],
    ]);
  }
  metric(
    "process_start_time_seconds",
    "gauge",
    "Start time of the process since unix epoch in seconds.",
    [["", process.startTime / 1000]],
  );
  return lines.join("\n") + "\n";
}

function logListening(addr: Deno.NetAddr): void {
  console.log(`Metrics on http://${formatAddress(addr)}/metrics`);
}
