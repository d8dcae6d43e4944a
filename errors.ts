/**
 * The errors genio throws into tasks: the kernel's (`Cancelled`, `TimeoutError`,
 * `BusyError`) and the stream reader's (`UnexpectedEof`, `LineTooLong`). Each is a condition
 * a task is expected to catch, so each has its own class and `name`.
 *
 * @module
 */
import type { Deadline } from "./intents.ts";

/**
 * Thrown into a task at its blocking `yield` when the task is cancelled, so that its
 * `finally` blocks run (and may themselves yield: write a goodbye, close a conn).
 *
 * @example Cleaning up when cancelled
 * ```ts
 * import { cancel, Cancelled, Scheduler, sleep, spawn } from "@genio/genio";
 * import assert from "node:assert/strict";
 *
 * const log: string[] = [];
 * function* worker() {
 *   try {
 *     yield* sleep(60_000);
 *   } catch (error) {
 *     log.push(error instanceof Cancelled ? "cancelled" : "other");
 *     throw error;
 *   } finally {
 *     log.push("cleaned up");
 *   }
 * }
 * const scheduler = new Scheduler();
 * scheduler.spawn(function* () {
 *   const task = yield* spawn(worker());
 *   yield* sleep(1);
 *   yield* cancel(task);
 * }());
 * await scheduler.run();
 * assert.deepEqual(log, ["cancelled", "cleaned up"]);
 * ```
 */
export class Cancelled extends Error {
  /**
   * Creates the error delivered to a cancelled task.
   *
   * @param message What was cancelled.
   */
  constructor(message?: string) {
    super(message ?? "Task was cancelled");
    this.name = "Cancelled";
  }
}

/**
 * Thrown by {@linkcode timeout} when its operation did not finish in time. The operation
 * received this error at the point it was waiting, so its `finally` blocks have run.
 *
 * @example Giving up on a slow operation
 * ```ts
 * import { Scheduler, sleep, timeout, TimeoutError } from "@genio/genio";
 * import assert from "node:assert/strict";
 *
 * const scheduler = new Scheduler();
 * const task = scheduler.spawn(function* () {
 *   try {
 *     yield* timeout(5, sleep(60_000));
 *     return "finished";
 *   } catch (error) {
 *     if (error instanceof TimeoutError) return `gave up after ${error.ms} ms`;
 *     throw error;
 *   }
 * }());
 * await scheduler.run();
 * assert.equal(await task.result, "gave up after 5 ms");
 * ```
 */
export class TimeoutError extends Error {
  /** The time limit that ran out, in milliseconds. */
  readonly ms: number;
  /**
   * The limit that ran out: the `Deadline` its block was given, so that a block can tell
   * its own timeout from an outer one's passing through it. `null` when made by hand.
   */
  declare readonly deadline: Deadline | null;

  /**
   * Creates the error for a time limit of `ms` milliseconds.
   *
   * @param ms The time limit that ran out.
   * @param deadline The limit's handle, when it has one.
   */
  constructor(ms: number, deadline?: Deadline) {
    super(`Operation timed out after ${ms} ms`);
    this.name = "TimeoutError";
    this.ms = ms;
    // Not enumerable: the handle is the kernel's, and printing an error should not print it.
    Object.defineProperty(this, "deadline", { value: deadline ?? null, enumerable: false });
  }
}

/**
 * Thrown at a task's `yield` when it asks to read, write or accept on a resource another
 * task is already waiting on. Two readers on one conn would split its bytes between them
 * unpredictably, so the kernel refuses the second instead of replacing the first.
 *
 * @example The second reader is refused
 * ```ts
 * import { BusyError, read, Scheduler } from "@genio/genio";
 * import assert from "node:assert/strict";
 *
 * const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
 * const client = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
 * const server = await listener.accept();
 * const scheduler = new Scheduler();
 * const first = scheduler.spawn(read(server, new Uint8Array(8)));
 * const second = scheduler.spawn(read(server, new Uint8Array(8)));
 * const refused = assert.rejects(second.result, BusyError); // awaited, so not reported
 * const done = scheduler.run();
 * await refused;
 * await client.write(new TextEncoder().encode("hi"));
 * await done;
 * assert.equal(await first.result, 2);
 * for (const resource of [client, server, listener]) resource.close();
 * ```
 */
