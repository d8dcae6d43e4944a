// Who waits on what, one line per task, for people: the test scheduler prints it for a run
// that never finished, and a console can list tasks with it.
import type { TaskInfo } from "./scheduler.ts";
import { formatAddress } from "./_format.ts";

export function describeWaitingOn(value: unknown): string {
  if (value === null || value === undefined) return "-";
  if (typeof value === "number") return `until t=${Math.round(value)} ms`;
  if (typeof value !== "object") return String(value);
  const object = value as Record<string, unknown>;
  if ("remoteAddr" in object) {
    // A Unix socket's peer has no path: the conn is named by the socket it came in on.
    const remote = object.remoteAddr as Partial<Deno.UnixAddr> | undefined;
    const named = remote?.transport === "unix" && !remote.path ? object.localAddr : remote;
    return `conn ${formatAddr(named)}`;
  }
  if ("addr" in object && typeof object.accept === "function") {
    return `listener ${formatAddr(object.addr)}`;
  }
  if (typeof object.id === "number" && typeof object.name === "string" && "state" in object) {
    return `task #${object.id} "${object.name}"`;
  }
  if (value instanceof Set) return `its ${value.size} live children`;
  if (typeof object.then === "function") return "a promise";
  return object.constructor?.name ?? "an object";
}

export function formatTasks(tasks: readonly TaskInfo[]): string {
  return tasks.map((task) => {
    const parent = task.parent === null ? "" : ` (child of #${task.parent})`;
    return `#${task.id} "${task.name}" ${task.state} ${describeWaitingOn(task.waitingOn)}` +
      parent;
  }).join("\n");
}

function formatAddr(addr: unknown): string {
  const { hostname, path } = (addr ?? {}) as Partial<Deno.NetAddr & Deno.UnixAddr>;
  if (path !== undefined) return `unix:${path}`;
  return hostname === undefined ? "(no address)" : formatAddress(addr as Deno.NetAddr);
}
