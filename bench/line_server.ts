/**
 * The line benchmark's genio server: `serve()` with a handler that answers every line with
 * the same line, through a `Stream` (`readLine()`, `writeLine()`). Same command line as
 * `server.ts`'s `--port`, `--hostname`, `--buffer-size` and `--quiet`; compare with
 * `bench/raw_line.ts`.
 *
 * ```sh
 * deno run --allow-net bench/line_server.ts --port 0 --hostname 127.0.0.1 --quiet
 * ```
 *
 * @module
 */
import { parseArgs } from "node:util";
import { type HandlerOptions, type Operation, serve, Stream } from "../mod.ts";

function* answerLines(conn: Deno.Conn, options: HandlerOptions): Operation<void> {
  // One write per line: without this, Nagle's algorithm holds each reply's second line
  // back until the client's delayed ACK of the first (some 40 ms).
  (conn as Deno.TcpConn).setNoDelay(true);
  const stream = new Stream(conn, { bufferSize: options.bufferSize });
  try {
    let line: string | null;
    while ((line = yield* stream.readLine()) !== null) yield* stream.writeLine(line);
  } finally {
    stream.close();
  }
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      port: { type: "string", default: "8000" },
      hostname: { type: "string", default: "127.0.0.1" },
      "buffer-size": { type: "string", default: "16384" },
      quiet: { type: "boolean", default: false },
    },
  });
  serve({
    hostname: values.hostname,
    port: Number(values.port),
    bufferSize: Number(values["buffer-size"]),
    handler: answerLines,
    onDisconnect: values.quiet ? () => {} : undefined,
  });
}
