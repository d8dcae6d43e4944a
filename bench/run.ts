/**
 * The benchmark: genio's echo server (`server.ts`) against the raw async/await one
 * (`bench/raw_echo.ts`) under the same load profiles, a line protocol server built on
 * `Stream` (`bench/line_server.ts`) against one with hand-written buffering
 * (`bench/raw_line.ts`), then the kernel's microbenchmarks
 * (`bench/kernel_bench.ts`). Prints every figure with its ratio to the raw server, how busy
 * the load client was, and whether the targets of issue #5 hold; writes the tables to
 * `bench/.build/results.md` and every run's figures to `bench/.build/results.json`.
 *
 * The load client is `bench/load.c`, built here with `cc`. Each repetition starts a fresh
 * raw server and a fresh genio server and gives them turns of a quarter second (raw,
 * genio, raw, genio, ...; which one goes first alternates between repetitions), so that
 * noise from the rest of the machine hits both alike. With `taskset`, both servers run on
 * CPU 0 and the client on CPU 1 (for one connection, all on CPU 0).
 *
 * Two scale-out groups compare genio with itself instead, in the same interleaved way:
 * `pp1000w2`, `--workers 2` against `--workers 1`, both servers free to use both CPUs and
 * the client on CPU 1 without spinning (so the second worker gets what the client leaves of
 * CPU 1); and `pp1000ha`, through HAProxy (`deploy/haproxy.cfg`, one server, genio with
 * `--proxy-protocol`; HAProxy on CPU 0 with the server) against direct.
 *
 * ```sh
 * deno task bench                        # everything, about 6 minutes
 * deno task bench --quick                # one short repetition of each, a smoke test
 * deno task bench --profiles pp100,bulk10 --reps 7 --no-micro
 * deno task bench --genio-args="--idle-timeout 0"
 * deno task bench --genio bench/trampoline_echo.ts --no-micro # the scheduler-free yardstick
 * deno task bench --baseline old/server.ts --no-micro         # one genio against another
 * deno task bench --profiles line100 --reps 3 --no-micro      # the line protocol only
 * ```
 *
 * @module
 */
import { parseFlags } from "./_flags.ts";

/** One load profile, as the load client runs it. */
interface Profile {
  readonly name: string;
  readonly mode: "pingpong" | "bulk" | "idle" | "lines";
  readonly conns: number;
  readonly size: number;
  /** Lines each connection sends at once, in the lines mode. */
  readonly depth?: number;
  /** The two servers, when not `--baseline` and `--genio`. */
  readonly servers?: { readonly raw: Server; readonly genio: Server };
  /** Minimum genio / raw ratio (maximum for RSS) from issue #5. */
  readonly target?: number;
  /**
   * For genio against itself (`servers` the baseline and the subject): what the ratio
   * compares. Such profiles get a table of their own.
   */
  readonly label?: string;
}

/** The fields of one `RESULT {json}` line of the load client that this script reads. */
interface LoadResult {
  rps?: number;
  lines_per_s?: number;
  p50_us?: number;
  p99_us?: number;
  payload_MBps?: number;
  client_busy_pct?: number;
  server_cpu_pct?: number;
  cpu0_foreign_pct?: number;
  cpu1_foreign_pct?: number;
  server_runq_pct?: number;
  client_runq_pct?: number;
  steal_pct?: number;
  rss_per_conn_B?: number;
  served?: number;
  errors: number;
  first_error: string;
}

interface Server {
  readonly name: string;
  readonly path: string;
  readonly args: readonly string[];
  /** `deno run` flags beyond `--allow-net`. */
  readonly deno?: readonly string[];
  /** The CPUs to pin it to (taskset's list). */
  readonly cpus?: string;
  /** Run HAProxy in front of it (on the same CPUs), and load that. */
  readonly haproxy?: boolean;
}

interface Rep {
  raw: LoadResult;
  genio: LoadResult;
}

