/**
 * The line benchmark's baseline: a line protocol server in plain async/await on
 * `Deno.listen`, with its buffering written by hand. Each line (without its `\n` or
 * `\r\n`) is decoded, then answered with the same line and a `\n` in one whole write:
 * the work `bench/line_server.ts` does with a genio `Stream`, done by hand as tightly as
 * it does: lines found with `indexOf` in place, replies encoded into one reused array.
 * Same command line as `server.ts`.
 *
 * ```sh
 * deno run --allow-net bench/raw_line.ts --port 0 --hostname 127.0.0.1 --quiet
 * ```
 *
 * @module
 */
import { runEchoServer } from "./_echo_cli.ts";

const MAX_LINE_BYTES = 65536;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

async function writeAll(conn: Deno.Conn, data: Uint8Array): Promise<void> {
  for (let sent = 0; sent < data.length;) sent += await conn.write(data.subarray(sent));
}

async function answerLines(conn: Deno.Conn, bufferSize: number, quiet: boolean): Promise<void> {
  (conn as Deno.TcpConn).setNoDelay(true); // as bench/line_server.ts does, and for its reason
  let buffer = new Uint8Array(bufferSize);
  const reply = new Uint8Array(4096);
  let start = 0;
  let end = 0;
  try {
    for (;;) {
      const at = buffer.indexOf(10, start);
      if (at >= 0 && at < end) {
        const stop = at > start && buffer[at - 1] === 13 ? at - 1 : at;
        const line = decoder.decode(buffer.subarray(start, stop));
        start = at + 1;
        const { read, written } = encoder.encodeInto(line, reply);
        if (read === line.length && written < reply.length) {
          reply[written] = 10;
          await writeAll(conn, reply.subarray(0, written + 1));
        } else await writeAll(conn, encoder.encode(line + "\n"));
        continue;
      }
      if (end - start > MAX_LINE_BYTES) throw new Error("line too long");
      if (start === end) start = end = 0;
      else if (start > 0) {
        buffer.copyWithin(0, start, end);
        end -= start;
        start = 0;
      } else if (end === buffer.length) {
        const larger = new Uint8Array(2 * buffer.length);
        larger.set(buffer);
        buffer = larger;
      }
      const n = await conn.read(buffer.subarray(end));
      if (n === null) break;
      end += n;
    }
  } catch (error) {
    if (!quiet) console.error(`Connection error: ${(error as Error).message}`);
  } finally {
    try {
      conn.close();
    } catch {
      // Closed already.
    }
  }
}

if (import.meta.main) await runEchoServer(answerLines);
