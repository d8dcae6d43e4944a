// deploy/haproxy.cfg, checked by HAProxy itself and run in front of two genio servers that read
// the PROXY protocol header with readProxyHeader(). Needs Debian's `haproxy` (.ci/run installs
// it when it can); without it, the tests that run it are skipped with the reason printed.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import {
  accept,
  cancel,
  Cancelled,
  type Operation,
  ProxyHeaderError,
  read,
  readProxyHeader,
  Scheduler,
  spawn,
  wait,
  write,
} from "../mod.ts";
import { closeQuietly } from "../_close_quietly.ts";
import { decode, delay, encode, readExactly, readToEnd, within } from "./_net.ts";
import { type ServerProcess, startServer } from "./_server_process.ts";
import { assertAnsweredExactly, Random, stream } from "./_clients.ts";

const CONFIG = new URL("../deploy/haproxy.cfg", import.meta.url);
const HOST = "127.0.0.1";
const CLIENTS = 8;
const BYTES_PER_CLIENT = 200_000;

const HAPROXY_VERSION: string | null = (() => {
  try {
    const { success, stdout } = new Deno.Command("haproxy", { args: ["-v"] }).outputSync();
    return success ? decode(stdout).split("\n")[0] : null;
  } catch {
    return null;
  }
})();

if (HAPROXY_VERSION === null) {
  console.log(
    "SKIP tests/haproxy_test.ts: haproxy is not installed, so deploy/haproxy.cfg is neither " +
      "checked nor run (install Debian's haproxy package; .ci/run does when apt-get works)",
  );
}

Deno.test("deploy/haproxy.cfg balances TCP over two loopback servers, health-checked, sending PROXY v2", () => {
  const config = Deno.readTextFileSync(CONFIG);
  assert.match(config, /^\s*mode tcp$/m);
  const servers = [...config.matchAll(/^\s*server (\S+) 127\.0\.0\.1:(\d+)(.*)$/gm)];
  assert.ok(servers.length >= 2, "at least two servers");
  for (const [line, , , options] of servers) {
    assert.match(options, /(^| )check( |$)/, line);
    assert.match(options, /(^| )send-proxy-v2( |$)/, line);
  }
});

Deno.test({
  name: "haproxy -c accepts deploy/haproxy.cfg",
  ignore: HAPROXY_VERSION === null,
  async fn() {
    const { success, stdout, stderr } = await new Deno.Command("haproxy", {
      args: ["-c", "-f", CONFIG.pathname],
    }).output();
    assert.ok(success, decode(stdout) + decode(stderr));
  },
});

for (const sendProxy of ["send-proxy-v2", "send-proxy"]) {
  Deno.test({
    name: `genio servers behind HAProxy (${sendProxy}) see each client's own address, ` +
      "both get clients, and every byte is echoed",
    ignore: HAPROXY_VERSION === null,
    async fn() {
      const listeners = [0, 1].map(() => Deno.listen({ hostname: HOST, port: 0 }));
      const front = freePort();
      const config = configFor(front, listeners.map((listener) => listener.addr.port), sendProxy);
      const seen: Seen[] = [];
      const errors: unknown[] = [];
      const stop = Promise.withResolvers<void>();
      const scheduler = new Scheduler();
      scheduler.spawn(function* () {
        const servers = [];
        for (const [index, listener] of listeners.entries()) {
          servers.push(yield* spawn(serve(listener, index, seen, errors)));
        }
        yield* wait(stop.promise);
        for (const server of servers) yield* cancel(server);
      }());
      const running = scheduler.run();
      const haproxy = startHaproxy(config);
      let passed = false;
      try {
        await waitUntilListening(front, haproxy);
        // All connected before any finishes, so that leastconn has to use both servers.
        const clients = await Promise.all(
          Array.from({ length: CLIENTS }, () => Deno.connect({ hostname: HOST, port: front })),
        );
        const digests = await within(
          20_000,
          "every client's echo",
          () => Promise.all(clients.map((client) => exchange(client))),
        );
        for (const [sent, echoed] of digests) assert.equal(echoed, sent);

        const served = new Set<number>();
        for (const client of clients) {
          const { port } = client.localAddr;
          const entry = seen.find((entry) => entry.client?.port === port);
          assert.ok(entry, `no server saw client port ${port}: ${JSON.stringify(seen)}`);
          assert.deepEqual(entry.client, { transport: "tcp", hostname: HOST, port });
          assert.equal(entry.command, "PROXY");
          assert.notEqual(entry.peer.port, port, "the conn's own peer is HAProxy, not the client");
          served.add(entry.server);
        }
        assert.deepEqual([...served].sort(), [0, 1]);
        for (const client of clients) client.close();
        const unexpected = errors.filter((error) => !healthCheckNoise(error));
        assert.deepEqual(unexpected, []);
        passed = true;
      } finally {
        try {
          haproxy.kill("SIGTERM");
        } catch {
          // It has exited already (a failed start): its output says why.
        }
        const { stderr } = await haproxy.output();
        stop.resolve();
        await running;
        for (const listener of listeners) closeQuietly(listener);
        if (!passed) console.error(`haproxy's output:\n${decode(stderr)}`);
      }
    },
  });
}

