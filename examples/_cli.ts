// What the example programs' command lines share: flags parsed strictly, a bad one reported on
// one line with exit status 2, addresses written and read as HOST:PORT, and a listener that
// cannot be opened reported on one line with exit status 1.
import { integerFlag, UsageError } from "../_flags.ts";

export { integerFlag, parseFlags, UsageError } from "../_flags.ts";

export function secondsFlag(flag: string, text: string | undefined, fallback: number): number {
  if (text === undefined) return fallback;
  const seconds = Number(text);
  if (!/^(\d+\.?\d*|\.\d+)$/.test(text) || seconds <= 0 || seconds > 86_400) {
    throw new UsageError(`${flag} must be a number of seconds above 0, up to 86400, got "${text}"`);
  }
  return seconds;
}

// "HOST:PORT", "[IPv6]:PORT" or ":PORT" (the default host).
export function addressFlag(
  flag: string,
  text: string | undefined,
  fallback: { hostname: string; port: number },
): { hostname: string; port: number } {
  if (text === undefined) return fallback;
  const match = text.match(/^(?:\[([^\]]+)\]|([^:\[\]]*)):(\d+)$/);
  if (match === null) throw new UsageError(`${flag} must be HOST:PORT, got "${text}"`);
  const hostname = match[1] ?? (match[2] || fallback.hostname);
  return { hostname, port: integerFlag(`${flag}'s port`, match[3], 0, 0, 65535) };
}

export function formatAddress({ hostname, port }: { hostname: string; port: number }): string {
  return hostname.includes(":") ? `[${hostname}]:${port}` : `${hostname}:${port}`;
}

export function describe(error: unknown): string {
  if (error instanceof Deno.errors.ConnectionRefused) return "connection refused";
  if (error instanceof Deno.errors.AddrInUse) return "address already in use";
  if (error instanceof Deno.errors.NotCapable) return "no net permission (run with --allow-net)";
  if (error instanceof Deno.errors.AddrNotAvailable) return "address not available here";
  const text = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
  return text.split("\n", 1)[0];
}

// Runs a program's main: a usage error is one line on stderr and exit status 2.
export async function runMain(main: () => Promise<number>): Promise<never> {
  try {
    Deno.exit(await main());
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    console.error(`error: ${error.message} (see --help)`);
    Deno.exit(2);
  }
}
