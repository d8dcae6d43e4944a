// `server.ts --workers N` (_workers.ts): N schedulers in Web Workers, each with its own
// listener on the one port. The real server.ts as a subprocess, as an operator runs it; a
// worker is killed through the test hook described in _workers.ts (GENIO_TEST_CRASH).
import assert from "node:assert/strict";
import { runServer, type ServerProcess, startServer } from "./_server_process.ts";
import { makeCertificate, skipWithoutOpenssl } from "./_tls.ts";
import { connect, decode, echo, encode, HOST, readToEnd, until, waitUntilRefused } from "./_net.ts";

const WORKER_FLAGS = ["--allow-read", "--unstable-net"];
const LINUX = Deno.build.os === "linux";
const NO_OPENSSL = skipWithoutOpenssl("tests/workers_test.ts");

// "Worker 2: served 14 connections, 1 drained, 0 cancelled (restarted 1 time)", parsed.
interface WorkerSummary {
  index: number;
  served: number;
  drained: number;
  cancelled: number;
  restarts: number;
}

function summaries(stdout: string[]): WorkerSummary[] {
  const pattern =
    /^Worker (\d+): served (\d+) connections?, (\d+) drained, (\d+) cancelled(?: \(restarted (\d+) times?\))?$/;
  return stdout.flatMap((line) => {
    const match = line.match(pattern);
    if (match === null) return [];
    const [index, served, drained, cancelled, restarts = "0"] = match.slice(1);
    return [{
      index: Number(index),
      served: Number(served),
      drained: Number(drained),
      cancelled: Number(cancelled),
      restarts: Number(restarts),
    }];
  });
}

// Opens `count` connections at once and checks that each is answered.
async function clients(port: number, count: number): Promise<Deno.TcpConn[]> {
  const conns = await Promise.all(Array.from({ length: count }, () => connect(port)));
  await Promise.all(
    conns.map(async (conn, i) => assert.equal(await echo(conn, `c${i}`), `GOT:c${i}`)),
  );
  return conns;
}

function startWorkers(count: number, args: string[] = [], env?: Record<string, string>) {
  const permissions = ["--allow-net", ...WORKER_FLAGS, ...env ? ["--allow-env"] : []];
  const command = ["--port", "0", "--workers", String(count), ...args];
  return startServer(command, undefined, permissions, env);
}

Deno.test("--workers 0, abc, 1.5 or -1 exits 2 with one line naming --workers", async () => {
  const values = ["0", "abc", "1.5", "-1", "1025"];
  const exits = await Promise.all(values.map((value) => runServer(["--workers", value])));
  exits.forEach((exit, i) => {
    assert.equal(exit.code, 2, values[i]);
    assert.deepEqual(exit.stdout, []);
    assert.deepEqual(exit.stderr, [
      `error: --workers must be an integer from 1 to 1024 or "auto", got "${
        values[i]
      }" (see --help)`,
    ]);
  });
});

