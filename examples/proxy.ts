/**
 * A TCP relay on genio: `deno run --allow-net examples/proxy.ts --listen 127.0.0.1:25002
 * --upstream 127.0.0.1:25000` passes every connection on to the upstream server and the
 * replies back. `--help` says the rest.
 *
 * Each client is a task (run by `serve()`) that connects upstream under a time limit, then
 * runs two pumps with {@linkcode all}, one per direction: when one side ends its writing, the
 * pump passes the half-close on and the other direction goes on; when a pump fails, `all`
 * cancels the other, and both conns are closed.
 *
 * @module
 */
import {
  all,
  Cancelled,
  connect,
  type Operation,
  read,
  serve,
  type Server,
  timeout,
  TimeoutError,
  wait,
  write,
} from "../mod.ts";
import {
  addressFlag,
  describe,
  formatAddress,
  integerFlag,
  parseFlags,
  runMain,
  secondsFlag,
} from "./_cli.ts";

const DEFAULT_LISTEN = { hostname: "127.0.0.1", port: 25002 };
const DEFAULT_UPSTREAM = { hostname: "127.0.0.1", port: 25000 };
const DEFAULT_MAX_CONNECTIONS = 1_000;
const DEFAULT_CONNECT_TIMEOUT_S = 10;
const BUFFER_SIZE = 16 * 1024;

const HELP = `genio proxy: a TCP relay to one upstream server.

Usage: deno run --allow-net examples/proxy.ts [options]

Options:
      --listen <host:port>    Address to listen on; port 0 picks a free one
                              (default ${formatAddress(DEFAULT_LISTEN)})
      --upstream <host:port>  Server to relay each connection to
                              (default ${formatAddress(DEFAULT_UPSTREAM)})
      --max-connections <n>   Clients relayed at once; more wait in the kernel's backlog
                              (default ${DEFAULT_MAX_CONNECTIONS})
      --connect-timeout <s>   Longest wait for the upstream to accept (default ${DEFAULT_CONNECT_TIMEOUT_S})
  -h, --help                  Print this help and exit

Each client gets its own upstream connection; bytes pass both ways unchanged, and a side
that shuts its writing (half-close) has that passed on too. A client whose upstream refuses
or does not answer in time is closed.

Output: "Listening on HOST:PORT" first, then on stdout a line per connection closed with
the bytes it sent and received, as plain integers:
  Closed 127.0.0.1:41234: 1048576 bytes from client, 1048580 bytes to client
and on stderr one line per client whose upstream could not be reached. A relay that
failed says why at the end of its line. Exit status: 1 when it cannot listen, 2 for a bad command line.`;

interface Options {
  upstream: { hostname: string; port: number };
  connectTimeoutMs: number;
}

// One client's task: connect upstream, then relay both ways until both are done. A failure
// is told in the connection's one line; the conns are closed either way.
function* relay(client: Deno.Conn, options: Options): Operation<void> {
  const peer = formatAddress(client.remoteAddr as Deno.NetAddr);
  let upstream: Deno.TcpConn;
  try {
    upstream = yield* timeout(options.connectTimeoutMs, connect(options.upstream));
  } catch (error) {
    if (error instanceof Cancelled) throw error;
    const why = error instanceof TimeoutError
      ? `no answer in ${options.connectTimeoutMs / 1000} s`
      : describe(error);
    console.error(
      `Closed ${peer}: cannot connect to upstream ${formatAddress(options.upstream)}: ${why}`,
    );
    return;
  }
  // Bytes pass on as they come: Nagle's algorithm would hold back a small chunk.
  (client as Deno.TcpConn).setNoDelay(true);
  upstream.setNoDelay(true);
  const counts = { fromClient: 0, toClient: 0 };
  let failure = "";
  try {
    yield* all([
      pump(client, upstream, (n) => counts.fromClient += n),
      pump(upstream, client, (n) => counts.toClient += n),
    ]);
  } catch (error) {
    if (error instanceof Cancelled) throw error;
    failure = ` (${describe(error)})`; // reported here, once
  } finally {
    upstream.close();
    console.log(
      `Closed ${peer}: ${counts.fromClient} bytes from client, ` +
        `${counts.toClient} bytes to client${failure}`,
    );
  }
}

// Copies `from` to `to` until `from` ends, then ends `to`'s writing.
function* pump(from: Deno.Conn, to: Deno.Conn, count: (n: number) => void): Operation<void> {
  const buffer = new Uint8Array(BUFFER_SIZE);
  let n: number | null;
  while ((n = yield* read(from, buffer)) !== null) {
    yield* write(to, buffer.subarray(0, n));
    count(n);
  }
  yield* wait(to.closeWrite());
}

async function main(args: readonly string[]): Promise<number> {
  const flags = parseFlags(args, {
    listen: { type: "string" },
    upstream: { type: "string" },
    "max-connections": { type: "string" },
    "connect-timeout": { type: "string" },
    help: { type: "boolean", short: "h" },
  });
  if (flags.help) {
    console.log(HELP);
    return 0;
  }
  const listen = addressFlag("--listen", flags.listen, DEFAULT_LISTEN);
  const options: Options = {
    upstream: addressFlag("--upstream", flags.upstream, DEFAULT_UPSTREAM),
    connectTimeoutMs: 1000 *
      secondsFlag("--connect-timeout", flags["connect-timeout"], DEFAULT_CONNECT_TIMEOUT_S),
  };
  const maxConnections = integerFlag(
    "--max-connections",
    flags["max-connections"],
    DEFAULT_MAX_CONNECTIONS,
    1,
    1_000_000,
  );
  let server: Server;
  try {
    // A relay may stay quiet for as long as its two ends like: no idle limit. serve()
    // prints "Listening on".
    server = serve({
      ...listen,
      maxConnections,
      idleTimeout: 0,
      handler: (client) => relay(client, options),
    });
  } catch (error) {
    console.error(`error: Cannot listen on ${formatAddress(listen)}: ${describe(error)}`);
    return 1;
  }
  await server.finished;
  return 0;
}

if (import.meta.main) await runMain(() => main(Deno.args));
