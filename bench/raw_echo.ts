/**
 * The baseline: the plain async/await `GOT:` echo server on `Deno.listen`, the physical
 * limit for anything built on `Deno.Conn`. Same protocol, buffer size and command line as
 * `server.ts`, so the benchmark can run both the same way.
 *
 * Each connection reads straight into a reply buffer that already starts with `GOT:`, so a
 * reply costs one read and one write and no copy or allocation.
 *
 * ```sh
 * deno run --allow-net bench/raw_echo.ts --port 0 --hostname 127.0.0.1 --quiet
 * ```
 *
 * @module
 */
import { closeQuietly } from "../_close_quietly.ts";
import { runEchoServer } from "./_echo_cli.ts";

const PREFIX: Uint8Array = new TextEncoder().encode("GOT:");

async function echo(conn: Deno.Conn, bufferSize: number, quiet: boolean): Promise<void> {
  const reply = new Uint8Array(PREFIX.length + bufferSize);
  reply.set(PREFIX);
  const buffer = reply.subarray(PREFIX.length);
  try {
    let n: number | null;
    while ((n = await conn.read(buffer)) !== null) {
      const end = PREFIX.length + n;
      for (let sent = 0; sent < end;) sent += await conn.write(reply.subarray(sent, end));
    }
  } catch (error) {
    if (!quiet) console.error(`Connection error: ${(error as Error).message}`);
  } finally {
    closeQuietly(conn);
  }
}

if (import.meta.main) await runEchoServer(echo);
