import assert from "node:assert/strict";
import { Cancelled, type Operation, read, Scheduler, Semaphore } from "../mod.ts";
import { echoHandler } from "../echo.ts";
import { type Handler, serve, tcpServer } from "../tcp_server.ts";
import { createTestScheduler } from "../testing.ts";
import {
  assertRefused,
  connect,
  decode,
  delay,
  echo,
  encode,
  HOST,
  readExactly,
  readToEnd,
  until,
} from "./_net.ts";

Deno.test("serve() reports the bound address to onListen and on its handle", async () => {
  let listened: Deno.NetAddr | undefined;
  const server = serve({ hostname: HOST, port: 0, onListen: (addr) => listened = addr });
  assert.deepEqual(listened, server.addr);
  assert.equal(server.addr.hostname, HOST);
  assert.notEqual(server.addr.port, 0);
  assert.deepEqual(await server.shutdown(), { drained: 0, cancelled: 0 });
});

Deno.test("serve() rejects out-of-range options before it listens", () => {
  for (
    const options of [
      { port: 70000 },
      { port: -1 },
      { grace: -1 },
      { idleTimeout: -5 },
      { bufferSize: 0 },
      { maxConnections: 0 },
      { maxConnections: 1.5 },
    ]
  ) {
    assert.throws(() => serve({ hostname: HOST, onListen() {}, ...options }), RangeError);
  }
});

Deno.test("serve() shutdown lets a connection that ends in time drain", async () => {
  const server = serve({ hostname: HOST, port: 0, grace: 5_000, onListen() {} });
  const conn = await connect(server.addr.port);
  assert.equal(await echo(conn, "hi"), "GOT:hi");
  const stopping = server.shutdown();
  await until(() => server.scheduler.acceptWaiting.size === 0, "the accept loop to end");
  await assertRefused(server.addr.port);
  assert.equal(await echo(conn, "still"), "GOT:still");
  conn.close();
  assert.deepEqual(await stopping, { drained: 1, cancelled: 0 });
  assert.equal(server.connections, 0);
});

Deno.test("serve() shutdown cancels connections open after the grace period, running their finally blocks", async () => {
  const cleanedUp: string[] = [];
  const errors: unknown[] = [];
  const handler: Handler = function* (conn, options) {
    try {
      yield* echoHandler(conn, options);
    } finally {
      cleanedUp.push("finally");
    }
  };
  const server = serve({
    hostname: HOST,
    port: 0,
    grace: 50,
    handler,
    onListen() {},
    onDisconnect: (_, error) => errors.push(error),
  });
  using conn = await connect(server.addr.port);
  assert.equal(await echo(conn, "hi"), "GOT:hi");
  assert.equal(server.connections, 1);
  assert.deepEqual(await server.shutdown(), { drained: 0, cancelled: 1 });
  assert.deepEqual(cleanedUp, ["finally"]);
  assert.ok(errors[0] instanceof Cancelled);
  assert.equal(await readToEnd(conn), "");
});

Deno.test("serve() shuts down when its signal is aborted, and `await using` shuts it down too", async () => {
  const controller = new AbortController();
  const server = serve({ hostname: HOST, port: 0, signal: controller.signal, onListen() {} });
  controller.abort();
  await server.finished;
  await assertRefused(server.addr.port);

  let port: number;
  {
    await using disposable = serve({ hostname: HOST, port: 0, onListen() {} });
    port = disposable.addr.port;
  }
  await assertRefused(port);
});

Deno.test("a handler that throws ends its own connection only, with the error reported", async () => {
  const failures: string[] = [];
  const server = serve({
    hostname: HOST,
    port: 0,
    onListen() {},
    handler: function* (conn, options) {
      const buffer = new Uint8Array(16);
      const n = yield* read(conn, buffer);
      const text = decode(buffer.subarray(0, n ?? 0));
      if (text === "boom") throw new Error("handler bug");
      yield* echoHandler(conn, options);
    },
    onDisconnect: (_, error) => failures.push(error === undefined ? "clean" : String(error)),
  });
  using steady = await connect(server.addr.port);
  await steady.write(encode("first"));
  using failing = await connect(server.addr.port);
  await failing.write(encode("boom"));
  assert.equal(await readToEnd(failing), "");
  assert.deepEqual(failures, ["Error: handler bug"]);
  assert.equal(await echo(steady, "still echoing"), "GOT:still echoing");
  steady.close();
  await server.shutdown();
});

