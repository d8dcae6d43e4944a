// The echo server facing the internet's worst clients (issue #7). Each scenario runs with
// well-behaved clients alongside that check, by digest, that every byte they sent was answered
// exactly once and in order; each ends by checking that the server is back to its listener
// task alone, with empty wait maps and no descriptor left open.
import assert from "node:assert/strict";
import { type Operation, read, write } from "../mod.ts";
import { closeQuietly } from "../_close_quietly.ts";
import { echoHandler } from "../echo.ts";
import { type Handler, serve, type ServeOptions, type Server } from "../tcp_server.ts";
import { startServer } from "./_server_process.ts";
import {
  assertAnsweredExactly,
  assertAtRest,
  assertFdsBackTo,
  childRunning,
  type FdTable,
  garbageConversation,
  openFds,
  openFileLimit,
  payload,
  pingPong,
  Random,
  ResettingClient,
  rss,
  stream,
  type Tally,
  witnesses,
} from "./_clients.ts";
import { connect, delay, HOST, until } from "./_net.ts";

const MB = 1024 * 1024;
const SEED = 7;

// Descriptors and memory are read from /proc (through `find`, `cat` and `ps`).
function test(name: string, fn: () => Promise<void>): void {
  Deno.test({ name, ignore: Deno.build.os !== "linux", fn });
}

interface Disconnect {
  port: number;
  error: unknown;
}

interface Harness {
  server: Server;
  port: number;
  disconnects: Disconnect[];
  acceptErrors: unknown[];
  // Checks that the server is at rest, shuts it down, and checks that nothing it opened is open.
  close(): Promise<void>;
}

// An in-process server that records each disconnect instead of printing it.
async function startHarness(options: ServeOptions = {}): Promise<Harness> {
  const before: FdTable = await openFds();
  const disconnects: Disconnect[] = [];
  const acceptErrors: unknown[] = [];
  const server = serve({
    hostname: HOST,
    port: 0,
    onListen() {},
    onDisconnect: (addr, error) => disconnects.push({ port: addr.port, error }),
    onAcceptError: (error) => acceptErrors.push(error),
    ...options,
  });
  const started = await openFds();
  return {
    server,
    port: server.addr.port,
    disconnects,
    acceptErrors,
    async close() {
      try {
        await assertAtRest(server, started);
      } finally {
        await server.shutdown();
      }
      await assertFdsBackTo(before);
    },
  };
}

function assertAllAnswered(tallies: Tally[]): void {
  assert.ok(tallies.length > 0);
  tallies.forEach((tally, i) => {
    assert.ok(tally.sentBytes > 0, `client ${i} sent something`);
    assertAnsweredExactly(tally, `client ${i}`);
  });
}

function taskOf(server: Server, port: number) {
  return server.scheduler.tasks().find((task) => task.name === `conn ${HOST}:${port}`);
}

// Why each of the connections from `ports` ended, in the order they ended.
function endings(harness: Harness, ports: number[]): string[] {
  const wanted = new Set(ports);
  return harness.disconnects.filter(({ port }) => wanted.has(port)).map(({ error }) =>
    errorName(error)
  );
}

function errorName(error: unknown): string {
  return error === undefined ? "none" : (error as Error).name;
}

// --- resets ------------------------------------------------------------------------------------

test("a reset in the middle of a read ends that connection only and leaves nothing behind", async () => {
  const harness = await startHarness();
  const { server, port } = harness;
  const steady = witnesses(port, 4, SEED);
  const resetters = await Promise.all(
    Array.from({ length: 50 }, () => ResettingClient.connect(port, { read: true })),
  );
  await Promise.all(resetters.map((client) => client.write(new TextEncoder().encode("x"))));
  await until(
    () =>
      resetters.every((client) =>
        client.received === 5 && taskOf(server, client.localPort)?.state === "reading"
      ),
    "every resetter answered, its handler reading again",
  );
  const ports = resetters.map((client) => client.localPort);
  await Promise.all(resetters.map((client) => client.reset()));
  await until(() => endings(harness, ports).length === 50, "50 disconnects");

  assert.deepEqual(endings(harness, ports), Array(50).fill("ConnectionReset"));
  assertAllAnswered(await steady.stop());
  await harness.close();
});

