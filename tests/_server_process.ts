// Runs the real `server.ts` as a child process, as an operator would, and collects its output
// line by line so that tests can wait for "Listening on ...", "Connection closed ..." and so on.
import { within } from "./_net.ts";

const ROOT = new URL("..", import.meta.url);
export const SERVER: string = new URL("../server.ts", import.meta.url).pathname;
const STARTUP_MS = 30_000;
const EXIT_MS = 20_000;

export interface Exit {
  code: number;
  signal: Deno.Signal | null;
  stdout: string[];
  stderr: string[];
}

// A stream of text split into lines, with a way to wait for the line a test expects.
class Lines {
  readonly lines: string[] = [];
  #changed = Promise.withResolvers<void>();
  #ended = false;
  readonly done: Promise<void>;

  constructor(stream: ReadableStream<Uint8Array>) {
    this.done = this.#collect(stream);
  }

  async #collect(stream: ReadableStream<Uint8Array>): Promise<void> {
    let partial = "";
    for await (const text of stream.pipeThrough(new TextDecoderStream())) {
      const parts = (partial + text).split("\n");
      partial = parts.pop()!;
      this.lines.push(...parts);
      this.#notify();
    }
    if (partial !== "") this.lines.push(partial);
    this.#ended = true;
    this.#notify();
  }

  #notify(): void {
    this.#changed.resolve();
    this.#changed = Promise.withResolvers<void>();
  }

  // Resolves with the first line matching `pattern`, waiting up to `ms` for it to appear.
  async waitFor(pattern: RegExp, ms: number): Promise<string> {
    return await within(ms, `a line matching ${pattern}`, async () => {
      for (;;) {
        const line = this.lines.find((line) => pattern.test(line));
        if (line !== undefined) return line;
        if (this.#ended) {
          throw new Error(`Output ended without a line matching ${pattern}:\n${this}`);
        }
        await this.#changed.promise;
      }
    });
  }

  count(pattern: RegExp): number {
    return this.lines.filter((line) => pattern.test(line)).length;
  }

  toString(): string {
    return this.lines.join("\n");
  }
}

export interface ServerProcess extends AsyncDisposable {
  readonly hostname: string; // "" on a Unix socket
  readonly port: number; // 0 on a Unix socket
  readonly path: string | null; // the Unix socket's, from "Listening on unix:PATH"
  readonly stdout: Lines;
  readonly stderr: Lines;
  kill(signal?: Deno.Signal): void;
  // Waits for the process to exit (up to EXIT_MS) and returns its status and output.
  exited(): Promise<Exit>;
}

// Starts `deno run PERMISSIONS SCRIPT ARGS` (server.ts with --allow-net unless told, or another
// program with the same first line, such as an example) and waits for its "Listening on" line.
// `env` adds to its environment.
export async function startServer(
  args: string[],
  script: string = SERVER,
  permissions: string[] = ["--allow-net"],
  env: Record<string, string> = {},
): Promise<ServerProcess> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", ...permissions, script, ...args],
    cwd: ROOT,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", ...env },
  }).spawn();
  const stdout = new Lines(child.stdout);
  const stderr = new Lines(child.stderr);
  let exit: Promise<Exit> | null = null;
  const exited = (): Promise<Exit> =>
    exit ??= Promise.all([child.status, stdout.done, stderr.done]).then(([status]) => ({
      code: status.code,
      signal: status.signal,
      stdout: stdout.lines,
      stderr: stderr.lines,
    }));
  const kill = (signal: Deno.Signal = "SIGKILL"): void => {
    try {
      child.kill(signal);
    } catch {
      // It has exited already.
    }
  };
  try {
    const line = await stdout.waitFor(/^/, STARTUP_MS);
    const match = line.match(/^Listening on (?:unix:(.+)|(\[(.+)\]|([^:]+)):(\d+))$/);
    if (match === null) {
      throw new Error(`Expected "Listening on HOST:PORT" first, got ${JSON.stringify(line)}`);
    }
    return {
      hostname: match[3] ?? match[4] ?? "",
      port: Number(match[5] ?? 0),
      path: match[1] ?? null,
      stdout,
      stderr,
      kill,
      exited: () => within(EXIT_MS, "the server to exit", exited),
      async [Symbol.asyncDispose]() {
        kill();
        await exited();
      },
    };
  } catch (error) {
    kill();
    const { stderr: errors } = await exited();
    throw new Error(`${(error as Error).message}\nstderr:\n${errors.join("\n")}`);
  }
}

// Runs `deno run PERMISSIONS SCRIPT ARGS` to completion, for the flags that exit at once.
// `allowNet` is --allow-net (true), nothing (false), or the permission flags themselves.
export async function runServer(
  args: string[],
  allowNet: boolean | string[] = true,
  script: string = SERVER,
): Promise<Exit> {
  const permissions = allowNet === true ? ["--allow-net"] : allowNet === false ? [] : allowNet;
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), EXIT_MS);
  try {
    const output = await new Deno.Command(Deno.execPath(), {
      args: ["run", ...permissions, script, ...args],
      cwd: ROOT,
      stdin: "null",
      env: { NO_COLOR: "1" },
      signal: controller.signal,
    }).output();
    const lines = (bytes: Uint8Array) =>
      new TextDecoder().decode(bytes).split("\n").filter((line) => line !== "");
    return {
      code: output.code,
      signal: output.signal,
      stdout: lines(output.stdout),
      stderr: lines(output.stderr),
    };
  } finally {
    clearTimeout(timer);
  }
}