Deno.test("an onConnect that throws, or a handler that gives no generator, ends that connection only", async () => {
  const failures: string[] = [];
  let connects = 0;
  const server = serve({
    hostname: HOST,
    port: 0,
    onListen() {},
    onConnect() {
      if (++connects === 2) throw new Error("onConnect bug");
    },
    handler: (conn, options) =>
      connects === 3 ? (null as unknown as Operation<void>) : echoHandler(conn, options),
    onDisconnect: (_, error) => failures.push(error === undefined ? "clean" : String(error)),
  });
  using steady = await connect(server.addr.port);
  assert.equal(await echo(steady, "one"), "GOT:one");
  using second = await connect(server.addr.port);
  assert.equal(await readToEnd(second), "");
  using third = await connect(server.addr.port);
  assert.equal(await readToEnd(third), "");
  assert.deepEqual(failures, [
    "Error: onConnect bug",
    "TypeError: Cannot spawn: expected a generator object (call the generator function first)",
  ]);
  assert.equal(await echo(steady, "still echoing"), "GOT:still echoing");
  assert.equal(server.connections, 1);
  steady.close();
  await server.shutdown();
});

Deno.test("each connection is one task, named after the peer, running the handler itself", async () => {
  const listener = Deno.listen({ hostname: HOST, port: 0 });
  const scheduler = new Scheduler();
  scheduler.spawn(tcpServer(listener, echoHandler), { name: "server" });
  const running = scheduler.run();
  using conn = await connect(listener.addr.port);
  assert.equal(await echo(conn, "hi"), "GOT:hi");
  const { port } = conn.localAddr as Deno.NetAddr;
  const [server, connection, ...rest] = scheduler.tasks();
  assert.deepEqual(rest, []);
  assert.equal(server.name, "server");
  assert.equal(connection.name, `conn 127.0.0.1:${port}`);
  assert.equal(connection.parent, server.id);
  assert.equal(connection.state, "reading"); // echoHandler's read, with no task around it
  assert.deepEqual([...scheduler.readWaiting.values()].map((task) => task.id), [connection.id]);
  listener.close();
  conn.close();
  await running;
});

Deno.test("tcpServer closes the conn even when the handler forgets to", async () => {
  const server = serve({
    hostname: HOST,
    port: 0,
    onListen() {},
    handler: function* () {},
  });
  using conn = await connect(server.addr.port);
  assert.equal(await readToEnd(conn), "");
  await server.shutdown();
});

Deno.test("tcpServer stops calling accept at maxConnections and resumes when one ends", async () => {
  const server = serve({ hostname: HOST, port: 0, maxConnections: 1, onListen() {} });
  const { scheduler } = server;
  const first = await connect(server.addr.port);
  assert.equal(await echo(first, "1"), "GOT:1");
  using second = await connect(server.addr.port);
  await second.write(encode("2"));
  await until(() => scheduler.acceptWaiting.size === 0, "the accept loop to stop accepting");
  const loop = scheduler.tasks().find((task) => task.name === "tcp-server")!;
  assert.equal(loop.state, "waiting");
  assert.ok(loop.waitingOn instanceof Semaphore, "it waits for a slot on a semaphore");
  assert.equal(server.connections, 1);
  first.close();
  assert.equal(await readExactly(second, 5), "GOT:2");
  assert.equal(server.connections, 1);
  second.close();
  await server.shutdown();
});

Deno.test("serve() shutdown at maxConnections cancels the open connection and stops waiting for a slot", async () => {
  const server = serve({
    hostname: HOST,
    port: 0,
    maxConnections: 1,
    grace: 50,
    onListen() {},
    onDisconnect() {},
  });
  using held = await connect(server.addr.port);
  assert.equal(await echo(held, "1"), "GOT:1");
  using waiting = await connect(server.addr.port); // in the backlog, never accepted
  await waiting.write(encode("2"));
  assert.deepEqual(await server.shutdown(), { drained: 0, cancelled: 1 });
  assert.equal(await readToEnd(held), "");
  const unaccepted = await readToEnd(waiting).catch((error) => (error as Error).name);
  assert.match(unaccepted, /^(|ConnectionReset)$/, "the closed listener dropped it unanswered");
});

Deno.test("tcpServer skips accept failures of single clients and retries others after a pause", async () => {
  const real = Deno.listen({ hostname: HOST, port: 0 });
  const failures: Error[] = [
    new Deno.errors.ConnectionReset("reset before accept"),
    new Deno.errors.NotConnected("not connected"),
    new Deno.errors.ConnectionAborted("aborted"),
    new Error("Too many open files (os error 24)"),
  ];
  const acceptTimes: number[] = [];
  const listener = {
    addr: real.addr,
    accept() {
      acceptTimes.push(performance.now());
      const failure = failures.shift();
      return failure === undefined ? real.accept() : Promise.reject(failure);
    },
  } as unknown as Deno.Listener;
  const reported: unknown[] = [];
  const scheduler = new Scheduler();
  scheduler.spawn(tcpServer(listener, echoHandler, { onAcceptError: (e) => reported.push(e) }));
  const running = scheduler.run();
  using conn = await connect(real.addr.port);
  assert.equal(await echo(conn, "through"), "GOT:through");
  assert.equal(reported.length, 4);
  assert.ok(
    acceptTimes[4] - acceptTimes[3] >= 90,
    "a pause after a failure that is not a client's",
  );
  assert.ok(acceptTimes[3] - acceptTimes[0] < 90, "no pause after a client's failure");
  conn.close();
  real.close();
  await running;
});