const ROOT: string = decodeURIComponent(new URL("..", import.meta.url).pathname);
const BUILD_DIR: string = `${ROOT}bench/.build`;
const LOAD_SOURCE: string = `${ROOT}bench/load.c`;
const LOAD_BINARY: string = `${BUILD_DIR}/load`;
const STARTUP_TIMEOUT_MS = 30_000;
// A repetition disturbed by more than this much outside work (% of a CPU) is run again.
const NOISE_LIMIT = 20;
const SCALE_NOTE = "Scale-out, genio against itself. pp1000w2: both servers may use both " +
  "CPUs, and the load client shares CPU 1 without spinning, so the second worker gets what " +
  "the client leaves of it: with the client at about 5.5 µs and genio at about 9 µs of " +
  "CPU per round trip, 2 cores allow about 1.25× at best (bench/README.md), where a " +
  "machine with cores to spare for the client would approach 2×. pp1000ha: one genio " +
  "with --proxy-protocol behind HAProxy (deploy/haproxy.cfg, one server line), HAProxy " +
  "pinned to the server's CPU 0, against genio alone there: what the balancer's work " +
  "costs when it shares the server's core; on a machine of its own it costs the server " +
  "only the header, and each message a hop.";

const { values: flags } = parseFlags("bench", {
  args: Deno.args,
  options: {
    profiles: {
      type: "string",
      default: "pp1,pp100,pp1000,bulk10,idle,line100,pp1000w2,pp1000ha",
    },
    reps: { type: "string", default: "7" },
    "idle-reps": { type: "string", default: "3" },
    "idle-conns": { type: "string", default: "10000" },
    warmup: { type: "string", default: "1" },
    duration: { type: "string", default: "3" },
    slice: { type: "string", default: "250" },
    hold: { type: "string", default: "2" },
    genio: { type: "string", default: "server.ts" },
    baseline: { type: "string", default: "bench/raw_echo.ts" },
    "genio-args": { type: "string", default: "" },
    retries: { type: "string", default: "2" },
    budget: { type: "string", default: "480" },
    "no-micro": { type: "boolean", default: false },
    quick: { type: "boolean", default: false },
  },
}, [
  "reps",
  "idle-reps",
  "idle-conns",
  "warmup",
  "duration",
  "slice",
  "hold",
  "retries",
  "budget",
]);

const quick = flags.quick;
const reps = quick ? 1 : Number(flags.reps);
const idleReps = quick ? 1 : Number(flags["idle-reps"]);
const idleConns = Number(flags["idle-conns"]);
const warmup = quick ? 0.5 : Number(flags.warmup);
const duration = quick ? 1 : Number(flags.duration);
const hold = quick ? 0.5 : Number(flags.hold);
const retries = quick ? 0 : Number(flags.retries);
const budgetMs = Number(flags.budget) * 1000;

const RAW: Server = { name: "raw", path: flags.baseline, args: [] };
const GENIO: Server = {
  name: "genio",
  path: flags.genio,
  args: flags["genio-args"].split(" ").filter((arg) => arg !== ""),
};
const workers = (n: number): Server => ({
  ...GENIO,
  name: `genio --workers ${n}`,
  args: [...GENIO.args, "--workers", `${n}`],
  deno: ["--allow-read", "--unstable-net"],
  cpus: "0,1",
});
const BEHIND_HAPROXY: Server = {
  ...GENIO,
  name: "genio behind HAProxy",
  args: [...GENIO.args, "--proxy-protocol"],
  haproxy: true,
};

const PROFILES: readonly Profile[] = [
  { name: "pp1", mode: "pingpong", conns: 1, size: 64 },
  { name: "pp100", mode: "pingpong", conns: 100, size: 64, target: 0.97 },
  { name: "pp1000", mode: "pingpong", conns: 1000, size: 64, target: 0.95 },
  { name: "bulk10", mode: "bulk", conns: 10, size: 65536, target: 0.95 },
  { name: "idle", mode: "idle", conns: idleConns, size: 64, target: 1.2 },
  {
    name: "line100",
    mode: "lines",
    conns: 100,
    size: 64,
    depth: 16,
    target: 0.9,
    servers: {
      raw: { name: "raw", path: "bench/raw_line.ts", args: [] },
      genio: { name: "genio", path: "bench/line_server.ts", args: [] },
    },
  },
  {
    name: "pp1000w2",
    mode: "pingpong",
    conns: 1000,
    size: 64,
    target: 1.3,
    servers: { raw: workers(1), genio: workers(2) },
    label: "--workers 2 / 1",
  },
  {
    name: "pp1000ha",
    mode: "pingpong",
    conns: 1000,
    size: 64,
    servers: { raw: GENIO, genio: BEHIND_HAPROXY },
    label: "HAProxy / direct",
  },
];

