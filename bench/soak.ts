/**
 * The soak: the real echo server (`server.ts`, as an operator runs it) under mixed traffic for
 * a number of minutes — ping-pong, bulk streams, connect-then-close churn, resets in the middle
 * of a read and of a write, binary garbage, silent clients and slowlorises — every well-behaved
 * conversation checked by digest. At every interval the traffic pauses until the server is at
 * rest, and one line shows its RSS and open descriptors then, with what it served; the last
 * lines compare the first third of the run with the last.
 *
 * ```sh
 * deno task soak                  # one minute
 * deno task soak --minutes 10     # the run reported in the README
 * ```
 *
 * Exits 1 if a conversation went wrong, the server printed a failure it should not have, or
 * the RSS or descriptor counts at rest trend upward.
 *
 * @module
 */
import { parseFlags } from "./_flags.ts";
import {
  childRunning,
  connect,
  delay,
  EchoTally,
  garbageConversation,
  openFds,
  payload,
  pingPong,
  Random,
  ResettingClient,
  rss,
  startServer,
  stream,
  type Tally,
  within,
} from "./_from_tests.ts";

const { values: flags } = parseFlags("soak", {
  args: Deno.args,
  options: {
    minutes: { type: "string", default: "1" },
    interval: { type: "string" },
    lanes: { type: "string", default: "48" },
    "idle-timeout": { type: "string", default: "2" },
    seed: { type: "string", default: "7" },
  },
}, ["minutes", "interval", "lanes", "idle-timeout", "seed"]);

const minutes = Number(flags.minutes);
const intervalS = Number(flags.interval ?? (minutes >= 5 ? 30 : 10));
const laneCount = Number(flags.lanes);
const idleS = Number(flags["idle-timeout"]);
const seed = Number(flags.seed);
for (const [name, value] of [["minutes", minutes], ["interval", intervalS], ["lanes", laneCount]]) {
  if (!(Number(value) > 0)) {
    console.error(`soak: --${name} must be a positive number`);
    Deno.exit(2);
  }
}

const MB = 1024 * 1024;
const CONVERSATION_MS = 60_000;

interface Counters {
  conversations: number;
  connections: number;
  checkedBytes: number;
  errors: number;
}

const totals: Counters = { conversations: 0, connections: 0, checkedBytes: 0, errors: 0 };
const byKind = new Map<string, number>();
const firstErrors: string[] = [];

function fail(kind: string, error: unknown): void {
  totals.errors++;
  if (firstErrors.length < 10) {
    const text = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
    firstErrors.push(`${kind}: ${text.split("\n", 1)[0]}`);
  }
}

function checked(tally: Tally, what: string): void {
  if (tally.receivedBytes !== tally.sentBytes || tally.receivedDigest !== tally.sentDigest) {
    throw new Error(
      `${what}: sent ${tally.sentBytes} bytes (sha256 ${tally.sentDigest.slice(0, 12)}), ` +
        `got back ${tally.receivedBytes} (sha256 ${tally.receivedDigest.slice(0, 12)})`,
    );
  }
  totals.checkedBytes += tally.sentBytes;
}

// --- the kinds of traffic ---------------------------------------------------------------------

type Kind = (port: number, random: Random) => Promise<void>;

const KINDS: Record<string, { weight: number; run: Kind }> = {
  pingpong: {
    weight: 35,
    async run(port, random) {
      using conn = await connect(port);
      totals.connections++;
      const messages = random.between(1, 40);
      checked(
        await pingPong(conn, { messages, maxSize: random.between(16, 8192), random }),
        "ping-pong",
      );
    },
  },
  bulk: {
    weight: 8,
    async run(port, random) {
      using conn = await connect(port);
      totals.connections++;
      const bytes = random.between(64 * 1024, 2 * MB);
      checked(await stream(conn, { bytes, maxWrite: 64 * 1024, random }), "bulk");
    },
  },
  churn: {
    weight: 20,
    async run(port) {
      for (let i = 0; i < 20; i++) {
        (await connect(port)).close();
        totals.connections++;
      }
    },
  },
  "reset-read": {
    weight: 8,
    async run(port, random) {
      const client = await ResettingClient.connect(port, { read: true });
      totals.connections++;
      const message = payload(random, random.between(1, 4096));
      await client.write(message);
      const deadline = performance.now() + 5_000;
      while (client.received < message.length + 4 && performance.now() < deadline) await delay(2);
      await client.reset();
    },
  },
  "reset-write": {
    weight: 5,
    async run(port, random) {
      const client = await ResettingClient.connect(port, { read: false });
      totals.connections++;
      client.flood(payload(random, 64 * 1024));
      await delay(random.between(20, 200));
      await client.reset();
    },
  },
  garbage: {
    weight: 10,
    async run(port, random) {
      using conn = await connect(port);
      totals.connections++;
      const messages = random.between(1, 10);
      checked(await garbageConversation(conn, { random, messages, maxChunk: 16384 }), "garbage");
    },
  },
  idle: {
    weight: 7,
    async run(port) {
      // The server's clock for this client cannot start before the client connects.
      const started = performance.now();
      using conn = await connect(port);
      totals.connections++;
      const n = await conn.read(new Uint8Array(16)).catch(() => null);
      const waited = performance.now() - started;
      if (n !== null) throw new Error("a silent client was sent something");
      if (waited < idleS * 1000 - 2) throw new Error(`closed after ${waited.toFixed(0)} ms idle`);
    },
  },
  slowloris: {
    weight: 7,
    async run(port) {
      using conn = await connect(port);
      totals.connections++;
      const tally = new EchoTally();
      const reply = new Uint8Array(16);
      for (let i = 0; i < 2; i++) {
        await delay(idleS * 800);
        const byte = new Uint8Array([0x2e]);
        tally.sent(byte);
        await conn.write(byte);
        while (!tally.balanced) {
          const n = await conn.read(reply);
          if (n === null) throw new Error("a slowloris under the idle timeout was closed");
          tally.received(reply.subarray(0, n));
        }
      }
      checked(tally.finish(), "slowloris");
    },
  },
};

