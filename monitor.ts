/**
 * A console for a running {@linkcode Server}, in the manner of Curio's monitor: connect with
 * `nc 127.0.0.1 PORT` and type `ps`, `where ID`, `stats`, `cancel ID`, `help` or `quit`.
 * {@linkcode serveMonitor} runs it as tasks on the server's own scheduler, on loopback only,
 * and it ends with the server.
 *
 * @example Listing the tasks of a server
 * ```ts
 * import { serve } from "@genio/genio/tcp-server";
 * import { serveMonitor } from "@genio/genio/monitor";
 * import assert from "node:assert/strict";
 *
 * const server = serve({ hostname: "127.0.0.1", port: 0, onListen() {} });
 * const monitor = serveMonitor(server, { port: 0, onListen() {} });
 *
 * const conn = await Deno.connect({ hostname: "127.0.0.1", port: monitor.addr.port });
 * await conn.write(new TextEncoder().encode("ps\nquit\n"));
 * let text = "";
 * const buffer = new Uint8Array(4096);
 * for (let n; (n = await conn.read(buffer)) !== null;) {
 *   text += new TextDecoder().decode(buffer.subarray(0, n));
 * }
 * conn.close();
 * assert.match(text, /^ *1 +tcp-server +accepting +listener 127\.0\.0\.1:\d+ /m);
 *
 * await server.shutdown(); // the monitor ends with the server
 * ```
 *
 * @module
 */
import { closeQuietly } from "./_close_quietly.ts";
import { formatAddress } from "./_format.ts";
import { LIVE_STATES } from "./_server_stats.ts";
import { DEFAULT_IDLE_TIMEOUT_MS } from "./_server_options.ts";
import { describeWaitingOn } from "./_task_table.ts";
import { TimeoutError } from "./errors.ts";
import { cancel, join, type Operation, read, spawn, timeout, write } from "./intents.ts";
import type { Task, TaskInfo, TaskState } from "./scheduler.ts";
import { type Handler, type Server, type ServerStats, tcpServer } from "./tcp_server.ts";

/**
 * Options for {@linkcode serveMonitor}.
 *
 * @example
 * ```ts
 * import type { MonitorOptions } from "@genio/genio/monitor";
 *
 * const options: MonitorOptions = { port: 48802, idleTimeout: 60_000 };
 * ```
 */
export interface MonitorOptions {
  /**
   * The port on 127.0.0.1 to listen on; `0` picks a free one (read it from `addr`). The
   * monitor never listens on another address: the task list is for this machine only.
   *
   * @default {0}
   */
  port?: number;
  /**
   * How long a session's read or write may wait, in milliseconds, before the session is
   * closed: a client that stops reading is cut off like any other. `0` disables it.
   *
   * @default {300_000}
   */
  idleTimeout?: number;
  /**
   * Called once the monitor listens, with its address.
   *
   * @default {prints `Monitor on 127.0.0.1:PORT`}
   */
  onListen?: (addr: Deno.NetAddr) => void;
}

/**
 * A running monitor, as {@linkcode serveMonitor} returns it.
 *
 * @example
 * ```ts
 * import type { Monitor } from "@genio/genio/monitor";
 *
 * function where(monitor: Monitor): string {
 *   return `nc ${monitor.addr.hostname} ${monitor.addr.port}`;
 * }
 * ```
 */
export interface Monitor {
  /** The address the monitor listens on. */
  readonly addr: Deno.NetAddr;
  /** The monitor's root task, named `monitor`: every session is its descendant. */
  readonly task: Task<void>;
}

// Sessions open at once; more wait in the listen backlog until one ends.
const MAX_SESSIONS = 16;
const MAX_LINE_BYTES = 1024;
const READ_SIZE = 4096;
// How long `cancel` waits for the task's cleanup before answering without it.
const CANCEL_WAIT_MS = 5_000;
const LF = 10;

const PROMPT = "> ";
const COMMANDS = "commands: ps, where ID, stats, cancel ID, help, quit";
const HELP = `ps          every task: id, name, state, what it waits on, time left before its
            deadline, age, and bytes in and out for a connection
where ID    the task's parent chain and its children
stats       the server's figures, one per line
cancel ID   cancel a task; its cleanup runs (not the server's listener or the monitor)
help        this list
quit        end this session`;