Deno.test("a lasting accept failure is retried with a doubling pause and logged once", async () => {
  const { scheduler, clock } = createTestScheduler({ autojump: true });
  const tries: number[] = [];
  let closeListener!: () => void;
  const listener = {
    accept() {
      tries.push(clock.now());
      if (tries.length <= 8) return Promise.reject(new Error("Too many open files (os error 24)"));
      return new Promise((_, reject) => {
        closeListener = () => reject(new Deno.errors.BadResource("closed"));
      });
    },
  } as unknown as Deno.Listener;
  const logged: unknown[] = [];
  const consoleError = console.error;
  console.error = (...args: unknown[]) => logged.push(args.join(" "));
  try {
    scheduler.spawn(tcpServer(listener, echoHandler));
    const running = scheduler.run();
    while (tries.length <= 8) await new Promise((resolve) => setTimeout(resolve, 1));
    closeListener();
    await running;
  } finally {
    console.error = consoleError;
  }
  const pauses = tries.slice(1).map((at, i) => at - tries[i]);
  assert.deepEqual(pauses, [100, 200, 400, 800, 1_600, 3_200, 5_000, 5_000]);
  assert.deepEqual(logged, ["Accept failed: Error: Too many open files (os error 24)"]);
});

Deno.test("tcpServer returns once its listener is closed and its connections have ended", async () => {
  const listener = Deno.listen({ hostname: HOST, port: 0 });
  const scheduler = new Scheduler();
  const server = scheduler.spawn(tcpServer(listener, echoHandler) as Operation<void>);
  const running = scheduler.run();
  const conn = await connect(listener.addr.port);
  assert.equal(await echo(conn, "hi"), "GOT:hi");
  listener.close();
  await delay(50);
  assert.equal(server.state, "waiting");
  assert.equal(await echo(conn, "still"), "GOT:still");
  conn.close();
  await running;
  assert.equal(server.state, "done");
});

Deno.test("serve() gives every handler the idle limit, and closes its conn when it ends", async () => {
  const errors: unknown[] = [];
  // A handler of the user's own: it neither sets a limit nor closes the conn.
  const silentReader: Handler = function* (conn) {
    const buffer = new Uint8Array(64);
    while ((yield* read(conn, buffer)) !== null) {
      // Reading only: nothing to answer.
    }
  };
  const server = serve({
    hostname: HOST,
    port: 0,
    idleTimeout: 100,
    handler: silentReader,
    onListen() {},
    onDisconnect: (_, error) => errors.push(error),
  });
  const conn = await connect(server.addr.port);
  const start = performance.now();
  await conn.write(encode("one message, then silence"));
  assert.equal(await readToEnd(conn), ""); // the server closed it
  const elapsed = performance.now() - start;
  assert.ok(elapsed >= 100, `cut after ${elapsed} ms`);
  assert.equal(errors.length, 1);
  assert.equal((errors[0] as Error).name, "TimeoutError");
  conn.close();
  await server.shutdown();
});

// --- stats() ----------------------------------------------------------------------------

Deno.test("serve() stats() counts connections, and the bytes of open and ended ones as they crossed the socket", async () => {
  const ended: [number, number][] = [];
  const server = serve({
    hostname: HOST,
    port: 0,
    onListen() {},
    onDisconnect: (_, _error, task) => ended.push([task!.bytesRead, task!.bytesWritten]),
  });
  const first = await connect(server.addr.port);
  assert.equal(await echo(first, "hello"), "GOT:hello");
  first.close();
  await until(() => server.connections === 0, "the first connection to end");
  assert.deepEqual(ended, [[5, 9]]);

  using second = await connect(server.addr.port);
  assert.equal(await echo(second, "open"), "GOT:open");
  await until(() => server.stats().bytesSent === 9 + 8, "the open connection's write to count");
  const stats = server.stats();
  assert.equal(stats.connectionsOpen, 1);
  assert.equal(stats.connectionsTotal, 2);
  assert.equal(stats.bytesReceived, 5 + 4);
  assert.deepEqual(stats.connectionErrors, { reset: 0, timeout: 0, tls: 0, other: 0 });
  assert.deepEqual(stats.scheduler, server.scheduler.stats());
  assert.ok(stats.process.residentMemory > 0);
  assert.equal(stats.process.startTime, performance.timeOrigin);
  second.close();
  await server.shutdown();
  assert.equal(server.stats().bytesSent, 9 + 8);
});