test("a reset in the middle of a write ends that connection only and leaves nothing behind", async () => {
  const harness = await startHarness();
  const { server, port } = harness;
  const steady = witnesses(port, 4, SEED);
  const resetters = await Promise.all(
    Array.from({ length: 20 }, () => ResettingClient.connect(port, { read: false })),
  );
  const chunk = payload(new Random(SEED), 64 * 1024);
  for (const client of resetters) client.flood(chunk);
  // Stalled: every handler waits on a write that its client will never read.
  let last = -1;
  const stalled = () => {
    const written = resetters.reduce((sum, client) => sum + client.written, 0);
    const writing = resetters.every((client) =>
      taskOf(server, client.localPort)?.state === "writing"
    );
    const still = written === last;
    last = written;
    return writing && still;
  };
  await until(stalled, "the floods to stall", 10_000, 100);
  const ports = resetters.map((client) => client.localPort);
  await Promise.all(resetters.map((client) => client.reset()));
  await until(() => endings(harness, ports).length === 20, "20 disconnects");

  for (const ending of endings(harness, ports)) {
    assert.match(ending, /^(ConnectionReset|BrokenPipe)$/);
  }
  assertAllAnswered(await steady.stop());
  await harness.close();
});

// --- half-close ----------------------------------------------------------------------------------

test("a client that half-closes gets every answer before the server closes", async () => {
  const harness = await startHarness({ bufferSize: 4096 });
  const tallies = await Promise.all(
    Array.from({ length: 20 }, async (_, i) => {
      using conn = await connect(harness.port);
      return await stream(conn, {
        bytes: 1 * MB,
        maxWrite: 64 * 1024,
        random: new Random(SEED + i),
        maxChunk: 4096,
      });
    }),
  );
  assertAllAnswered(tallies);
  tallies.forEach((tally) => assert.equal(tally.sentBytes, 1 * MB));

  // One that half-closes at once is closed at once, with nothing to say.
  const silent = await connect(harness.port);
  await silent.closeWrite();
  assert.equal(await silent.read(new Uint8Array(8)), null);
  silent.close();

  await until(() => harness.disconnects.length === 21, "21 disconnects");
  assert.ok(harness.disconnects.every(({ error }) => error === undefined));
  await harness.close();
});

// --- churn and crowds --------------------------------------------------------------------------

test("10,000 clients that connect and close in a row leave the server as they found it", async () => {
  const harness = await startHarness();
  const steady = witnesses(harness.port, 2, SEED);
  const started = performance.now();
  for (let i = 0; i < 10_000; i++) (await connect(harness.port)).close();
  const elapsed = performance.now() - started;
  const tallies = await steady.stop();
  await until(() => harness.disconnects.length === 10_002, "10,002 disconnects");

  assert.deepEqual(harness.acceptErrors, []);
  assert.ok(harness.disconnects.every(({ error }) => error === undefined));
  assertAllAnswered(tallies);
  await harness.close();
  console.log(`    10,000 connect-then-close: ${(elapsed / 1000).toFixed(1)} s`);
});

// Each client and its server end are open in this one process, with about 100 descriptors
// to spare. Under a lower limit the test holds as many as fit; holding 10,000 is the
// benchmark's job.
test("5,000 clients connected at once (fewer under a lower open-file limit) are each answered, at one task each", async () => {
  const limit = await openFileLimit(2 * 5_000 + 100);
  const clients = Math.min(5_000, Math.floor((limit - 100) / 2));
  assert.ok(clients >= 100, `needs ulimit -n of at least 300, has ${limit}`);
  if (clients < 5_000) console.log(`    ${clients} clients at once: ulimit -n is ${limit}`);
  const harness = await startHarness();
  const { server, port } = harness;
  const conns: Deno.TcpConn[] = [];
  try {
    // At most 200 handshakes in flight, so that the listener's backlog never overflows.
    let next = 0;
    await Promise.all(Array.from({ length: 200 }, async () => {
      while (next++ < clients) conns.push(await connect(port));
    }));
    await until(() => server.scheduler.readWaiting.size === clients, "every handler reading");
    assert.equal(server.scheduler.tasks().length, 1 + clients);
    assert.equal(server.connections, clients);

    const tallies = await Promise.all(
      conns.map((conn, i) =>
        pingPong(conn, { messages: 2, maxSize: 512, random: new Random(SEED + i) })
      ),
    );
    assertAllAnswered(tallies);
  } finally {
    for (const conn of conns) conn.close();
  }
  await until(() => harness.disconnects.length === clients, `${clients} disconnects`);
  assert.ok(harness.disconnects.every(({ error }) => error === undefined));
  await harness.close();
});

// --- clients that will not play along --------------------------------------------------------

