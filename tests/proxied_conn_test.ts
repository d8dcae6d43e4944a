// `--proxy-protocol` (serve()'s `proxyProtocol`): every connection begins with a PROXY protocol
// header, read before the handler runs, whose client address the handler and the log lines
// see. The real server.ts as a subprocess, then ProxiedConn, the conn the handler gets.
import assert from "node:assert/strict";
import { type Handler, type Operation, read, Scheduler, serve, write } from "../mod.ts";
import { ProxiedConn } from "../_proxied_conn.ts";
import { startServer } from "./_server_process.ts";
import {
  concat,
  connect,
  decode,
  delay,
  encode,
  HOST,
  loopback,
  readExactly,
  readToEnd,
  until,
} from "./_net.ts";
import {
  CLIENT6,
  V1_TCP4,
  V1_TCP6,
  V1_UNKNOWN,
  V2_LOCAL,
  V2_TCP4,
  V2_TCP6,
  V2_TLVS,
} from "./_proxy_headers.ts";

const PROXIED = ["--port", "0", "--proxy-protocol"];

// Sends `bytes` and then shuts the write side, and returns all the server sent back.
async function exchange(port: number, ...parts: (string | Uint8Array)[]): Promise<string> {
  using conn = await connect(port);
  for (const part of parts) {
    await conn.write(typeof part === "string" ? encode(part) : part);
    await delay(10);
  }
  await conn.closeWrite();
  return await readToEnd(conn);
}

Deno.test("--proxy-protocol: v1 and v2 headers, IPv4 and IPv6, give the client's address to the log, and the bytes sent with the header are echoed", async () => {
  await using server = await startServer(PROXIED);
  const cases: [Uint8Array, string][] = [
    [encode(V1_TCP4), "203.0.113.7:51000"],
    [encode(V1_TCP6), "[2001:db8::7]:51000"],
    [V2_TCP4, "203.0.113.7:51000"],
    [V2_TCP6, "[2001:db8::7]:51000"],
    [V2_TLVS, "203.0.113.7:51000"],
  ];
  for (const [header, client] of cases) {
    const before = server.stdout.lines.length;
    // The header and the first data in one write, as HAProxy sends them.
    assert.equal(await exchange(server.port, concat([header, encode("hello")])), "GOT:hello");
    await until(() => server.stdout.lines.length >= before + 2, "the connection's two lines");
    assert.deepEqual(server.stdout.lines.slice(before), [
      `Connection from ${client}`,
      `Connection closed ${client}`,
    ]);
  }
  assert.deepEqual(server.stderr.lines, []);
});

Deno.test("--proxy-protocol reads a header split across writes, and the conversation after it", async () => {
  await using server = await startServer(PROXIED);
  const reply = await exchange(
    server.port,
    "PROXY TCP4 203.0",
    ".113.7 192.0.2.1 510",
    "00 25000\r",
    "\n",
    "one",
  );
  assert.equal(reply, "GOT:one");
  await server.stdout.waitFor(/^Connection from 203\.0\.113\.7:51000$/, 5_000);
  using conn = await connect(server.port);
  await conn.write(V2_TCP4);
  for (const message of ["a", "bc", "def"]) {
    await conn.write(encode(message));
    const buffer = new Uint8Array(4 + message.length);
    for (let got = 0; got < buffer.length;) got += (await conn.read(buffer.subarray(got)))!;
    assert.equal(decode(buffer), `GOT:${message}`);
  }
});

Deno.test("--proxy-protocol: an UNKNOWN header keeps the conn's own address", async () => {
  await using server = await startServer(PROXIED);
  using conn = await connect(server.port);
  await conn.write(encode(`${V1_UNKNOWN}hi`));
  const line = await server.stdout.waitFor(/^Connection from /, 5_000);
  assert.equal(line, `Connection from ${HOST}:${conn.localAddr.port}`);
});