Deno.test({
  name:
    "--workers above 1 without --unstable-net or --allow-read exits 1 with one line giving the fix, before it listens",
  ignore: !LINUX,
  async fn() {
    using taken = Deno.listen({ hostname: HOST, port: 0 });
    const port = String(taken.addr.port); // the missing flags are found before the port is
    const cases: [string[], RegExp][] = [
      [[], /without --unstable-net \(for SO_REUSEPORT\) and --allow-read \(/],
      [["--allow-read"], /without --unstable-net \(for SO_REUSEPORT\): /],
      [["--unstable-net"], /without --allow-read \(to load the workers' module, .*server\.ts\): /],
    ];
    for (const [deno, missing] of cases) {
      const exit = await runServer(["--workers", "3", "--port", port], ["--allow-net", ...deno]);
      assert.equal(exit.code, 1, deno.join(" "));
      assert.deepEqual(exit.stdout, []);
      assert.equal(exit.stderr.length, 1, exit.stderr.join("\n"));
      assert.match(exit.stderr[0], /^error: Cannot start 3 workers without /);
      assert.match(exit.stderr[0], missing);
      assert.match(
        exit.stderr[0],
        / deno run --allow-net --allow-read --unstable-net server\.ts --workers 3$/,
      );
    }
  },
});

Deno.test({
  name:
    "--workers exits 1 with one line when the port is taken, by any listener or by another --workers server",
  ignore: !LINUX,
  async fn() {
    using plain = Deno.listen({ hostname: HOST, port: 0 });
    await using server = await startWorkers(2);
    for (const port of [plain.addr.port, server.port]) {
      const exit = await runServer(
        ["--workers", "2", "--port", String(port)],
        ["--allow-net", ...WORKER_FLAGS],
      );
      assert.equal(exit.code, 1);
      assert.deepEqual(exit.stdout, []);
      assert.deepEqual(exit.stderr, [
        `error: Cannot listen on ${HOST}:${port}: address already in use`,
      ]);
    }
  },
});

Deno.test("--help tells what --workers and --proxy-protocol do and what --workers needs", async () => {
  const help = (await runServer(["--help"])).stdout.join("\n");
  assert.match(help, /--workers <n\|auto> {5}Schedulers, one per Web Worker/);
  assert.match(help, /needs deno run --allow-read --unstable-net; limits are per worker/);
  assert.match(help, /--proxy-protocol {7}Every connection begins with a PROXY protocol header/);
});

Deno.test("--workers cannot go with --unix, nor --proxy-protocol with --unix or --cert: exit 2", async () => {
  const cases: [string[], string][] = [
    [["--workers", "2", "--unix", "genio.sock"], "--unix cannot be used with --workers"],
    [["--proxy-protocol", "--unix", "genio.sock"], "--proxy-protocol cannot be used with --unix"],
    [
      ["--proxy-protocol", "--cert", "c.pem", "--key", "k.pem"],
      "--proxy-protocol cannot be used with --cert",
    ],
  ];
  for (const [args, line] of cases) {
    const exit = await runServer(args);
    assert.equal(exit.code, 2, args.join(" "));
    assert.deepEqual(exit.stderr, [`error: ${line} (see --help)`]);
  }
});

Deno.test("--workers 1 is the server as ever: no extra flag needed", async () => {
  await using server = await startServer(["--port", "0", "--workers", "1"]);
  using conn = await connect(server.port);
  assert.equal(await echo(conn, "one"), "GOT:one");
});

Deno.test({
  name:
    "--workers 3 prints one Listening line, every worker serves on the one port, and SIGTERM drains them all",
  ignore: !LINUX,
  async fn() {
    await using server = await startWorkers(3, ["--grace", "10"]);
    assert.deepEqual(server.stdout.lines.slice(0, 1), [`Listening on ${HOST}:${server.port}`]);
    const conns = await clients(server.port, 60);
    const open = conns.splice(0, 6);
    for (const conn of conns) conn.close();
    await until(() => server.stdout.count(/^Connection closed /) === 54, "54 to be closed");

    server.kill("SIGTERM");
    const probes = await waitUntilRefused(server.port);
    for (const conn of open) {
      assert.equal(await echo(conn, "during the grace period"), "GOT:during the grace period");
      conn.close();
    }
    const exit = await assertStopped(server);
    assert.equal(exit.stdout.filter((line) => line.startsWith("Listening on")).length, 1);
    const workers = summaries(exit.stdout);
    assert.deepEqual(workers.map((worker) => worker.index), [1, 2, 3]);
    for (const worker of workers) assert.ok(worker.served > 0, `worker ${worker.index} served`);
    assert.equal(sum(workers, "served"), 60 + probes);
    // The six, and any probe that waitUntilRefused got in before the listeners closed.
    const drained = sum(workers, "drained");
    assert.ok(drained >= 6 && drained <= 6 + probes, `${drained} drained, ${probes} probes`);
    assert.equal(exit.stdout.at(-1), `Shut down: ${drained} connections drained, 0 cancelled`);
  },
});

Deno.test({
  name: "--workers: SIGINT cancels the connections every worker still has when --grace runs out",
  ignore: !LINUX,
  async fn() {
    await using server = await startWorkers(2, ["--grace", "0.2"]);
    const conns = await clients(server.port, 20);
    server.kill("SIGINT");
    for (const conn of conns) {
      assert.equal(await readToEnd(conn), "");
      conn.close();
    }
    const exit = await assertStopped(server);
    const workers = summaries(exit.stdout);
    assert.equal(workers.length, 2);
    assert.equal(sum(workers, "cancelled"), 20);
    assert.equal(exit.stdout.at(-1), "Shut down: 0 connections drained, 20 cancelled");
  },
});

Deno.test({
  name:
    "--workers: a worker that dies is restarted with one line naming it and why, and every worker serves again",
  ignore: !LINUX,
  async fn() {
    await using server = await startWorkers(2, ["--quiet"], { GENIO_TEST_CRASH: "crash now" });
    const before = listeners(server.port);
    assert.equal(before.size, 2);
    // The first connection kills the worker that takes it: that worker has served just it.
    using victim = await connect(server.port);
    await victim.write(encode("crash now"));
    const line = await server.stderr.waitFor(/^Worker/, 10_000);
    const match = line.match(
      /^Worker ([12]) died: Error: Crashed on purpose: a client sent GENIO_TEST_CRASH; restarting it in 0\.1 s$/,
    );
    assert.ok(match, line);
    const crashed = Number(match[1]);
    assert.equal(await readToEnd(victim).catch(() => ""), "", "its connection is gone with it");

    // Restarted: its old listener gone, a new one beside the other worker's.
    await until(() => {
      const now = listeners(server.port);
      return now.size === 2 && [...now].filter((inode) => !before.has(inode)).length === 1;
    }, "the restarted worker's listener");
    for (const conn of await clients(server.port, 40)) conn.close();
    server.kill("SIGTERM");
    const exit = await assertStopped(server, 1);
    const workers = summaries(exit.stdout);
    const again = workers.find((worker) => worker.index === crashed)!;
    assert.equal(again.restarts, 1);
    assert.ok(again.served > 1, `the restarted worker served: ${exit.stdout.join("\n")}`);
    assert.equal(sum(workers, "served"), 41);
  },
});

Deno.test({
  name: "--workers above 1 is a usage error where SO_REUSEPORT does not exist",
  ignore: LINUX, // Linux has it: the other tests run there
  async fn() {
    const exit = await runServer(["--workers", "2"], ["--allow-net", ...WORKER_FLAGS]);
    assert.equal(exit.code, 2);
    assert.match(exit.stderr.join("\n"), /^error: --workers above 1 needs Linux/);
  },
});

Deno.test({
  name: "--workers 2 with --monitor and --metrics: worker 1's, after the Listening line, saying so",
  ignore: !LINUX,
  async fn() {
    await using server = await startWorkers(2, ["--monitor", "0", "--metrics", "0"]);
    const monitorLine = await server.stdout.waitFor(/^Monitor on /, 10_000);
    const metricsLine = await server.stdout.waitFor(/^Metrics on /, 10_000);
    assert.match(monitorLine, /^Monitor on 127\.0\.0\.1:\d+ \(worker 1 of 2\)$/);
    assert.match(metricsLine, /^Metrics on http:\/\/127\.0\.0\.1:\d+\/metrics \(worker 1 of 2\)$/);
    assert.equal(server.stdout.lines[0], `Listening on ${HOST}:${server.port}`);
    using monitor = await connect(Number(monitorLine.match(/:(\d+) /)![1]));
    await monitor.write(encode("ps\nquit\n"));
    assert.match(await readToEnd(monitor), /tcp-server +accepting/);

    // Connections on both workers; the page counts worker 1's alone.
    for (const conn of await clients(server.port, 30)) conn.close();
    await until(() => server.stdout.count(/^Connection closed /) === 30, "30 to be closed");
    const page = await (await fetch(metricsLine.split(" ")[2])).text();
    const total = Number(page.match(/^genio_connections_total (\d+)$/m)?.[1]);
    server.kill("SIGTERM");
    const workers = summaries((await assertStopped(server)).stdout);
    assert.equal(total, workers[0].served);
    assert.ok(total < 30, `worker 1 served ${total} of 30`);
  },
});

Deno.test({
  name:
    "--workers exits 1 with the console's line when --monitor cannot listen, the workers stopped",
  ignore: !LINUX,
  async fn() {
    using taken = Deno.listen({ hostname: HOST, port: 0 });
    const monitor = String(taken.addr.port);
    const exit = await runServer(
      ["--port", "0", "--workers", "2", "--monitor", monitor],
      ["--allow-net", ...WORKER_FLAGS],
    );
    assert.equal(exit.code, 1);
    assert.deepEqual(exit.stderr, [
      `error: Cannot listen on ${HOST}:${monitor} for --monitor: address already in use`,
    ]);
  },
});

Deno.test({
  name: "--workers 2 with --cert and --key: every worker speaks TLS",
  ignore: !LINUX || NO_OPENSSL,
  async fn() {
    using certificate = makeCertificate();
    const { certFile, keyFile, cert } = certificate;
    await using server = await startWorkers(2, ["--cert", certFile, "--key", keyFile]);
    const conns = await Promise.all(
      Array.from(
        { length: 20 },
        () => Deno.connectTls({ hostname: HOST, port: server.port, caCerts: [cert] }),
      ),
    );
    await Promise.all(conns.map(async (conn, i) => {
      assert.equal(await echo(conn, `tls${i}`), `GOT:tls${i}`);
      conn.close();
    }));
    server.kill("SIGTERM");
    const workers = summaries((await assertStopped(server)).stdout);
    for (const worker of workers) assert.ok(worker.served > 0, `worker ${worker.index} served`);
  },
});

// The listening sockets on 127.0.0.1:port, by inode, as /proc/net/tcp lists them (read by
// `cat`: Deno lets only --allow-all read /proc/net).
function listeners(port: number): Set<string> {
  const local = `0100007F:${port.toString(16).toUpperCase().padStart(4, "0")}`;
  const table = new Deno.Command("cat", { args: ["/proc/net/tcp"] }).outputSync();
  assert.ok(table.success, "cat /proc/net/tcp");
  const inodes = decode(table.stdout).split("\n").slice(1).flatMap((line) => {
    const fields = line.trim().split(/\s+/);
    return fields[1] === local && fields[3] === "0A" ? [fields[9]] : [];
  });
  return new Set(inodes);
}

// Waits for the exit and checks it was clean: status 0, and on stderr only `lines` lines.
async function assertStopped(server: ServerProcess, lines = 0) {
  const exit = await server.exited();
  assert.equal(exit.code, 0, exit.stderr.join("\n"));
  assert.equal(exit.stderr.length, lines, exit.stderr.join("\n"));
  return exit;
}

function sum(workers: WorkerSummary[], key: "served" | "drained" | "cancelled"): number {
  return workers.reduce((total, worker) => total + worker[key], 0);
}
