/**
 * genio: network tasks as plain generator functions, for Deno. A task yields intents (read
 * from this conn, write that to it, accept, sleep, spawn, join) through `yield*`, and a
 * {@linkcode Scheduler} turns each into the settling of a `Deno.Conn` / `Deno.Listener`
 * promise, keeping an explicit ready queue and wait maps that anyone can inspect.
 *
 * What you call:
 *
 * - {@linkcode Scheduler}: `spawn()` a task, then `run()` until every task has ended;
 *   `tasks()`, `ready`, `readWaiting`, `writeWaiting`, `acceptWaiting` and `sleeping` show
 *   what each task is doing.
 * - The operations a task uses with `yield*`: {@linkcode read}, {@linkcode write},
 *   {@linkcode accept}, {@linkcode connect}, {@linkcode connectTls}, {@linkcode sleep},
 *   {@linkcode spawn}, {@linkcode join}, {@linkcode cancel}, {@linkcode wait} (any promise),
 *   {@linkcode timeout} and {@linkcode idleTimeout}.
 * - {@linkcode Stream}: lines, delimited records and exact byte counts read from a conn.
 * - Tasks waiting for each other: {@linkcode Queue}, {@linkcode Event}, {@linkcode Semaphore}
 *   with {@linkcode withPermit}, and the groups {@linkcode all} and {@linkcode race}.
 * - The errors a task may catch: {@linkcode Cancelled}, {@linkcode TimeoutError},
 *   {@linkcode BusyError}, {@linkcode UnexpectedEof}, {@linkcode LineTooLong} and
 *   {@linkcode QueueClosed}.
 * - {@linkcode serve}: a TCP server that runs a handler task per connection, the
 *   {@linkcode echoHandler} unless you give one; its `stats()` gives the server's figures,
 *   which {@linkcode serveMonitor} (a console for `nc`) and {@linkcode serveMetrics}
 *   (Prometheus) show; {@linkcode readProxyHeader} reads a load balancer's PROXY header.
 *
 * The intents those operations yield are plain data, documented in `@genio/genio/intents`;
 * tools for fast, deterministic tests (in-memory conns, a virtual clock) are in
 * `@genio/genio/testing`.
 *
 * @example A handler of your own, served and asked once
 * ```ts
 * import { type Operation, read, serve, write } from "@genio/genio";
 * import assert from "node:assert/strict";
 *
 * // Answers every chunk with the same bytes upper-cased.
 * function* shout(conn: Deno.Conn): Operation<void> {
 *   const buffer = new Uint8Array(16 * 1024);
 *   let n: number | null;
 *   while ((n = yield* read(conn, buffer)) !== null) {
 *     const text = new TextDecoder().decode(buffer.subarray(0, n));
 *     yield* write(conn, new TextEncoder().encode(text.toUpperCase()));
 *   }
 * }
 *
 * await using server = serve({ port: 0, handler: shout, onListen() {} });
 * using client = await Deno.connect({ hostname: "127.0.0.1", port: server.addr.port });
 * await client.write(new TextEncoder().encode("hello"));
 * const reply = new Uint8Array(5);
 * for (let got = 0; got < reply.length;) got += (await client.read(reply.subarray(got)))!;
 * assert.equal(new TextDecoder().decode(reply), "HELLO");
 * ```
 *
 * @module
 */
export * from "./scheduler.ts";
export * from "./intents.ts";
export * from "./errors.ts";
export * from "./tcp_server.ts";
export * from "./echo.ts";
export * from "./proxy_protocol.ts";
export * from "./stream.ts";
export * from "./sync.ts";
export * from "./group.ts";
export * from "./monitor.ts";
export * from "./metrics.ts";