Deno.test("--proxy-protocol closes a connection without a valid header with exactly one stderr line, before any handler", async () => {
  await using server = await startServer(PROXIED);
  const cases: [string | Uint8Array, RegExp][] = [
    ["GET / HTTP/1.1\r\n\r\n", /it begins with neither "PROXY " nor the v2 signature$/],
    [`PROXY TCP4 ${"1".repeat(120)}`, /the v1 line has no CRLF in its first 107 bytes$/],
    ["PROXY TCP4 203.0.113.999 192.0.2.1 51000 25000\r\n", /source address "203\.0\.113\.999"/],
    ["PROXY TCP4 203.0.113.7 192.0.2.1 70000 25000\r\n", /source port "70000"/],
    ["PROXY TCP4 203.0.113.7", /the connection ended after 22 bytes, before the header did$/],
    [V2_TCP4.subarray(0, 20), /the connection ended after 20 bytes, before the header did$/],
  ];
  for (const [index, [bytes, why]] of cases.entries()) {
    using conn = await connect(server.port);
    await conn.write(typeof bytes === "string" ? encode(bytes) : bytes);
    await conn.closeWrite();
    assert.equal(await readToEnd(conn), "", "closed with no reply");
    const line = await server.stderr.waitFor(new RegExp(`:${conn.localAddr.port} `), 5_000);
    assert.match(line, new RegExp(`^Connection ${HOST}:${conn.localAddr.port} refused: `));
    assert.match(line, why);
    assert.equal(server.stderr.lines.length, index + 1, "one line each");
  }
  await delay(50);
  assert.deepEqual(server.stdout.lines.slice(1), [], "no Connection from/closed lines");
});

Deno.test("--proxy-protocol closes a v2 LOCAL connection (a health check) and one that sends nothing, quietly", async () => {
  await using server = await startServer(PROXIED);
  assert.equal(await exchange(server.port, V2_LOCAL), "");
  assert.equal(await exchange(server.port), "");
  (await connect(server.port)).close();
  await delay(100);
  assert.deepEqual(server.stdout.lines.slice(1), []);
  assert.deepEqual(server.stderr.lines, []);
});

Deno.test("--proxy-protocol ends a connection whose header has not come within 5 s, or --idle-timeout if shorter", async () => {
  await using server = await startServer(PROXIED);
  await using short = await startServer([...PROXIED, "--idle-timeout", "0.5"]);
  const started = performance.now();
  const silent = async (port: number): Promise<number> => {
    using conn = await connect(port);
    await conn.write(encode("PROXY TCP4 "));
    assert.equal(await readToEnd(conn, 10_000), "");
    return performance.now() - started;
  };
  const [fiveSeconds, halfASecond] = await Promise.all([silent(server.port), silent(short.port)]);
  assert.ok(halfASecond >= 450 && halfASecond < 3_000, `${halfASecond} ms`);
  assert.ok(fiveSeconds >= 4_950 && fiveSeconds < 9_000, `${fiveSeconds} ms`);
  assert.match(
    server.stderr.lines.join("\n"),
    /^Connection .* refused: no PROXY protocol header within 5 s$/,
  );
  assert.match(
    short.stderr.lines.join("\n"),
    /^Connection .* refused: no PROXY protocol header within 0.5 s$/,
  );
});

Deno.test("without --proxy-protocol a PROXY header is data, never trusted", async () => {
  await using server = await startServer(["--port", "0"]);
  using conn = await connect(server.port);
  await conn.write(encode(V1_TCP4));
  const reply = new Uint8Array(4 + V1_TCP4.length);
  for (let got = 0; got < reply.length;) got += (await conn.read(reply.subarray(got)))!;
  assert.equal(decode(reply), `GOT:${V1_TCP4}`);
  const line = await server.stdout.waitFor(/^Connection from /, 5_000);
  assert.equal(line, `Connection from ${HOST}:${conn.localAddr.port}`);
});

// --- serve() and the conn its handler gets ---------------------------------------------

Deno.test("serve({ proxyProtocol }) gives the handler a conn whose addresses are the header's", async () => {
  const seen: [Deno.Addr, Deno.Addr][] = [];
  const handler: Handler = function* (conn) {
    seen.push([conn.remoteAddr, conn.localAddr]);
    yield* write(conn, encode("hi"));
  };
  await using server = serve({
    hostname: HOST,
    port: 0,
    handler,
    proxyProtocol: true,
    onListen() {},
  });
  assert.equal(await exchange(server.addr.port, V2_TCP6), "hi");
  const { sourcePort, destinationPort } = CLIENT6;
  assert.deepEqual(seen, [[
    { transport: "tcp", hostname: "2001:db8::7", port: sourcePort },
    { transport: "tcp", hostname: "2001:db8::1", port: destinationPort },
  ]]);
});