/**
 * Starts a console for `server` on 127.0.0.1: a line protocol for `nc`, run as tasks on the
 * server's own scheduler (so `ps` lists them too) and ending with the server. Each command
 * is answered, then a `> ` prompt:
 *
 * - `ps`: one row per task: its id, name, state, what it waits on (the peer's address for
 *   a connection's read or write, the listener for an accept), the time left before its
 *   deadline, its age, and bytes in and out for a connection's task.
 * - `where ID`: the task's parent chain and its children.
 * - `stats`: {@linkcode Server.stats}, one figure per line.
 * - `cancel ID`: cancels the task and answers once its cleanup has run (or after 5 s). The
 *   server's listener task and the monitor's own tasks refuse, saying why.
 * - `help`, `quit`.
 *
 * An unknown command is answered with one line of help; a line over 1 KiB is refused and
 * the session goes on. At most 16 sessions are open at once; more wait until one ends.
 *
 * @param server The server to look into.
 * @param options The port and the sessions' idle limit.
 * @returns The running monitor.
 * @throws {Deno.errors.AddrInUse} When the port is taken.
 * @throws {Deno.errors.NotCapable} Without net permission for it.
 * @throws {RangeError} When `port` is not an integer from 0 to 65535.
 *
 * @example A session, as `nc` shows it
 * ```ts
 * import { serve } from "@genio/genio/tcp-server";
 * import { serveMonitor } from "@genio/genio/monitor";
 * import assert from "node:assert/strict";
 *
 * await using server = serve({ hostname: "127.0.0.1", port: 0, onListen() {} });
 * const { addr } = serveMonitor(server, { port: 0, onListen() {} });
 *
 * using conn = await Deno.connect({ hostname: "127.0.0.1", port: addr.port });
 * await conn.write(new TextEncoder().encode("stats\nquit\n"));
 * let text = "";
 * const buffer = new Uint8Array(4096);
 * for (let n; (n = await conn.read(buffer)) !== null;) {
 *   text += new TextDecoder().decode(buffer.subarray(0, n));
 * }
 * assert.match(text, /connections open: 0\n/); // after the "> " prompt
 * assert.match(text, /^bytes in: 0$/m);
 * assert.match(text, /bye\n$/);
 * ```
 */
export function serveMonitor(server: Server<Deno.Addr>, options?: MonitorOptions): Monitor {
  const port = options?.port ?? 0;
  if (!(Number.isInteger(port) && port >= 0 && port <= 65535)) {
    throw new RangeError(
      `Cannot serve the monitor: port must be an integer from 0 to 65535, got "${port}"`,
    );
  }
  const idleTimeout = options?.idleTimeout ?? DEFAULT_IDLE_TIMEOUT_MS;
  const onListen = options?.onListen ?? logListening;
  const listener = Deno.listen({ hostname: "127.0.0.1", port, transport: "tcp" });
  let task: Task<void>;
  try {
    const handler: Handler = (conn) => session(conn, server, task);
    task = server.scheduler.spawn(monitor(listener, server, handler, idleTimeout), {
      name: "monitor",
    });
  } catch (error) {
    listener.close();
    throw error;
  }
  onListen(listener.addr);
  return { addr: listener.addr, task };
}

// The monitor lives as long as the server's accept loop: when that task ends, its own end
// cancels the sessions still open.
function* monitor(
  listener: Deno.Listener,
  server: Server<Deno.Addr>,
  session: Handler,
  idleTimeout: number,
): Operation<void> {
  try {
    yield* spawn(
      tcpServer(listener, session, {
        maxConnections: MAX_SESSIONS,
        idleTimeout,
        onDisconnect() {},
        onAcceptError() {},
      }),
      { name: "monitor listener" },
    );
    try {
      yield* join(server.task);
    } catch (error) {
      // The server's failure is serve()'s to report; only our own cancellation goes on.
      if (!settled(server.task.state)) throw error;
    }
  } finally {
    closeQuietly(listener);
  }
}