// --- processes -------------------------------------------------------------------------

async function run(command: string, args: string[]): Promise<{ ok: boolean; text: string }> {
  try {
    const { success, stdout, stderr } = await new Deno.Command(command, { args, cwd: ROOT })
      .output();
    const decoder = new TextDecoder();
    return { ok: success, text: decoder.decode(stdout) + decoder.decode(stderr) };
  } catch (error) {
    return { ok: false, text: (error as Error).message };
  }
}

/** Builds the load client unless it is newer than its source. */
async function buildLoadClient(): Promise<void> {
  try {
    if (Deno.statSync(LOAD_BINARY).mtime! >= Deno.statSync(LOAD_SOURCE).mtime!) return;
  } catch {
    // Not built yet.
  }
  Deno.mkdirSync(BUILD_DIR, { recursive: true });
  const build = await run("cc", ["-O2", "-Wall", "-o", LOAD_BINARY, LOAD_SOURCE]);
  if (!build.ok) {
    throw new Error(
      `Cannot build the load client bench/load.c with cc: ${build.text.trim()}\n` +
        "The benchmark needs a C compiler: install one (Debian/Ubuntu: apt-get install gcc) " +
        "and run it again.",
    );
  }
}

async function hardFileLimit(): Promise<number> {
  const { text } = await run("sh", ["-c", "ulimit -Hn"]);
  return text.trim() === "unlimited" ? Infinity : Number(text);
}

interface Running {
  readonly server: Server;
  readonly child: Deno.ChildProcess;
  readonly port: number;
  readonly stderr: Promise<string>;
  readonly haproxy?: Deno.ChildProcess;
}

/**
 * Starts a server (on CPU 0, or its own CPUs, when pinning) and waits for its
 * `Listening on` line; then HAProxy in front of it if it asks for that.
 */
async function start(server: Server, pin: boolean): Promise<Running> {
  const command = [
    Deno.execPath(),
    ...["run", "--allow-net", ...server.deno ?? [], server.path],
    ...["--port", "0", "--hostname", "127.0.0.1", "--quiet", ...server.args],
  ];
  const child = pinned(command, pin ? server.cpus ?? "0" : null, true);
  const stderr = tail(child.stderr);
  let running: Running = { server, child, port: 0, stderr };
  try {
    running = { ...running, port: await waitForPort(child.stdout) };
    if (!server.haproxy) return running;
    const front = freePort();
    const haproxy = pinned(
      ["haproxy", "-db", "-f", writeHaproxyConfig(front, running.port)],
      pin ? server.cpus ?? "0" : null,
      false,
    );
    running = { ...running, haproxy, port: front };
    await waitForConnect(front);
    return running;
  } catch (error) {
    await stop(running);
    throw new Error(`${server.name} server: ${(error as Error).message} ${await stderr}`);
  }
}

function pinned(command: string[], cpus: string | null, piped: boolean): Deno.ChildProcess {
  return new Deno.Command(cpus !== null ? "taskset" : command[0], {
    args: cpus !== null ? ["-c", cpus, ...command] : command.slice(1),
    cwd: ROOT,
    stdin: "null",
    stdout: piped ? "piped" : "null",
    stderr: piped ? "piped" : "null",
  }).spawn();
}

