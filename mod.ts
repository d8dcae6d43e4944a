/**
 * genio: network tasks as plain generator functions. A task yields intents (read from
 * this conn, write that to it, accept, sleep, spawn, join) and a small scheduler turns each
 * into the settling of a `Deno.Conn` / `Deno.Listener` promise, keeping an explicit ready
 * queue and wait maps that anyone can inspect.
 *
 * @example An echo handler
 * ```ts
 * import { type Operation, read, write } from "@genio/genio";
 *
 * function* echo(conn: Deno.Conn): Operation<void> {
 *   const buffer = new Uint8Array(16 * 1024);
 *   try {
 *     let n: number | null;
 *     while ((n = yield* read(conn, buffer)) !== null) {
 *       yield* write(conn, buffer.subarray(0, n));
 *     }
 *   } finally {
 *     conn.close();
 *   }
 * }
 * ```
 *
 * @module
 */
export * from "./errors.ts";
export * from "./intents.ts";
export * from "./scheduler.ts";
export * from "./server.ts";
export * from "./stream.ts";