const WEIGHTS = Object.entries(KINDS).flatMap(([name, { weight }]) => Array(weight).fill(name));

// --- lanes, pauses and samples ----------------------------------------------------------------

let stopping = false;
let pause: PromiseWithResolvers<void> | null = null;
let parked = 0;

async function lane(id: number, port: number): Promise<void> {
  const random = new Random(seed * 1000 + id);
  while (!stopping) {
    if (pause !== null) {
      parked++;
      await pause.promise;
      parked--;
      continue;
    }
    const kind = WEIGHTS[random.between(0, WEIGHTS.length - 1)];
    try {
      await within(CONVERSATION_MS, kind, () => KINDS[kind].run(port, random));
      totals.conversations++;
      byKind.set(kind, (byKind.get(kind) ?? 0) + 1);
    } catch (error) {
      fail(kind, error);
    }
  }
}

interface Sample {
  elapsedS: number;
  rssMB: number;
  fds: number;
  liveFds: number;
  counters: Counters;
}

// Pauses the traffic, waits until every lane is between conversations and the server's
// descriptors have stopped falling, samples, and lets the traffic go on.
async function sample(pid: number, started: number, restingFds: number): Promise<Sample> {
  const liveFds = (await openFds(pid)).size;
  pause = Promise.withResolvers<void>();
  try {
    while (parked < laneCount) await delay(10);
    let fds = (await openFds(pid)).size;
    for (let settle = 0; fds > restingFds && settle < 40; settle++) {
      await delay(50);
      fds = (await openFds(pid)).size;
    }
    return {
      elapsedS: (performance.now() - started) / 1000,
      rssMB: await rss(pid) / MB,
      fds,
      liveFds,
      counters: { ...totals },
    };
  } finally {
    pause.resolve();
    pause = null;
  }
}

function mean(values: number[]): number {
  return values.reduce((sum, value) => sum + value, 0) / values.length;
}

// Least-squares slope of `ys` against `xs`.
function slope(xs: number[], ys: number[]): number {
  const mx = mean(xs);
  const my = mean(ys);
  let num = 0;
  let den = 0;
  for (let i = 0; i < xs.length; i++) {
    num += (xs[i] - mx) * (ys[i] - my);
    den += (xs[i] - mx) ** 2;
  }
  return den === 0 ? 0 : num / den;
}

const pad = (value: string | number, width: number) => String(value).padStart(width);

function printSample(s: Sample, previous: Sample | null): void {
  const seconds = s.elapsedS - (previous?.elapsedS ?? 0);
  const conns = s.counters.connections - (previous?.counters.connections ?? 0);
  const columns = [
    pad(`${s.elapsedS.toFixed(0)} s`, 9),
    pad(s.rssMB.toFixed(1), 8),
    pad(s.fds, 6),
    pad(s.liveFds, 9),
    pad(s.counters.connections, 12),
    pad((conns / seconds).toFixed(0), 8),
    pad((s.counters.checkedBytes / MB).toFixed(0), 11),
    pad(s.counters.errors, 7),
  ];
  console.log(columns.join(" "));
}

