// The metrics page of the real server.ts, read by the real tools: Prometheus' `promtool` and
// a Prometheus server scraping it. Both come with Debian's `prometheus` package (.ci/run
// installs it when it can); without them, the tests that run them are skipped with the
// reason printed.
import assert from "node:assert/strict";
import { connect, decode, delay, echo, encode, HAS_IPV6, HOST, readToEnd, within } from "./_net.ts";
import { runServer, type ServerProcess, startServer } from "./_server_process.ts";
import { makeCertificate, skipWithoutOpenssl } from "./_tls.ts";

function installed(command: string): boolean {
  try {
    return new Deno.Command(command, { args: ["--version"] }).outputSync().success;
  } catch {
    return false;
  }
}

const HAS_PROMTOOL = installed("promtool");
const HAS_PROMETHEUS = installed("prometheus");
for (const [tool, present] of [["promtool", HAS_PROMTOOL], ["prometheus", HAS_PROMETHEUS]]) {
  if (!present) {
    console.log(
      `SKIP tests/metrics_test.ts: ${tool} is not installed, so the tests that run it are ` +
        "skipped (install Debian's prometheus package; .ci/run does when apt-get works)",
    );
  }
}

const METRICS: readonly [string, string][] = [
  ["genio_connections_open", "gauge"],
  ["genio_connections_total", "counter"],
  ["genio_connections_refused_total", "counter"],
  ["genio_connection_errors_total", "counter"],
  ["genio_bytes_received_total", "counter"],
  ["genio_bytes_sent_total", "counter"],
  ["genio_tasks", "gauge"],
  ["genio_ready_queue_length", "gauge"],
  ["genio_event_loop_lag_seconds", "histogram"],
  ["process_resident_memory_bytes", "gauge"],
  ["process_start_time_seconds", "gauge"],
];

async function startWithMetrics(
  args: string[] = [],
  permissions?: string[],
): Promise<[ServerProcess, string]> {
  const server = await startServer(
    ["--port", "0", "--metrics", "0", ...args],
    undefined,
    permissions,
  );
  const line = await server.stdout.waitFor(/^Metrics on /, 5_000);
  const match = line.match(/^Metrics on (http:\/\/\S+\/metrics)$/);
  assert.ok(match, line);
  return [server, match[1]];
}

async function scrape(url: string): Promise<string> {
  const response = await fetch(url);
  assert.equal(response.status, 200);
  assert.equal(response.headers.get("content-type"), "text/plain; version=0.0.4; charset=utf-8");
  return await response.text();
}

