// Randomized programs checked against the kernel's rules (README, "Semantics").
//
// Each seed makes one program: a tree of tasks built from spawn, join, cancel, sleeps, bare
// yields, waits, throws, nested `timeout()` / `idleTimeout()` blocks, try blocks that catch
// TimeoutError, Cancelled or anything, `finally` blocks that block or throw, and traffic
// through memory conns (a producer writing, readers that time out or are cancelled, a drainer
// reading to the end). The program runs on a virtual clock whose timers fire on time and on one
// whose timers fire 1 to 3 ms late, as `setTimeout` does on a busy event loop. Every wait of
// every task goes through `checkpoint()`, which checks the rules as the program runs; the end
// of the run checks what is left (tasks, failures reported, bytes).
//
// Replaying: a failure names its seed and clock. `GENIO_FUZZ_SEED=123 deno task test
// tests/semantics_fuzz_test.ts` runs that program alone and prints its trace;
// `GENIO_FUZZ_RUNS=100000` runs more programs (the default keeps the suite quick), and
// `GENIO_FUZZ_FROM` moves the first seed.
//
// Speed: `VirtualClock`'s autojump waits one real `setTimeout` per jump (about 2 ms here), so
// the bulk runs on `SteppedClock`, which does the same thing (fire the next timer once every
// task waits) one `setImmediate` per jump. A sample of programs also runs on `VirtualClock`
// itself, on time and late, as `createTestScheduler({ autojump: true })` gives it.
import assert from "node:assert/strict";
import { setImmediate } from "node:timers";
import {
  cancel,
  Cancelled,
  type Clock,
  idleTimeout,
  join,
  type Operation,
  read,
  Scheduler,
  sleep,
  spawn,
  type Task,
  type TaskState,
  timeout,
  TimeoutError,
  wait,
  write,
} from "../mod.ts";
import { createTestScheduler, type MemoryConn, memoryConnPair, VirtualClock } from "../testing.ts";
import { Random } from "./_clients.ts";
import { lateScheduler } from "./_schedulers.ts";

const MAX_LATE_MS = 3;

// --- programs ------------------------------------------------------------------------------

type Catches = "timeout" | "cancelled" | "all" | "none";

type Stmt =
  | { readonly kind: "sleep"; readonly ms: number }
  | { readonly kind: "yield" }
  | { readonly kind: "wait"; readonly reject: boolean }
  | { readonly kind: "throw" }
  | { readonly kind: "spawn"; readonly child: TaskSpec }
  | { readonly kind: "join"; readonly label: number; readonly catches: boolean }
  | { readonly kind: "cancel"; readonly label: number }
  | {
    readonly kind: "limit";
    readonly idle: boolean;
    readonly ms: number;
    // "own": the caller catches this block's TimeoutError; "any": every TimeoutError, an outer
    // block's too (as careless code does); "none": it passes on.
    readonly catches: "own" | "any" | "none";
    readonly body: readonly Stmt[];
  }
  | {
    readonly kind: "try";
    readonly catches: Catches;
    readonly body: readonly Stmt[];
    readonly cleanup: readonly Stmt[] | null;
    readonly cleanupThrows: boolean;
  }
  | { readonly kind: "read"; readonly pair: number; readonly size: number }
  | { readonly kind: "write"; readonly pair: number; readonly size: number };

interface TaskSpec {
  readonly label: number;
  readonly body: readonly Stmt[];
  readonly idleLimit: number | null; // spawn's idleTimeout option
  readonly onSettled: boolean;
  readonly produces: number | null; // the pair whose writing end it closes when it ends
}

interface PairSpec {
  readonly capacity: number;
}

interface ProgramSpec {
  readonly seed: number;
  readonly root: TaskSpec;
  readonly pairs: readonly PairSpec[];
}

// Every time limit of a program has its own `ms`, so that a TimeoutError tells which block (or
// which task's idle option) it came from.
class ProgramMaker {
  readonly random: Random;
  #limits: number[];
  #extraLimits = 0;
  #labels = 0;
  #statements = 0;
  #pairs: PairSpec[] = [];

