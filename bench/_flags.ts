/**
 * Flag parsing for the benchmark's scripts. A bad flag is the operator's mistake: it ends the
 * script with one line and status 2, never a stack trace.
 *
 * @module
 */
import { parseArgs, type ParseArgsConfig } from "node:util";

/**
 * Parses `config.args` like `parseArgs`; the string flags named in `numbers` must also be
 * numbers >= 0 when given.
 */
export function parseFlags<T extends ParseArgsConfig>(
  program: string,
  config: T,
  numbers: readonly string[] = [],
): ReturnType<typeof parseArgs<T>> {
  let parsed: ReturnType<typeof parseArgs<T>>;
  try {
    parsed = parseArgs(config);
  } catch (error) {
    return fail(program, (error as Error).message.split("\n")[0]);
  }
  const values = parsed.values as Record<string, unknown>;
  for (const name of numbers) {
    const value = values[name];
    if (value !== undefined && !(Number(value) >= 0)) {
      fail(program, `--${name} must be a number >= 0, got "${value}"`);
    }
  }
  return parsed;
}

function fail(program: string, message: string): never {
  console.error(`${program}: ${message}`);
  Deno.exit(2);
}
