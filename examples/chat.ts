/**
 * A line chat room over TCP, on genio: `deno run --allow-net examples/chat.ts`, then talk to it
 * with `nc 127.0.0.1 25001` from a few terminals. `--help` says the rest.
 *
 * Each client is a task (run by `serve()`) that reads its lines with a {@linkcode Stream}, and
 * a child task that writes what its bounded outbox {@linkcode Queue} holds. A line is put in
 * every other client's outbox; a put into an outbox with room never waits, so nobody waits for
 * a slow client: one whose outbox is full is dropped instead. Dropping sets the client's
 * {@linkcode Event}, which ends the {@linkcode race} its task runs between talking and being
 * dropped.
 *
 * @module
 */
import {
  Event,
  join,
  LineTooLong,
  type Operation,
  Queue,
  QueueClosed,
  race,
  serve,
  type Server,
  spawn,
  Stream,
  timeout,
  TimeoutError,
} from "../mod.ts";
import { describe, formatAddress, integerFlag, parseFlags, runMain, UsageError } from "./_cli.ts";

const DEFAULT_HOSTNAME = "127.0.0.1";
const DEFAULT_PORT = 25001;
const OUTBOX_LINES = 64;
const MAX_LINE_BYTES = 4096;
// How long a leaving client has to take the lines still queued for it, such as "* Bye.".
const FLUSH_MS = 5_000;
const NAME = /^[\p{L}\p{N}_.-]{1,32}$/u;

const HELP = `genio chat: a line chat room over TCP.

Usage: deno run --allow-net examples/chat.ts [options]

Options:
  -p, --port <port>         Port to listen on; 0 picks a free one (default ${DEFAULT_PORT})
      --hostname <address>  Address to listen on (default ${DEFAULT_HOSTNAME}); 0.0.0.0 or ::
                            opens the room to the network
  -h, --help                Print this help and exit

Connect with a line client (nc ${DEFAULT_HOSTNAME} ${DEFAULT_PORT}): you join as guest-N and can
talk at once; each line you send reaches everyone else as "NAME: line". Commands:
/nick NAME, /who, /quit, /help.

Limits: a client has an outbox of ${OUTBOX_LINES} lines; a client too slow to take them is
dropped, and the room told. A line over ${MAX_LINE_BYTES} bytes is refused: its sender is told,
and disconnected.

Output: "Listening on HOST:PORT" first, then a line per arrival, departure, drop and new
name on stdout; failures on stderr. Exit status: 1 when it cannot listen, 2 for a bad
command line.`;

const COMMANDS: readonly string[] = [
  "* /nick NAME  take a new name (letters, digits, _ . -; up to 32)",
  "* /who        list who is here",
  "* /quit       leave",
  "* /help       this list",
  '* Any other line goes to everyone else as "NAME: line".',
];

interface Member {
  name: string;
  readonly peer: string;
  readonly outbox: Queue<string>;
  readonly dropped: Event;
  farewell: string; // what the room is told when it leaves
}

class Room {
  #members = new Set<Member>(); // in order of arrival
  #names = new Map<string, Member>();
  #guests = 0;

  get size(): number {
    return this.#members.size;
  }