test("a client that sends 200 MB without reading holds the server's memory flat until the idle timeout ends it", async () => {
  await using server = await startServer(["--port", "0", "--idle-timeout", "1", "--quiet"]);
  const pid = await childRunning("server.ts");
  // Warm up first, so that the baseline includes what every server has once it has served.
  assertAllAnswered(await witnesses(server.port, 4, SEED).stop());
  await delay(200);
  const fdsBefore = await openFds(pid);
  const rssBefore = await rss(pid);

  const steady = witnesses(server.port, 2, SEED + 100);
  const greedy = await connect(server.port);
  const peer = `${HOST}:${greedy.localAddr.port}`;
  const chunk = new Uint8Array(1 * MB).fill(0x61);
  let sent = 0;
  let peakRss = rssBefore;
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      peakRss = Math.max(peakRss, await rss(pid));
      await delay(20);
    }
  })();
  const started = performance.now();
  // Should the server never end it, this does, and the checks below fail.
  const giveUp = setTimeout(() => greedy.close(), 15_000);
  let failure: unknown;
  try {
    while (sent < 200 * MB) sent += await greedy.write(chunk);
  } catch (error) {
    failure = error;
  } finally {
    clearTimeout(giveUp);
    sampling = false;
    await sampler;
    closeQuietly(greedy); // unless giveUp closed it
  }
  const elapsed = performance.now() - started;

  assert.match(errorName(failure), /^(ConnectionReset|BrokenPipe)$/, "the server cut it off");
  assert.ok(sent < 200 * MB, "TCP held the client back: the server did not read ahead");
  assert.ok(elapsed < 10_000, `ended after ${elapsed.toFixed(0)} ms`);
  await server.stderr.waitFor(new RegExp(`^Connection ${peer} timed out after 1 s idle$`), 5_000);
  const grown = peakRss - rssBefore;
  assert.ok(grown < 32 * MB, `server RSS grew by ${(grown / MB).toFixed(1)} MB`);
  assertAllAnswered(await steady.stop());
  await assertFdsBackTo(fdsBefore, pid);
  assert.deepEqual(server.stderr.lines, [`Connection ${peer} timed out after 1 s idle`]);
  console.log(
    `    ${(sent / MB).toFixed(1)} MB taken in ${elapsed.toFixed(0)} ms; server RSS ` +
      `${(rssBefore / MB).toFixed(1)} MB, peak +${(grown / MB).toFixed(1)} MB`,
  );
});

test("a slowloris sending one byte just under the idle timeout stays, at one task, until it stops", async () => {
  const idleTimeout = 1_000;
  const harness = await startHarness({ idleTimeout });
  const { server, port } = harness;
  const steady = witnesses(port, 2, SEED);
  const clients = 20;
  const conns = await Promise.all(Array.from({ length: clients }, () => connect(port)));
  const ports = conns.map((conn) => conn.localAddr.port);
  const lastSent: number[] = [];
  for (let round = 0; round < 4; round++) {
    await delay(idleTimeout * 0.8);
    await Promise.all(conns.map(async (conn, i) => {
      lastSent[i] = performance.now();
      await conn.write(new Uint8Array([0x2e]));
      const reply = new Uint8Array(5);
      for (let got = 0; got < 5;) {
        const n = await conn.read(reply.subarray(got));
        assert.notEqual(n, null, `closed in round ${round}`);
        got += n!;
      }
      assert.equal(new TextDecoder().decode(reply), "GOT:.");
    }));
    assert.equal(server.scheduler.tasks().length, 1 + 2 + clients, "one task per connection");
    assert.equal(server.scheduler.sleeping.size, 0);
    assert.deepEqual(harness.disconnects, []);
  }
  // Silent now: the idle timeout ends each of them, and only them, never early.
  await Promise.all(conns.map(async (conn, i) => {
    assert.equal(await conn.read(new Uint8Array(1)), null);
    const waited = performance.now() - lastSent[i];
    assert.ok(waited >= idleTimeout - 1, `closed ${waited.toFixed(0)} ms after its last byte`);
    assert.ok(waited < idleTimeout * 9 / 8 + 500, `closed ${waited.toFixed(0)} ms after`);
    conn.close();
  }));
  assert.deepEqual(endings(harness, ports), Array(clients).fill("TimeoutError"));
  assertAllAnswered(await steady.stop());
  await harness.close();
});