Deno.test({
  name: "HAProxy in front of two server.ts --proxy-protocol: every byte echoed, both serve, " +
    "each logs the client's own address, and when one is killed the other takes new clients",
  ignore: HAPROXY_VERSION === null,
  async fn() {
    await using first = await startServer(["--port", "0", "--proxy-protocol"]);
    await using second = await startServer(["--port", "0", "--proxy-protocol"]);
    const servers = [first, second];
    const front = freePort();
    // Health checks ten times a second, so that the run sees plenty of them.
    const config = configFor(front, [first.port, second.port], "send-proxy-v2")
      .replace(/ inter \d+s /, " inter 100ms ");
    assert.match(config, / inter 100ms /);
    const haproxy = startHaproxy(config);
    const started = performance.now();
    let passed = false;
    try {
      await waitUntilListening(front, haproxy);
      const clients = await Promise.all(
        Array.from({ length: CLIENTS }, () => Deno.connect({ hostname: HOST, port: front })),
      );
      await within(20_000, "every client's echo", () => echoAll(clients, 1));
      // Each client is in exactly one server's log, under its own address and port.
      const served = await Promise.all(clients.map((client) => whoServed(servers, client)));
      assert.deepEqual([...new Set(served)].sort(), [0, 1], "both servers got clients");
      for (const client of clients) client.close();

      // Killed mid-run, with a client of its own still connected.
      const survivor = await Deno.connect({ hostname: HOST, port: front });
      const onFirst = await Deno.connect({ hostname: HOST, port: front });
      const held = [survivor, onFirst];
      const holders = await Promise.all(held.map(async (client) => {
        assert.equal(await echoOnce(client, "held"), "held");
        return await whoServed(servers, client);
      }));
      first.kill("SIGKILL");
      await first.exited();
      for (const [i, client] of held.entries()) {
        if (holders[i] === 0) assert.equal(await readToEnd(client), "", "cut with its server");
        client.close();
      }
      const later = await Promise.all(
        Array.from({ length: CLIENTS }, () => Deno.connect({ hostname: HOST, port: front })),
      );
      await within(20_000, "the later clients' echo", () => echoAll(later, 2));
      for (const client of later) assert.equal(await whoServed([second], client), 0);
      for (const client of later) client.close();
      // Health checks (a LOCAL header, then a reset) leave no trace in the logs.
      await delay(1_000 - (performance.now() - started));
      assert.deepEqual([...first.stderr.lines, ...second.stderr.lines], []);
      passed = true;
    } finally {
      try {
        haproxy.kill("SIGTERM");
      } catch {
        // It has exited already (a failed start): its output says why.
      }
      const { stderr } = await haproxy.output();
      if (!passed) console.error(`haproxy's output:\n${decode(stderr)}`);
    }
  },
});

// Streams random bytes through each client at once, and checks the GOT: replies by digest.
async function echoAll(clients: Deno.Conn[], seed: number): Promise<void> {
  await Promise.all(clients.map(async (client, i) => {
    const random = new Random(seed * 1000 + i);
    const tally = await stream(client, { bytes: BYTES_PER_CLIENT, maxWrite: 10_000, random });
    assertAnsweredExactly(tally, `client ${i}`);
  }));
}

// Which of `servers` logged `client` by its own address and port: exactly one must have.
async function whoServed(servers: ServerProcess[], client: Deno.Conn): Promise<number> {
  const { port } = client.localAddr as Deno.NetAddr;
  const line = new RegExp(`^Connection from ${HOST.replaceAll(".", "\\.")}:${port}$`);
  return await within(5_000, `a server to log client port ${port}`, async () => {
    for (;;) {
      const found = servers.flatMap((server, i) => server.stdout.count(line) > 0 ? [i] : []);
      if (found.length > 1) throw new Error(`Client port ${port} is in two servers' logs`);
      if (found.length === 1) return found[0];
      await delay(20);
    }
  });
}