  constructor(readonly seed: number) {
    this.random = new Random(mix(seed));
    this.#limits = Array.from({ length: 60 }, (_, i) => i);
    for (let i = this.#limits.length - 1; i > 0; i--) {
      const j = this.random.between(0, i);
      [this.#limits[i], this.#limits[j]] = [this.#limits[j], this.#limits[i]];
    }
  }

  program(): ProgramSpec {
    const pairCount = this.#chance(0.6) ? this.random.between(1, 2) : 0;
    for (let i = 0; i < pairCount; i++) {
      this.#pairs.push({ capacity: this.#chance(0.5) ? Infinity : this.random.between(1, 12) });
    }
    const body: Stmt[] = this.#pairs.map((_, pair) => ({
      kind: "spawn",
      child: this.#task(this.#producer(pair), pair),
    }));
    body.push(...this.#block(0, 4, 10));
    const root: TaskSpec = { label: -1, body, idleLimit: null, onSettled: true, produces: null };
    return { seed: this.seed, root, pairs: this.#pairs };
  }

  #task(body: Stmt[], produces: number | null = null): TaskSpec {
    const idleLimit = produces === null && this.#chance(0.2) ? this.#limitMs(4) : null;
    const onSettled = this.#chance(0.2);
    return { label: this.#labels++, body, idleLimit, onSettled, produces };
  }

  #producer(pair: number): Stmt[] {
    const bounded = this.#pairs[pair].capacity !== Infinity;
    const body: Stmt[] = [];
    for (let n = this.random.between(1, 5); n > 0; n--) {
      if (this.#chance(0.5)) body.push({ kind: "sleep", ms: this.random.between(0, 8) });
      const w: Stmt = { kind: "write", pair, size: this.random.between(1, 16) };
      // A write into a bounded pipe may wait for a reader that never comes: give it a limit.
      if (bounded || this.#chance(0.3)) {
        const catches = this.#chance(0.7) ? "own" : "none";
        body.push({ kind: "limit", idle: false, ms: this.#limitMs(1), catches, body: [w] });
      } else body.push(w);
    }
    return body;
  }

  #block(depth: number, min: number, max: number): Stmt[] {
    const stmts: Stmt[] = [];
    for (let n = this.random.between(min, max); n > 0 && this.#statements < 60; n--) {
      this.#statements++;
      stmts.push(this.#statement(depth));
    }
    return stmts;
  }

  #statement(depth: number): Stmt {
    const r = this.random;
    const deep = depth >= 4;
    const choice = r.between(0, 99);
    if (choice < 18) return { kind: "sleep", ms: r.between(0, 14) };
    if (choice < 22) return { kind: "yield" };
    if (choice < 26) return { kind: "wait", reject: this.#chance(0.3) };
    if (choice < 29) return { kind: "throw" };
    if (choice < 45 && !deep && this.#labels < 10) {
      const body = this.#pairs.length > 0 && this.#chance(0.3)
        ? this.#reader(r.between(0, this.#pairs.length - 1))
        : this.#block(depth + 1, 1, 5);
      return { kind: "spawn", child: this.#task(body) };
    }
    if (choice < 55) {
      return { kind: "join", label: r.between(0, this.#labels + 1), catches: this.#chance(0.5) };
    }
    if (choice < 63) return { kind: "cancel", label: r.between(0, this.#labels + 1) };
    if (choice < 81 && !deep && this.#limits.length > 0) {
      const catches = (["own", "own", "any", "none", "none"] as const)[r.between(0, 4)];
      const idle = this.#chance(0.25);
      return {
        kind: "limit",
        idle,
        ms: this.#limitMs(idle ? 4 : 0),
        catches,
        body: this.#block(depth + 1, 1, 3),
      };
    }
    if (choice < 93 && !deep) {
      const catches = (["timeout", "cancelled", "all", "all", "none"] as const)[r.between(0, 4)];
      const cleanup = this.#chance(0.6) ? this.#block(depth + 1, 1, 2) : null;
      return {
        kind: "try",
        catches,
        body: this.#block(depth + 1, 1, 3),
        cleanup,
        cleanupThrows: cleanup !== null && this.#chance(0.15),
      };
    }
    if (this.#pairs.length > 0) {
      return { kind: "read", pair: r.between(0, this.#pairs.length - 1), size: r.between(1, 8) };
    }
    return { kind: "sleep", ms: r.between(0, 14) };
  }

  // A task that reads a few times, some reads under a limit it gives up on.
  #reader(pair: number): Stmt[] {
    const body: Stmt[] = [];
    for (let n = this.random.between(1, 4); n > 0; n--) {
      const r: Stmt = { kind: "read", pair, size: this.random.between(1, 8) };
      if (this.#chance(0.5) && this.#limits.length > 0) {
        body.push({ kind: "limit", idle: false, ms: this.#limitMs(1), catches: "own", body: [r] });
      } else body.push(r);
    }
    return body;
  }

  #limitMs(min: number): number {
    for (let i = this.#limits.length - 1; i >= 0; i--) {
      if (this.#limits[i] >= min) return this.#limits.splice(i, 1)[0];
    }
    return 100 + this.#extraLimits++;
  }

  #chance(p: number): boolean {
    return this.random.next() / 0x1_0000_0000 < p;
  }
}

function mix(seed: number): number {
  let x = (seed + 0x9e3779b9) >>> 0;
  x = Math.imul(x ^ (x >>> 16), 0x85ebca6b) >>> 0;
  x = Math.imul(x ^ (x >>> 13), 0xc2b2ae35) >>> 0;
  return (x ^ (x >>> 16)) >>> 0 || 1;
}

function describe(spec: TaskSpec, indent = ""): string {
  const options = [
    spec.idleLimit !== null ? `idleTimeout ${spec.idleLimit}` : "",
    spec.onSettled ? "onSettled" : "",
    spec.produces !== null ? `producer of pair ${spec.produces}` : "",
  ].filter(Boolean).join(", ");
  return `${indent}task ${spec.label < 0 ? "root" : `L${spec.label}`}` +
    (options ? ` (${options})` : "") + "\n" + describeBlock(spec.body, indent + "  ");
}

function describeBlock(stmts: readonly Stmt[], indent: string): string {
  return stmts.map((s) => describeStmt(s, indent)).join("");
}

function describeStmt(s: Stmt, indent: string): string {
  switch (s.kind) {
    case "spawn":
      return `${indent}spawn\n${describe(s.child, indent + "  ")}`;
    case "limit":
      return `${indent}${s.idle ? "idleTimeout" : "timeout"}(${s.ms}) catches ${s.catches}\n` +
        describeBlock(s.body, indent + "  ");
    case "try":
      return `${indent}try, catches ${s.catches}\n${describeBlock(s.body, indent + "  ")}` +
        (s.cleanup === null ? "" : `${indent}finally${s.cleanupThrows ? ", then throw" : ""}\n` +
          describeBlock(s.cleanup, indent + "  "));
    case "sleep":
      return `${indent}sleep(${s.ms})\n`;
    case "join":
      return `${indent}join L${s.label}${s.catches ? ", catching its failure" : ""}\n`;
    case "cancel":
      return `${indent}cancel L${s.label}\n`;
    case "read":
    case "write":
      return `${indent}${s.kind} ${s.size} bytes, pair ${s.pair}\n`;
    case "wait":
      return `${indent}wait(${s.reject ? "rejected" : "resolved"} promise)\n`;
    default:
      return `${indent}${s.kind}\n`;
  }
}

// --- what the checks count -----------------------------------------------------------------

// Each rule the checks test, with how many times it was checked in a run and in how many
// programs: a rule that no program exercised would pass vacuously, so the test requires each.
const RULES = {
  sleepFullDuration: "a sleep lasts its full duration (and is late by no more than the clock)",
  deadlineNotEarly: "a timeout() block's TimeoutError comes no earlier than its deadline",
  idleNotEarly: "an idleTimeout() block's TimeoutError comes no earlier than ms after a wait",
  taskIdleNotEarly: "a spawn idleTimeout's TimeoutError comes no earlier than ms after a wait",
  errorBelongsToBlock: "a TimeoutError reaching a timeout() caller is its own or an outer one's",
  outerThroughInner: "an outer block's TimeoutError passes through an inner timeout() caller",
  levelTriggered: "every checkpoint inside a block after its deadline throws",
  caughtInsideStillFails: "a block whose TimeoutError was caught inside fails when it returns",
  outerNotLost: "an outer block whose deadline passed fails once its code blocked again",
  completedInTime: "a sleep due before a deadline ends normally, however late the ring",
  cancelledOnce: "Cancelled is delivered once, at the first checkpoint after the cancel",
  cancelledBeforeStart: "a task cancelled before its first step starts and sees Cancelled",
  noTimeoutAfterCancel: "a cancelled task's limit running out in cleanup throws Cancelled",
  cancelWaits: "cancel() returns once its target has settled",
  reportedOnce: "an unobserved failure is reported exactly once",
  abandonedJoinReported: "a failure whose joiner gave up waiting is reported",
  joinedNotReported: "a failure received by a waiting joiner is not reported",
  settledNotReported: "a failure passed to onSettled is not reported",
  childrenFirst: "a task settles only after its children",
  everyTaskEnds: "every task ends, run() resolves, tasks() is empty",
  bytesExactlyOnce: "bytes written through a memory conn arrive once, in order, to the end",
  bytesAfterAbandonedRead: "bytes of a read abandoned by a cancel or timeout reach a later read",
} as const;

type Rule = keyof typeof RULES;

class Tally {
  readonly checks = new Map<Rule, number>();
  readonly programs = new Map<Rule, number>();
  programsRun = 0;

  add(counts: Map<Rule, number>): void {
    this.programsRun++;
    for (const [rule, n] of counts) {
      this.checks.set(rule, (this.checks.get(rule) ?? 0) + n);
      this.programs.set(rule, (this.programs.get(rule) ?? 0) + 1);
    }
  }

  summary(): string {
    return (Object.keys(RULES) as Rule[]).map((rule) =>
      `  ${String(this.programs.get(rule) ?? 0).padStart(6)} programs, ` +
      `${String(this.checks.get(rule) ?? 0).padStart(7)} checks: ${RULES[rule]}`
    ).join("\n");
  }

  assertEveryRuleExercised(): void {
    const missing = (Object.keys(RULES) as Rule[]).filter((rule) => !this.programs.get(rule));
    assert.deepEqual(missing, [], `rules no program exercised:\n${this.summary()}`);
  }
}

// --- running a program ---------------------------------------------------------------------

const NONE: unique symbol = Symbol("none");

interface BlockRecord {
  readonly ctx: TaskCtx;
  readonly idle: boolean;
  readonly ms: number;
  readonly start: number;
  readonly taskLimit: boolean;
  lastWait: number; // the last wait of its task known to have completed inside it
  blockedAfterDeadline: boolean; // a checkpoint inside it was reached after its deadline
  delivered: boolean; // its TimeoutError was thrown into the code inside it
  escaped: boolean; // its TimeoutError went on past its caller
  operationReturned: boolean;
}

function deadlineOf(block: BlockRecord): number {
  return block.start + block.ms;
}

// Whether a deadline block's limit must have run out by `now`. Time moves only when a timer
// rings, and a ring handles every entry due by then, so a deadline at or before `now` has run
// out, unless it was set at `now` with 0 ms (no ring since).
function deadlinePassed(block: BlockRecord, now: number): boolean {
  if (block.idle) return false;
  return block.ms > 0 ? now >= deadlineOf(block) : now > deadlineOf(block);
}

interface TaskCtx {
  readonly spec: TaskSpec;
  readonly name: string;
  readonly parent: TaskCtx | null;
  readonly children: TaskCtx[];
  readonly blocks: BlockRecord[];
  readonly returnValue: string;
  task: Task<unknown> | null;
  started: boolean;
  markedAtStart: boolean;
  bodyDone: boolean;
  thrown: unknown;
  cancelMarked: boolean; // a cancel was requested (by cancel() or its parent's end)
  markedAt: number;
  cancelsDelivered: number;
  receivedByWaitingJoiner: boolean;
  receivedByLateJoiner: boolean;
  abandonedJoins: number;
  settledCalls: number;
  settledError: unknown;
}

interface Pair {
  readonly writer: MemoryConn; // the producer's end
  readonly recordingWriter: Deno.Conn; // the same, noting what each write call accepted
  readonly reader: MemoryConn;
  readonly accepted: number[];
  readonly received: number[];
  nextByte: number;
  abandonedReads: number;
}

type Mode = "exact" | "late" | "virtual" | "virtual-late";

// The operations programs use. The checks' own test swaps in broken ones, to see them caught.
interface Ops {
  readonly sleep: (ms: number) => Operation<void>;
  readonly timeout: <T>(ms: number, operation: Operation<T>) => Operation<T>;
  readonly cancel: (task: Task<unknown>) => Operation<void>;
}

const KERNEL_OPS: Ops = { sleep, timeout, cancel };

class Violation extends Error {}

class Program {
  readonly counts = new Map<Rule, number>();
  readonly violations: string[] = [];
  readonly trace: string[] | null;
  readonly ctxs: TaskCtx[] = [];
  readonly byLabel = new Map<number, TaskCtx>();
  readonly pairs: Pair[];
  readonly reports: { error: unknown; task: Task<unknown> }[] = [];
  readonly rootSettled = Promise.withResolvers<void>();
  // Who a TimeoutError belongs to, noted where it is first seen (the kernel makes a new one at
  // each delivery, so the first place that sees it is the task it was thrown into).
  readonly owners = new WeakMap<object, BlockRecord>();
  resumes = 0; // checkpoints resumed and tasks started, in all tasks
  #throws = 0;

  constructor(
    readonly spec: ProgramSpec,
    readonly clock: Clock,
    readonly ops: Ops,
    tracing: boolean,
  ) {
    this.trace = tracing ? [] : null;
    this.pairs = spec.pairs.map(({ capacity }) => {
      const [writer, reader] = memoryConnPair({ capacity });
      const pair: Pair = {
        writer,
        reader,
        recordingWriter: recordingConn(writer, (bytes) => pair.accepted.push(...bytes)),
        accepted: [],
        received: [],
        nextByte: 0,
        abandonedReads: 0,
      };
      return pair;
    });
  }

  now(): number {
    return this.clock.now();
  }

  count(rule: Rule, n = 1): void {
    this.counts.set(rule, (this.counts.get(rule) ?? 0) + n);
  }

  check(ok: boolean, message: () => string): void {
    if (ok) return;
    const text = `t=${this.now()}: ${message()}`;
    this.violations.push(text);
    this.log(`VIOLATION ${text}`);
  }

  log(line: string): void {
    this.trace?.push(`t=${this.now()} ${line}`);
  }

  newError(ctx: TaskCtx): Error {
    return new Error(`${ctx.name} threw #${++this.#throws}`);
  }

  newCtx(spec: TaskSpec, parent: TaskCtx | null): TaskCtx {
    const ctx: TaskCtx = {
      spec,
      name: spec.label < 0 ? "root" : `L${spec.label}`,
      parent,
      children: [],
      blocks: [],
      returnValue: `value of L${spec.label}`,
      task: null,
      started: false,
      markedAtStart: false,
      bodyDone: false,
      thrown: NONE,
      cancelMarked: false,
      markedAt: Infinity,
      cancelsDelivered: 0,
      receivedByWaitingJoiner: false,
      receivedByLateJoiner: false,
      abandonedJoins: 0,
      settledCalls: 0,
      settledError: NONE,
    };
    this.ctxs.push(ctx);
    parent?.children.push(ctx);
    if (spec.label >= 0) this.byLabel.set(spec.label, ctx);
    if (spec.idleLimit !== null) {
      ctx.blocks.push(this.newBlock(ctx, true, spec.idleLimit, true));
    }
    return ctx;
  }

  newBlock(ctx: TaskCtx, idle: boolean, ms: number, taskLimit = false): BlockRecord {
    const now = this.now();
    return {
      ctx,
      idle,
      ms,
      start: now,
      taskLimit,
      lastWait: now,
      blockedAfterDeadline: false,
      delivered: false,
      escaped: false,
      operationReturned: false,
    };
  }

  // A settled task's children have all settled.
  checkChildrenFirst(): void {
    for (const ctx of this.ctxs) {
      if (ctx.task === null || !settled(ctx.task.state) || ctx.children.length === 0) continue;
      for (const child of ctx.children) {
        this.check(
          child.task !== null && settled(child.task.state),
          () => `${ctx.name} settled while its child ${child.name} is ${child.task?.state}`,
        );
      }
    }
  }
}

function settled(state: TaskState): boolean {
  return state === "done" || state === "failed" || state === "cancelled";
}

// A conn that notes the bytes each write call accepted, in the order the calls accepted them.
function recordingConn(conn: MemoryConn, note: (bytes: Uint8Array) => void): Deno.Conn {
  return new Proxy(conn, {
    get(target, key) {
      if (key === "write") {
        return (data: Uint8Array) =>
          target.write(data).then((n) => {
            note(data.slice(0, n));
            return n;
          });
      }
      const value = Reflect.get(target, key, target);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
}

// The kernel names the task in the Cancelled it delivers; one that names another task came
// through a join.
function cancelledFor(ctx: TaskCtx, error: unknown): "plain" | "cleanup" | null {
  if (!(error instanceof Cancelled)) return null;
  const own = `Task "${ctx.name}" was cancelled`;
  if (error.message === own) return "plain";
  if (error.message.startsWith(`${own}, and its`)) return "cleanup";
  return null;
}

// --- the task code ---------------------------------------------------------------------------

function* taskBody(p: Program, ctx: TaskCtx): Operation<string> {
  p.resumes++;
  ctx.started = true;
  ctx.markedAtStart = ctx.cancelMarked;
  p.log(`${ctx.name} starts${ctx.cancelMarked ? " (already cancelled)" : ""}`);
  try {
    yield* exec(p, ctx, ctx.spec.body);
    p.log(`${ctx.name} returns`);
    return ctx.returnValue;
  } catch (error) {
    ctx.thrown = error;
    p.log(`${ctx.name} throws ${describeError(error)}`);
    throw error;
  } finally {
    if (ctx.spec.produces !== null) p.pairs[ctx.spec.produces].recordingWriter.close();
    ctx.bodyDone = true;
    // Its end cancels its live children, every one whose code has not ended.
    for (const child of ctx.children) {
      if (!child.bodyDone) markCancelled(p, child);
    }
  }
}

function* exec(p: Program, ctx: TaskCtx, stmts: readonly Stmt[]): Operation<void> {
  for (const stmt of stmts) yield* execOne(p, ctx, stmt);
}

function* execOne(p: Program, ctx: TaskCtx, s: Stmt): Operation<void> {
  switch (s.kind) {
    case "sleep":
      return yield* checkpoint(p, ctx, `sleep(${s.ms})`, p.ops.sleep(s.ms), {
        sleepMs: s.ms,
        completes: s.ms > 0,
      });
    case "yield":
      return yield* checkpoint(p, ctx, "yield", bareYield());
    case "wait": {
      const promise = s.reject ? Promise.reject(p.newError(ctx)) : Promise.resolve();
      promise.catch(() => {}); // the task may be cancelled before it waits
      return yield* checkpoint(p, ctx, "wait", wait(promise), { completes: true });
    }
    case "throw":
      throw p.newError(ctx);
    case "spawn":
      return yield* execSpawn(p, ctx, s.child);
    case "join":
      return yield* execJoin(p, ctx, s.label, s.catches);
    case "cancel":
      return yield* execCancel(p, ctx, s.label);
    case "limit":
      return yield* execLimit(p, ctx, s);
    case "try":
      return yield* execTry(p, ctx, s);
    case "read":
      return yield* execRead(p, ctx, s.pair, s.size);
    case "write":
      return yield* execWrite(p, ctx, s.pair, s.size);
  }
}

function* bareYield(): Operation<void> {
  yield;
}

function* execSpawn(p: Program, ctx: TaskCtx, spec: TaskSpec): Operation<void> {
  const child = p.newCtx(spec, ctx);
  child.task = yield* spawn(taskBody(p, child), {
    name: child.name,
    idleTimeout: spec.idleLimit ?? undefined,
    onSettled: spec.onSettled
      ? (task, error) => {
        child.settledCalls++;
        child.settledError = error;
        p.check(
          settled(task.state) && (error === undefined) === (task.state === "done"),
          () => `${child.name}'s onSettled got ${describeError(error)} in state ${task.state}`,
        );
        p.checkChildrenFirst();
      }
      : undefined,
  });
  p.log(`${ctx.name} spawned ${child.name} as #${child.task.id}`);
}

// Joins and cancels go only to tasks spawned later than the caller: no task waits on one that
// waits on it, so every program can end.
function target(p: Program, ctx: TaskCtx, label: number): TaskCtx | null {
  const other = p.byLabel.get(label);
  if (other === undefined || other.task === null || ctx.task === null) return null;
  return other.task.id > ctx.task.id ? other : null;
}

// A join that catches is a supervisor's: it takes the failure and goes on, unless it is its own
// cancel or time limit.
function* execJoin(p: Program, ctx: TaskCtx, label: number, catches: boolean): Operation<void> {
  const other = target(p, ctx, label);
  if (other === null) return;
  const task = other.task!;
  const waiting = !settled(task.state);
  try {
    const value = yield* checkpoint(p, ctx, `join ${other.name}`, join(task), {
      joined: other,
      completes: waiting,
    });
    p.check(
      task.state === "done" && value === other.returnValue,
      () => `join ${other.name} returned ${value} while it is ${task.state}`,
    );
  } catch (error) {
    if (!settled(task.state) || interruptedBy(p, ctx, error)) {
      other.abandonedJoins++;
    } else {
      p.check(task.state !== "done", () => `join ${other.name} threw, but it is done`);
      if (waiting) other.receivedByWaitingJoiner = true;
      else other.receivedByLateJoiner = true;
      if (catches) return p.log(`${ctx.name} took ${other.name}'s failure`);
    }
    throw error;
  }
}

// Whether an error thrown at a checkpoint of `ctx` is the kernel's interruption of that
// checkpoint (its own cancel or time limit) rather than what it waited for.
function interruptedBy(p: Program, ctx: TaskCtx, error: unknown): boolean {
  if (cancelledFor(ctx, error) !== null) return true;
  if (!(error instanceof TimeoutError)) return false;
  return p.owners.get(error)?.ctx === ctx;
}

function* execCancel(p: Program, ctx: TaskCtx, label: number): Operation<void> {
  const other = target(p, ctx, label);
  if (other === null) return;
  const task = other.task!;
  const alreadyMarked = other.cancelMarked;
  // The kernel requests the cancel when it performs the intent, unless the target's code has
  // ended; an intent interrupted before it is performed (this task's own cancel or limit)
  // throws at once, before any other task runs.
  if (!other.bodyDone) markCancelled(p, other);
  const before = p.resumes;
  try {
    yield* checkpoint(p, ctx, `cancel ${other.name}`, p.ops.cancel(task), {
      completes: !settled(task.state),
    });
  } catch (error) {
    if (p.resumes === before + 1 && !alreadyMarked) {
      other.cancelMarked = false;
      other.markedAt = Infinity;
    }
    throw error;
  }
  p.check(settled(task.state), () => `cancel ${other.name} returned while it is ${task.state}`);
  if (!alreadyMarked && other.cancelMarked) p.count("cancelWaits");
}

function markCancelled(p: Program, ctx: TaskCtx): void {
  if (ctx.cancelMarked) return;
  ctx.cancelMarked = true;
  ctx.markedAt = p.now();
}

function* execRead(p: Program, ctx: TaskCtx, index: number, size: number): Operation<void> {
  const pair = p.pairs[index];
  const buffer = new Uint8Array(size);
  let n: number | null;
  try {
    n = yield* checkpoint(p, ctx, `read pair ${index}`, read(pair.reader, buffer));
  } catch (error) {
    if (interruptedBy(p, ctx, error)) pair.abandonedReads++;
    throw error;
  }
  if (n !== null) pair.received.push(...buffer.subarray(0, n));
}

function* execWrite(p: Program, ctx: TaskCtx, index: number, size: number): Operation<void> {
  const pair = p.pairs[index];
  const data = new Uint8Array(size);
  for (let i = 0; i < size; i++) data[i] = pair.nextByte++ & 0xff;
  yield* checkpoint(p, ctx, `write pair ${index}`, write(pair.recordingWriter, data), {
    completes: true,
  });
}

function* execTry(p: Program, ctx: TaskCtx, s: Stmt & { kind: "try" }): Operation<void> {
  try {
    yield* exec(p, ctx, s.body);
  } catch (error) {
    const caught = s.catches === "all" ||
      (s.catches === "timeout" && error instanceof TimeoutError) ||
      (s.catches === "cancelled" && error instanceof Cancelled);
    if (!caught) throw error;
    p.log(`${ctx.name} caught ${describeError(error)}`);
  } finally {
    if (s.cleanup !== null) {
      yield* exec(p, ctx, s.cleanup);
      // deno-lint-ignore no-unsafe-finally -- a cleanup that throws is one of the cases
      if (s.cleanupThrows) throw p.newError(ctx);
    }
  }
}

function* execLimit(p: Program, ctx: TaskCtx, s: Stmt & { kind: "limit" }): Operation<void> {
  const block = p.newBlock(ctx, s.idle, s.ms);
  ctx.blocks.push(block);
  const name = `${s.idle ? "idleTimeout" : "timeout"}(${s.ms})`;
  p.log(`${ctx.name} enters ${name}`);
  try {
    yield* (s.idle ? idleTimeout : p.ops.timeout)(
      s.ms,
      function* () {
        yield* exec(p, ctx, s.body);
        block.operationReturned = true;
      }(),
    );
    p.check(
      !block.delivered,
      () => `${ctx.name}'s ${name} returned although its TimeoutError was thrown inside it`,
    );
    // Its code blocked after its deadline: the checkpoint threw, this block's error or an
    // outer one's (the outermost that ran out). Only in the second case may it return, and
    // then the outer block fails in its turn.
    p.check(
      !block.blockedAfterDeadline || ctx.cancelMarked ||
        ctx.blocks.slice(0, -1).some((outer) => outer.delivered),
      () => `${ctx.name}'s ${name} returned although its code blocked after its deadline`,
    );
  } catch (error) {
    if (block.blockedAfterDeadline) p.count("outerNotLost");
    if (!(error instanceof TimeoutError)) throw error;
    let owner = p.owners.get(error);
    if (owner === undefined) {
      // Made on the way out: the block's own error, replacing a normal return because its
      // error was caught inside it. A cancelled task gets Cancelled instead.
      p.check(
        error.ms === s.ms && block.delivered && block.operationReturned && !ctx.cancelMarked,
        () => `${ctx.name}'s ${name} threw a new ${describeError(error)}`,
      );
      p.owners.set(error, owner = block);
      p.count("caughtInsideStillFails");
    }
    if (owner === block) {
      p.count("errorBelongsToBlock");
      if (s.catches !== "none") return;
      block.escaped = true;
    } else if (owner.ctx === ctx && ctx.blocks.includes(owner)) {
      p.count("errorBelongsToBlock");
      p.count("outerThroughInner");
    } else if (owner.ctx === ctx) {
      // An inner block's error that its caller let through, on its way up like any error.
      p.check(
        owner.escaped,
        () => `${ctx.name}'s ${name} threw ${describeError(error)} of an inner block`,
      );
    }
    if (s.catches === "any") {
      return p.log(`${ctx.name}'s ${name} swallowed ${describeError(error)}`);
    }
    throw error;
  } finally {
    const top = ctx.blocks.pop();
    p.check(top === block, () => `${ctx.name}'s blocks were left out of order`);
    p.log(`${ctx.name} leaves ${name}`);
  }
}

interface CheckpointOptions {
  readonly sleepMs?: number; // a sleep's duration, to check
  readonly joined?: TaskCtx; // a join's task, whose failure may come through
  readonly completes?: boolean; // the kernel counts it as a completed wait (idle limits)
}

// Every wait of every task comes through here: the rules about checkpoints are checked as the
// program runs.
function* checkpoint<T>(
  p: Program,
  ctx: TaskCtx,
  what: string,
  op: Operation<T>,
  { sleepMs, joined, completes = false }: CheckpointOptions = {},
): Operation<T> {
  const start = p.now();
  const passed = ctx.blocks.filter((block) => deadlinePassed(block, start));
  for (const block of passed) block.blockedAfterDeadline = true;
  const markedBefore = ctx.cancelMarked;
  const owesCancel = markedBefore && ctx.cancelsDelivered === 0;
  let value: T;
  try {
    value = yield* op;
  } catch (error) {
    p.resumes++;
    p.log(`${ctx.name} ${what} threw ${describeError(error)}`);
    p.checkChildrenFirst();
    noteThrown(p, ctx, what, error, joined, markedBefore);
    if (sleepMs !== undefined && error instanceof TimeoutError) {
      // A sleep due before the deadline completes first, as on time, however late the ring.
      const owner = p.owners.get(error);
      const due = start + Math.max(0, sleepMs);
      p.check(
        owner === undefined || owner.idle || owner.ctx !== ctx || deadlineOf(owner) <= due,
        () =>
          `${ctx.name}'s ${what}, due at ${due}, threw the TimeoutError of a deadline at ` +
          deadlineOf(owner!),
      );
      p.count("completedInTime");
    }
    const cancelled = cancelledFor(ctx, error);
    if (owesCancel) {
      p.check(cancelled === "plain", () => `${ctx.name}'s ${what} owed Cancelled`);
    } else if (passed.length > 0) {
      p.count("levelTriggered");
      const owner = error instanceof TimeoutError ? p.owners.get(error) : undefined;
      p.check(
        ctx.cancelMarked
          ? cancelled !== null
          : owner !== undefined && ctx.blocks.indexOf(owner) <= ctx.blocks.indexOf(passed[0]),
        () =>
          `${ctx.name}'s ${what} after the deadline of ${deadlineOf(passed[0])} threw ` +
          describeError(error),
      );
    }
    throw error;
  }
  p.resumes++;
  p.log(`${ctx.name} ${what} returned`);
  p.checkChildrenFirst();
  p.check(
    passed.length === 0,
    () => `${ctx.name}'s ${what}, reached after the deadline ${deadlineOf(passed[0])}, returned`,
  );
  p.check(!owesCancel, () => `${ctx.name} was cancelled, but its ${what} returned`);
  const now = p.now();
  if (sleepMs !== undefined) {
    const due = start + Math.max(0, sleepMs);
    const slack = isLate(p.clock) ? MAX_LATE_MS : 0;
    p.check(
      due <= now && now <= due + slack,
      () => `${ctx.name}'s ${what} from ${start} ended at ${now}`,
    );
    p.count("sleepFullDuration");
  }
  if (completes) {
    for (const block of ctx.blocks) block.lastWait = now;
  }
  return value;
}

function isLate(clock: Clock): boolean {
  return clock instanceof SteppedClock ? clock.maxLate > 0 : !(clock instanceof VirtualClock);
}

function noteThrown(
  p: Program,
  ctx: TaskCtx,
  what: string,
  error: unknown,
  joined: TaskCtx | undefined,
  markedBefore: boolean,
): void {
  const now = p.now();
  const cancelled = cancelledFor(ctx, error);
  if (cancelled === "plain") {
    p.check(ctx.cancelMarked, () => `${ctx.name} got Cancelled, but nobody cancelled it`);
    ctx.cancelsDelivered++;
    p.check(ctx.cancelsDelivered === 1, () => `${ctx.name} got Cancelled twice`);
    p.count("cancelledOnce");
    if (ctx.markedAtStart) p.count("cancelledBeforeStart");
    return;
  }
  if (cancelled === "cleanup") {
    p.check(
      ctx.cancelMarked && ctx.cancelsDelivered > 0,
      () => `${ctx.name} got a cleanup Cancelled before its first Cancelled`,
    );
    p.count("noTimeoutAfterCancel");
    return;
  }
  if (error instanceof Cancelled) {
    p.check(joined !== undefined, () => `${ctx.name}'s ${what} threw another task's Cancelled`);
    return;
  }
  if (!(error instanceof TimeoutError) || p.owners.has(error)) return;
  // First seen here: thrown into this task by one of its limits, or a join's task-limit error.
  const deadline = error.deadline;
  const block = ctx.blocks.find((b) =>
    b.ms === error.ms && (b.idle || deadline?.at === deadlineOf(b))
  );
  if (block === undefined) {
    const limit = joined?.spec.idleLimit === error.ms ? joined.blocks[0] : undefined;
    p.check(
      limit !== undefined,
      () => `${ctx.name}'s ${what} threw ${describeError(error)} of no block in force`,
    );
    if (limit !== undefined) p.owners.set(error, limit);
    return;
  }
  p.owners.set(error, block);
  // A limit that ran out before the cancel, while the task waited, may have been thrown into
  // it already; after the cancel, its limits throw Cancelled.
  const before = !markedBefore && (block.idle || deadlineOf(block) <= ctx.markedAt);
  p.check(
    !ctx.cancelMarked || before,
    () =>
      `${ctx.name} was cancelled at ${ctx.markedAt}, but its ${what} threw ` +
      describeError(error),
  );
  // The kernel delivers the outermost limit that ran out. Limits run out in the order they
  // are due, as on time, even when one late ring handles several: an inner limit due first is
  // thrown into the waiting task before an outer one due later has run out.
  const depth = ctx.blocks.indexOf(block);
  const outer = ctx.blocks.slice(0, depth).find((b) =>
    deadlinePassed(b, now) && deadlineOf(b) <= (deadline?.at ?? now)
  );
  p.check(
    outer === undefined,
    () =>
      `${ctx.name}'s ${what} threw the ${block.ms} ms limit's error although the outer ` +
      `${outer!.ms} ms one had passed`,
  );
  if (block.idle) {
    p.check(
      now >= block.lastWait + block.ms,
      () =>
        `${ctx.name}'s ${block.ms} ms idle limit ran out at ${now}, its last wait ` +
        `completed at ${block.lastWait}`,
    );
    p.count(block.taskLimit ? "taskIdleNotEarly" : "idleNotEarly");
  } else {
    // First thrown when its limit runs out: a ring handles every entry due by then.
    const due = deadlineOf(block);
    const slack = isLate(p.clock) ? MAX_LATE_MS : 0;
    p.check(
      due <= now && (block.delivered || now <= due + slack),
      () => `${ctx.name}'s ${block.ms} ms limit from ${block.start} ran out at ${now}`,
    );
    p.count("deadlineNotEarly");
  }
  block.delivered = true;
}

function describeError(error: unknown): string {
  if (error instanceof TimeoutError) {
    return `TimeoutError(${error.ms} ms, at ${error.deadline?.at})`;
  }
  if (error instanceof Error) return `${error.name}("${error.message}")`;
  return String(error);
}

function* drainer(p: Program): Operation<void> {
  yield* wait(p.rootSettled.promise);
  for (const pair of p.pairs) {
    const buffer = new Uint8Array(5);
    let n: number | null;
    while ((n = yield* read(pair.reader, buffer)) !== null) {
      pair.received.push(...buffer.subarray(0, n));
    }
    pair.reader.close();
  }
}

// --- clocks and the driver -----------------------------------------------------------------

interface SteppedTimer {
  readonly at: number;
  readonly callback: () => void;
}

// A virtual clock that fires its next timer only when the driver says so; each timer fires
// `late()` ms after it is due.
class SteppedClock implements Clock {
  #now = 0;
  #timers: SteppedTimer[] = [];

  constructor(readonly maxLate: number, readonly late: () => number) {}

  now(): number {
    return this.#now;
  }

  get pending(): number {
    return this.#timers.length;
  }

  setTimer(callback: () => void, delay: number): unknown {
    const timer = { at: this.#now + Math.max(0, delay) + this.late(), callback };
    let i = this.#timers.length;
    while (i > 0 && this.#timers[i - 1].at > timer.at) i--;
    this.#timers.splice(i, 0, timer);
    return timer;
  }

  clearTimer(handle: unknown): void {
    const i = this.#timers.indexOf(handle as SteppedTimer);
    if (i >= 0) this.#timers.splice(i, 1);
  }

  fireNext(): void {
    const timer = this.#timers.shift()!;
    this.#now = Math.max(this.#now, timer.at);
    timer.callback();
  }
}

function macrotask(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

// Runs the scheduler, firing the next timer whenever every task waits (nothing is ready after
// a macrotask, when everything that settles through promises alone has settled).
async function drive(scheduler: Scheduler, clock: SteppedClock): Promise<string | null> {
  let ended = false;
  scheduler.run().then(() => ended = true);
  for (let turns = 0;; turns++) {
    await macrotask();
    if (ended) return null;
    if (scheduler.ready.length > 0) continue;
    if (clock.pending === 0) return "every task waits, and no timer is set";
    if (turns > 20_000 || clock.now() > 100_000) return "the program runs on and on";
    clock.fireNext();
  }
}

async function runOnVirtualClock(
  scheduler: Scheduler,
  clock: VirtualClock,
): Promise<string | null> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const stalled = new Promise<string>((resolve) => {
    timer = setTimeout(() => resolve("every task waits, and no timer is set"), 5_000);
  });
  try {
    return await Promise.race([scheduler.run().then(() => null), stalled]);
  } finally {
    clearTimeout(timer);
    if (clock.pendingTimers > 0) clock.autojump(null);
  }
}

interface Outcome {
  readonly program: Program;
  readonly problem: string | null;
}

async function runProgram(
  seed: number,
  mode: Mode,
  { tracing = false, ops = KERNEL_OPS }: { tracing?: boolean; ops?: Ops } = {},
): Promise<Outcome> {
  const spec = new ProgramMaker(seed).program();
  const lateness = new Random(mix(seed ^ 0x5bd1e995));
  const late = () =>
    mode === "late" || mode === "virtual-late" ? lateness.between(1, MAX_LATE_MS) : 0;
  let clock: Clock;
  let stepped: SteppedClock | null = null;
  let virtual: VirtualClock | null = null;
  let scheduler: Scheduler;
  const onError = (error: unknown, task: Task<unknown>) => p.reports.push({ error, task });
  if (mode === "exact" || mode === "late") {
    clock = stepped = new SteppedClock(mode === "late" ? MAX_LATE_MS : 0, late);
    scheduler = new Scheduler({ clock, onError });
  } else if (mode === "virtual") {
    ({ scheduler, clock: virtual } = createTestScheduler({ autojump: true, onError }));
    clock = virtual;
  } else {
    virtual = new VirtualClock();
    const inner = virtual;
    clock = {
      now: () => inner.now(),
      setTimer: (callback, delay) => inner.setTimer(callback, delay + late()),
      clearTimer: (handle) => inner.clearTimer(handle),
    };
    scheduler = new Scheduler({ clock, onError });
    virtual.autojump(scheduler);
  }
  const p = new Program(spec, clock, ops, tracing);
  const root = p.newCtx(spec.root, null);
  root.task = scheduler.spawn(taskBody(p, root), {
    name: "root",
    onSettled: (_task, error) => {
      root.settledCalls++;
      root.settledError = error;
      p.checkChildrenFirst();
      p.rootSettled.resolve();
    },
  });
  const drain = scheduler.spawn(drainer(p), { name: "drainer" });
  let problem: string | null;
  try {
    problem = stepped !== null
      ? await drive(scheduler, stepped)
      : await runOnVirtualClock(scheduler, virtual!);
  } catch (error) {
    problem = `the run failed: ${describeError(error)}`;
  }
  if (problem !== null) {
    p.check(false, () => `${problem}; tasks: ${JSON.stringify(describeTasks(scheduler))}`);
    for (const pair of p.pairs) {
      if (!pair.writer.closed) pair.writer.close();
      if (!pair.reader.closed) pair.reader.close();
    }
    return { program: p, problem };
  }
  checkEnd(p, scheduler, drain, stepped?.pending ?? virtual!.pendingTimers);
  return { program: p, problem: p.violations[0] ?? null };
}

function describeTasks(scheduler: Scheduler): string[] {
  return scheduler.tasks().map((t) => `${t.name} ${t.state}`);
}

function checkEnd(p: Program, scheduler: Scheduler, drain: Task<unknown>, timers: number): void {
  p.check(scheduler.tasks().length === 0, () => `tasks() is not empty at the end`);
  p.check(timers === 0, () => `${timers} timers are still set at the end`);
  p.check(drain.state === "done", () => `the drainer ended ${drain.state}`);
  p.count("everyTaskEnds");

  const reports = new Map<Task<unknown>, unknown[]>();
  for (const { error, task } of p.reports) {
    if (!reports.has(task)) reports.set(task, []);
    reports.get(task)!.push(error);
  }
  for (const ctx of p.ctxs) {
    const task = ctx.task!;
    const state = task.state;
    p.check(ctx.started && ctx.bodyDone, () => `${ctx.name} never started or never ended`);
    p.check(settled(state), () => `${ctx.name} is still ${state} at the end`);
    if (ctx.children.length > 0) p.count("childrenFirst");
    if (state === "cancelled") {
      p.check(ctx.cancelMarked, () => `${ctx.name} ended cancelled, but nobody cancelled it`);
    }
    if (state === "done") {
      p.check(ctx.thrown === NONE, () => `${ctx.name} threw, but ended done`);
    }
    if (ctx.thrown === NONE && state !== "done") {
      // Only a spawn idle limit that ran out turns a return into a failure (into Cancelled,
      // when the task was cancelled).
      p.check(
        ctx.spec.idleLimit !== null &&
          (ctx.blocks[0]?.delivered === true || ctx.cancelMarked && state === "cancelled"),
        () => `${ctx.name} returned, but ended ${state}`,
      );
    }
    if (ctx.spec.onSettled || ctx === p.ctxs[0]) {
      p.check(
        ctx.settledCalls === 1,
        () => `${ctx.name}'s onSettled ran ${ctx.settledCalls} times`,
      );
      p.check(
        ctx.thrown === NONE || ctx.settledError === ctx.thrown,
        () => `${ctx.name}'s onSettled got ${describeError(ctx.settledError)}`,
      );
    }
    const reported = reports.get(task)?.length ?? 0;
    reports.delete(task);
    if (state !== "failed") {
      p.check(reported === 0, () => `${ctx.name} ended ${state}, and was reported`);
      continue;
    }
    if (ctx.spec.onSettled || ctx === p.ctxs[0]) {
      p.check(reported === 0, () => `${ctx.name}'s failure went to onSettled, and was reported`);
      p.count("settledNotReported");
    } else if (ctx.receivedByWaitingJoiner) {
      p.check(reported === 0, () => `${ctx.name}'s failure reached its joiner, and was reported`);
      p.count("joinedNotReported");
    } else if (ctx.receivedByLateJoiner) {
      p.check(reported <= 1, () => `${ctx.name}'s failure was reported ${reported} times`);
    } else {
      p.check(reported === 1, () => `${ctx.name}'s failure was reported ${reported} times`);
      p.count("reportedOnce");
      if (ctx.abandonedJoins > 0) p.count("abandonedJoinReported");
    }
  }
  p.check(reports.size === 0, () => `a task outside the program was reported`);

  for (const [i, pair] of p.pairs.entries()) {
    p.check(
      pair.writer.closed && pair.reader.closed,
      () => `pair ${i} is not closed at both ends`,
    );
    p.check(
      pair.received.length === pair.accepted.length &&
        pair.received.every((byte, j) => byte === pair.accepted[j]),
      () =>
        `pair ${i}: the writer's conn accepted [${pair.accepted}], the readers got ` +
        `[${pair.received}]`,
    );
    if (pair.accepted.length > 0) {
      p.count("bytesExactlyOnce");
      if (pair.abandonedReads > 0) p.count("bytesAfterAbandonedRead");
    }
  }
}

async function fail(seed: number, mode: Mode, problem: string): Promise<never> {
  const { program } = await runProgram(seed, mode, { tracing: true });
  throw new Violation(
    `seed ${seed} on the ${mode} clock: ${problem}\n` +
      `replay: GENIO_FUZZ_SEED=${seed} deno task test tests/semantics_fuzz_test.ts\n` +
      `violations:\n  ${program.violations.slice(0, 10).join("\n  ")}\n` +
      `program:\n${describe(program.spec.root, "  ")}` +
      `trace:\n  ${(program.trace ?? []).slice(-80).join("\n  ")}`,
  );
}

// --- the tests -----------------------------------------------------------------------------

function envNumber(name: string): number | null {
  const text = Deno.env.get(name);
  if (text === undefined || text === "") return null;
  const value = Number(text);
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new RangeError(`Cannot run the fuzz test: ${name} must be a whole number, got "${text}"`);
  }
  return value;
}

const ONE_SEED = envNumber("GENIO_FUZZ_SEED");
const RUNS = ONE_SEED !== null ? 1 : envNumber("GENIO_FUZZ_RUNS") ?? 3_000;
const FIRST_SEED = ONE_SEED ?? envNumber("GENIO_FUZZ_FROM") ?? 1;
// A sample on VirtualClock itself: its autojump waits a real timer per jump.
const VIRTUAL_RUNS = ONE_SEED !== null ? 1 : Math.max(10, Math.ceil(RUNS / 100));
// With GENIO_FUZZ_KEEP_GOING=1, a long run lists every failing seed instead of the first.
const KEEP_GOING = Deno.env.get("GENIO_FUZZ_KEEP_GOING") === "1";
const VERBOSE = ONE_SEED !== null || Deno.env.get("GENIO_FUZZ_RUNS") !== undefined;

async function fuzz(modes: readonly Mode[], runs: number): Promise<Tally> {
  const tally = new Tally();
  const failures: string[] = [];
  for (let seed = FIRST_SEED; seed < FIRST_SEED + runs; seed++) {
    for (const mode of modes) {
      const { program, problem } = await runProgram(seed, mode);
      tally.add(program.counts);
      if (problem === null) continue;
      if (!KEEP_GOING) await fail(seed, mode, problem);
      failures.push(`seed ${seed} (${mode}): ${problem}`);
    }
  }
  if (VERBOSE) console.log(`${tally.programsRun} program runs:\n${tally.summary()}`);
  assert.deepEqual(failures, [], `${failures.length} failing program runs`);
  return tally;
}

Deno.test("randomized programs keep every kernel rule, with timers on time and late", async () => {
  const tally = await fuzz(["exact", "late"], RUNS);
  if (ONE_SEED === null) tally.assertEveryRuleExercised();
});

Deno.test("randomized programs keep every kernel rule on VirtualClock's autojump", async () => {
  const tally = await fuzz(["virtual", "virtual-late"], VIRTUAL_RUNS);
  assert.equal(tally.programsRun, 2 * VIRTUAL_RUNS);
});

// The checks have teeth: each broken operation below breaks a rule, and some program among
// the first few hundred shows it.
const MUTANTS: { name: string; ops: Ops; caught: RegExp }[] = [
  {
    name: "a sleep that ends 1 ms early",
    ops: { ...KERNEL_OPS, sleep: (ms) => sleep(ms - 1) },
    caught: /'s sleep\(\d+\) from \d+ ended at \d+/,
  },
  {
    name: "a timeout() that swallows every TimeoutError, an outer block's too",
    ops: {
      ...KERNEL_OPS,
      *timeout<T>(ms: number, operation: Operation<T>): Operation<T> {
        try {
          return yield* timeout(ms, operation);
        } catch (error) {
          if (error instanceof TimeoutError) return undefined as T;
          throw error;
        }
      },
    },
    caught: /returned although (its TimeoutError was thrown inside it|its code blocked)/,
  },
  {
    name: "a cancel() that only yields",
    ops: {
      ...KERNEL_OPS,
      *cancel() {
        yield;
      },
    },
    caught: /(was cancelled, but its .* returned|cancel L\d+ returned while it is)/,
  },
];

for (const { name, ops, caught } of MUTANTS) {
  Deno.test(`the randomized programs' checks catch ${name}`, async () => {
    for (let seed = 1; seed <= 500; seed++) {
      const { program } = await runProgram(seed, "exact", { ops });
      if (program.violations.some((violation) => caught.test(violation))) return;
    }
    assert.fail(`no program among the first 500 caught ${name}`);
  });
}

// --- kernel bugs the randomized programs found -----------------------------------------------
//
// KERNEL BUG, still open: the 3 ms late cases below fail on the kernel they were written
// against (cf6747c); the on-time ones pass and show what is expected. A ring handles its due
// timers in heap order, and a limit runs out when the ring reaches it. A limit whose place in
// the heap lags its deadline (a cleared limit's timer reused by the task's next block, or an
// idle limit between two checks) is reached early in a late ring, out of the order in which
// the timers came due:
// - before an outer limit that ran out earlier: the task gets the inner block's error, and if
//   its caller catches it, the outer block returns as if in time (the outer deadline is lost);
// - before a sleep that was due before the limit: the sleep, which completed in time, throws
//   TimeoutError (Curio's multischedule rule, issue 13's defect 6, broken the other way).
// On time, each program does what the test expects.

function* catchingOwn(ms: number, operation: Operation<void>): Operation<string> {
  try {
    yield* operation;
    return "finished";
  } catch (error) {
    if (error instanceof TimeoutError && error.ms === ms) return "the inner block gave up";
    throw error;
  }
}

for (const lateMs of [0, 3]) {
  Deno.test(`an outer deadline is not lost to an inner limit that reuses a cleared timer (timers ${lateMs} ms late)`, async () => {
    const { scheduler } = lateScheduler(lateMs);
    const task = scheduler.spawn(timeout(
      3,
      function* () {
        yield* timeout(1, function* () {}()); // cleared in time: its timer is kept, due at 1
        return yield* catchingOwn(4, timeout(4, sleep(10))); // reuses it, due at 4
      }(),
    ));
    const outcome = task.result.then(
      (value) => `returned "${value}"`,
      (error) => `threw ${describeError(error)}`,
    );
    await scheduler.run();
    assert.equal(await outcome, "threw TimeoutError(3 ms, at 3)");
  });

  Deno.test(`an outer deadline is not lost to an inner idle limit between two checks (timers ${lateMs} ms late)`, async () => {
    const { scheduler } = lateScheduler(lateMs);
    const task = scheduler.spawn(timeout(
      5,
      catchingOwn(
        4,
        idleTimeout(
          4,
          function* () {
            yield* sleep(1); // a completed wait: the idle limit checks again a quarter ms later
            yield* sleep(100);
          }(),
        ),
      ),
    ));
    const outcome = task.result.then(
      (value) => `returned "${value}"`,
      (error) => `threw ${describeError(error)}`,
    );
    await scheduler.run();
    assert.equal(await outcome, "threw TimeoutError(5 ms, at 5)");
  });

  Deno.test(`a sleep due before its block's deadline ends normally when the limit reuses a cleared timer (timers ${lateMs} ms late)`, async () => {
    const { scheduler } = lateScheduler(lateMs);
    const task = scheduler.spawn(function* () {
      yield* timeout(1, function* () {}()); // cleared in time: its timer is kept, due at 1
      yield* timeout(4, sleep(3)); // reuses it, due at 4; the sleep is due at 3
      return "slept";
    }());
    const outcome = task.result.then(
      (value) => `returned "${value}"`,
      (error) => `threw ${describeError(error)}`,
    );
    await scheduler.run();
    assert.equal(await outcome, 'returned "slept"');
  });
}

Deno.test("the randomized programs that found these keep every rule", async () => {
  const failures: string[] = [];
  for (const seed of [1426, 1770, 4558, 5549, 9047, 18832, 58612]) {
    const { problem } = await runProgram(seed, "late");
    if (problem !== null) failures.push(`seed ${seed}: ${problem}`);
  }
  assert.deepEqual(failures, []);
});