function* session(
  conn: Deno.Conn,
  server: Server<Deno.Addr>,
  monitor: Task<void>,
): Operation<void> {
  const lines = new LineReader(conn);
  const say = (text: string) => write(conn, new TextEncoder().encode(text));
  yield* say(`genio monitor: type help for the commands\n${PROMPT}`);
  for (;;) {
    const line = yield* lines.readLine();
    if (line === null) return;
    if (line === TOO_LONG) {
      yield* say(`error: line over ${MAX_LINE_BYTES} bytes refused\n${PROMPT}`);
      continue;
    }
    if (/^[A-Z]+ \S+ HTTP\/\d/.test(line)) {
      yield* say("error: this is genio's monitor, a line console for nc, not an HTTP server\n");
      return;
    }
    const [command = "", argument, extra] = line.trim().split(/\s+/);
    if (command === "quit" || command === "exit") {
      yield* say("bye\n");
      return;
    }
    let answer: string;
    if (command === "") answer = "";
    else if (command === "help") answer = HELP;
    else if (command === "ps" && argument === undefined) answer = ps(server);
    else if (command === "stats" && argument === undefined) answer = formatStats(server.stats());
    else if (command === "where" && extra === undefined) answer = where(server, argument);
    else if (command === "cancel" && extra === undefined) {
      answer = yield* cancelTask(server, monitor, argument);
    } else {
      answer = `unknown command ${JSON.stringify(line.trim().slice(0, 40))}; ${COMMANDS}`;
    }
    yield* say(answer === "" ? PROMPT : `${answer}\n${PROMPT}`);
  }
}

function ps(server: Server<Deno.Addr>): string {
  const now = server.scheduler.now();
  const rows = server.scheduler.tasks().map((info) => {
    const connection = info.parent === server.task.id || info.bytesRead + info.bytesWritten > 0;
    return [
      String(info.id),
      info.name,
      info.state,
      waitingOn(info),
      info.deadline === null ? "-" : seconds(info.deadline - now),
      seconds(now - info.spawnedAt),
      connection ? String(info.bytesRead) : "-",
      connection ? String(info.bytesWritten) : "-",
    ];
  });
  return table(["ID", "NAME", "STATE", "WAITING ON", "DEADLINE", "AGE", "IN", "OUT"], rows);
}

function where(server: Server<Deno.Addr>, argument: string | undefined): string {
  const id = taskId(argument);
  if (id === null) return "usage: where ID (a task's id, as ps shows it)";
  const tasks = new Map(server.scheduler.tasks().map((info) => [info.id, info]));
  const task = tasks.get(id);
  if (task === undefined) return `no live task #${id}`;
  const lines = [describeTask(task)];
  for (let parent = task.parent; parent !== null;) {
    const info = tasks.get(parent);
    if (info === undefined) break;
    lines.push(`  under ${describeTask(info)}`);
    parent = info.parent;
  }
  const children = [...tasks.values()].filter((info) => info.parent === id);
  if (children.length === 0) lines.push("children: none");
  else lines.push("children:", ...children.map((info) => `  ${describeTask(info)}`));
  return lines.join("\n");
}

function* cancelTask(
  server: Server<Deno.Addr>,
  monitor: Task<void>,
  argument: string | undefined,
): Operation<string> {
  const id = taskId(argument);
  if (id === null) return "usage: cancel ID (a task's id, as ps shows it)";
  const task = server.scheduler.task(id);
  if (task === undefined) return `Cannot cancel #${id}: no live task has that id`;
  const named = `#${id} "${task.name}"`;
  if (task === server.task) {
    return `Cannot cancel ${named}: it is the server's listener task; ` +
      "stop the server with SIGINT or SIGTERM";
  }
  for (let up: Task<unknown> | null = task; up !== null; up = up.parent) {
    if (up === monitor) {
      return `Cannot cancel ${named}: it is one of the monitor's own tasks (quit ends a session)`;
    }
  }
  try {
    yield* timeout(CANCEL_WAIT_MS, cancel(task));
  } catch (error) {
    if (!(error instanceof TimeoutError)) throw error;
    return `cancel requested: ${named} is still cleaning up after ${CANCEL_WAIT_MS / 1000} s`;
  }
  return `cancelled ${named}`;
}

/**
 * Writes {@linkcode ServerStats} as the monitor's `stats` command does: one figure per
 * line, `label: value`, counts and bytes as plain integers.
 *
 * @param stats The figures, from {@linkcode Server.stats}.
 * @returns The lines, joined by `\n`.
 *
 * @example
 * ```ts
 * import { serve } from "@genio/genio/tcp-server";
 * import { formatStats } from "@genio/genio/monitor";
 * import assert from "node:assert/strict";
 *
 * await using server = serve({ hostname: "127.0.0.1", port: 0, onListen() {} });
 * const text = formatStats(server.stats());
 * assert.match(text, /^connections served: 0$/m);
 * assert.match(text, /^tasks accepting: 1$/m);
 * ```
 */
