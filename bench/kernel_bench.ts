/**
 * Microbenchmarks of the kernel, each next to the plain async-function equivalent (the
 * group's baseline): a bare-yield task switch, spawn + join, a read/write round trip over a
 * loopback socket pair, and an echo loop over conns whose calls settle at once, which
 * leaves nothing but the kernel's own cost per message (over 100 conns, and over one with
 * `server.ts`'s own handler and its idle deadline). Every name starts with how many
 * operations one iteration does (`deno task bench` divides by it).
 *
 * ```sh
 * deno bench --allow-net bench/kernel_bench.ts
 * ```
 *
 * @module
 */
import { join, type Operation, read, Scheduler, spawn, write } from "../mod.ts";
import { echoHandler } from "../echo.ts";
import { loopback } from "./_from_tests.ts";

const SWITCHES = 1000;
const SPAWNS = 100;
const ROUND_TRIPS = 100;
const CONNS = 100;
const MESSAGES = 100;
const MESSAGE: Uint8Array = new Uint8Array(64).fill(97);

// --- a task switch ---------------------------------------------------------------------

function* yielder(n: number): Operation<void> {
  for (let i = 0; i < n; i++) yield;
}

async function awaiter(n: number): Promise<void> {
  for (let i = 0; i < n; i++) await null;
}

Deno.bench({
  name: `async: ${SWITCHES} switches between two async functions (await null)`,
  group: "switch",
  baseline: true,
  async fn() {
    await Promise.all([awaiter(SWITCHES / 2), awaiter(SWITCHES / 2)]);
  },
});

Deno.bench({
  name: `genio: ${SWITCHES} switches between two tasks (bare yield)`,
  group: "switch",
  async fn() {
    const scheduler = new Scheduler();
    scheduler.spawn(yielder(SWITCHES / 2));
    scheduler.spawn(yielder(SWITCHES / 2));
    await scheduler.run();
  },
});

// --- spawn + join ----------------------------------------------------------------------

// deno-lint-ignore require-yield
function* child(x: number): Operation<number> {
  return x + 1;
}

async function asyncChild(x: number): Promise<number> {
  return await x + 1;
}

Deno.bench({
  name: `async: ${SPAWNS} × call an async function and await it`,
  group: "spawn + join",
  baseline: true,
  async fn() {
    let x = 0;
    for (let i = 0; i < SPAWNS; i++) x = await asyncChild(x);
    if (x !== SPAWNS) throw new Error("wrong sum");
  },
});

Deno.bench({
  name: `genio: ${SPAWNS} × spawn a child task and join it`,
  group: "spawn + join",
  async fn() {
    const scheduler = new Scheduler();
    const parent = scheduler.spawn(function* (): Operation<number> {
      let x = 0;
      for (let i = 0; i < SPAWNS; i++) x = yield* join(yield* spawn(child(x)));
      return x;
    }());
    await scheduler.run();
    if (await parent.result !== SPAWNS) throw new Error("wrong sum");
  },
});

// --- a round trip over a socket pair -------------------------------------------------------

// Each round trip is four Deno calls: a writes, b reads, b writes it back, a reads.
async function asyncRoundTrips(a: Deno.Conn, b: Deno.Conn): Promise<void> {
  const buffer = new Uint8Array(1024);
  for (let i = 0; i < ROUND_TRIPS; i++) {
    await a.write(MESSAGE);
    const n = await b.read(buffer);
    await b.write(buffer.subarray(0, n!));
    await a.read(buffer);
  }
}

function* genioRoundTrips(a: Deno.Conn, b: Deno.Conn): Operation<void> {
  const buffer = new Uint8Array(1024);
  for (let i = 0; i < ROUND_TRIPS; i++) {
    yield* write(a, MESSAGE);
    const n = yield* read(b, buffer);
    yield* write(b, buffer.subarray(0, n!));
    yield* read(a, buffer);
  }
}

Deno.bench({
  name: `async: ${ROUND_TRIPS} 64-byte round trips over a loopback socket pair (await)`,
  group: "read/write round trip",
  baseline: true,
  n: 200,
  async fn(b) {
    using pair = await loopback();
    b.start();
    await asyncRoundTrips(pair.client, pair.server);
    b.end();
  },
});

