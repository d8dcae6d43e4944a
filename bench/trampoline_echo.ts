/**
 * A yardstick, not a server to use: the same `GOT:` echo handler as a generator that yields
 * read and write intents, driven by the leanest loop possible: each settled call resumes
 * the generator, which names the next call. No scheduler, no wait maps, no deadlines, no
 * cancellation. It shows what generators and intents cost by themselves on `Deno.Conn`,
 * so that the rest of genio's cost can be told apart from them:
 *
 * ```sh
 * deno task bench --genio bench/trampoline_echo.ts --no-micro
 * ```
 *
 * @module
 */
import { runEchoServer } from "./_echo_cli.ts";

const PREFIX: Uint8Array = new TextEncoder().encode("GOT:");

type Call =
  | { readonly type: "read"; readonly conn: Deno.Conn; readonly buffer: Uint8Array }
  | { type: "write"; readonly conn: Deno.Conn; data: Uint8Array };

function* echo(conn: Deno.Conn, bufferSize: number): Generator<Call, void, number | null> {
  const reply = new Uint8Array(PREFIX.length + bufferSize);
  reply.set(PREFIX);
  const readCall: Call = { type: "read", conn, buffer: reply.subarray(PREFIX.length) };
  const writeCall: Call = { type: "write", conn, data: reply };
  try {
    let n: number | null;
    while ((n = yield readCall) !== null) {
      const end = PREFIX.length + n;
      for (let sent = 0; sent < end;) {
        writeCall.data = reply.subarray(sent, end);
        sent += (yield writeCall)!;
      }
    }
  } finally {
    conn.close();
  }
}

/** Runs one generator: every settled call resumes it with the call's result. */
function drive(generator: Generator<Call, void, number | null>): void {
  const resume = (value: number | null): void => {
    let step: IteratorResult<Call, void>;
    try {
      step = generator.next(value);
    } catch {
      return; // the handler failed: its connection is closed
    }
    if (step.done) return;
    const call = step.value;
    (call.type === "read" ? call.conn.read(call.buffer) : call.conn.write(call.data))
      .then(resume, fail);
  };
  const fail = (error: unknown): void => {
    try {
      generator.throw(error);
    } catch {
      // Ended: the finally block closed the connection.
    }
  };
  resume(null);
}

if (import.meta.main) await runEchoServer((conn, bufferSize) => drive(echo(conn, bufferSize)));