  names(): string[] {
    return [...this.#members].map((member) => member.name);
  }

  enter(peer: string): Member {
    let name: string;
    do name = `guest-${++this.#guests}`; while (this.#names.has(name));
    const member: Member = {
      name,
      peer,
      outbox: new Queue<string>(OUTBOX_LINES),
      dropped: new Event(),
      farewell: "left",
    };
    this.#members.add(member);
    this.#names.set(name, member);
    console.log(`${name} joined from ${peer}`);
    return member;
  }

  // Returns whether `member` was still in the room.
  leave(member: Member): boolean {
    if (!this.#members.delete(member)) return false;
    this.#names.delete(member.name);
    console.log(`${member.name} ${member.farewell}`);
    return true;
  }

  // Returns why not, or `null` once renamed.
  rename(member: Member, name: string): string | null {
    if (!NAME.test(name)) return 'A name is 1 to 32 letters, digits, "_", "." or "-"';
    if (name === member.name) return `You are ${name} already`;
    if (this.#names.has(name)) return `${name} is taken`;
    console.log(`${member.name} is now ${name}`);
    this.#names.delete(member.name);
    this.#names.set(name, member);
    member.name = name;
    return null;
  }

  // Puts `line` in every outbox but `except`'s.
  *broadcast(line: string, except: Member | null): Operation<void> {
    const dropped: Member[] = [];
    for (const member of this.#members) {
      if (member !== except) yield* this.#post(member, line, dropped);
    }
    yield* this.#tellDropped(dropped);
  }

  *tell(member: Member, line: string): Operation<void> {
    const dropped: Member[] = [];
    yield* this.#post(member, line, dropped);
    yield* this.#tellDropped(dropped);
  }

  // A put into an outbox with room returns at once, so the sender never waits for a
  // recipient; a recipient whose outbox is full is dropped instead.
  *#post(member: Member, line: string, dropped: Member[]): Operation<void> {
    if (member.outbox.closed) return; // leaving
    if (member.outbox.size < member.outbox.capacity) return yield* member.outbox.put(line);
    member.farewell = "was dropped: too slow";
    this.leave(member);
    member.dropped.set();
    dropped.push(member);
  }

  *#tellDropped(dropped: readonly Member[]): Operation<void> {
    for (const member of dropped) {
      yield* this.broadcast(`* ${member.name} ${member.farewell}`, null);
    }
  }
}

// One client's task: talk until it leaves, or until the room drops it.
function* chatClient(room: Room, conn: Deno.Conn): Operation<void> {
  (conn as Deno.TcpConn).setNoDelay(true); // each line out at once, not held back by Nagle
  const stream = new Stream(conn, { maxLineBytes: MAX_LINE_BYTES });
  const member = room.enter(formatAddress(conn.remoteAddr as Deno.NetAddr));
  try {
    yield* race([converse(room, member, stream), member.dropped.wait()]);
  } finally {
    if (room.leave(member)) yield* room.broadcast(`* ${member.name} ${member.farewell}`, null);
  }
}

function* converse(room: Room, member: Member, stream: Stream): Operation<void> {
  const writer = yield* spawn(deliver(member.outbox, stream), { name: `outbox ${member.peer}` });
  try {
    const others = room.size - 1;
    yield* room.tell(
      member,
      `* Welcome, ${member.name}! ${others} other${others === 1 ? "" : "s"} here. ` +
        "/help lists the commands.",
    );
    yield* room.broadcast(`* ${member.name} joined`, member);
    for (let line; (line = yield* nextLine(room, member, stream)) !== null;) {
      if (!(yield* obey(room, member, line))) break;
    }
  } finally {
    member.outbox.close(); // the writer sends what is queued, then ends
  }
  try {
    yield* timeout(FLUSH_MS, join(writer));
  } catch (error) {
    if (!(error instanceof TimeoutError)) throw error;
  }
}

function* nextLine(room: Room, member: Member, stream: Stream): Operation<string | null> {
  try {
    return yield* stream.readLine();
  } catch (error) {
    if (error instanceof LineTooLong) {
      yield* room.tell(member, `* Line refused: longer than ${MAX_LINE_BYTES} bytes. Bye.`);
      member.farewell = `was disconnected: a line over ${MAX_LINE_BYTES} bytes`;
      return null;
    }
    if (peerGone(error)) return null;
    throw error;
  }
}

// Returns false when the client asked to leave.
function* obey(room: Room, member: Member, line: string): Operation<boolean> {
  if (!line.startsWith("/")) {
    if (line !== "") yield* room.broadcast(`${member.name}: ${line}`, member);
    return true;
  }
  const [command, ...words] = line.split(" ");
  const argument = words.join(" ").trim();
  switch (command) {
    case "/nick": {
      const old = member.name;
      const problem = room.rename(member, argument);
      if (problem === null) yield* room.broadcast(`* ${old} is now ${member.name}`, null);
      else yield* room.tell(member, `* ${problem}`);
      return true;
    }
    case "/who":
      yield* room.tell(member, `* Here: ${room.names().join(", ")}`);
      return true;
    case "/help":
      for (const text of COMMANDS) yield* room.tell(member, text);
      return true;
    case "/quit":
      yield* room.tell(member, "* Bye.");
      return false;
    default:
      yield* room.tell(member, `* Unknown command ${command}: /help lists the commands`);
      return true;
  }
}

// The client's writer: its outbox's lines, in order, until the outbox is closed and empty.
function* deliver(outbox: Queue<string>, stream: Stream): Operation<void> {
  try {
    for (;;) yield* stream.writeLine(yield* outbox.get());
  } catch (error) {
    if (!(error instanceof QueueClosed) && !peerGone(error)) throw error;
  }
}

function peerGone(error: unknown): boolean {
  return error instanceof Deno.errors.ConnectionReset ||
    error instanceof Deno.errors.BrokenPipe ||
    error instanceof Deno.errors.ConnectionAborted ||
    error instanceof Deno.errors.NotConnected;
}

async function main(args: readonly string[]): Promise<number> {
  const flags = parseFlags(args, {
    port: { type: "string", short: "p" },
    hostname: { type: "string" },
    help: { type: "boolean", short: "h" },
  });
  if (flags.help) {
    console.log(HELP);
    return 0;
  }
  const hostname = flags.hostname ?? DEFAULT_HOSTNAME;
  if (hostname === "") throw new UsageError("--hostname must not be empty");
  const port = integerFlag("--port", flags.port, DEFAULT_PORT, 0, 65535);
  const room = new Room();
  let server: Server;
  try {
    // A chat client may be quiet for hours: no idle limit. serve() prints "Listening on".
    server = serve({
      hostname,
      port,
      idleTimeout: 0,
      handler: (conn) => chatClient(room, conn),
    });
  } catch (error) {
    console.error(
      `error: Cannot listen on ${formatAddress({ hostname, port })}: ${describe(error)}`,
    );
    return 1;
  }
  await server.finished;
  return 0;
}

if (import.meta.main) await runMain(() => main(Deno.args));