Deno.test("serve({ proxyProtocol }) reports a refused header to onProxyError with the conn's own peer, and counts no connection", async () => {
  const refused: [Deno.NetAddr, unknown][] = [];
  await using server = serve({
    hostname: HOST,
    port: 0,
    proxyProtocol: true,
    onListen() {},
    onConnect: () => assert.fail("no connection should start"),
    onProxyError: (peer, error) => refused.push([peer, error]),
  });
  using conn = await connect(server.addr.port);
  await conn.write(encode("hello\r\n"));
  assert.equal(await readToEnd(conn), "");
  assert.equal(refused.length, 1);
  assert.equal(refused[0][0].port, conn.localAddr.port);
  assert.equal((refused[0][1] as Error).name, "ProxyHeaderError");
  assert.equal(server.connections, 0);
});

Deno.test("ProxiedConn returns the bytes read past the header first, to read() and to readable alike", async () => {
  for (const via of ["read", "readable", "byob"]) {
    using pair = await loopback();
    const header = {
      version: 1 as const,
      command: "PROXY" as const,
      remoteAddr: { transport: "tcp" as const, hostname: "203.0.113.7", port: 51000 },
      localAddr: { transport: "tcp" as const, hostname: "192.0.2.1", port: 25000 },
      length: 0,
      rest: encode("first "),
    };
    const conn = new ProxiedConn(pair.server, header);
    await conn.write(encode("back"));
    assert.equal(await readExactly(pair.client, 4), "back");
    await pair.client.write(encode("second"));
    await pair.client.closeWrite();
    let text = "";
    if (via === "read") {
      const buffer = new Uint8Array(4);
      for (let n; (n = await conn.read(buffer)) !== null;) text += decode(buffer.subarray(0, n));
    } else if (via === "readable") {
      for await (const chunk of conn.readable) text += decode(chunk);
    } else {
      const reader = conn.readable.getReader({ mode: "byob" });
      for (;;) {
        const { done, value } = await reader.read(new Uint8Array(4));
        if (done) break;
        text += decode(value);
      }
    }
    assert.equal(text, "first second", via);
    assert.deepEqual(conn.remoteAddr, header.remoteAddr);
    assert.deepEqual(conn.localAddr, header.localAddr);
  }
});

Deno.test("ProxiedConn is read by the kernel like any conn, the rest first", async () => {
  using pair = await loopback();
  const conn = new ProxiedConn(pair.server, {
    version: 2,
    command: "PROXY",
    remoteAddr: null,
    localAddr: null,
    length: 16,
    rest: encode("ab"),
  });
  assert.deepEqual(conn.remoteAddr, pair.server.remoteAddr, "no addresses: the conn's own");
  function* collect(): Operation<string> {
    const buffer = new Uint8Array(64);
    let text = "";
    let n: number | null;
    while ((n = yield* read(conn, buffer)) !== null) text += decode(buffer.subarray(0, n));
    return text;
  }
  const scheduler = new Scheduler();
  const task = scheduler.spawn(collect());
  await pair.client.write(encode("cd"));
  pair.client.close();
  await scheduler.run();
  assert.equal(await task.result, "abcd");
});

Deno.test("serve() takes proxyProtocol on plain TCP only: not with cert and key, nor a Unix path", () => {
  assert.throws(
    () => serve({ port: 0, cert: "x", key: "y", proxyProtocol: true, onListen() {} }),
    new TypeError('Cannot serve: "proxyProtocol" does not go with "cert" and "key"'),
  );
  assert.throws(
    () => serve({ path: "/tmp/never.sock", proxyProtocol: true }),
    new TypeError('Cannot serve: "path" does not go with "proxyProtocol"'),
  );
});

Deno.test("stats() behind the PROXY protocol counts the handler's bytes, not the header, open or ended", async () => {
  const server = serve({ hostname: HOST, port: 0, proxyProtocol: true, onListen() {} });
  const conn = await connect(server.addr.port);
  await conn.write(concat([V2_TCP4, encode("hello")]));
  assert.equal(await readExactly(conn, 9), "GOT:hello");
  const open = server.stats();
  assert.equal(open.connectionsOpen, 1);
  assert.deepEqual([open.bytesReceived, open.bytesSent], [5, 9]);
  conn.close();
  await server.shutdown();
  const ended = server.stats();
  assert.deepEqual([ended.connectionsTotal, ended.bytesReceived, ended.bytesSent], [1, 5, 9]);
});
