import assert from "node:assert/strict";
import config from "../deno.json" with { type: "json" };
import * as mod from "../mod.ts";

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
