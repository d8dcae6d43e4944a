/**
 * The `GOT:` protocol: {@linkcode echoHandler} answers every chunk a client sends with
 * `GOT:` followed by that chunk. It is the handler of the classic Python generator echo
 * server (generator tasks, `recv_wait` / `send_wait` dicts and a `select()` loop, on port
 * 25000), written as a genio task; {@linkcode serve} runs it by default.
 *
 * @example Echoing over an in-memory conn
 * ```ts
 * import { echoHandler } from "@genio/genio/echo";
 * import { Scheduler } from "@genio/genio";
 * import { memoryConnPair } from "@genio/genio/testing";
 * import assert from "node:assert/strict";
 *
 * const [client, server] = memoryConnPair();
 * const scheduler = new Scheduler();
 * scheduler.spawn(echoHandler(server));
 * const running = scheduler.run();
 *
 * await client.write(new TextEncoder().encode("hello"));
 * await client.closeWrite();
 * const reply = new Uint8Array(16);
 * let got = 0;
 * for (let n; (n = await client.read(reply.subarray(got))) !== null;) got += n;
 * assert.equal(new TextDecoder().decode(reply.subarray(0, got)), "GOT:hello");
 *
 * await running;
 * client.close();
 * ```
 *
 * @module
 */
import { closeQuietly } from "./_close_quietly.ts";
import {
  checkBufferSize,
  checkIdleTimeout,
  DEFAULT_BUFFER_SIZE,
  DEFAULT_IDLE_TIMEOUT_MS,
} from "./_server_options.ts";
import type { Deadline, Operation, ReadIntent } from "./intents.ts";
import type { HandlerOptions } from "./tcp_server.ts";

const GOT: Uint8Array = new TextEncoder().encode("GOT:");

/**
 * Answers every chunk it reads with `GOT:` followed by that chunk, as one write, until the
 * client ends the stream; then closes `conn`. This is the `echo_handler` of the classic
 * Python generator echo server, whose tasks a `select()` loop drives.
 *
 * A chunk is what one read returns, not a line: `printf 'a\nb\n' | nc 127.0.0.1 25000`
 * usually gets one reply, `GOT:a\nb\n`, and a large message may come back in several.
 *
 * It does not read the next chunk before the reply to the last one is written, so a client
 * that sends without reading is held back by TCP instead of filling memory; the reply
 * buffer is allocated once per connection. A read or a write that waits longer than
 * `idleTimeout` milliseconds ends the connection with a `TimeoutError`: so does a silent
 * client, or one that never reads its replies.
 *
 * @param conn The client's connection; closed when the handler ends.
 * @param options The idle timeout and the read buffer size (defaults: 300 s, 16 KiB).
 * @throws {TimeoutError} When a read or a write waited longer than `idleTimeout`.
 * @throws {RangeError} When `bufferSize` or `idleTimeout` is out of range.
 *
 * @example Echoing one client on a scheduler of its own
 * ```ts
 * import { echoHandler } from "@genio/genio/echo";
 * import { Scheduler } from "@genio/genio";
 * import assert from "node:assert/strict";
 *
 * const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
 * const client = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
 * const conn = await listener.accept();
 * const scheduler = new Scheduler();
 * scheduler.spawn(echoHandler(conn, { idleTimeout: 1_000 }));
 * const running = scheduler.run();
 *
 * await client.write(new TextEncoder().encode("ping"));
 * await client.closeWrite();
 * const reply = new Uint8Array(16);
 * let got = 0;
 * for (let n; (n = await client.read(reply.subarray(got))) !== null;) got += n;
 * assert.equal(new TextDecoder().decode(reply.subarray(0, got)), "GOT:ping");
 *
 * await running;
 * client.close();
 * listener.close();
 * ```
 */
export function* echoHandler(conn: Deno.Conn, options?: HandlerOptions): Operation<void> {
  const bufferSize = checkBufferSize(options?.bufferSize ?? DEFAULT_BUFFER_SIZE);
  const idleTimeout = checkIdleTimeout(options?.idleTimeout ?? DEFAULT_IDLE_TIMEOUT_MS);
  const reply = new Uint8Array(GOT.length + bufferSize);
  reply.set(GOT);
  const buffer = reply.subarray(GOT.length);
  // Every message takes this loop, so it yields its intents itself rather than through
  // `read()`, `write()` and `idleTimeout()`, each of which is one more generator to resume
  // per message: one idle deadline for the whole connection, restarted by the kernel each
  // time a read or a write completes, costs next to nothing per message.
  const readIntent: ReadIntent = { type: "read", conn, buffer };
  const writeIntent = { type: "write" as const, conn, data: reply };
  let deadline: Deadline | null = null;
  try {
    if (idleTimeout > 0 && idleTimeout !== Infinity) {
      deadline = (yield { type: "deadline", ms: idleTimeout, idle: true }) as Deadline;
    }
    let n: number | null;
    while ((n = (yield readIntent) as number | null) !== null) {
      writeIntent.data = reply.subarray(0, GOT.length + n);
      yield writeIntent;
    }
  } finally {
    if (deadline !== null) yield { type: "clear-deadline", deadline };
    closeQuietly(conn);
  }
}