export class BusyError extends Error {
  /** The conn or listener that already has a waiting task. */
  readonly resource: unknown;

  /**
   * Creates the error for a resource that already has a waiter.
   *
   * @param message What was refused and why.
   * @param resource The busy conn or listener.
   */
  constructor(message: string, resource: unknown) {
    super(message);
    this.name = "BusyError";
    this.resource = resource;
  }
}

/**
 * Thrown by a {@linkcode Stream} read when the stream ends in the middle of what it was
 * asked for: `readExactly(n)` before `n` bytes, `readUntil()` inside a record. The bytes
 * that did arrive are in `partial`, and are no longer buffered.
 *
 * @example A frame cut short by the peer
 * ```ts
 * import { Scheduler, Stream, UnexpectedEof } from "@genio/genio";
 * import { memoryConnPair } from "@genio/genio/testing";
 * import assert from "node:assert/strict";
 *
 * const [client, server] = memoryConnPair();
 * await client.write(new TextEncoder().encode("abc"));
 * client.close();
 * const stream = new Stream(server);
 * const scheduler = new Scheduler();
 * const task = scheduler.spawn(function* () {
 *   try {
 *     yield* stream.readExactly(8);
 *   } catch (error) {
 *     if (error instanceof UnexpectedEof) return new TextDecoder().decode(error.partial);
 *     throw error;
 *   }
 * }());
 * await scheduler.run();
 * assert.equal(await task.result, "abc");
 * stream.close();
 * ```
 */
export class UnexpectedEof extends Error {
  /** The bytes that arrived before the end: an empty array when none did. */
  readonly partial: Uint8Array;

  /**
   * Creates the error for a read that the end of the stream cut short.
   *
   * @param message What could not be read.
   * @param partial The bytes that did arrive.
   */
  constructor(message: string, partial: Uint8Array) {
    super(message);
    this.name = "UnexpectedEof";
    this.partial = partial;
  }
}

/**
 * Thrown by a {@linkcode Stream} when a line (or a `readUntil()` record) is longer than
 * its `maxLineBytes`. The stream gives up on the conn: it reads no further and every later
 * read throws this error again, but the conn stays open for the handler to answer or close.
 *
 * @example Refusing a line that is too long
 * ```ts
 * import { LineTooLong, Scheduler, Stream } from "@genio/genio";
 * import { memoryConnPair } from "@genio/genio/testing";
 * import assert from "node:assert/strict";
 *
 * const [client, server] = memoryConnPair();
 * await client.write(new TextEncoder().encode("x".repeat(100) + "\n"));
 * const stream = new Stream(server, { maxLineBytes: 10 });
 * const scheduler = new Scheduler();
 * const task = scheduler.spawn(function* () {
 *   try {
 *     return yield* stream.readLine();
 *   } catch (error) {
 *     if (!(error instanceof LineTooLong)) throw error;
 *     yield* stream.writeLine("ERR line too long");
 *     return `limit ${error.maxLineBytes}`;
 *   } finally {
 *     stream.close();
 *   }
 * }());
 * await scheduler.run();
 * assert.equal(await task.result, "limit 10");
 * client.close();
 * ```
 */
export class LineTooLong extends Error {
  /** The limit the line went over, in bytes. */
  readonly maxLineBytes: number;

  /**
   * Creates the error for a line longer than `maxLineBytes`.
   *
   * @param message What could not be read.
   * @param maxLineBytes The stream's limit.
   */
  constructor(message: string, maxLineBytes: number) {
    super(message);
    this.name = "LineTooLong";
    this.maxLineBytes = maxLineBytes;
  }
}