async function echoOnce(client: Deno.Conn, text: string): Promise<string> {
  await client.write(encode(text));
  const reply = await readExactly(client, 4 + text.length);
  assert.equal(reply.slice(0, 4), "GOT:");
  return reply.slice(4);
}

interface Seen {
  server: number;
  command: "PROXY" | "LOCAL";
  client: Deno.NetAddr | null;
  peer: Deno.NetAddr;
}

// A genio server behind HAProxy: every connection starts with a PROXY header, then is echoed.
function* serve(
  listener: Deno.Listener,
  index: number,
  seen: Seen[],
  errors: unknown[],
): Operation<void> {
  for (;;) {
    let conn: Deno.Conn;
    try {
      conn = yield* accept(listener);
    } catch (error) {
      if (error instanceof Cancelled || !healthCheckNoise(error)) throw error;
      errors.push(error);
      continue;
    }
    yield* spawn(handle(conn, index, seen, errors));
  }
}

function* handle(
  conn: Deno.Conn,
  server: number,
  seen: Seen[],
  errors: unknown[],
): Operation<void> {
  try {
    const header = yield* readProxyHeader(conn);
    const { command, remoteAddr: client } = header;
    seen.push({ server, command, client, peer: conn.remoteAddr as Deno.NetAddr });
    if (command === "LOCAL") return;
    if (header.rest.length > 0) yield* write(conn, header.rest);
    const buffer = new Uint8Array(16 * 1024);
    let n: number | null;
    while ((n = yield* read(conn, buffer)) !== null) yield* write(conn, buffer.subarray(0, n));
  } catch (error) {
    if (error instanceof Cancelled) throw error;
    errors.push(error);
  } finally {
    conn.close();
  }
}

// HAProxy's health checks connect, send a LOCAL header and reset at once: the reset may beat
// the accept or the read, and a probe may close before HAProxy sends anything.
function healthCheckNoise(error: unknown): boolean {
  return error instanceof Deno.errors.NotConnected ||
    error instanceof Deno.errors.ConnectionReset ||
    error instanceof Deno.errors.ConnectionAborted ||
    (error instanceof ProxyHeaderError && error.reason === "truncated" && error.received === 0);
}

// Sends random bytes while reading the echo, then returns the digests of both.
async function exchange(client: Deno.TcpConn): Promise<[string, string]> {
  const data = new Uint8Array(BYTES_PER_CLIENT);
  for (let at = 0; at < data.length; at += 65_536) {
    crypto.getRandomValues(data.subarray(at, at + 65_536));
  }
  const echoed = createHash("sha256");
  const reading = (async () => {
    const buffer = new Uint8Array(32 * 1024);
    let n: number | null;
    while ((n = await client.read(buffer)) !== null) echoed.update(buffer.subarray(0, n));
  })();
  for (let at = 0; at < data.length; at += 10_000) {
    await client.write(data.subarray(at, at + 10_000));
  }
  await client.closeWrite();
  await reading;
  return [createHash("sha256").update(data).digest("hex"), echoed.digest("hex")];
}

// The checked-in config, its front end and servers moved to the given loopback ports.
function configFor(front: number, servers: number[], sendProxy: string): string {
  let config = Deno.readTextFileSync(CONFIG);
  config = config.replace(/^(\s*bind )\S+$/m, `$1${HOST}:${front}`);
  let next = 0;
  config = config.replace(
    /^(\s*server \S+ )127\.0\.0\.1:\d+/gm,
    (_, start) => `${start}${HOST}:${servers[next++]}`,
  );
  assert.equal(next, servers.length, "one server line per test server");
  return config.replaceAll(" send-proxy-v2", ` ${sendProxy}`);
}

function freePort(): number {
  const listener = Deno.listen({ hostname: HOST, port: 0 });
  const { port } = listener.addr;
  listener.close();
  return port;
}

// HAProxy in the foreground, its config on stdin (the tests may not write files).
function startHaproxy(config: string): Deno.ChildProcess {
  const child = new Deno.Command("haproxy", {
    args: ["-f", "/dev/stdin", "-db"],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const writer = child.stdin.getWriter();
  writer.write(encode(config)).then(() => writer.close()).catch(() => {});
  return child;
}

async function waitUntilListening(port: number, haproxy: Deno.ChildProcess): Promise<void> {
  let exited = false;
  haproxy.status.then(() => exited = true);
  for (let attempt = 0; attempt < 100; attempt++) {
    if (exited) throw new Error("haproxy exited at startup");
    try {
      (await Deno.connect({ hostname: HOST, port })).close();
      return;
    } catch {
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
  throw new Error(`haproxy did not listen on port ${port} within 5 s`);
}