/** deploy/haproxy.cfg with its front end on `front` and one server, on `port`. */
function writeHaproxyConfig(front: number, port: number): string {
  const path = `${BUILD_DIR}/haproxy.cfg`;
  const servers = /^(\s*server \S+ )127\.0\.0\.1:\d+(.*)$/gm;
  let first = true;
  const config = Deno.readTextFileSync(`${ROOT}deploy/haproxy.cfg`)
    .replace(/^(\s*bind )\S+$/m, `$1127.0.0.1:${front}`)
    .replace(
      servers,
      (_, start, rest) => first ? (first = false, `${start}127.0.0.1:${port}${rest}`) : "",
    );
  Deno.mkdirSync(BUILD_DIR, { recursive: true });
  Deno.writeTextFileSync(path, config);
  return path;
}

function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  listener.close();
  return listener.addr.port;
}

async function waitForConnect(port: number): Promise<void> {
  for (let attempt = 0; attempt < 200; attempt++) {
    try {
      return (await Deno.connect({ hostname: "127.0.0.1", port })).close();
    } catch {
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
  throw new Error(`nothing listens on port ${port} after 10 s`);
}

async function waitForPort(stream: ReadableStream<Uint8Array>): Promise<number> {
  const decoder = new TextDecoder();
  const reader = stream.getReader();
  const timer = setTimeout(() => reader.cancel(), STARTUP_TIMEOUT_MS);
  let text = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`did not print "Listening on": ${JSON.stringify(text)}`);
      text += decoder.decode(value, { stream: true });
      const match = text.match(/Listening on [^\s:]+:(\d+)/);
      if (match) return Number(match[1]);
    }
  } finally {
    clearTimeout(timer);
    reader.releaseLock();
    stream.pipeTo(new WritableStream()).catch(() => {});
  }
}

async function tail(stream: ReadableStream<Uint8Array>): Promise<string> {
  let text = "";
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
    text = (text + chunk).slice(-2000);
  }
  return text;
}

/**
 * Stops a server (and its HAProxy) by PID: SIGTERM, then SIGKILL after 3 s; reports what
 * the server printed.
 */
async function stop(running: Running): Promise<void> {
  if (running.haproxy) await end(running.haproxy);
  await end(running.child);
  const text = (await running.stderr).trim();
  if (text !== "") console.error(`    (${running.server.name} stderr: ${text.slice(-300)})`);
}

async function end(child: Deno.ChildProcess): Promise<void> {
  const kill = (signal: Deno.Signal) => {
    try {
      child.kill(signal);
    } catch {
      // Exited already.
    }
  };
  kill("SIGTERM");
  const killer = setTimeout(() => kill("SIGKILL"), 3000);
  await child.status;
  clearTimeout(killer);
}

/** Runs the load client against the servers; returns one result per server, in order. */
async function load(
  profile: Profile,
  servers: readonly Running[],
  pin: boolean,
): Promise<LoadResult[]> {
  const args = [
    ...["--port", servers.map((s) => s.port).join(",")],
    ...["--pid", servers.map((s) => s.child.pid).join(",")],
    ...["--mode", profile.mode, "--conns", `${profile.conns}`, "--size", `${profile.size}`],
    ...(profile.depth === undefined ? [] : ["--depth", `${profile.depth}`]),
    ...["--warmup", `${warmup}`, "--duration", `${duration}`, "--slice", flags.slice],
    ...["--hold", `${hold}`],
    // With a CPU of its own, the client polls epoll instead of sleeping in it, so its own
    // wake-ups do not add to the latency it measures; not when a second worker shares it.
    ...(profile.conns > 1 && profile.mode !== "idle" && !sharesClientCpu(profile)
      ? ["--spin"]
      : []),
  ];
  const cpu = profile.conns === 1 ? "0" : "1";
  const out = await run(
    pin ? "taskset" : LOAD_BINARY,
    pin ? ["-c", cpu, LOAD_BINARY, ...args] : args,
  );
  const lines = out.text.split("\n").filter((line) => line.startsWith("RESULT "));
  if (lines.length !== servers.length) {
    const failure: LoadResult = { errors: 1, first_error: `load client: ${out.text.trim()}` };
    return servers.map(() => failure);
  }
  return lines.map((line) => JSON.parse(line.slice("RESULT ".length)) as LoadResult);
}

function sharesClientCpu(profile: Profile): boolean {
  const { raw, genio } = profile.servers ?? {};
  return [raw, genio].some((server) => server?.cpus?.includes("1"));
}

