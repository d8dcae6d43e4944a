import assert from "node:assert/strict";
import { cancel, connect, read, Scheduler, spawn, timeout, TimeoutError, write } from "../mod.ts";
import { connect as connectFromOutside, decode, encode, HOST, readToEnd, within } from "./_net.ts";

Deno.test("connect() opens a conn to a listening port, and shows as connecting meanwhile", async () => {
  const listener = Deno.listen({ hostname: HOST, port: 0 });
  const scheduler = new Scheduler();
  const client = scheduler.spawn(
    function* () {
      const conn = yield* connect({ port: listener.addr.port });
      try {
        yield* write(conn, encode("hello"));
        return (conn.remoteAddr as Deno.NetAddr).port;
      } finally {
        conn.close();
      }
    }(),
    { name: "client" },
  );
  scheduler.step();
  assert.equal(client.state, "connecting");
  assert.deepEqual(client.waitingOn, {
    transport: "tcp",
    hostname: HOST,
    port: listener.addr.port,
  });
  const running = scheduler.run();
  const server = await listener.accept();
  assert.equal(await readToEnd(server), "hello");
  await running;
  assert.equal(await client.result, listener.addr.port);
  server.close();
  listener.close();
});

Deno.test("connect() to a closed port throws ConnectionRefused at the yield*", async () => {
  const listener = Deno.listen({ hostname: HOST, port: 0 });
  const port = listener.addr.port;
  listener.close();
  const scheduler = new Scheduler();
  const task = scheduler.spawn(function* () {
    try {
      yield* connect({ port });
      return "connected";
    } catch (error) {
      return (error as Error).name;
    }
  }());
  await scheduler.run();
  assert.equal(await task.result, "ConnectionRefused");
});

Deno.test("a connect cancelled before it settles closes the conn when it arrives", async () => {
  const listener = Deno.listen({ hostname: HOST, port: 0 });
  const scheduler = new Scheduler();
  const main = scheduler.spawn(function* () {
    const connecting = yield* spawn(connect({ port: listener.addr.port }));
    yield; // the connect is in flight
    yield* cancel(connecting);
    return connecting.state;
  }());
  const running = scheduler.run();
  const server = await listener.accept(); // the connection was made...
  assert.equal(await within(2_000, "EOF", () => readToEnd(server)), ""); // ...and closed
  await running;
  assert.equal(await main.result, "cancelled");
  server.close();
  listener.close();
});

Deno.test("timeout() around a connect to a full backlog throws TimeoutError", async () => {
  const listener = Deno.listen({ hostname: HOST, port: 0 });
  // Linux holds at most 512 unaccepted connections here; the next connect waits.
  const held: Deno.Conn[] = [];
  for (let i = 0; i < 600; i++) {
    const conn = await Promise.race([
      connectFromOutside(listener.addr.port),
      new Promise<null>((resolve) => setTimeout(() => resolve(null), 100)),
    ]);
    if (conn === null) break;
    held.push(conn);
  }
  const scheduler = new Scheduler();
  const task = scheduler.spawn(function* () {
    const started = performance.now();
    try {
      yield* timeout(100, connect({ port: listener.addr.port }));
      return "connected";
    } catch (error) {
      if (!(error instanceof TimeoutError)) throw error;
      return `timed out after ${Math.round(performance.now() - started)} ms`;
    }
  }());
  const running = scheduler.run();
  const outcome = await task.result;
  for (const conn of held) conn.close();
  listener.close(); // the abandoned connect ends; run() waits for it
  await running;
  assert.match(outcome, /^timed out after \d+ ms$/);
  assert.ok(held.length < 600, "the backlog never filled");
});

Deno.test("connect() over a Unix socket, both ways", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/genio.sock`;
  const listener = Deno.listen({ path, transport: "unix" });
  const scheduler = new Scheduler();
  const client = scheduler.spawn(function* () {
    const conn = yield* connect({ path, transport: "unix" });
    try {
      yield* write(conn, encode("over unix"));
      const buffer = new Uint8Array(32);
      const n = yield* read(conn, buffer);
      return decode(buffer.subarray(0, n ?? 0));
    } finally {
      conn.close();
    }
  }());
  const running = scheduler.run();
  const server = await listener.accept();
  const buffer = new Uint8Array(32);
  const n = await server.read(buffer);
  await server.write(encode(`GOT:${decode(buffer.subarray(0, n!))}`));
  await running;
  assert.equal(await client.result, "GOT:over unix");
  server.close();
  listener.close();
  await Deno.remove(dir, { recursive: true });
});