async function main(): Promise<number> {
  const server = await startServer([
    ...["--port", "0", "--quiet", "--idle-timeout", String(idleS), "--grace", "5"],
  ]);
  const pid = await childRunning("server.ts");
  const restingFds = (await openFds(pid)).size;
  console.log(
    `genio soak: ${minutes} min of mixed traffic from ${laneCount} lanes against server.ts ` +
      `(pid ${pid}, 127.0.0.1:${server.port}, --idle-timeout ${idleS}); at rest: ` +
      `${(await rss(pid) / MB).toFixed(1)} MB RSS, ${restingFds} fds`,
  );
  console.log("  elapsed   RSS MB    fds  live fds  connections  conns/s  MB checked  errors");
  console.log("          (at rest) (at rest)");

  const started = performance.now();
  const lanes = Array.from({ length: laneCount }, (_, id) => lane(id, server.port));
  const samples: Sample[] = [];
  const end = started + minutes * 60_000;
  for (let next = started + intervalS * 1000; next <= end + 1; next += intervalS * 1000) {
    await delay(Math.max(0, next - performance.now()));
    const s = await sample(pid, started, restingFds);
    printSample(s, samples.at(-1) ?? null);
    samples.push(s);
  }
  stopping = true;
  await Promise.all(lanes);

  server.kill("SIGTERM");
  const exit = await server.exited();
  const stderr = exit.stderr;
  const timedOut = stderr.filter((line) => / timed out after /.test(line)).length;
  const reset = stderr.filter((line) => / failed: (ConnectionReset|BrokenPipe)/.test(line)).length;
  const other = stderr.filter((line) =>
    !/ timed out after /.test(line) && !/ failed: (ConnectionReset|BrokenPipe)/.test(line)
  );
  console.log(
    `\nserver: exit ${exit.code}, "${exit.stdout.at(-1)}"; stderr: ${timedOut} idle timeouts, ` +
      `${reset} resets, ${other.length} other`,
  );
  for (const line of other.slice(0, 5)) console.log(`  ${line}`);
  console.log(
    `traffic: ${totals.conversations} conversations (` +
      [...byKind].map(([kind, n]) => `${kind} ${n}`).join(", ") +
      `), ${totals.connections} connections, ${(totals.checkedBytes / MB).toFixed(0)} MB ` +
      `answered exactly once by digest, ${totals.errors} errors`,
  );
  for (const error of firstErrors) console.log(`  ${error}`);

  // The first fifth of the run is the warm-up, while V8 grows its heap to the traffic's working
  // set; the trend is read over the rest, first third against last third.
  const warm = samples.filter((s) => s.elapsedS > minutes * 12);
  const steady = warm.length >= 3 ? warm : samples;
  const third = Math.max(1, Math.floor(steady.length / 3));
  const first = steady.slice(0, third);
  const last = steady.slice(-third);
  const rssFirst = mean(first.map((s) => s.rssMB));
  const rssLast = mean(last.map((s) => s.rssMB));
  const rssSlope = slope(steady.map((s) => s.elapsedS / 60), steady.map((s) => s.rssMB));
  const fdsFirst = mean(first.map((s) => s.fds));
  const fdsLast = mean(last.map((s) => s.fds));
  const rssGrowth = (rssLast - rssFirst) / rssFirst;
  console.log(
    `after the warm-up (${steady[0].elapsedS.toFixed(0)} s on, ${steady.length} samples):`,
  );
  console.log(
    `RSS at rest: first third ${rssFirst.toFixed(1)} MB, last third ${rssLast.toFixed(1)} MB ` +
      `(${rssGrowth >= 0 ? "+" : ""}${(100 * rssGrowth).toFixed(1)}%), slope ` +
      `${rssSlope >= 0 ? "+" : ""}${rssSlope.toFixed(2)} MB/min, max ` +
      `${Math.max(...samples.map((s) => s.rssMB)).toFixed(1)} MB`,
  );
  console.log(
    `fds at rest: first third ${fdsFirst.toFixed(1)}, last third ${fdsLast.toFixed(1)}, ` +
      `at start ${restingFds}, max ${Math.max(...samples.map((s) => s.fds))}`,
  );
  const rssTrend = rssLast > rssFirst * 1.05 + 2;
  const fdsTrend = fdsLast > fdsFirst || Math.max(...samples.map((s) => s.fds)) > restingFds;
  const healthy = totals.errors === 0 && other.length === 0 && exit.code === 0;
  const verdict = rssTrend || fdsTrend
    ? `upward trend in ${[rssTrend && "RSS", fdsTrend && "fds"].filter(Boolean).join(" and ")}`
    : "no upward trend";
  const short = minutes < 5 ? " (a run under 5 minutes is too short to judge a trend)" : "";
  console.log(`verdict: ${verdict}${short}; ${healthy ? "no errors" : "ERRORS (see above)"}`);
  return rssTrend || fdsTrend || !healthy ? 1 : 0;
}

Deno.exit(await main());
