import assert from "node:assert/strict";
import { Cancelled, type Operation, read, Scheduler, TimeoutError } from "../mod.ts";
import { echoHandler, type Handler, serve, tcpServer } from "../server.ts";
import denoJson from "../deno.json" with { type: "json" };
import { createTestScheduler } from "../testing.ts";
import { decode, encode, readText } from "./_loopback.ts";
import { runServer, startServer, within } from "./_server_process.ts";

const HOST = "127.0.0.1";

const HAS_IPV6: boolean = (() => {
  try {
    Deno.listen({ hostname: "::1", port: 0 }).close();
    return true;
  } catch {
    return false;
  }
})();

const HAS_PYTHON: boolean = (() => {
  try {
    return new Deno.Command("python3", { args: ["--version"] }).outputSync().success;
  } catch {
    return false;
  }
})();

function connect(port: number, hostname = HOST): Promise<Deno.TcpConn> {
  return Deno.connect({ hostname, port });
}

// Reads exactly `size` bytes (or until the end of the stream), within `ms`.
function readExactly(conn: Deno.Conn, size: number, ms = 5_000): Promise<string> {
  return within(ms, `${size} bytes`, () => readText(conn, size));
}

// Reads until the server closes the stream, within `ms`.
function readToEnd(conn: Deno.Conn, ms = 5_000): Promise<string> {
  return within(ms, "the end of the stream", async () => {
    const chunks: string[] = [];
    const buffer = new Uint8Array(64 * 1024);
    for (let n; (n = await conn.read(buffer)) !== null;) chunks.push(decode(buffer.subarray(0, n)));
    return chunks.join("");
  });
}

async function echo(conn: Deno.Conn, message: string): Promise<string> {
  await conn.write(encode(message));
  return await readExactly(conn, 4 + message.length);
}

