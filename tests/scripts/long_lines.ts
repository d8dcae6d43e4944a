// Run by tests/stream_test.ts: 50 conns at a time, each sent an 8 MiB line, five times over,
// each line read by a Stream with the default limit. Prints how many lines were refused
// and by how many MiB the RSS grew at its peak. (With no limit, it grows by over 1 GiB.)
import { LineTooLong, type Operation, Scheduler, Stream } from "../../mod.ts";
import { memoryConnPair } from "../../testing.ts";

const ROUNDS = 5;
const CONNS = 50;
const CHUNK: Uint8Array = new Uint8Array(64 * 1024).fill(120);
const CHUNKS_PER_LINE = 128;

function* handler(conn: Deno.Conn): Operation<boolean> {
  const stream = new Stream(conn);
  try {
    yield* stream.readLine();
    return false;
  } catch (error) {
    if (error instanceof LineTooLong) return true;
    throw error;
  } finally {
    stream.close();
  }
}

// Sends the line until the server hangs up on it.
async function sendLongLine(conn: Deno.Conn): Promise<void> {
  try {
    for (let i = 0; i < CHUNKS_PER_LINE; i++) {
      for (let sent = 0; sent < CHUNK.length;) sent += await conn.write(CHUNK.subarray(sent));
    }
    await conn.write(new Uint8Array([10]));
  } catch (error) {
    if (!(error instanceof Deno.errors.BrokenPipe)) throw error;
  } finally {
    conn.close();
  }
}

const gc = (globalThis as unknown as { gc(): void }).gc;
gc();
const before = Deno.memoryUsage().rss;
let peak = before;
const sampler = setInterval(() => peak = Math.max(peak, Deno.memoryUsage().rss), 5);
let refused = 0;
for (let round = 0; round < ROUNDS; round++) {
  const scheduler = new Scheduler();
  const tasks = [];
  const senders = [];
  for (let i = 0; i < CONNS; i++) {
    const [client, server] = memoryConnPair({ capacity: CHUNK.length });
    tasks.push(scheduler.spawn(handler(server)));
    senders.push(sendLongLine(client));
  }
  await Promise.all([scheduler.run(), ...senders]);
  for (const task of tasks) if (await task.result) refused++;
  gc(); // what one round left behind is garbage: the peak is one round's worth
}
clearInterval(sampler);
peak = Math.max(peak, Deno.memoryUsage().rss);
console.log(JSON.stringify({ refused: refused / ROUNDS, grewMiB: (peak - before) / 2 ** 20 }));