/** Outside work during a run, in % of a CPU: what other processes took on the two CPUs. */
function noise(result: LoadResult): number {
  return Math.max(
    result.cpu0_foreign_pct ?? 0,
    result.cpu1_foreign_pct ?? 0,
    2 * (result.steal_pct ?? 0),
  );
}

/** One repetition of a two-server profile: both servers, turns interleaved. */
async function pairRep(profile: Profile, rep: number, pin: boolean): Promise<Rep> {
  const { raw, genio } = profile.servers ?? { raw: RAW, genio: GENIO };
  const order = rep % 2 === 1 ? [raw, genio] : [genio, raw];
  const running = await Promise.all(order.map((server) => start(server, pin)));
  try {
    const [first, second] = await load(profile, running, pin);
    return order[0] === raw ? { raw: first, genio: second } : { raw: second, genio: first };
  } finally {
    await Promise.all(running.map(stop));
  }
}

/** One repetition of the idle profile: each server on its own, since each needs its RSS. */
async function idleRep(profile: Profile, rep: number, pin: boolean): Promise<Rep> {
  const order = rep % 2 === 1 ? [RAW, GENIO] : [GENIO, RAW];
  const byName: Partial<Rep> = {};
  for (const server of order) {
    const running = await start(server, pin);
    try {
      byName[server === RAW ? "raw" : "genio"] = (await load(profile, [running], pin))[0];
    } finally {
      await stop(running);
    }
  }
  return byName as Rep;
}

// --- figures -----------------------------------------------------------------------------