// Connects until the port refuses, which shows that the listener has closed. Probes that
// were still accepted are closed at once; returns how many there were.
function waitUntilRefused(port: number, ms = 5_000): Promise<number> {
  return within(ms, `port ${port} to refuse connections`, async () => {
    for (let accepted = 0;; accepted++) {
      try {
        (await connect(port)).close();
      } catch (error) {
        if (refused(error)) return accepted;
        throw error;
      }
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  });
}

// A listener that has just closed refuses a connection, or resets one that reached its
// backlog while it was closing.
function refused(error: unknown): boolean {
  return error instanceof Deno.errors.ConnectionRefused ||
    error instanceof Deno.errors.ConnectionReset;
}

async function assertRefused(port: number): Promise<void> {
  await assert.rejects(connect(port), refused);
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function until(condition: () => boolean, what: string, ms = 5_000): Promise<void> {
  await within(ms, what, async () => {
    while (!condition()) await delay(5);
  });
}

// --- the command line: a real process, real clients ------------------------------------------

Deno.test("server.ts prints `Listening on HOST:PORT` first, with the real port for --port 0", async () => {
  await using server = await startServer(["--port", "0"]);
  assert.equal(server.stdout.lines[0], `Listening on ${HOST}:${server.port}`);
  assert.notEqual(server.port, 0);
});

Deno.test({
  name: "server.ts prints an IPv6 address in brackets and serves on it",
  ignore: !HAS_IPV6,
  async fn() {
    await using server = await startServer(["--port", "0", "--hostname", "::1"]);
    assert.equal(server.stdout.lines[0], `Listening on [::1]:${server.port}`);
    using conn = await connect(server.port, "::1");
    assert.equal(await echo(conn, "v6"), "GOT:v6");
  },
});

Deno.test("server.ts answers every chunk with GOT: followed by that chunk", async () => {
  await using server = await startServer(["--port", "0"]);
  using conn = await connect(server.port);
  for (const message of ["hello", "world", "x", "a longer line\n"]) {
    assert.equal(await echo(conn, message), `GOT:${message}`);
  }
});

Deno.test("server.ts prints one line when a client connects and one when it leaves", async () => {
  await using server = await startServer(["--port", "0"]);
  const conn = await connect(server.port);
  const peer = `${HOST}:${conn.localAddr.port}`;
  await server.stdout.waitFor(new RegExp(`^Connection from ${peer}$`), 5_000);
  assert.equal(await echo(conn, "hi"), "GOT:hi");
  conn.close();
  await server.stdout.waitFor(new RegExp(`^Connection closed ${peer}$`), 5_000);
  assert.deepEqual(server.stdout.lines.slice(1), [
    `Connection from ${peer}`,
    `Connection closed ${peer}`,
  ]);
  assert.deepEqual(server.stderr.lines, []);
});

Deno.test("server.ts --quiet prints no connection lines", async () => {
  await using server = await startServer(["--port", "0", "--quiet"]);
  using conn = await connect(server.port);
  assert.equal(await echo(conn, "shh"), "GOT:shh");
  conn.close();
  server.kill("SIGTERM");
  const exit = await server.exited();
  // The client's close may reach the server before or after the signal.
  assert.equal(exit.stdout.length, 2);
  assert.equal(exit.stdout[0], `Listening on ${HOST}:${server.port}`);
  assert.match(exit.stdout[1], /^Shut down: (0 connections|1 connection) drained, 0 cancelled$/);
});

Deno.test("server.ts serves 200 concurrent clients", async () => {
  await using server = await startServer(["--port", "0"]);
  const clients = 200;
  const started = performance.now();
  const replies = await Promise.all(
    Array.from({ length: clients }, async (_, i) => {
      using conn = await connect(server.port);
      const replies = [];
      for (let round = 0; round < 3; round++) {
        replies.push(await echo(conn, `client ${i}/${round}`));
      }
      return replies;
    }),
  );
  const elapsed = performance.now() - started;
  replies.forEach((got, i) => assert.deepEqual(got, [0, 1, 2].map((r) => `GOT:client ${i}/${r}`)));
  await until(
    () => server.stdout.count(/^Connection closed /) === clients,
    `${clients} "Connection closed" lines`,
  );
  assert.equal(server.stdout.count(/^Connection from /), clients);
  assert.deepEqual(server.stderr.lines, []);
  console.log(`    ${clients} clients x 3 round trips: ${elapsed.toFixed(0)} ms`);
});

Deno.test("server.ts answers all a client sent before it shut its write side, then closes", async () => {
  await using server = await startServer(["--port", "0", "--buffer-size", "1000"]);
  using conn = await connect(server.port);
  const letters = "abcdefghijklmnopqrstuvwxyz";
  const sent = Array.from({ length: 200 }, (_, i) => letters[i % 26].repeat(997 + i % 7)).join("");
  const reading = readToEnd(conn, 10_000);
  await conn.write(encode(sent));
  await conn.closeWrite();
  const received = await reading;
  assert.ok(received.startsWith("GOT:"));
  assert.equal(received.replaceAll("GOT:", ""), sent);
  assert.ok(received.split("GOT:").slice(1).every((chunk) => chunk.length <= 1000));
});

Deno.test("server.ts survives a client that resets, and keeps serving the others", async () => {
  await using server = await startServer(["--port", "0"]);
  using steady = await connect(server.port);
  assert.equal(await echo(steady, "before"), "GOT:before");

  // A client that sends without reading until the server is stuck writing to it, then
  // closes with replies unread, which resets the connection under the pending write.
  const resetter = await connect(server.port);
  const peer = `${HOST}:${resetter.localAddr.port}`;
  const chunk = new Uint8Array(64 * 1024).fill(120);
  let sent = 0;
  const sending = (async () => {
    try {
      while (sent < 1024 * 1024 * 1024) sent += await resetter.write(chunk);
    } catch {
      // Closed below.
    }
  })();
  await within(10_000, "the client's writes to stall", async () => {
    for (let last = -1; last !== sent;) {
      last = sent;
      await delay(100);
    }
  });
  resetter.close();
  await sending;

  await server.stderr.waitFor(new RegExp(`^Connection ${peer} failed: ConnectionReset`), 5_000);
  await server.stdout.waitFor(new RegExp(`^Connection closed ${peer}$`), 5_000);
  assert.equal(server.stderr.lines.length, 1);
  assert.equal(await echo(steady, "after"), "GOT:after");
  using newcomer = await connect(server.port);
  assert.equal(await echo(newcomer, "new"), "GOT:new");
});

Deno.test({
  name: "server.ts skips a client that reset before it was accepted, and goes on accepting",
  ignore: !HAS_PYTHON,
  async fn() {
    await using server = await startServer(["--port", "0", "--max-connections", "1"]);
    const holder = await connect(server.port);
    assert.equal(await echo(holder, "hold"), "GOT:hold");
    // At the limit, so this client waits in the backlog; SO_LINGER 0 makes its close an RST.
    const script = `import socket, struct
s = socket.create_connection(("${HOST}", ${server.port}))
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
s.close()`;
    const python = await new Deno.Command("python3", { args: ["-c", script] }).output();
    assert.ok(python.success, decode(python.stderr));
    holder.close();

    await server.stderr.waitFor(
      /^Accept failed: (NotConnected|ConnectionReset|ConnectionAborted)/,
      5_000,
    );
    using next = await connect(server.port);
    assert.equal(await echo(next, "still here"), "GOT:still here");
    assert.equal(server.stdout.count(/^Connection from /), 2);
  },
});

Deno.test("server.ts --idle-timeout closes a client that stays silent", async () => {
  await using server = await startServer(["--port", "0", "--idle-timeout", "0.3"]);
  using conn = await connect(server.port);
  const started = performance.now();
  assert.equal(await readToEnd(conn), "");
  const elapsed = performance.now() - started;
  assert.ok(elapsed >= 250, `closed after ${elapsed} ms`);
  const peer = `${HOST}:${conn.localAddr.port}`;
  await server.stderr.waitFor(new RegExp(`^Connection ${peer} timed out after 0.3 s idle$`), 5_000);
  await server.stdout.waitFor(new RegExp(`^Connection closed ${peer}$`), 5_000);
});

Deno.test("server.ts --idle-timeout closes a client that never reads its replies", async () => {
  await using server = await startServer(["--port", "0", "--idle-timeout", "0.3"]);
  using conn = await connect(server.port);
  const chunk = new Uint8Array(64 * 1024).fill(120);
  const sending = (async () => {
    try {
      for (let i = 0; i < 4096; i++) await conn.write(chunk);
      return "sent 256 MiB without being cut off";
    } catch (error) {
      return (error as Error).name;
    }
  })();
  await server.stderr.waitFor(/timed out after 0.3 s idle$/, 10_000);
  assert.match(
    await within(10_000, "the client's writes to fail", () => sending),
    /^(ConnectionReset|BrokenPipe)$/,
  );
});

Deno.test("server.ts --max-connections holds newcomers back until a connection ends", async () => {
  await using server = await startServer(["--port", "0", "--max-connections", "2"]);
  using first = await connect(server.port);
  using second = await connect(server.port);
  assert.equal(await echo(first, "1"), "GOT:1");
  assert.equal(await echo(second, "2"), "GOT:2");

  using third = await connect(server.port); // the kernel completes the handshake
  await third.write(encode("3"));
  let answered = false;
  const reply = readExactly(third, 5).then((text) => (answered = true, text));
  await delay(300);
  assert.equal(answered, false);
  assert.equal(server.stdout.count(/^Connection from /), 2);
  assert.equal(await echo(second, "still served"), "GOT:still served");

  first.close();
  assert.equal(await reply, "GOT:3");
  assert.equal(await echo(second, "undisturbed"), "GOT:undisturbed");
  assert.equal(server.stdout.count(/^Connection from /), 3);
});

Deno.test("SIGTERM refuses new connections and lets open ones finish within --grace", async () => {
  await using server = await startServer(["--port", "0", "--grace", "10"]);
  using conn = await connect(server.port);
  await server.stdout.waitFor(/^Connection from /, 5_000);
  await conn.write(encode("sent before the signal"));
  server.kill("SIGTERM");
  assert.equal(await readExactly(conn, 26), "GOT:sent before the signal");
  await waitUntilRefused(server.port);
  assert.equal(await echo(conn, "during the grace period"), "GOT:during the grace period");
  conn.close();

  const exit = await server.exited();
  assert.equal(exit.code, 0);
  const drained = exit.stdout.filter((line) => line.startsWith("Connection from ")).length;
  const noun = drained === 1 ? "connection" : "connections";
  assert.equal(exit.stdout.at(-1), `Shut down: ${drained} ${noun} drained, 0 cancelled`);
  assert.deepEqual(exit.stderr, []);
});

Deno.test("SIGINT cancels connections still open when --grace runs out, then exits 0", async () => {
  await using server = await startServer(["--port", "0", "--grace", "0.3"]);
  using conn = await connect(server.port);
  assert.equal(await echo(conn, "hi"), "GOT:hi");
  const started = performance.now();
  server.kill("SIGINT");
  assert.equal(await readToEnd(conn), "");
  assert.ok(performance.now() - started >= 250);
  const exit = await server.exited();
  assert.equal(exit.code, 0);
  assert.equal(exit.stdout.at(-2), `Connection closed ${HOST}:${conn.localAddr.port}`);
  assert.equal(exit.stdout.at(-1), "Shut down: 0 connections drained, 1 cancelled");
});

Deno.test("a second SIGTERM exits at once with status 143", async () => {
  await using server = await startServer(["--port", "0", "--grace", "60"]);
  using conn = await connect(server.port);
  assert.equal(await echo(conn, "hi"), "GOT:hi");
  server.kill("SIGTERM");
  await waitUntilRefused(server.port);
  const started = performance.now();
  server.kill("SIGTERM");
  const exit = await server.exited();
  assert.equal(exit.code, 143);
  assert.ok(performance.now() - started < 5_000);
});

Deno.test("server.ts rejects bad flags with one line on stderr and status 2", async () => {
  const cases = [
    ["--port", "abc"],
    ["--port", "70000"],
    ["-p", "-1"],
    ["--idle-timeout", "-1"],
    ["--grace=-2"],
    ["--grace", "soon"],
    ["--max-connections", "0"],
    ["--buffer-size", "0"],
    ["--hostname"],
    ["--bogus"],
    ["extra"],
  ];
  const exits = await Promise.all(cases.map((args) => runServer(args)));
  exits.forEach((exit, i) => {
    const what = `server.ts ${cases[i].join(" ")}: ${exit.stderr.join(" / ")}`;
    assert.equal(exit.code, 2, what);
    assert.deepEqual(exit.stdout, [], what);
    assert.equal(exit.stderr.length, 1, what);
    assert.match(exit.stderr[0], /^error: .*--help/, what);
  });
  assert.equal(
    exits[1].stderr[0],
    'error: --port must be an integer from 0 to 65535, got "70000" (see --help)',
  );
  assert.equal(exits[9].stderr[0], "error: unknown option '--bogus' (see --help)");
});

Deno.test("server.ts --help lists every flag and --version prints the version", async () => {
  const [help, short, version] = await Promise.all([
    runServer(["--help"]),
    runServer(["-h"]),
    runServer(["-V"]),
  ]);
  assert.equal(help.code, 0);
  assert.deepEqual(short.stdout, help.stdout);
  const text = help.stdout.join("\n");
  for (
    const flag of [
      "--port",
      "--hostname",
      "--max-connections",
      "--idle-timeout",
      "--grace",
      "--buffer-size",
      "--quiet",
      "--help",
      "--version",
    ]
  ) assert.ok(text.includes(flag), `--help mentions ${flag}`);
  assert.equal(version.code, 0);
  assert.deepEqual(version.stdout, [`genio ${denoJson.version}`]);
});

Deno.test("server.ts exits 1 with one line when the address is in use", async () => {
  await using server = await startServer(["--port", "0"]);
  const exit = await runServer(["--port", String(server.port)]);
  assert.equal(exit.code, 1);
  assert.deepEqual(exit.stdout, []);
  assert.deepEqual(exit.stderr, [
    `error: Cannot listen on ${HOST}:${server.port}: address already in use`,
  ]);
});

Deno.test("server.ts exits 1 with one line without net permission", async () => {
  const exit = await runServer(["--port", "0"], false);
  assert.equal(exit.code, 1);
  assert.equal(exit.stderr.length, 1);
  assert.match(exit.stderr[0], /^error: Cannot listen on 127\.0\.0\.1:0: .*--allow-net/);
});

// --- the library, in process --------------------------------------------------------------------

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

Deno.test("echoHandler does not read ahead while its reply is not written", async () => {
  const server = serve({
    hostname: HOST,
    port: 0,
    idleTimeout: 0,
    onListen() {},
    onDisconnect() {},
  });
  const { scheduler } = server;
  const conn = await connect(server.addr.port);
  const chunk = new Uint8Array(256 * 1024).fill(120);
  let sent = 0;
  const sending = (async () => {
    try {
      while (sent < 1024 * 1024 * 1024) sent += await conn.write(chunk);
    } catch {
      // Closed below.
    }
  })();
  let last = -1;
  await within(10_000, "the client's writes to stall", async () => {
    while (last !== sent || scheduler.writeWaiting.size === 0) {
      last = sent;
      await delay(200);
    }
  });
  const [handler] = scheduler.tasks().filter((task) => task.name.startsWith("conn "));
  assert.equal(handler.state, "writing");
  assert.equal(scheduler.readWaiting.size, 0);
  assert.ok(sent < 256 * 1024 * 1024, `stalled after ${sent} bytes`);
  conn.close();
  await sending;
  await server.shutdown();
});

Deno.test("echoHandler ends with a TimeoutError when a read waits longer than idleTimeout", async () => {
  const errors: unknown[] = [];
  const server = serve({
    hostname: HOST,
    port: 0,
    idleTimeout: 50,
    onListen() {},
    onDisconnect: (_, error) => errors.push(error),
  });
  using conn = await connect(server.addr.port);
  assert.equal(await echo(conn, "hi"), "GOT:hi");
  assert.equal(await readToEnd(conn), "");
  await until(() => errors.length === 1, "the disconnect");
  assert.ok(errors[0] instanceof TimeoutError);
  await server.shutdown();
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