test("binary garbage, zero-length writes and zero-length reads are answered byte for byte", async () => {
  const harness = await startHarness({ bufferSize: 97 });
  const tallies = await Promise.all(Array.from({ length: 10 }, async (_, i) => {
    using conn = await connect(harness.port);
    const tally = await garbageConversation(conn, {
      random: new Random(SEED + i),
      messages: 40,
      maxChunk: 97,
      async between() {
        assert.equal(await conn.write(new Uint8Array(0)), 0);
        assert.equal(await conn.read(new Uint8Array(0)), 0);
      },
    });
    return tally;
  }));
  assertAllAnswered(tallies);
  await until(() => harness.disconnects.length === 10, "10 disconnects");
  assert.ok(harness.disconnects.every(({ error }) => error === undefined));
  await harness.close();
});

test("a handler's zero-length read gives 0 at once and takes none of the client's bytes", async () => {
  const outcomes: unknown[] = [];
  const handler: Handler = function* (conn, options): Operation<void> {
    outcomes.push(yield* read(conn, new Uint8Array(0)));
    outcomes.push(yield* write(conn, new Uint8Array(0)));
    yield* echoHandler(conn, options);
  };
  const harness = await startHarness({ handler });
  const conn = await connect(harness.port);
  const tally = await pingPong(conn, { messages: 20, maxSize: 4096, random: new Random(SEED) });
  conn.close();
  assertAnsweredExactly(tally);
  assert.deepEqual(outcomes, [0, 0]);
  await until(() => harness.disconnects.length === 1, "the disconnect");
  await harness.close();
});

test("a handler that throws on some inputs ends those connections only", async () => {
  // Well-behaved payloads never hold a "G"; this handler chokes on one.
  const picky: Handler = function* (conn): Operation<void> {
    const buffer = new Uint8Array(4096);
    let n: number | null;
    while ((n = yield* read(conn, buffer)) !== null) {
      const chunk = buffer.subarray(0, n);
      if (chunk.includes(0x47)) throw new Error("Cannot answer a G");
      const reply = new Uint8Array(4 + n);
      reply.set(new TextEncoder().encode("GOT:"));
      reply.set(chunk, 4);
      yield* write(conn, reply);
    }
  };
  const harness = await startHarness({ handler: picky });
  const steady = witnesses(harness.port, 20, SEED);
  const poisoned = await Promise.all(Array.from({ length: 20 }, async () => {
    using conn = await connect(harness.port);
    await conn.write(new TextEncoder().encode("a G for you"));
    const rest = await conn.read(new Uint8Array(64)).catch((error: Error) => error.name);
    return rest;
  }));
  for (const rest of poisoned) assert.ok(rest === null || rest === "ConnectionReset", `${rest}`);
  assertAllAnswered(await steady.stop());
  await until(() => harness.disconnects.length === 40, "40 disconnects");
  const failures = harness.disconnects.filter(({ error }) => error !== undefined);
  assert.equal(failures.length, 20);
  for (const { error } of failures) assert.equal((error as Error).message, "Cannot answer a G");
  await harness.close();
});

// --- shutting down --------------------------------------------------------------------------

test("clients active when SIGTERM arrives finish within the grace period, every byte answered once", async () => {
  await using server = await startServer(["--port", "0", "--grace", "10", "--quiet"]);
  const clients = 20;
  let ready = 0;
  let refusedWhileTalking = false;
  const signalled = Promise.withResolvers<void>();
  const conversations = Array.from({ length: clients }, async (_, i) => {
    using conn = await connect(server.port);
    return await pingPong(conn, {
      messages: 40,
      maxSize: 4096,
      random: new Random(SEED + i),
      pauseMs: 10,
      onAnswered: async (message) => {
        if (message === 0) ready++;
        if (message === 1) await signalled.promise;
        // Near the end, the shutdown is well under way: the listener is closed.
        if (message === 35 && i === 0) {
          refusedWhileTalking = await connect(server.port).then(
            (conn) => (conn.close(), false),
            (error) =>
              error instanceof Deno.errors.ConnectionRefused ||
              error instanceof Deno.errors.ConnectionReset,
          );
        }
      },
    });
  });
  await until(() => ready === clients, "every client to be answered once");
  server.kill("SIGTERM");
  signalled.resolve();
  assertAllAnswered(await Promise.all(conversations));
  assert.ok(refusedWhileTalking, "new connections were refused while these were answered");

  const exit = await server.exited();
  assert.equal(exit.code, 0);
  assert.deepEqual(exit.stdout.slice(1), [
    `Shut down: ${clients} connections drained, 0 cancelled`,
  ]);
  assert.deepEqual(exit.stderr, []);
});