Deno.test("serve() stats() counts failed connections by reason, and cancelled ones not at all", async () => {
  const failWith: Handler = function* (conn) {
    const buffer = new Uint8Array(64);
    const n = yield* read(conn, buffer);
    const word = decode(buffer.subarray(0, n ?? 0));
    if (word === "tls") throw new Deno.errors.InvalidData("received corrupt message");
    if (word === "other") throw new Error("the handler failed");
    if (word.startsWith("flood")) yield* echoHandler(conn, { bufferSize: 64 * 1024 });
    yield* read(conn, buffer); // "wait": until the idle limit or the shutdown
  };
  const server = serve({
    hostname: HOST,
    port: 0,
    handler: failWith,
    idleTimeout: 500,
    grace: 0,
    onListen() {},
    onDisconnect() {},
  });
  const errors = () => server.stats().connectionErrors;
  for (const word of ["tls", "other"]) {
    using conn = await connect(server.addr.port);
    await conn.write(encode(word));
    assert.equal(await readToEnd(conn), "");
  }
  using idle = await connect(server.addr.port);
  await idle.write(encode("wait"));
  assert.equal(await readToEnd(idle), "");
  await until(() => errors().timeout === 1, "the idle connection to be counted");

  // A client that sends without reading until the server is stuck writing to it, then
  // closes with replies unread: the pending write fails with a reset.
  const resetter = await connect(server.addr.port);
  await resetter.write(encode("flood"));
  const chunk = new Uint8Array(64 * 1024).fill(120);
  const sending = (async () => {
    try {
      for (let i = 0; i < 16_384; i++) await resetter.write(chunk);
    } catch {
      // Closed below.
    }
  })();
  await until(() => server.scheduler.writeWaiting.size === 1, "the server's write to stall");
  resetter.close();
  await sending;
  await until(() => errors().reset === 1, "the reset to be counted");

  using cancelled = await connect(server.addr.port);
  await cancelled.write(encode("wait"));
  await until(() => server.connections === 1, "the last connection to open");
  await server.shutdown();
  assert.deepEqual(errors(), { reset: 1, timeout: 1, tls: 1, other: 1 });
  assert.equal(server.stats().connectionsTotal, 5);
});

Deno.test("serve() stats() counts each pause at maxConnections, as onLimitReached hears of it", async () => {
  const heard: number[] = [];
  const server = serve({
    hostname: HOST,
    port: 0,
    maxConnections: 2,
    onListen() {},
    onLimitReached: (open) => heard.push(open),
  });
  using first = await connect(server.addr.port);
  assert.equal(await echo(first, "1"), "GOT:1");
  assert.equal(server.stats().limitReached, 0);
  const second = await connect(server.addr.port);
  assert.equal(await echo(second, "2"), "GOT:2");
  await until(() => server.stats().limitReached === 1, "the loop to pause");
  using third = await connect(server.addr.port); // waits in the backlog
  second.close();
  assert.equal(await echo(third, "3"), "GOT:3");
  await until(() => server.stats().limitReached === 2, "the loop to pause again");
  assert.deepEqual(heard, [2, 2]);
  assert.equal(server.stats().connectionsTotal, 3);
  first.close();
  third.close();
  await server.shutdown();
});

Deno.test("serve() stats() measures the event loop's lag once asked, until the server stops", async () => {
  const server = serve({ hostname: HOST, port: 0, onListen() {} });
  assert.equal(server.stats().eventLoopLag.count, 0); // the first look starts the measuring
  await delay(150);
  // Blocking the event loop for 250 ms makes the timer due in it (one is due every 100 ms)
  // at least 150 ms late.
  const busyUntil = performance.now() + 250;
  while (performance.now() < busyUntil) {
    // Busy.
  }
  await delay(150);
  const lag = server.stats().eventLoopLag;
  assert.ok(lag.count >= 2, `${lag.count} measures`);
  assert.ok(lag.maxLastMinute >= 140, `max ${lag.maxLastMinute} ms`);
  assert.equal(lag.buckets.at(-1)!.le, Infinity);
  assert.equal(lag.buckets.at(-1)!.count, lag.count);
  assert.ok(lag.sum >= lag.maxLastMinute);
  await server.shutdown(); // the sanitizers fail this test if its timer were left behind
  await delay(250);
  assert.equal(server.stats().eventLoopLag.count, lag.count);
});
