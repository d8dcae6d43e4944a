import assert from "node:assert/strict";
import denoJson from "../deno.json" with { type: "json" };
import { runServer, SERVER, startServer } from "./_server_process.ts";
import { makeCertificate, skipWithoutOpenssl } from "./_tls.ts";
import {
  connect,
  decode,
  delay,
  echo,
  encode,
  exists,
  HAS_IPV6,
  HOST,
  readExactly,
  readToEnd,
  socketPath,
  until,
  waitUntilRefused,
  within,
} from "./_net.ts";

const HAS_PYTHON: boolean = (() => {
  try {
    return new Deno.Command("python3", { args: ["--version"] }).outputSync().success;
  } catch {
    return false;
  }
})();

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
  name:
    "server.ts skips a client that reset before it was accepted, quietly, and goes on accepting",
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

    using next = await connect(server.port);
    assert.equal(await echo(next, "still here"), "GOT:still here");
    assert.equal(server.stdout.count(/^Connection from /), 2);
    // One client's reset is not worth an operator's attention: no line for it.
    assert.equal(server.stderr.count(/^Accept failed/), 0);
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
    ["--cert", "cert.pem"],
    ["--key", "key.pem"],
    ["--unix", "genio.sock", "--port", "25000"],
    ["--unix", "genio.sock", "--hostname", "127.0.0.1"],
    ["--unix", "genio.sock", "--cert", "cert.pem", "--key", "key.pem"],
    ["--unix", ""],
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
  assert.deepEqual(exits.slice(11).map((exit) => exit.stderr[0]), [
    "error: --cert needs --key (see --help)",
    "error: --key needs --cert (see --help)",
    "error: --unix cannot be used with --port (see --help)",
    "error: --unix cannot be used with --hostname (see --help)",
    "error: --unix cannot be used with --cert (see --help)",
    "error: --unix must not be empty (see --help)",
  ]);
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
      "--cert",
      "--key",
      "--unix",
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

// --- TLS: --cert and --key ----------------------------------------------------------------------

const noOpenssl = skipWithoutOpenssl("tests/server_test.ts");
const READ = ["--allow-net", "--allow-read"];

Deno.test({
  name: "server.ts --cert --key serves TLS, its first line still `Listening on HOST:PORT`",
  ignore: noOpenssl,
  async fn() {
    using certificate = makeCertificate();
    const { certFile, keyFile, cert } = certificate;
    await using server = await startServer(
      ["--port", "0", "--cert", certFile, "--key", keyFile],
      SERVER,
      READ,
    );
    assert.equal(server.stdout.lines[0], `Listening on ${HOST}:${server.port}`);
    using conn = await Deno.connectTls({ hostname: HOST, port: server.port, caCerts: [cert] });
    assert.equal(await echo(conn, "secret"), "GOT:secret");
    const peer = `${HOST}:${conn.localAddr.port}`;
    await server.stdout.waitFor(new RegExp(`^Connection from ${peer}$`), 5_000);
  },
});

Deno.test({
  name:
    "server.ts over TLS gives a plaintext client one stderr line, and a TLS client is unaffected",
  ignore: noOpenssl,
  async fn() {
    using certificate = makeCertificate();
    const { certFile, keyFile, cert } = certificate;
    await using server = await startServer(
      ["--port", "0", "--cert", certFile, "--key", keyFile],
      SERVER,
      READ,
    );
    using tls = await Deno.connectTls({ hostname: HOST, port: server.port, caCerts: [cert] });
    assert.equal(await echo(tls, "one"), "GOT:one");
    using plain = await connect(server.port);
    await plain.write(encode("hello\n"));
    assert.ok(!(await readToEnd(plain)).includes("GOT:"));
    const peer = `${HOST}:${plain.localAddr.port}`;
    await server.stdout.waitFor(new RegExp(`^Connection closed ${peer}$`), 5_000);
    assert.deepEqual(server.stderr.lines, [
      `Connection ${peer} failed: InvalidData: TLS handshake failed: ` +
      "received corrupt message of type InvalidContentType",
    ]);
    assert.equal(await echo(tls, "two"), "GOT:two");
  },
});

Deno.test({
  name: "server.ts over TLS: --idle-timeout cuts a client that never starts its handshake",
  ignore: noOpenssl,
  async fn() {
    using certificate = makeCertificate();
    const { certFile, keyFile, cert } = certificate;
    await using server = await startServer(
      ["--port", "0", "--cert", certFile, "--key", keyFile, "--idle-timeout", "0.3"],
      SERVER,
      READ,
    );
    using silent = await connect(server.port);
    const peer = `${HOST}:${silent.localAddr.port}`;
    using tls = await Deno.connectTls({ hostname: HOST, port: server.port, caCerts: [cert] });
    assert.equal(await echo(tls, "meanwhile"), "GOT:meanwhile");
    await server.stderr.waitFor(
      new RegExp(`^Connection ${peer} timed out after 0.3 s idle$`),
      5_000,
    );
    // Deno holds the socket of a conn closed mid-handshake until its client speaks: the
    // client sees no echo, and the end once it speaks.
    await silent.write(encode("hello"));
    assert.ok(!(await readToEnd(silent)).includes("GOT:"));
    assert.equal(await echo(tls, "after"), "GOT:after");
  },
});

