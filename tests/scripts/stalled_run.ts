// A test that forgets to close a conn, so its scheduler's run() can never finish: run by
// tests/testing_test.ts, which checks what the test scheduler says about it.
import { read } from "../../mod.ts";
import { createTestScheduler, memoryConnPair } from "../../testing.ts";

Deno.test("a forgotten close", async () => {
  const { scheduler } = createTestScheduler({ autojump: true });
  const [_client, server] = memoryConnPair();
  scheduler.spawn(read(server, new Uint8Array(8)), { name: "forgotten" });
  await scheduler.run();
});
