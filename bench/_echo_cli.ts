/**
 * The command line the benchmark's comparison servers share with `server.ts`: `--port`,
 * `--hostname`, `--buffer-size` and `--quiet`, then `Listening on HOST:PORT` and one call of
 * `serveConn` per accepted connection.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { DEFAULT_BUFFER_SIZE } from "../_server_options.ts";

/** What a comparison server does with each connection. */
export type ServeConn = (conn: Deno.Conn, bufferSize: number, quiet: boolean) => void;

/** Parses the flags, listens, and hands every connection to `serveConn`. */
export async function runEchoServer(serveConn: ServeConn): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      port: { type: "string", default: "8000" },
      hostname: { type: "string", default: "127.0.0.1" },
      "buffer-size": { type: "string", default: String(DEFAULT_BUFFER_SIZE) },
      quiet: { type: "boolean", default: false },
    },
  });
  const bufferSize = Number(values["buffer-size"]);
  const listener = Deno.listen({ hostname: values.hostname, port: Number(values.port) });
  console.log(`Listening on ${values.hostname}:${listener.addr.port}`);
  for await (const conn of listener) serveConn(conn, bufferSize, values.quiet);
}