Deno.test({
  name: "server.ts exits 1 with one line when --cert or --key cannot be read or holds no PEM",
  ignore: noOpenssl,
  async fn() {
    using certificate = makeCertificate();
    const { dir, certFile, keyFile } = certificate;
    const missing = `${dir}/missing.pem`;
    const cases: [string[], string[], string][] = [
      [[missing, keyFile], READ, `error: Cannot read --cert "${missing}": no such file`],
      [[certFile, dir], READ, `error: Cannot read --key "${dir}": is a directory`],
      [
        [keyFile, keyFile],
        READ,
        `error: Cannot serve TLS with --cert "${keyFile}" and --key "${keyFile}": ` +
        "No certificates found in certificate data",
      ],
      [
        [certFile, certFile],
        READ,
        `error: Cannot serve TLS with --cert "${certFile}" and --key "${certFile}": ` +
        "No keys found in key data",
      ],
      [
        [certFile, keyFile],
        ["--allow-net"],
        `error: Cannot read --cert "${certFile}": no read permission (run with --allow-read)`,
      ],
    ];
    const exits = await Promise.all(
      cases.map(([[c, k], permissions]) =>
        runServer(["--port", "0", "--cert", c, "--key", k], permissions)
      ),
    );
    exits.forEach((exit, i) => {
      assert.equal(exit.code, 1, exit.stderr.join("\n"));
      assert.deepEqual(exit.stdout, []);
      assert.deepEqual(exit.stderr, [cases[i][2]]);
    });
  },
});

// --- Unix sockets: --unix -------------------------------------------------------------------------

const UNIX = ["--allow-net", "--allow-read", "--allow-write"];

Deno.test("server.ts --unix prints `Listening on unix:PATH`, echoes, and names connections by the socket", async () => {
  using socket = socketPath();
  await using server = await startServer(["--unix", socket.path], SERVER, UNIX);
  assert.equal(server.stdout.lines[0], `Listening on unix:${socket.path}`);
  assert.equal(server.path, socket.path);
  const conn = await Deno.connect({ path: socket.path, transport: "unix" });
  assert.equal(await echo(conn, "local"), "GOT:local");
  conn.close();
  await server.stdout.waitFor(/^Connection closed /, 5_000);
  assert.deepEqual(server.stdout.lines.slice(1), [
    `Connection from unix:${socket.path}`,
    `Connection closed unix:${socket.path}`,
  ]);
});

Deno.test("server.ts --unix removes its socket file when it shuts down", async () => {
  using socket = socketPath();
  const server = await startServer(["--unix", socket.path], SERVER, UNIX);
  assert.ok(Deno.lstatSync(socket.path).isSocket);
  server.kill("SIGTERM");
  const exit = await server.exited();
  assert.equal(exit.code, 0);
  assert.ok(!exists(socket.path), "the socket file is gone");
});

Deno.test("server.ts --unix replaces the stale socket file of a server that was killed", async () => {
  using socket = socketPath();
  const killed = await startServer(["--unix", socket.path], SERVER, UNIX);
  killed.kill("SIGKILL");
  await killed.exited();
  assert.ok(Deno.lstatSync(socket.path).isSocket, "a killed server leaves its socket file");
  await using server = await startServer(["--unix", socket.path], SERVER, UNIX);
  assert.equal(server.path, socket.path);
  using conn = await Deno.connect({ path: socket.path, transport: "unix" });
  assert.equal(await echo(conn, "fresh"), "GOT:fresh");
});

Deno.test("server.ts --unix exits 1 with `address already in use` on a live server's socket, which goes on", async () => {
  using socket = socketPath();
  await using live = await startServer(["--unix", socket.path], SERVER, UNIX);
  const exit = await runServer(["--unix", socket.path], UNIX);
  assert.equal(exit.code, 1);
  assert.deepEqual(exit.stdout, []);
  assert.deepEqual(exit.stderr, [
    `error: Cannot listen on unix:${socket.path}: address already in use`,
  ]);
  using conn = await Deno.connect({ path: socket.path, transport: "unix" });
  assert.equal(await echo(conn, "still here"), "GOT:still here");
  assert.deepEqual(live.stderr.lines, []);
});

Deno.test("server.ts --unix leaves a file that is not a socket alone, and exits 1", async () => {
  using socket = socketPath();
  Deno.writeTextFileSync(socket.path, "precious");
  const exit = await runServer(["--unix", socket.path], UNIX);
  assert.equal(exit.code, 1);
  assert.deepEqual(exit.stderr, [
    `error: Cannot listen on unix:${socket.path}: address already in use`,
  ]);
  assert.equal(Deno.readTextFileSync(socket.path), "precious");
});

Deno.test("server.ts --unix exits 1 with one line without read or write permission", async () => {
  using socket = socketPath();
  const [noRead, noWrite] = await Promise.all([
    runServer(["--unix", socket.path], ["--allow-net"]),
    runServer(["--unix", socket.path], ["--allow-net", "--allow-read"]),
  ]);
  assert.equal(noRead.code, 1);
  assert.deepEqual(noRead.stderr, [
    `error: Cannot listen on unix:${socket.path}: no read permission (run with --allow-read)`,
  ]);
  assert.equal(noWrite.code, 1);
  assert.deepEqual(noWrite.stderr, [
    `error: Cannot listen on unix:${socket.path}: no write permission (run with --allow-write)`,
  ]);
});