export function formatStats(stats: ServerStats): string {
  const { scheduler, eventLoopLag: lag, process } = stats;
  const byState = scheduler.byState;
  const lines = [
    `connections open: ${stats.connectionsOpen}`,
    `connections served: ${stats.connectionsTotal}`,
    `connections refused at the limit: ${stats.limitReached}`,
    ...Object.entries(stats.connectionErrors).map(([reason, n]) =>
      `connection errors ${reason}: ${n}`
    ),
    `bytes in: ${stats.bytesReceived}`,
    `bytes out: ${stats.bytesSent}`,
    `tasks: ${scheduler.tasks}`,
    ...LIVE_STATES.filter((state) => byState[state] !== undefined).map((state) =>
      `tasks ${state}: ${byState[state]}`
    ),
    `ready queue: ${scheduler.ready}`,
    `waiting to read: ${byState.reading ?? 0}`,
    `waiting to write: ${byState.writing ?? 0}`,
    `waiting to accept: ${byState.accepting ?? 0}`,
    `sleeping: ${byState.sleeping ?? 0}`,
    `timers: ${scheduler.timers}`,
    `event loop lag ms: ${lag.latest.toFixed(1)}`,
    `event loop lag max last minute ms: ${lag.maxLastMinute.toFixed(1)}`,
    `rss bytes: ${process.residentMemory}`,
    process.openFds === null
      ? "open fds: unknown (counted under deno run --allow-all)"
      : `open fds: ${process.openFds}`,
  ];
  return lines.join("\n");
}

const TOO_LONG: unique symbol = Symbol("too long");

// Lines of at most MAX_LINE_BYTES, read with plain `read` intents. A longer line is skipped
// to its end and reported as TOO_LONG, so the session never holds more than a line and a
// read, and goes on. (`Stream.readLine()` gives up on its stream after a line too long.)
class LineReader {
  #conn: Deno.Conn;
  #buffer = new Uint8Array(READ_SIZE);
  #start = 0;
  #end = 0;
  #line = new Uint8Array(MAX_LINE_BYTES);
  #decoder = new TextDecoder();

  constructor(conn: Deno.Conn) {
    this.#conn = conn;
  }

  *readLine(): Operation<string | null | typeof TOO_LONG> {
    let length = 0;
    let tooLong = false;
    for (;;) {
      if (this.#start === this.#end) {
        const n = yield* read(this.#conn, this.#buffer);
        if (n === null) {
          if (length === 0 && !tooLong) return null;
          break; // the last line, without its newline
        }
        this.#start = 0;
        this.#end = n;
      }
      const rest = this.#buffer.subarray(this.#start, this.#end);
      const lf = rest.indexOf(LF);
      const piece = lf < 0 ? rest : rest.subarray(0, lf);
      this.#start = lf < 0 ? this.#end : this.#start + lf + 1;
      if (!tooLong && length + piece.length <= MAX_LINE_BYTES) {
        this.#line.set(piece, length);
        length += piece.length;
      } else {
        tooLong = true;
      }
      if (lf >= 0) break;
    }
    if (tooLong) return TOO_LONG;
    return this.#decoder.decode(this.#line.subarray(0, length)).replace(/\r$/, "");
  }
}

function waitingOn(info: TaskInfo): string {
  // A sleeper waits on its wake-up time, which the DEADLINE column shows.
  return typeof info.waitingOn === "number"
    ? "its wake-up time"
    : describeWaitingOn(info.waitingOn);
}

function describeTask(info: TaskInfo): string {
  const on = info.waitingOn === null ? "" : ` ${waitingOn(info)}`;
  return `#${info.id} "${info.name}" ${info.state}${on}`;
}

function taskId(argument: string | undefined): number | null {
  return argument !== undefined && /^#?\d{1,15}$/.test(argument)
    ? Number(argument.replace("#", ""))
    : null;
}

function seconds(ms: number): string {
  return `${(Math.max(0, ms) / 1000).toFixed(1)}s`;
}

function table(header: readonly string[], rows: readonly string[][]): string {
  const widths = header.map((title, i) =>
    rows.reduce((width, row) => Math.max(width, row[i].length), title.length)
  );
  // The id is right-aligned, as numbers are; the last column is not padded.
  const line = (cells: readonly string[]) =>
    cells.map((cell, i) =>
      i === 0 ? cell.padStart(widths[i]) : i === cells.length - 1 ? cell : cell.padEnd(widths[i])
    ).join("  ");
  return [line(header), ...rows.map(line)].join("\n");
}

function settled(state: TaskState): boolean {
  return state === "done" || state === "failed" || state === "cancelled";
}

function logListening(addr: Deno.NetAddr): void {
  console.log(`Monitor on ${formatAddress(addr)}`);
}
