// Where the figures of `Server.stats()` come from that are not counters: why a connection
// failed, how late the event loop runs, and what the process holds. None of it runs per
// message: a connection is classified once when it ends, and the lag sampler only exists
// once somebody asked for the figures.
import { Cancelled, TimeoutError } from "./errors.ts";
import type { TaskState } from "./scheduler.ts";
import type { ConnectionErrorReason, EventLoopLag, ProcessStats } from "./tcp_server.ts";

// Every state a live task can be in, in the order the console and the metrics list them.
export const LIVE_STATES: readonly TaskState[] = [
  "ready",
  "running",
  "reading",
  "writing",
  "accepting",
  "connecting",
  "sleeping",
  "joining",
  "waiting",
];

// What a connection's end says about why it failed, or null when it did not (it returned,
// or was cancelled by a shutdown or an operator).
export function errorReason(error: unknown): ConnectionErrorReason | null {
  if (error === undefined || error instanceof Cancelled) return null;
  if (error instanceof TimeoutError) return "timeout";
  if (
    error instanceof Deno.errors.ConnectionReset ||
    error instanceof Deno.errors.ConnectionAborted ||
    error instanceof Deno.errors.BrokenPipe ||
    error instanceof Deno.errors.UnexpectedEof
  ) return "reset";
  // rustls reports a failed handshake or a corrupt record as InvalidData.
  if (error instanceof Deno.errors.InvalidData) return "tls";
  if (error instanceof Error && /\b(tls|certificate|handshake)\b/i.test(error.message)) {
    return "tls";
  }
  return "other";
}

// How late a timer fires tells how long the event loop was busy: a timer is set every
// INTERVAL_MS and each firing records how far past its time it ran. The timer is unref'd, so
// it never keeps the process alive on its own.
const INTERVAL_MS = 100;
// Bucket bounds in milliseconds, as Prometheus clients' defaults run in seconds.
const BOUNDS_MS: readonly number[] = [1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500];
const WINDOW_S = 60;

export class LagSampler {
  #timer: ReturnType<typeof setTimeout> | null = null;
  #due = 0;
  #latest = 0;
  #counts: number[] = new Array(BOUNDS_MS.length + 1).fill(0);
  #sum = 0;
  #count = 0;
  // The largest lag seen in each of the last WINDOW_S seconds, by second.
  #maxOf = new Float64Array(WINDOW_S);
  #secondOf = new Float64Array(WINDOW_S).fill(-1);

  start(): void {
    if (this.#timer === null) this.#schedule();
  }

  stop(): void {
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
  }

  #schedule(): void {
    this.#due = performance.now() + INTERVAL_MS;
    const timer = setTimeout(this.#fire, INTERVAL_MS);
    Deno.unrefTimer(timer);
    this.#timer = timer;
  }

  #fire = (): void => {
    const now = performance.now();
    this.#record(Math.max(0, now - this.#due), now);
    this.#schedule();
  };

  #record(lag: number, now: number): void {
    this.#latest = lag;
    this.#sum += lag;
    this.#count++;
    let i = 0;
    while (i < BOUNDS_MS.length && lag > BOUNDS_MS[i]) i++;
    this.#counts[i]++;
    const second = Math.floor(now / 1000);
    const slot = second % WINDOW_S;
    if (this.#secondOf[slot] !== second) {
      this.#secondOf[slot] = second;
      this.#maxOf[slot] = 0;
    }
    if (lag > this.#maxOf[slot]) this.#maxOf[slot] = lag;
  }

  snapshot(): EventLoopLag {
    const second = Math.floor(performance.now() / 1000);
    let max = 0;
    for (let slot = 0; slot < WINDOW_S; slot++) {
      if (second - this.#secondOf[slot] < WINDOW_S && this.#maxOf[slot] > max) {
        max = this.#maxOf[slot];
      }
    }
    let cumulative = 0;
    const buckets = this.#counts.map((count, i) => ({
      le: BOUNDS_MS[i] ?? Infinity,
      count: cumulative += count,
    }));
    return {
      latest: this.#latest,
      maxLastMinute: max,
      buckets,
      sum: this.#sum,
      count: this.#count,
    };
  }
}

// Open file descriptors are counted in /proc/self/fd, which Deno lets a program read only
// under --allow-all (any /proc/self path could be a way around its permissions). Without
// it the figure is unknown: read permission is only queried, since asking would prompt an
// operator at a terminal in the middle of a scrape.
export function processStats(): ProcessStats {
  return {
    residentMemory: Deno.memoryUsage().rss,
    openFds: openFds(),
    startTime: performance.timeOrigin,
  };
}

function openFds(): number | null {
  const path = "/proc/self/fd";
  if (Deno.build.os !== "linux") return null;
  if (Deno.permissions.querySync({ name: "read", path }).state !== "granted") return null;
  try {
    let n = 0;
    for (const _ of Deno.readDirSync(path)) n++;
    return n;
  } catch {
    return null;
  }
}
