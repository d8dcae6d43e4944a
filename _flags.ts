// Command lines as genio's programs read them (server.ts, the examples): flags parsed strictly,
// and every mistake one line that says what is wrong, for exit status 2.
import { parseArgs, type ParseArgsConfig } from "node:util";

/** A bad command line: its message is the one line an operator sees. */
export class UsageError extends Error {}

type Options = NonNullable<ParseArgsConfig["options"]>;

/** `parseArgs` with no positionals, its errors turned into one-line usage errors. */
export function parseFlags<O extends Options>(args: readonly string[], options: O) {
  // parseArgs refuses "--grace -1" as ambiguous; read it as "--grace=-1", so that the value's
  // own check says what is wrong with it.
  const valued = new Set<string>();
  for (const [name, option] of Object.entries(options)) {
    if (option.type !== "string") continue;
    valued.add(`--${name}`);
    if (option.short !== undefined) valued.add(`-${option.short}`);
  }
  const joined: string[] = [];
  for (let i = 0; i < args.length; i++) {
    if (valued.has(args[i]) && /^-[\d.]/.test(args[i + 1] ?? "")) {
      joined.push(`${args[i]}=${args[++i]}`);
    } else {
      joined.push(args[i]);
    }
  }
  try {
    return parseArgs({ args: joined, options, strict: true, allowPositionals: false }).values;
  } catch (error) {
    const message = (error as Error).message.split(/\.?\n|\. /, 1)[0];
    throw new UsageError(message.charAt(0).toLowerCase() + message.slice(1));
  }
}

/** An integer flag from `min` to `max`, or `fallback` when it is not given. */
export function integerFlag(
  flag: string,
  text: string | undefined,
  fallback: number,
  min: number,
  max: number,
): number {
  if (text === undefined) return fallback;
  const value = Number(text);
  if (!/^\d+$/.test(text) || value < min || value > max) {
    const range = max === Number.MAX_SAFE_INTEGER ? `>= ${min}` : `from ${min} to ${max}`;
    throw new UsageError(`${flag} must be an integer ${range}, got "${text}"`);
  }
  return value;
}
