import assert from "node:assert/strict";
import config from "../deno.json" with { type: "json" };
import * as mod from "../mod.ts";
import { decode } from "./_net.ts";

const root = new URL("../", import.meta.url);
const read = (path: string) => Deno.readTextFileSync(new URL(path, root));

// Entry points that stand apart from the main one, as @std/testing does.
const SEPARATE = new Set(["./testing"]);

Deno.test("mod.ts re-exports every public module in deno.json's exports map", async () => {
  for (const [entry, path] of Object.entries(config.exports)) {
    if (entry === "." || SEPARATE.has(entry)) continue;
    const module = await import(new URL(path, root).href);
    for (const name of Object.keys(module)) {
      assert.ok(name in mod, `mod.ts does not re-export ${name} from ${path}`);
    }
  }
});

Deno.test("every top-level public module is in deno.json's exports map", () => {
  const exported = new Set(Object.values(config.exports).map((path) => path.replace("./", "")));
  for (const entry of Deno.readDirSync(root)) {
    const { name } = entry;
    if (!entry.isFile || !name.endsWith(".ts") || name.startsWith("_")) continue;
    assert.ok(exported.has(name), `${name} is public but missing from deno.json exports`);
  }
});

Deno.test("the README, CI and .deno-version name the same pinned Deno", () => {
  const version = read(".deno-version").trim();
  assert.match(version, /^\d+\.\d+\.\d+$/);
  const pinned = [...read("README.md").matchAll(/deno@(\d+\.\d+\.\d+)/g)].map((m) => m[1]);
  assert.ok(pinned.length > 0);
  assert.deepEqual(new Set(pinned), new Set([version]));
  assert.match(read(".ci/run"), /cat \.deno-version/);
  assert.match(read(".ci/run"), /^deno task test/m, "CI must run the README's test command");
  assert.match(read("README.md"), /deno task test/);
});

// A project next to a checkout named `genio`, set up as the README's "Use it in your project"
// says, with a program that imports the root and two subpaths. `--cached-only` with a DENO_DIR
// of its own shows that nothing is fetched.
const PROGRAM = `
import { Scheduler } from "@genio/genio";
import { echoHandler } from "@genio/genio/echo";
import { memoryConnPair } from "@genio/genio/testing";

const [client, server] = memoryConnPair();
const scheduler = new Scheduler();
scheduler.spawn(echoHandler(server));
const running = scheduler.run();
await client.write(new TextEncoder().encode("hello"));
await client.closeWrite();
const reply = new Uint8Array(64);
let got = 0;
for (let n; (n = await client.read(reply.subarray(got))) !== null;) got += n;
await running;
client.close();
console.log(new TextDecoder().decode(reply.subarray(0, got)));
`;

Deno.test("the README's deno.json for a local checkout resolves @genio/genio and its subpaths offline", async () => {
  const recipe = read("README.md").match(/```json\n(\{[^`]*"links"[^`]*\})\n```/);
  assert.ok(recipe, "the README shows a deno.json with links");
  const dir = await Deno.makeTempDir({ prefix: "genio_recipe_" });
  try {
    await Deno.symlink(decodeURIComponent(root.pathname), `${dir}/genio`);
    await Deno.mkdir(`${dir}/app`);
    await Deno.writeTextFile(`${dir}/app/deno.json`, recipe[1]);
    await Deno.writeTextFile(`${dir}/app/main.ts`, PROGRAM);
    const deno = (...args: string[]) =>
      new Deno.Command(Deno.execPath(), {
        args: [...args, "--cached-only", "main.ts"],
        cwd: `${dir}/app`,
        env: { DENO_DIR: `${dir}/deno_dir`, NO_COLOR: "1" },
        stdin: "null",
      }).output();

    const checked = await deno("check");
    assert.equal(checked.code, 0, decode(checked.stderr));
    const ran = await deno("run");
    assert.equal(ran.code, 0, decode(ran.stderr));
    assert.equal(decode(ran.stdout), "GOT:hello\n");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
