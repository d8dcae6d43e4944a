// serve() and tcpServer() on Unix sockets, and connect() to them, with real sockets.
import assert from "node:assert/strict";
import { connect, type Operation, read, Scheduler, timeout, write } from "../mod.ts";
import { echoHandler } from "../echo.ts";
import { serve, tcpServer } from "../tcp_server.ts";
import { decode, echo, encode, exists, HOST, socketPath, until } from "./_net.ts";

function* ask(conn: Deno.Conn, message: string): Operation<string> {
  yield* write(conn, encode(message));
  const reply = new Uint8Array(4 + message.length);
  let got = 0;
  while (got < reply.length) {
    const n = yield* timeout(5_000, read(conn, reply.subarray(got)));
    if (n === null) break;
    got += n;
  }
  return decode(reply.subarray(0, got));
}

Deno.test("a connect() task and a tcpServer() task talk over a Unix socket on one scheduler", async () => {
  using dir = socketPath();
  const listener = Deno.listen({ path: dir.path, transport: "unix" });
  const scheduler = new Scheduler();
  const server = scheduler.spawn(tcpServer(listener, echoHandler), { name: "server" });
  const client = scheduler.spawn(function* () {
    const conn = yield* connect({ path: dir.path, transport: "unix" });
    try {
      return [yield* ask(conn, "one"), yield* ask(conn, "two")];
    } finally {
      conn.close();
      listener.close(); // the server ends once its connection has
    }
  }());
  await scheduler.run();
  assert.deepEqual(await client.result, ["GOT:one", "GOT:two"]);
  assert.equal(server.state, "done");
});

Deno.test("serve({ path }) answers a plain Deno client, and its addr is the socket's", async () => {
  using dir = socketPath();
  let listened: Deno.UnixAddr | undefined;
  const server = serve({ path: dir.path, onListen: (addr) => listened = addr });
  assert.deepEqual(server.addr, { transport: "unix", path: dir.path });
  assert.deepEqual(listened, server.addr);
  using conn = await Deno.connect({ path: dir.path, transport: "unix" });
  assert.equal(await echo(conn, "hello"), "GOT:hello");
  conn.close();
  await until(() => server.connections === 0, "the server to see the client leave");
  assert.deepEqual(await server.shutdown(), { drained: 0, cancelled: 0 });
});

Deno.test("serve({ path }) names each connection by the socket, since a Unix peer has no address", async () => {
  using dir = socketPath();
  const seen: Deno.UnixAddr[] = [];
  const server = serve({
    path: dir.path,
    transport: "unix",
    onListen() {},
    onConnect: (addr) => seen.push(addr),
    onDisconnect: (addr) => seen.push(addr),
  });
  using conn = await Deno.connect({ path: dir.path, transport: "unix" });
  assert.equal(await echo(conn, "hi"), "GOT:hi");
  const names = server.scheduler.tasks().map((task) => task.name);
  assert.ok(names.includes(`conn unix:${dir.path}`), names.join(", "));
  conn.close();
  await until(() => seen.length === 2, "the connection to end");
  const socket = { transport: "unix", path: dir.path };
  assert.deepEqual(seen, [socket, socket]);
  await server.shutdown();
});

Deno.test("serve({ path }) removes the socket file when it shuts down", async () => {
  using dir = socketPath();
  const server = serve({ path: dir.path, onListen() {} });
  assert.ok(Deno.lstatSync(dir.path).isSocket);
  await server.shutdown();
  assert.ok(!exists(dir.path));
});

Deno.test("serve({ path }) throws AddrInUse when a file is already there, and leaves it", () => {
  using dir = socketPath();
  Deno.writeTextFileSync(dir.path, "not a socket");
  assert.throws(() => serve({ path: dir.path, onListen() {} }), Deno.errors.AddrInUse);
  assert.equal(Deno.readTextFileSync(dir.path), "not a socket");
});

Deno.test("serve() refuses a path with a TCP option or another transport", () => {
  using dir = socketPath();
  const path = dir.path;
  const cases: [Record<string, unknown>, string][] = [
    [{ port: 0 }, 'Cannot serve: "path" does not go with "port"'],
    [{ hostname: HOST }, 'Cannot serve: "path" does not go with "hostname"'],
    [{ cert: "c", key: "k" }, 'Cannot serve: "path" does not go with "cert"'],
    [{ transport: "tcp" }, 'Cannot serve: a path needs transport "unix", got "tcp"'],
  ];
  for (const [extra, message] of cases) {
    const options = { path, onListen() {}, ...extra } as Parameters<typeof serve>[0];
    assert.throws(() => serve(options), new TypeError(message));
  }
  assert.ok(!exists(path));
});
