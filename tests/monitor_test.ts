// The monitor console of the real server.ts, over TCP as an operator's `nc` uses it.
import assert from "node:assert/strict";
import { closeQuietly } from "../_close_quietly.ts";
import {
  connect,
  decode,
  delay,
  echo,
  encode,
  HOST,
  readToEnd,
  socketPath,
  within,
} from "./_net.ts";
import { runServer, type ServerProcess, startServer } from "./_server_process.ts";

const PROMPT = "> ";

// One console session: each command's answer is what arrives before the next prompt.
class Console implements Disposable {
  readonly conn: Deno.TcpConn;
  #buffer = new Uint8Array(64 * 1024);

  private constructor(conn: Deno.TcpConn) {
    this.conn = conn;
  }

  static async open(port: number): Promise<Console> {
    const console = new Console(await connect(port));
    const greeting = await console.#untilPrompt();
    assert.match(greeting, /help/);
    return console;
  }

  async send(line: string): Promise<string> {
    await this.conn.write(encode(`${line}\n`));
    return await this.#untilPrompt();
  }

  async #untilPrompt(): Promise<string> {
    return await within(5_000, "the monitor's prompt", async () => {
      let text = "";
      while (!text.endsWith(PROMPT)) {
        const n = await this.conn.read(this.#buffer);
        if (n === null) {
          throw new Error(`The monitor closed the session after ${JSON.stringify(text)}`);
        }
        text += decode(this.#buffer.subarray(0, n));
      }
      return text.slice(0, -PROMPT.length).replace(/\n$/, "");
    });
  }

  [Symbol.dispose](): void {
    closeQuietly(this.conn);
  }
}

async function startWithMonitor(
  args: string[] = ["--port", "0"],
  permissions?: string[],
): Promise<[ServerProcess, number]> {
  const server = await startServer(["--monitor", "0", ...args], undefined, permissions);
  const line = await server.stdout.waitFor(/^Monitor on /, 5_000);
  const match = line.match(/^Monitor on 127\.0\.0\.1:(\d+)$/);
  assert.ok(match, line);
  return [server, Number(match[1])];
}

// The row `ps` shows for the connection from `port`: its id and its state.
function psRow(ps: string, port: number): { id: number; state: string } | null {
  const peer = `${HOST}:${port}`.replaceAll(".", "\\.");
  const match = ps.match(new RegExp(`^ *(\\d+) +conn ${peer} +(\\w+) +conn ${peer} `, "m"));
  return match === null ? null : { id: Number(match[1]), state: match[2] };
}

function figure(stats: string, label: string): number {
  const match = stats.match(new RegExp(`^${label}: (\\d+)$`, "m"));
  assert.ok(match, `stats has "${label}":\n${stats}`);
  return Number(match[1]);
}

Deno.test("server.ts --monitor prints `Monitor on 127.0.0.1:PORT` after `Listening on`", async () => {
  const [server, port] = await startWithMonitor();
  await using _ = server;
  assert.equal(server.stdout.lines[0], `Listening on ${HOST}:${server.port}`);
  assert.equal(server.stdout.lines[1], `Monitor on 127.0.0.1:${port}`);
  using console = await Console.open(port);
  assert.match(await console.send("help"), /^ps +every task/m);
});

Deno.test("ps lists a live connection with its peer address and state; cancel ID disconnects that client and it is gone from the next ps", async () => {
  const [server, port] = await startWithMonitor();
  await using _ = server;
  using client = await connect(server.port);
  using bystander = await connect(server.port);
  assert.equal(await echo(client, "hello"), "GOT:hello");
  assert.equal(await echo(bystander, "hi"), "GOT:hi");
  using console = await Console.open(port);

  let ps = "";
  await within(5_000, "the connection to show as reading", async () => {
    while (psRow(ps = await console.send("ps"), client.localAddr.port)?.state !== "reading") {
      await delay(20);
    }
  });
  assert.match(ps, /^ID +NAME +STATE +WAITING ON +DEADLINE +AGE +IN +OUT$/m);
  assert.match(ps, /^ *1 +tcp-server +accepting +listener 127\.0\.0\.1:\d+ /m);
  const { id } = psRow(ps, client.localAddr.port)!;
  // Bytes in and out as they crossed the socket, "GOT:" included.
  assert.match(ps, new RegExp(`^ *${id} .* 5 +9$`, "m"));

  assert.equal(
    await console.send(`cancel ${id}`),
    `cancelled #${id} "conn ${HOST}:${client.localAddr.port}"`,
  );
  assert.equal(await readToEnd(client), "");
  ps = await console.send("ps");
  assert.equal(psRow(ps, client.localAddr.port), null);
  assert.notEqual(psRow(ps, bystander.localAddr.port), null);
  assert.equal(await echo(bystander, "still here"), "GOT:still here");
  assert.equal(
    await console.send(`cancel ${id}`),
    `Cannot cancel #${id}: no live task has that id`,
  );
});

Deno.test("stats counts the connections and the bytes the test sent, GOT: included", async () => {
  const [server, port] = await startWithMonitor();
  await using _ = server;
  using console = await Console.open(port);
  const before = await console.send("stats");
  assert.equal(figure(before, "connections served"), 0);
  assert.equal(figure(before, "bytes in"), 0);

  const messages = ["one", "two!", "three"];
  for (const message of messages) {
    using client = await connect(server.port);
    assert.equal(await echo(client, message), `GOT:${message}`);
  }
  using open = await connect(server.port);
  assert.equal(await echo(open, "open"), "GOT:open");
  const sent = [...messages, "open"].join("").length;

  let stats = "";
  await within(5_000, "every byte to be counted", async () => {
    while (figure(stats = await console.send("stats"), "bytes out") !== sent + 4 * 4) {
      await delay(20);
    }
  });
  assert.equal(figure(stats, "bytes in"), sent);
  assert.equal(figure(stats, "connections served"), 4);
  assert.equal(figure(stats, "connections open"), 1);
  assert.equal(figure(stats, "connections refused at the limit"), 0);
  assert.equal(figure(stats, "connection errors reset"), 0);
  assert.equal(figure(stats, "tasks accepting"), 2); // the server's listener and the monitor's
  assert.equal(figure(stats, "waiting to read"), 1); // the open connection
  assert.equal(figure(stats, "tasks running"), 1); // this console's, answering
  assert.ok(figure(stats, "rss bytes") > 1_000_000);
  assert.match(stats, /^event loop lag ms: \d+\.\d$/m);
  assert.match(stats, /^event loop lag max last minute ms: \d+\.\d$/m);
  assert.match(stats, /^open fds: unknown \(counted under deno run --allow-all\)$/m);
});

Deno.test("where ID shows the task's parent chain and its children", async () => {
  const [server, port] = await startWithMonitor();
  await using _ = server;
  using client = await connect(server.port);
  assert.equal(await echo(client, "x"), "GOT:x");
  using console = await Console.open(port);
  const { id } = psRow(await console.send("ps"), client.localAddr.port)!;

  const where = await console.send(`where ${id}`);
  const peer = `${HOST}:${client.localAddr.port}`;
  assert.match(where, new RegExp(`^#${id} "conn ${peer}" \\w+`));
  assert.match(where, /^ {2}under #1 "tcp-server" accepting listener 127\.0\.0\.1:\d+$/m);
  assert.match(where, /^children: none$/m);
  const top = await console.send("where 1");
  assert.match(top, /^#1 "tcp-server" accepting/);
  assert.match(top, new RegExp(`^children:\\n {2}#${id} "conn ${peer}"`, "m"));
  assert.equal(await console.send("where 999"), "no live task #999");
  assert.match(await console.send("where"), /^usage: where ID/);
});

Deno.test("cancel refuses the server's listener task and the monitor's own tasks, saying why", async () => {
  const [server, port] = await startWithMonitor();
  await using _ = server;
  using console = await Console.open(port);
  const ps = await console.send("ps");
  const idOf = (name: string) => Number(ps.match(new RegExp(`^ *(\\d+) +${name} `, "m"))![1]);

  assert.equal(
    await console.send("cancel 1"),
    'Cannot cancel #1 "tcp-server": it is the server\'s listener task; stop the server with ' +
      "SIGINT or SIGTERM",
  );
  for (const id of [idOf("monitor"), idOf("monitor listener"), idOf(`conn ${HOST}:\\d+`)]) {
    assert.match(
      await console.send(`cancel ${id}`),
      new RegExp(`^Cannot cancel #${id} ".+": it is one of the monitor's own tasks`),
    );
  }
  assert.match(await console.send("cancel"), /^usage: cancel ID/);
  assert.match(await console.send("cancel me"), /^usage: cancel ID/);
  assert.match(await console.send("stats"), /^connections open: 0$/m);
});

Deno.test("an unknown command gets one line of help and the session goes on; quit ends it", async () => {
  const [server, port] = await startWithMonitor();
  await using _ = server;
  using console = await Console.open(port);
  assert.equal(
    await console.send("frobnicate now"),
    'unknown command "frobnicate now"; commands: ps, where ID, stats, cancel ID, help, quit',
  );
  assert.equal(await console.send(""), "");
  assert.match(await console.send("  stats  \r"), /^connections open: 0$/m);
  await console.conn.write(encode("quit\n"));
  assert.equal(await readToEnd(console.conn), "bye\n");
});

Deno.test("a line over 1 KiB is refused and the console goes on", async () => {
  const [server, port] = await startWithMonitor();
  await using _ = server;
  using console = await Console.open(port);
  assert.match(await console.send("x".repeat(1024)), /^unknown command "x{40}"/);
  assert.equal(await console.send("p".repeat(1025)), "error: line over 1024 bytes refused");
  assert.equal(
    await console.send(`stats ${"y".repeat(1024 * 1024)}`),
    "error: line over 1024 bytes refused",
  );
  assert.match(await console.send("stats"), /^connections open: 0$/m);
});

Deno.test("bad input on the console port: garbage is answered, an HTTP request is answered and closed, and the server serves on", async () => {
  const [server, port] = await startWithMonitor();
  await using _ = server;
  using console = await Console.open(port);
  // Bytes of every value but a newline, which ends the line that follows them.
  const garbage = new Uint8Array(512).map((_, i) => (i * 7919) % 256 === 10 ? 0 : (i * 7919) % 256);
  await console.conn.write(garbage);
  assert.match(await console.send(""), /unknown command/);
  assert.match(await console.send("stats"), /^connections open: 0$/m);

  const http = await connect(port);
  try {
    await http.write(encode(`GET /metrics HTTP/1.1\r\nHost: ${HOST}:${port}\r\n\r\n`));
    const reply = await readToEnd(http);
    assert.match(reply, /not an HTTP server\n$/);
  } finally {
    http.close();
  }
  using client = await connect(server.port);
  assert.equal(await echo(client, "fine"), "GOT:fine");
  assert.match(await console.send("stats"), /^connections open: 1$/m);
});

Deno.test("many console clients at once each get their answer, and the server serves on", async () => {
  const [server, port] = await startWithMonitor();
  await using _ = server;
  const clients = 40; // more than the 16 sessions open at once: the rest wait their turn
  const answers = await Promise.all(
    Array.from({ length: clients }, async () => {
      const conn = await connect(port);
      try {
        await conn.write(encode("stats\nquit\n"));
        return await readToEnd(conn, 15_000);
      } finally {
        conn.close();
      }
    }),
  );
  for (const answer of answers) {
    assert.match(answer, /connections open: 0\n/);
    assert.match(answer, /bye\n$/);
  }
  using client = await connect(server.port);
  assert.equal(await echo(client, "after"), "GOT:after");
});

Deno.test("a console client that stops reading is cut off by the idle timeout", async () => {
  const [server, port] = await startWithMonitor(["--port", "0", "--idle-timeout", "0.5"]);
  await using _ = server;
  const stuck = await connect(port);
  try {
    // Ask for the help text again and again without reading any of it, until the
    // monitor's writes stall and then the client's own.
    const commands = encode("help\n".repeat(4096));
    const sending = (async () => {
      try {
        for (let i = 0; i < 4096; i++) await stuck.write(commands);
        return "sent every command without being cut off";
      } catch (error) {
        return (error as Error).name;
      }
    })();
    using watcher = await Console.open(port);
    const sessions = async () => (await watcher.send("ps")).match(/^ *\d+ +conn /gm)?.length;
    await within(10_000, "the stuck session to block in a write", async () => {
      while (!/^ *\d+ +conn \S+ +writing /m.test(await watcher.send("ps"))) await delay(50);
    });
    const blocked = performance.now();
    await within(10_000, "the stuck session to be closed", async () => {
      while (await sessions() !== 1) await delay(50); // only the watcher's is left
    });
    assert.ok(performance.now() - blocked >= 300, "cut off by the 0.5 s idle limit, not before");
    assert.match(
      await within(15_000, "the stuck client's writes to fail", () => sending),
      /^(ConnectionReset|BrokenPipe)$/,
    );
  } finally {
    stuck.close();
  }
  using client = await connect(server.port);
  assert.equal(await echo(client, "served"), "GOT:served");
});

Deno.test("server.ts --monitor rejects a bad port with status 2, and one in use with status 1", async () => {
  const bad = await runServer(["--port", "0", "--monitor", "http"]);
  assert.equal(bad.code, 2);
  assert.deepEqual(bad.stderr, [
    'error: --monitor must be an integer from 0 to 65535, got "http" (see --help)',
  ]);
  using taken = Deno.listen({ hostname: HOST, port: 0 });
  const exit = await runServer(["--port", "0", "--monitor", String(taken.addr.port)]);
  assert.equal(exit.code, 1);
  assert.match(exit.stdout[0], /^Listening on /);
  assert.deepEqual(exit.stderr, [
    `error: Cannot listen on ${HOST}:${taken.addr.port} for --monitor: address already in use`,
  ]);
});

Deno.test("on a Unix socket, ps names each connection by the socket it came in on", async () => {
  using socket = socketPath();
  const [server, port] = await startWithMonitor(
    ["--unix", socket.path],
    ["--allow-net", "--allow-read", "--allow-write"],
  );
  await using _ = server;
  using client = await Deno.connect({ transport: "unix", path: socket.path });
  assert.equal(await echo(client, "hi"), "GOT:hi");
  using console = await Console.open(port);
  const peer = `unix:${socket.path}`.replaceAll(".", "\\.");
  let ps = "";
  await within(5_000, "the connection to show as reading", async () => {
    while (!new RegExp(`^ *\\d+ +conn ${peer} +reading +conn ${peer} `, "m").test(ps)) {
      ps = await console.send("ps");
      await delay(20);
    }
  });
  assert.match(ps, /^ *1 +unix-server +accepting +listener unix:/m);
});
