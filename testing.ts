/**
 * Tools for testing genio tasks the way redux-saga users test sagas and Trio users test
 * with `MockClock`: fast, deterministic, no ports, no sleeps.
 *
 * - {@linkcode memoryConnPair}: two connected in-memory `Deno.Conn`s, with optional
 *   per-direction capacity for backpressure and {@linkcode MemoryConn.reset} to inject a
 *   connection reset.
 * - {@linkcode VirtualClock}: a clock for the `Scheduler` whose time moves only when
 *   advanced, or jumps to the next deadline whenever every task is blocked.
 * - {@linkcode createTestScheduler}: a scheduler on a virtual clock in one call.
 *
 * @example An echo handler with a five-minute idle limit, tested in milliseconds
 * ```ts
 * import { type Operation, read, timeout, TimeoutError, write } from "@genio/genio";
 * import { createTestScheduler, memoryConnPair } from "@genio/genio/testing";
 * import assert from "node:assert/strict";
 *
 * function* echo(conn: Deno.Conn): Operation<string> {
 *   const buffer = new Uint8Array(1024);
 *   try {
 *     let n: number | null;
 *     while ((n = yield* timeout(300_000, read(conn, buffer))) !== null) {
 *       yield* write(conn, buffer.subarray(0, n));
 *     }
 *     return "client left";
 *   } catch (error) {
 *     if (error instanceof TimeoutError) return "idle";
 *     throw error;
 *   } finally {
 *     conn.close();
 *   }
 * }
 *
 * const { scheduler, clock } = createTestScheduler({ autojump: true });
 * const [client, server] = memoryConnPair();
 * const handler = scheduler.spawn(echo(server));
 * const done = scheduler.run();
 *
 * await client.write(new TextEncoder().encode("ping"));
 * const reply = new Uint8Array(4);
 * assert.equal(await client.read(reply), 4);
 * assert.equal(new TextDecoder().decode(reply), "ping");
 *
 * await done;
 * assert.equal(await handler.result, "idle");
 * assert.equal(clock.now(), 300_000);
 * assert.equal(await client.read(reply), null);
 * client.close();
 * ```
 *
 * @module
 */
export * from "./_memory_conn.ts";
export * from "./_virtual_clock.ts";
