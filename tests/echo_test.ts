import assert from "node:assert/strict";
import { TimeoutError } from "../mod.ts";
import { serve } from "../tcp_server.ts";
import { connect, delay, echo, HOST, readToEnd, until, within } from "./_net.ts";

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
