// Run by tests/scheduler_test.ts with --expose-gc: abandons reads whose bytes arrive after
// their conn was closed, as a handler cut off by its idle timeout does, and prints by how
// many MB external memory grew once they were all collected.
import { cancel, read, Scheduler, sleep } from "../../mod.ts";

const ROUNDS = 200;
const BUFFER_SIZE = 512 * 1024;
const macrotask = () => new Promise((resolve) => setTimeout(resolve, 0));

const scheduler = new Scheduler();
const server = scheduler.spawn(sleep(Infinity)); // keeps run() going, as an accept loop does
const running = scheduler.run();
const before = Deno.memoryUsage().external;
for (let i = 0; i < ROUNDS; i++) {
  let arrive!: (n: number) => void;
  const conn = {
    read: () => new Promise<number>((resolve) => arrive = resolve),
    close() {},
  } as unknown as Deno.Conn;
  const handler = scheduler.spawn(function* () {
    try {
      yield* read(conn, new Uint8Array(BUFFER_SIZE));
    } finally {
      conn.close();
    }
  }());
  await macrotask();
  scheduler.spawn(cancel(handler));
  await handler.result.catch(() => {});
  arrive(BUFFER_SIZE);
  await macrotask();
}
const gc = (globalThis as unknown as { gc(): void }).gc;
gc();
await macrotask();
gc();
console.log(Math.round((Deno.memoryUsage().external - before) / 2 ** 20));
scheduler.spawn(cancel(server));
await running;