function median(xs: number[]): number {
  if (xs.length === 0) return NaN;
  const sorted = [...xs].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

function fmt(x: number, digits = 0): string {
  if (!Number.isFinite(x)) return "–";
  return x.toLocaleString("en-US", {
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
  });
}

interface Row {
  profile: string;
  figure: string;
  raw: string;
  genio: string;
  ratio: string;
  target: string;
  client: string;
}

/**
 * The rows for one profile. A figure is the median over repetitions; its ratio is the
 * median of the repetitions' own genio / raw ratios (each from one shared run), with
 * their range.
 */
function rowsFor(profile: Profile, results: Rep[]): Row[] {
  const ok = results.filter((r) => r.raw.errors === 0 && r.genio.errors === 0);
  const med = (server: keyof Rep, key: keyof LoadResult) =>
    median(ok.map((r) => r[server][key] as number));
  const ratios = (key: keyof LoadResult) =>
    ok.map((r) => (r.genio[key] as number) / (r.raw[key] as number));
  const ratioText = (key: keyof LoadResult, digits = 3) => {
    const xs = ratios(key);
    if (xs.length < 2) return median(xs).toFixed(digits);
    return `${median(xs).toFixed(digits)} (${Math.min(...xs).toFixed(2)}–${
      Math.max(...xs).toFixed(2)
    })`;
  };
  const verdict = (key: keyof LoadResult, higherIsBetter: boolean) => {
    if (profile.target === undefined) return "";
    const r = median(ratios(key));
    const holds = higherIsBetter ? r >= profile.target : r <= profile.target;
    return `${higherIsBetter ? "≥" : "≤"} ${profile.target.toFixed(2)}: ${
      holds ? "holds" : "MISSED"
    }`;
  };
  const client = `${fmt(med("raw", "client_busy_pct"))} / ${fmt(med("genio", "client_busy_pct"))}`;
  const runs = `${ok.length}/${results.length} repetitions without errors`;
  const base = { profile: profile.name, target: "", client: "" };
  if (profile.mode === "pingpong") {
    return [
      {
        ...base,
        figure: `round trips/s, ${profile.conns} conn × 64 B` +
          (profile.label ? `, ${profile.label}` : ""),
        raw: fmt(med("raw", "rps")),
        genio: fmt(med("genio", "rps")),
        ratio: ratioText("rps"),
        target: verdict("rps", true),
        client,
      },
      {
        ...base,
        figure: "latency p50 / p99 (µs)",
        raw: `${fmt(med("raw", "p50_us"))} / ${fmt(med("raw", "p99_us"))}`,
        genio: `${fmt(med("genio", "p50_us"))} / ${fmt(med("genio", "p99_us"))}`,
        ratio: `${median(ratios("p50_us")).toFixed(2)} / ${median(ratios("p99_us")).toFixed(2)}`,
        target: ok.length === results.length ? "" : runs,
      },
    ];
  }
  if (profile.mode === "lines") {
    return [
      {
        ...base,
        figure:
          `lines/s, ${profile.conns} conn × ${profile.depth} pipelined ${profile.size}-B lines`,
        raw: fmt(med("raw", "lines_per_s")),
        genio: fmt(med("genio", "lines_per_s")),
        ratio: ratioText("lines_per_s"),
        target: verdict("lines_per_s", true),
        client,
      },
      {
        ...base,
        figure: `latency of ${profile.depth} lines p50 / p99 (µs)`,
        raw: `${fmt(med("raw", "p50_us"))} / ${fmt(med("raw", "p99_us"))}`,
        genio: `${fmt(med("genio", "p50_us"))} / ${fmt(med("genio", "p99_us"))}`,
        ratio: `${median(ratios("p50_us")).toFixed(2)} / ${median(ratios("p99_us")).toFixed(2)}`,
        target: ok.length === results.length ? "" : runs,
      },
    ];
  }
  if (profile.mode === "bulk") {
    return [{
      ...base,
      figure: `echoed MB/s, ${profile.conns} conn × 64 KiB writes`,
      raw: fmt(med("raw", "payload_MBps")),
      genio: fmt(med("genio", "payload_MBps")),
      ratio: ratioText("payload_MBps"),
      target: verdict("payload_MBps", true),
      client,
    }];
  }
  const served = (server: keyof Rep) =>
    `${fmt(Math.min(...results.map((r) => r[server].served ?? 0)))} of ${fmt(profile.conns)}`;
  const allServed = results.every((r) => r.genio.errors === 0 && r.genio.served === profile.conns);
  return [
    {
      ...base,
      figure: `server RSS per idle conn (B), ${fmt(profile.conns)} conns`,
      raw: fmt(med("raw", "rss_per_conn_B")),
      genio: fmt(med("genio", "rss_per_conn_B")),
      ratio: ratioText("rss_per_conn_B"),
      target: verdict("rss_per_conn_B", false),
    },
    {
      ...base,
      figure: "conns still served after the hold (fewest)",
      raw: served("raw"),
      genio: served("genio"),
      ratio: "",
      target: `all, no errors: ${allServed ? "holds" : "MISSED"}`,
    },
  ];
}

function markdownTable(rows: Row[], against = ["raw Deno", "genio", "raw"]): string {
  const [base, subject, short] = against;
  return [
    `| profile | figure | ${base} | ${subject} | ${subject} / ${short} (range) | target | client busy % ${short} / ${subject} |`,
    "| --- | --- | ---: | ---: | ---: | --- | ---: |",
    ...rows.map((r) =>
      `| ${r.profile} | ${r.figure} | ${r.raw} | ${r.genio} | ${r.ratio} | ${r.target} | ${r.client} |`
    ),
  ].join("\n");
}

function describe(result: LoadResult, mode: Profile["mode"]): string {
  if (result.errors > 0) return `ERRORS: ${result.first_error}`;
  if (mode === "idle") return `${fmt(result.rss_per_conn_B!)} B/conn, ${result.served} served`;
  const figure = mode === "bulk"
    ? `${fmt(result.payload_MBps!)} MB/s`
    : mode === "lines"
    ? `${fmt(result.lines_per_s!)} lines/s, p99 ${fmt(result.p99_us!)} µs`
    : `${fmt(result.rps!)} rt/s, p99 ${fmt(result.p99_us!)} µs`;
  return `${figure}, server CPU ${fmt(result.server_cpu_pct!)} %, client busy ${
    fmt(result.client_busy_pct!)
  } %`;
}

async function machine(): Promise<string> {
  const { text } = await run("sh", [
    "-c",
    "grep -m1 'model name' /proc/cpuinfo; uname -r; grep MemTotal /proc/meminfo",
  ]);
  const [cpu, kernel, mem] = text.split("\n");
  const memGiB = Number(mem?.match(/\d+/)?.[0]) / 2 ** 20;
  const model = cpu?.split(":")[1]?.trim() ?? "unknown CPU";
  return `${navigator.hardwareConcurrency} × ${model}, ${memGiB.toFixed(0)} GiB RAM, ` +
    `Linux ${kernel}, Deno ${Deno.version.deno} (V8 ${Deno.version.v8})`;
}

// --- microbenchmarks -----------------------------------------------------------------------

interface BenchReport {
  benches: {
    group: string;
    name: string;
    baseline: boolean;
    results: { ok?: { avg: number } }[];
  }[];
}

/** Runs `bench/kernel_bench.ts` and tabulates it: time per operation, ratio to async. */
async function microbenchmarks(): Promise<string> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["bench", "--json", "--allow-net", "bench/kernel_bench.ts", "bench/sync_bench.ts"],
    cwd: ROOT,
    stderr: "inherit",
  }).output();
  if (!out.success) return "deno bench failed";
  const report = JSON.parse(new TextDecoder().decode(out.stdout)) as BenchReport;
  const rows = [
    "| group | benchmark | time per operation | × async |",
    "| --- | --- | ---: | ---: |",
  ];
  for (const bench of report.benches) {
    const avg = bench.results[0]?.ok?.avg;
    const base = report.benches.find((b) => b.group === bench.group && b.baseline);
    const baseAvg = base?.results[0]?.ok?.avg;
    // Each benchmark's name starts with how many operations one iteration does.
    const perOp = (ns: number | undefined, name: string) =>
      ns === undefined ? NaN : ns / Number(name.match(/\d+/)?.[0] ?? 1);
    const ns = perOp(avg, bench.name);
    const ratio = ns / perOp(baseAvg, base?.name ?? "");
    rows.push(
      `| ${bench.group} | ${bench.name} | ${
        ns >= 10_000 ? `${fmt(ns / 1000, 1)} µs` : `${fmt(ns)} ns`
      } | ${bench.baseline ? "1" : ratio.toFixed(2)} |`,
    );
  }
  return rows.join("\n");
}