function sample(page: string, series: string): number {
  const escaped = series.replace(/[{}"+.]/g, (c) => `\\${c}`);
  const match = page.match(new RegExp(`^${escaped} (\\S+)$`, "m"));
  assert.ok(match, `the page has ${series}`);
  return Number(match[1]);
}

async function echoes(port: number, messages: readonly string[]): Promise<void> {
  for (const message of messages) {
    using client = await connect(port);
    assert.equal(await echo(client, message), `GOT:${message}`);
  }
}

Deno.test("server.ts --metrics prints `Metrics on URL` after `Listening on` and serves every metric with HELP and TYPE", async () => {
  const [server, url] = await startWithMetrics(["--monitor", "0"]);
  await using _ = server;
  assert.match(url, /^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
  assert.match(server.stdout.lines[0], /^Listening on /);
  assert.match(server.stdout.lines[1], /^Monitor on /);
  assert.equal(server.stdout.lines[2], `Metrics on ${url}`);

  const page = await scrape(url);
  for (const [name, type] of METRICS) {
    assert.match(page, new RegExp(`^# HELP ${name} \\S`, "m"));
    assert.match(page, new RegExp(`^# TYPE ${name} ${type}$`, "m"));
  }
  for (const reason of ["reset", "timeout", "tls", "other"]) {
    assert.equal(sample(page, `genio_connection_errors_total{reason="${reason}"}`), 0);
  }
  assert.equal(sample(page, 'genio_tasks{state="accepting"}'), 2); // the server's, the monitor's
  assert.equal(sample(page, 'genio_tasks{state="reading"}'), 0);
  assert.equal(sample(page, "genio_ready_queue_length"), 0);
  assert.ok(sample(page, "process_resident_memory_bytes") > 1_000_000);
  const started = sample(page, "process_start_time_seconds");
  assert.ok(Math.abs(Date.now() / 1000 - started) < 120, `started at ${started}`);
  assert.doesNotMatch(page, /process_open_fds/); // not under --allow-net alone
  assert.match(page, /\n$/);
});

Deno.test("the page counts connections, and bytes as they cross the socket, GOT: included", async () => {
  const [server, url] = await startWithMetrics();
  await using _ = server;
  await echoes(server.port, ["alpha", "beta", "gamma"]);
  using open = await connect(server.port);
  assert.equal(await echo(open, "open"), "GOT:open");
  const received = "alphabetagammaopen".length;

  let page = "";
  await within(5_000, "every byte to be counted", async () => {
    while (sample(page = await scrape(url), "genio_bytes_sent_total") !== received + 4 * 4) {
      await delay(20);
    }
  });
  assert.equal(sample(page, "genio_bytes_received_total"), received);
  assert.equal(sample(page, "genio_connections_total"), 4);
  assert.equal(sample(page, "genio_connections_open"), 1);
  assert.equal(sample(page, "genio_connections_refused_total"), 0);
  assert.equal(sample(page, 'genio_tasks{state="reading"}'), 1);
});

Deno.test("the page counts the pauses at --max-connections and the connections that timed out", async () => {
  const [server, url] = await startWithMetrics(["--max-connections", "1", "--idle-timeout", "0.2"]);
  await using _ = server;
  using first = await connect(server.port);
  assert.equal(await echo(first, "1"), "GOT:1");
  using second = await connect(server.port); // waits in the backlog
  await second.write(encode("2"));
  assert.equal(await readToEnd(first), ""); // idle: cut off after 0.2 s
  assert.equal(await readToEnd(second), "GOT:2");
  let page = "";
  await within(5_000, "both connections to end", async () => {
    while (sample(page = await scrape(url), "genio_connections_open") !== 0) await delay(20);
  });
  assert.equal(sample(page, "genio_connections_total"), 2);
  assert.equal(sample(page, 'genio_connection_errors_total{reason="timeout"}'), 2);
  assert.equal(sample(page, "genio_connections_refused_total"), 2); // once per connection at the limit
});

const noOpenssl = skipWithoutOpenssl("tests/metrics_test.ts");

Deno.test({
  name: "over TLS, a failed handshake counts as a tls error and bytes count the plaintext",
  ignore: noOpenssl,
  async fn() {
    using certificate = makeCertificate();
    const { certFile, keyFile, cert } = certificate;
    const [server, url] = await startWithMetrics(
      ["--cert", certFile, "--key", keyFile],
      ["--allow-net", "--allow-read"],
    );
    await using _ = server;
    using tls = await Deno.connectTls({ hostname: HOST, port: server.port, caCerts: [cert] });
    assert.equal(await echo(tls, "secret"), "GOT:secret");
    using plain = await connect(server.port);
    await plain.write(encode("hello\n"));
    await readToEnd(plain);
    let page = "";
    const settled = (page: string) =>
      sample(page, "genio_connections_open") === 1 &&
      sample(page, "genio_bytes_sent_total") === "GOT:secret".length;
    await within(5_000, "the failed handshake and the reply to be counted", async () => {
      while (!settled(page = await scrape(url))) await delay(20);
    });
    assert.equal(sample(page, 'genio_connection_errors_total{reason="tls"}'), 1);
    assert.equal(sample(page, 'genio_connection_errors_total{reason="other"}'), 0);
    assert.equal(sample(page, "genio_bytes_received_total"), "secret".length);
  },
});

Deno.test("event-loop lag is a histogram whose buckets grow with the measures", async () => {
  const [server, url] = await startWithMetrics();
  await using _ = server;
  await scrape(url); // the first look starts the measuring
  await delay(450);
  const page = await scrape(url);
  const buckets = [
    ...page.matchAll(/^genio_event_loop_lag_seconds_bucket\{le="([^"]+)"\} (\d+)$/gm),
  ];
  assert.equal(buckets.at(-1)![1], "+Inf");
  const counts = buckets.map((bucket) => Number(bucket[2]));
  assert.deepEqual(counts, [...counts].sort((a, b) => a - b), "cumulative");
  const count = sample(page, "genio_event_loop_lag_seconds_count");
  assert.equal(counts.at(-1), count);
  assert.ok(count >= 2 && count <= 6, `${count} measures in about 0.45 s, one every 0.1 s`);
  assert.ok(sample(page, "genio_event_loop_lag_seconds_sum") >= 0);
});

Deno.test({
  name: "promtool check metrics accepts the page",
  ignore: !HAS_PROMTOOL,
  async fn() {
    const [server, url] = await startWithMetrics();
    await using _ = server;
    await echoes(server.port, ["some", "traffic"]);
    await scrape(url);
    await delay(250); // a few lag measures in the histogram
    const page = await scrape(url);
    const child = new Deno.Command("promtool", {
      args: ["check", "metrics"],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const writer = child.stdin.getWriter();
    await writer.write(encode(page));
    await writer.close();
    const { success, stdout, stderr } = await child.output();
    const said = decode(stdout) + decode(stderr);
    assert.ok(success, said);
    assert.equal(said.trim(), "", "no lint problems");
  },
});

// The HTTP API's instant value of a query, or null while it has none.
async function queryPrometheus(port: number, query: string): Promise<string | null> {
  const url = `http://${HOST}:${port}/api/v1/query?query=${encodeURIComponent(query)}`;
  const body = await (await fetch(url)).json();
  assert.equal(body.status, "success");
  return body.data.result[0]?.value[1] ?? null;
}

function freePort(): number {
  using listener = Deno.listen({ hostname: HOST, port: 0 });
  return listener.addr.port;
}

Deno.test({
  name: "a real Prometheus server scrapes the page every second and reports the connections made",
  ignore: !HAS_PROMETHEUS,
  async fn() {
    const [server, url] = await startWithMetrics();
    await using _ = server;
    const dir = await Deno.makeTempDir({ prefix: "genio_prometheus_" });
    const port = freePort();
    const target = new URL(url).host;
    await Deno.writeTextFile(
      `${dir}/prometheus.yml`,
      [
        "global:",
        "  scrape_interval: 1s",
        "  scrape_timeout: 1s",
        "scrape_configs:",
        "  - job_name: genio",
        `    static_configs: [{ targets: ["${target}"] }]`,
      ].join("\n") + "\n",
    );
    const prometheus = new Deno.Command("prometheus", {
      args: [
        `--config.file=${dir}/prometheus.yml`,
        `--storage.tsdb.path=${dir}/data`,
        `--web.listen-address=${HOST}:${port}`,
      ],
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    const log = prometheus.stderr.pipeThrough(new TextDecoderStream()).getReader();
    const logged: string[] = [];
    const logging = (async () => {
      for (let chunk; !(chunk = await log.read()).done;) logged.push(chunk.value);
    })();
    try {
      const connections = 7;
      await echoes(server.port, Array.from({ length: connections }, (_, i) => `client ${i}`));
      await within(60_000, "Prometheus to report the connections", async () => {
        for (;;) {
          const value = await queryPrometheus(port, 'genio_connections_total{job="genio"}')
            .catch(() => null); // not up yet
          if (value === String(connections)) return;
          await delay(250);
        }
      }).catch((error) => {
        throw new Error(`${error.message}\nprometheus said:\n${logged.join("")}`);
      });
      assert.equal(await queryPrometheus(port, 'up{job="genio"}'), "1");
      assert.equal(
        await queryPrometheus(port, 'genio_bytes_received_total{job="genio"}'),
        String(Array.from({ length: connections }, (_, i) => `client ${i}`).join("").length),
      );
    } finally {
      try {
        Deno.kill(prometheus.pid, "SIGTERM");
      } catch {
        // It has exited already.
      }
      await prometheus.status;
      await logging;
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("process_open_fds is on the page under --allow-all, and server.ts --metrics runs with --allow-net alone", async () => {
  const [all, url] = await startWithMetrics([], ["--allow-all"]);
  await using _ = all;
  assert.ok(sample(await scrape(url), "process_open_fds") >= 3);
  // The first test shows the page without it under --allow-net alone.
});

Deno.test("bad input on the metrics port: garbage, a huge request line, another path or method, many clients at once; the server serves on", async () => {
  const [server, url] = await startWithMetrics();
  await using _ = server;
  const { port } = new URL(url);
  const raw = async (bytes: Uint8Array): Promise<string> => {
    const conn = await connect(Number(port));
    try {
      await conn.write(bytes).catch(() => {}); // the server may close before all is sent
      return await readToEnd(conn).catch((error) => {
        if (error instanceof Deno.errors.ConnectionReset) return "";
        throw error;
      });
    } finally {
      conn.close();
    }
  };
  const garbage = new Uint8Array(4096).map((_, i) => (i * 7919 + 13) % 256);
  assert.match(await raw(garbage), /^(HTTP\/1\.1 400 |$)/);
  const huge = encode(`GET /${"a".repeat(256 * 1024)} HTTP/1.1\r\nHost: x\r\n\r\n`);
  assert.match(await raw(huge), /^(HTTP\/1\.1 (400|404|414|431) |$)/);

  const other = await fetch(url.replace("/metrics", "/"));
  assert.equal(other.status, 404);
  await other.body?.cancel();
  const post = await fetch(url, { method: "POST", body: "x" });
  assert.equal(post.status, 405);
  assert.equal(post.headers.get("allow"), "GET, HEAD");
  await post.body?.cancel();

  const pages = await Promise.all(Array.from({ length: 50 }, () => scrape(url)));
  for (const page of pages) assert.match(page, /^genio_connections_total 0$/m);
  await echoes(server.port, ["still serving"]);
  assert.equal(sample(await scrape(url), "genio_connections_total"), 1);
});

Deno.test({
  name: "--metrics-hostname serves the page on the address it names",
  ignore: !HAS_IPV6,
  async fn() {
    const [server, url] = await startWithMetrics(["--metrics-hostname", "::1"]);
    await using _ = server;
    assert.match(url, /^http:\/\/\[::1\]:\d+\/metrics$/);
    assert.match(await scrape(url), /^genio_connections_total 0$/m);
  },
});

Deno.test("server.ts refuses --metrics-hostname without --metrics, and a metrics port in use", async () => {
  const alone = await runServer(["--port", "0", "--metrics-hostname", "::1"]);
  assert.equal(alone.code, 2);
  assert.deepEqual(alone.stderr, ["error: --metrics-hostname needs --metrics (see --help)"]);
  using taken = Deno.listen({ hostname: HOST, port: 0 });
  const exit = await runServer(["--port", "0", "--metrics", String(taken.addr.port)]);
  assert.equal(exit.code, 1);
  assert.deepEqual(exit.stderr, [
    `error: Cannot listen on ${HOST}:${taken.addr.port} for --metrics: address already in use`,
  ]);
});

Deno.test("SIGTERM stops a server with --metrics and --monitor at once: nothing they started keeps it alive", async () => {
  const [server, url] = await startWithMetrics(["--monitor", "0", "--grace", "0"]);
  await using _ = server;
  await scrape(url); // the lag timer runs
  const started = performance.now();
  server.kill("SIGTERM");
  const exit = await server.exited();
  assert.equal(exit.code, 0);
  assert.ok(performance.now() - started < 3_000, "exited at once");
  assert.equal(exit.stdout.at(-1), "Shut down: 0 connections drained, 0 cancelled");
  assert.deepEqual(exit.stderr, []);
});
