// The example programs as their users run them: `deno run --allow-net examples/chat.ts` and
// `examples/proxy.ts` as subprocesses, talked to over real sockets.
import assert from "node:assert/strict";
import { closeQuietly } from "../_close_quietly.ts";
import { assertAnsweredExactly, Random, stream } from "./_clients.ts";
import { connect, encode, HOST, readBytesToEnd, readExactly, readToEnd, within } from "./_net.ts";
import { runServer, type ServerProcess, startServer } from "./_server_process.ts";

const CHAT = new URL("../examples/chat.ts", import.meta.url).pathname;
const PROXY = new URL("../examples/proxy.ts", import.meta.url).pathname;

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let at = 0; at < bytes.length;) at += await conn.write(bytes.subarray(at));
}

// A chat client: every line it receives is kept, in order; `next()` takes them one by one.
class LineClient implements AsyncDisposable {
  readonly lines: string[] = [];
  ended = false;
  #taken = 0;
  #changed = Promise.withResolvers<void>();
  readonly #reading: Promise<void>;

  constructor(readonly conn: Deno.TcpConn) {
    this.#reading = this.#read();
  }

  static async open(port: number): Promise<LineClient> {
    return new LineClient(await connect(port));
  }

  async #read(): Promise<void> {
    const decoder = new TextDecoder();
    const buffer = new Uint8Array(64 * 1024);
    let partial = "";
    try {
      for (let n; (n = await this.conn.read(buffer)) !== null;) {
        const parts = (partial + decoder.decode(buffer.subarray(0, n), { stream: true }))
          .split("\n");
        partial = parts.pop()!;
        this.lines.push(...parts);
        this.#notify();
      }
    } catch {
      // Reset by the server, or closed by the test.
    }
    this.ended = true;
    this.#notify();
  }

  #notify(): void {
    this.#changed.resolve();
    this.#changed = Promise.withResolvers<void>();
  }

  send(line: string): Promise<void> {
    return writeAll(this.conn, encode(`${line}\n`));
  }

  // The next line not yet taken.
  next(ms = 5_000): Promise<string> {
    return within(ms, "the next line", async () => {
      while (this.#taken === this.lines.length) {
        if (this.ended) throw new Error(`The chat closed; lines so far:\n${this.lines.join("\n")}`);
        await this.#changed.promise;
      }
      return this.lines[this.#taken++];
    });
  }

  async expect(...expected: string[]): Promise<void> {
    for (const line of expected) assert.equal(await this.next(), line);
  }

  // Waits until the server has closed the conn, and returns the lines not yet taken.
  async closed(ms = 5_000): Promise<string[]> {
    await within(ms, "the chat to close the conn", async () => {
      while (!this.ended) await this.#changed.promise;
    });
    return this.lines.slice(this.#taken);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    closeQuietly(this.conn);
    await this.#reading;
  }
}

// A client that has joined and read its welcome.
async function join(chat: ServerProcess, name: string): Promise<LineClient> {
  const client = await LineClient.open(chat.port);
  assert.match(await client.next(), new RegExp(`^\\* Welcome, ${name}! \\d+ others? here\\.`));
  return client;
}

// --- chat ----------------------------------------------------------------------------------

Deno.test("chat.ts --help describes commands and limits; a bad flag is one line and status 2", async () => {
  const help = await runServer(["--help"], true, CHAT);
  assert.equal(help.code, 0);
  const text = help.stdout.join("\n");
  for (const part of ["--port", "--hostname", "/nick NAME", "outbox of 64 lines", "dropped"]) {
    assert.ok(text.includes(part), `--help mentions ${part}`);
  }
  const bad = await runServer(["--port", "70000"], true, CHAT);
  assert.equal(bad.code, 2);
  assert.deepEqual(bad.stderr, [
    'error: --port must be an integer from 0 to 65535, got "70000" (see --help)',
  ]);
});

Deno.test("chat: a newcomer talks at once, each line reaching every other client as NAME: text", async () => {
  await using chat = await startServer(["--port", "0"], CHAT);
  await using a = await join(chat, "guest-1");
  await using b = await join(chat, "guest-2");
  await a.expect("* guest-2 joined");
  await using c = await join(chat, "guest-3");
  await a.expect("* guest-3 joined");
  await b.expect("* guest-3 joined");
  await a.send("hello, room");
  await b.expect("guest-1: hello, room");
  await c.expect("guest-1: hello, room");
  await c.send("hi");
  await a.expect("guest-3: hi");
  await b.expect("guest-3: hi");
  await a.send("/who"); // a's own line never came back to it: this is the next one
  await a.expect("* Here: guest-1, guest-2, guest-3");
  await chat.stdout.waitFor(/^guest-3 joined from 127\.0\.0\.1:\d+$/, 5_000);
});

Deno.test("chat: /nick renames with a notice to all, /who lists, /help and unknown commands answer", async () => {
  await using chat = await startServer(["--port", "0"], CHAT);
  await using a = await join(chat, "guest-1");
  await using b = await join(chat, "guest-2");
  await a.expect("* guest-2 joined");
  await a.send("/nick alice");
  await a.expect("* guest-1 is now alice");
  await b.expect("* guest-1 is now alice");
  await b.send("/nick alice");
  await b.expect("* alice is taken");
  await b.send("/nick no spaces allowed");
  await b.expect('* A name is 1 to 32 letters, digits, "_", "." or "-"');
  await b.send("/who");
  await b.expect("* Here: alice, guest-2");
  await a.send("/help");
  await a.expect(
    "* /nick NAME  take a new name (letters, digits, _ . -; up to 32)",
    "* /who        list who is here",
    "* /quit       leave",
    "* /help       this list",
    '* Any other line goes to everyone else as "NAME: line".',
  );
  await a.send("/dance");
  await a.expect("* Unknown command /dance: /help lists the commands");
  await a.send("now named");
  await b.expect("alice: now named");
  await chat.stdout.waitFor(/^guest-1 is now alice$/, 5_000);
});

Deno.test("chat: /quit says bye and closes; leaving and dropping the line are told to the room", async () => {
  await using chat = await startServer(["--port", "0"], CHAT);
  await using a = await join(chat, "guest-1");
  await using b = await join(chat, "guest-2");
  await a.expect("* guest-2 joined");
  await b.send("/quit");
  await b.expect("* Bye.");
  assert.deepEqual(await b.closed(), []);
  await a.expect("* guest-2 left");
  const c = await join(chat, "guest-3");
  await a.expect("* guest-3 joined");
  c.conn.close(); // gone without a word
  await c.closed();
  await a.expect("* guest-3 left");
  await chat.stdout.waitFor(/^guest-3 left$/, 5_000);
});

Deno.test("chat: a line over 4 KiB is refused with a notice to its sender and never passed on", async () => {
  await using chat = await startServer(["--port", "0"], CHAT);
  await using a = await join(chat, "guest-1");
  await using b = await join(chat, "guest-2");
  await a.expect("* guest-2 joined");
  const longest = "x".repeat(4096 - "a".length) + "a"; // 4096 bytes: accepted
  await a.send(longest);
  await b.expect(`guest-1: ${longest}`);
  await a.send("y".repeat(4097));
  await a.expect("* Line refused: longer than 4096 bytes. Bye.");
  assert.deepEqual(await a.closed(), []);
  await b.expect("* guest-1 was disconnected: a line over 4096 bytes");
});

Deno.test("chat: a client that does not read is dropped, and the room goes on without a stall", async () => {
  await using chat = await startServer(["--port", "0"], CHAT);
  await using talker = await join(chat, "guest-1");
  const slow = await connect(chat.port); // never reads
  await talker.expect("* guest-2 joined");
  await using listener = await join(chat, "guest-3");
  await talker.expect("* guest-3 joined");
  // Lines of 4 KiB in batches of 16, each batch read by the listener before the next: the
  // listener's outbox (64 lines) never fills, the slow client's fills once its socket's
  // buffers have. Loopback buffers hold a few MiB; 4,800 lines (19 MiB) is far beyond.
  const filler = "x".repeat(4000);
  let sent = 0;
  let dropped = false;
  while (!dropped && sent < 4_800) {
    for (let i = 0; i < 16; i++) await talker.send(`${sent++} ${filler}`);
    for (let i = sent - 16; i < sent; i++) {
      let line = await listener.next();
      if (line === "* guest-2 was dropped: too slow") {
        dropped = true;
        line = await listener.next();
      }
      assert.equal(line, `guest-1: ${i} ${filler}`, "the listener gets every line, in order");
    }
  }
  assert.ok(dropped, `the slow client was dropped after ${sent} lines`);
  await talker.expect("* guest-2 was dropped: too slow");
  await talker.send("still here");
  await listener.expect("guest-1: still here");
  await chat.stdout.waitFor(/^guest-2 was dropped: too slow$/, 5_000);
  // The server closed the slow client's conn: what was in flight is there, then the end.
  const rest = await within(10_000, "the slow client's end", () => readBytesToEnd(slow));
  assert.ok(rest.length > 64 * 4000, `${rest.length} bytes were waiting for the slow client`);
  slow.close();
});

// --- proxy ---------------------------------------------------------------------------------

async function startProxy(upstreamPort: number, ...args: string[]): Promise<ServerProcess> {
  return await startServer(
    ["--listen", `${HOST}:0`, "--upstream", `${HOST}:${upstreamPort}`, ...args],
    PROXY,
  );
}

Deno.test("proxy.ts --help lists its flags; a bad address is one line and status 2", async () => {
  const help = await runServer(["--help"], true, PROXY);
  assert.equal(help.code, 0);
  const text = help.stdout.join("\n");
  for (const flag of ["--listen", "--upstream", "--max-connections", "--connect-timeout"]) {
    assert.ok(text.includes(flag), `--help mentions ${flag}`);
  }
  const bad = await runServer(["--upstream", "localhost"], true, PROXY);
  assert.equal(bad.code, 2);
  assert.deepEqual(bad.stderr, [
    'error: --upstream must be HOST:PORT, got "localhost" (see --help)',
  ]);
});

Deno.test("proxy: 100 clients × 1 MiB through it to server.ts are echoed byte for byte", async () => {
  await using server = await startServer(["--port", "0", "--quiet"]);
  await using proxy = await startProxy(server.port);
  const size = 1024 * 1024;
  const runs = Array.from({ length: 100 }, async (_, i) => {
    using conn = await connect(proxy.port);
    const port = conn.localAddr.port;
    const tally = await stream(conn, { bytes: size, maxWrite: 64 * 1024, random: new Random(i) });
    return { port, tally };
  });
  const results = await within(60_000, "100 clients through the proxy", () => Promise.all(runs));
  for (const { port, tally } of results) {
    assertAnsweredExactly(tally, `client ${port}`);
    assert.equal(tally.sentBytes, size);
    // Its line counts every byte each way: the payload up, and each "GOT:" reply down.
    const down = tally.receivedBytes + 4 * tally.replies;
    await proxy.stdout.waitFor(
      new RegExp(`^Closed ${HOST}:${port}: ${size} bytes from client, ${down} bytes to client$`),
      5_000,
    );
  }
  assert.deepEqual(proxy.stderr.lines, []);
});

Deno.test("proxy: a client's half-close reaches the upstream, whose answer still comes back", async () => {
  // An upstream that answers only once its client has finished writing.
  using upstream = Deno.listen({ hostname: HOST, port: 0 });
  const answering = (async () => {
    using conn = await upstream.accept();
    const got = await readBytesToEnd(conn);
    await writeAll(conn, encode(`saw ${got.length} bytes, then the end`));
  })();
  await using proxy = await startProxy(upstream.addr.port);
  using client = await connect(proxy.port);
  await writeAll(client, encode("abc"));
  await client.closeWrite();
  assert.equal(await readToEnd(client), "saw 3 bytes, then the end");
  await answering;
  await proxy.stdout.waitFor(
    /^Closed 127\.0\.0\.1:\d+: 3 bytes from client, 25 bytes to client$/,
    5_000,
  );
});

Deno.test("proxy: killing the upstream closes its clients", async () => {
  const server = await startServer(["--port", "0", "--quiet"]);
  await using proxy = await startProxy(server.port);
  const clients = await Promise.all(Array.from({ length: 5 }, () => connect(proxy.port)));
  for (const client of clients) {
    await writeAll(client, encode("ping"));
    assert.equal(await readExactly(client, 8), "GOT:ping");
  }
  server.kill("SIGKILL");
  await server.exited();
  for (const client of clients) {
    const rest = await within(5_000, "the proxy to close the client", () => readBytesToEnd(client))
      .catch((error) => (error as Error).name);
    assert.ok(
      rest instanceof Uint8Array ? rest.length === 0 : rest === "ConnectionReset",
      `${rest}`,
    );
    client.close();
  }
  for (const client of clients) {
    const port = (client.localAddr as Deno.NetAddr).port;
    await proxy.stdout.waitFor(
      new RegExp(`^Closed ${HOST}:${port}: 4 bytes from client, 8 bytes`),
      5_000,
    );
  }
});

Deno.test("proxy: an upstream that refuses closes the client with one line", async () => {
  const unused = Deno.listen({ hostname: HOST, port: 0 });
  const port = unused.addr.port;
  unused.close();
  await using proxy = await startProxy(port);
  using client = await connect(proxy.port);
  assert.equal(await readToEnd(client), "");
  const line = await proxy.stderr.waitFor(/./, 5_000);
  assert.match(
    line,
    new RegExp(
      `^Closed ${HOST}:\\d+: cannot connect to upstream ${HOST}:${port}: connection refused$`,
    ),
  );
  assert.equal(proxy.stderr.lines.length, 1);
  assert.equal(proxy.stdout.count(/^Closed/), 0);
});