// --- main --------------------------------------------------------------------------------

async function main(): Promise<number> {
  const started = performance.now();
  if (Deno.build.os !== "linux") {
    console.error("The load benchmark needs Linux (epoll, /proc); run the rest with:");
    console.error("  deno bench --allow-net bench/kernel_bench.ts");
    return 2;
  }
  await buildLoadClient();
  const pin = (await run("taskset", ["-c", "0", "true"])).ok;
  const wanted = flags.profiles.split(",");
  const profiles = PROFILES.filter((p) => wanted.includes(p.name));
  const haproxy = profiles.findIndex((p) => p.servers?.genio.haproxy);
  if (haproxy >= 0 && !(await run("haproxy", ["-v"])).ok) {
    console.error("haproxy is not installed (apt-get install haproxy): skipping pp1000ha.");
    profiles.splice(haproxy, 1);
  }
  const limit = await hardFileLimit();
  if (profiles.some((p) => p.mode === "idle") && limit < idleConns + 100) {
    console.error(
      `The open-file hard limit (ulimit -Hn) is ${limit}; ${fmt(idleConns)} idle connections ` +
        `need at least ${idleConns + 100} (Deno and the load client raise their soft limit to ` +
        `the hard limit themselves). As root: ulimit -Hn 65536, then run again. ` +
        `Skipping the idle profile.`,
    );
    profiles.splice(profiles.findIndex((p) => p.mode === "idle"), 1);
  }
  const machineText = await machine();
  const setup = `genio: ${[GENIO.path, ...GENIO.args].join(" ")}; raw: ${RAW.path}. ` +
    `Median of ${reps} repetitions (${idleReps} for idle), fresh servers each; in each, ` +
    `${warmup} s of warm-up, then ${duration} s per server in turns of ${flags.slice} ms. ` +
    (pin
      ? "Servers on CPU 0, load client on CPU 1 (for 1 conn, all on CPU 0)."
      : "No taskset: nothing pinned.");
  console.log(`Machine: ${machineText}\n${setup}`);

  const rows: Row[] = [];
  const scaleRows: Row[] = [];
  const all: Record<string, Rep[]> = {};
  let failed = false;
  let repeated = 0;
  for (const profile of profiles) {
    const results: Rep[] = [];
    const n = profile.mode === "idle" ? idleReps : reps;
    for (let rep = 1; rep <= n; rep++) {
      const once = () =>
        profile.mode === "idle" ? idleRep(profile, rep, pin) : pairRep(profile, rep, pin);
      let result = await once();
      // Turns share out noise fairly, but heavy outside work still squeezes both servers
      // into its gaps: such a repetition is run again, and the quieter attempt kept. (Not
      // for genio against itself: its second CPU or HAProxy would count as outside work.)
      for (
        let attempt = 0;
        attempt < retries && noise(result.raw) > NOISE_LIMIT && result.raw.errors === 0 &&
        profile.label === undefined &&
        performance.now() - started < budgetMs;
        attempt++
      ) {
        console.log(
          `  ${profile.name} ${rep}/${n}: ${fmt(noise(result.raw))} % outside work, again`,
        );
        repeated++;
        const again = await once();
        if (again.raw.errors > 0 || noise(again.raw) < noise(result.raw)) result = again;
      }
      results.push(result);
      for (const server of ["raw", "genio"] as const) {
        const r = result[server];
        if (r.errors > 0) failed = true;
        const name = profile.servers?.[server].name ?? server;
        console.log(`  ${profile.name} ${rep}/${n} ${name.padEnd(5)} ${describe(r, profile.mode)}`);
      }
    }
    all[profile.name] = results;
    (profile.label ? scaleRows : rows).push(...rowsFor(profile, results));
  }
  const table = [
    ...rows.length > 0 ? [markdownTable(rows)] : [],
    ...scaleRows.length > 0 ? [markdownTable(scaleRows, ["baseline", "subject", "baseline"])] : [],
  ].join("\n\n") + (scaleRows.length > 0 ? `\n\n${SCALE_NOTE}` : "");
  const loadSeconds = (performance.now() - started) / 1000;
  const noises = profiles.flatMap((p) => p.label ? [] : all[p.name]).map((r) => noise(r.raw));
  const noisy = noises.filter((x) => x > NOISE_LIMIT).length;
  const noiseNote =
    `Outside work (other processes on the two CPUs) per repetition, median: ${
      fmt(median(noises), 1)
    } %; ${repeated} repetition(s) run again for more than ${NOISE_LIMIT} %` +
    (noisy === 0 ? "." : `, ${noisy} kept with more: CPU-starved servers look alike, so ` +
      "their ratios err towards 1. Run again on a quieter machine.");
  console.log(`\n${table}\n\n${noiseNote}\nLoad profiles took ${fmt(loadSeconds)} s.`);

  let micro = "";
  if (!flags["no-micro"]) {
    console.log("\nKernel microbenchmarks (deno bench bench/kernel_bench.ts):");
    micro = await microbenchmarks();
    console.log(`\n${micro}`);
  }
  const total = (performance.now() - started) / 1000;
  console.log(`\nTook ${fmt(total)} s in all.`);
  Deno.mkdirSync(BUILD_DIR, { recursive: true });
  Deno.writeTextFileSync(
    `${BUILD_DIR}/results.md`,
    `Machine: ${machineText}\n\n${setup}\n\n${table}\n\n${noiseNote}\n` +
      (micro ? `\n${micro}\n` : "") + `\nTook ${fmt(total)} s.\n`,
  );
  Deno.writeTextFileSync(
    `${BUILD_DIR}/results.json`,
    JSON.stringify({ machine: machineText, setup, profiles: all }, null, 1),
  );
  console.log("Wrote bench/.build/results.md and bench/.build/results.json.");
  return failed ? 1 : 0;
}

if (import.meta.main) Deno.exit(await main());