Deno.bench({
  name: `genio: ${ROUND_TRIPS} 64-byte round trips over a loopback socket pair (yield*)`,
  group: "read/write round trip",
  n: 200,
  async fn(b) {
    using pair = await loopback();
    const scheduler = new Scheduler();
    scheduler.spawn(genioRoundTrips(pair.client, pair.server));
    b.start();
    await scheduler.run();
    b.end();
  },
});

// --- echo with no syscalls ---------------------------------------------------------------

/**
 * A conn whose every read "receives" 64 bytes and whose every write completes, each
 * settling at once, until `messages` reads; then end of stream.
 */
function instantConn(messages: number): Deno.Conn {
  let left = messages;
  return {
    read: (_buffer: Uint8Array) => Promise.resolve(left-- > 0 ? 64 : null),
    write: (data: Uint8Array) => Promise.resolve(data.length),
    close() {},
  } as unknown as Deno.Conn;
}

async function asyncEcho(conn: Deno.Conn): Promise<void> {
  const buffer = new Uint8Array(1024);
  let n: number | null;
  while ((n = await conn.read(buffer)) !== null) await conn.write(buffer.subarray(0, n));
  conn.close();
}

// As `echoHandler` does it: the same two intents yielded again and again, no helper
// generator per call, which leaves the kernel's own cost per message.
function* genioEchoIntents(conn: Deno.Conn): Operation<void> {
  const buffer = new Uint8Array(1024);
  const readIntent = { type: "read" as const, conn, buffer };
  const writeIntent = { type: "write" as const, conn, data: buffer };
  let n: number | null;
  while ((n = (yield readIntent) as number | null) !== null) {
    writeIntent.data = buffer.subarray(0, n);
    yield writeIntent;
  }
  conn.close();
}

// With the helpers, `yield* read()` and `yield* write()`: what most handlers write.
function* genioEcho(conn: Deno.Conn): Operation<void> {
  const buffer = new Uint8Array(1024);
  let n: number | null;
  while ((n = yield* read(conn, buffer)) !== null) yield* write(conn, buffer.subarray(0, n));
  conn.close();
}

Deno.bench({
  name: `async: ${CONNS * MESSAGES} messages echoed by ${CONNS} async functions`,
  group: "echo, no syscalls",
  baseline: true,
  async fn() {
    const echoes = [];
    for (let i = 0; i < CONNS; i++) echoes.push(asyncEcho(instantConn(MESSAGES)));
    await Promise.all(echoes);
  },
});

Deno.bench({
  name: `genio: ${CONNS * MESSAGES} messages echoed by ${CONNS} tasks`,
  group: "echo, no syscalls",
  async fn() {
    const scheduler = new Scheduler();
    for (let i = 0; i < CONNS; i++) scheduler.spawn(genioEcho(instantConn(MESSAGES)));
    await scheduler.run();
  },
});

Deno.bench({
  name: `genio: ${CONNS * MESSAGES} messages echoed by ${CONNS} tasks yielding intents directly`,
  group: "echo, no syscalls",
  async fn() {
    const scheduler = new Scheduler();
    for (let i = 0; i < CONNS; i++) scheduler.spawn(genioEchoIntents(instantConn(MESSAGES)));
    await scheduler.run();
  },
});

// --- one conn, the server's own handler ----------------------------------------------------

// One conn: each settled call is a turn of its own, which is where a cost per turn (such as
// reading the clock) shows.
const ONE_CONN_MESSAGES = 10_000;

Deno.bench({
  name: `async: ${ONE_CONN_MESSAGES} messages echoed by one async function`,
  group: "echo, one conn, no syscalls",
  baseline: true,
  async fn() {
    await asyncEcho(instantConn(ONE_CONN_MESSAGES));
  },
});

Deno.bench({
  name: `genio: ${ONE_CONN_MESSAGES} messages echoed by server.ts's echoHandler, idle deadline on`,
  group: "echo, one conn, no syscalls",
  async fn() {
    const scheduler = new Scheduler();
    scheduler.spawn(echoHandler(instantConn(ONE_CONN_MESSAGES)));
    await scheduler.run();
  },
});

Deno.bench({
  name: `genio: ${ONE_CONN_MESSAGES} messages echoed by server.ts's echoHandler, idle deadline off`,
  group: "echo, one conn, no syscalls",
  async fn() {
    const scheduler = new Scheduler();
    scheduler.spawn(echoHandler(instantConn(ONE_CONN_MESSAGES), { idleTimeout: 0 }));
    await scheduler.run();
  },
});
