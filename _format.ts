// How the server and its command line write an address and an error: on one line each.

export function formatAddress(addr: Deno.Addr): string {
  if (addr.transport === "vsock") return `vsock:${addr.cid}:${addr.port}`;
  if (!("hostname" in addr)) return `unix:${addr.path}`;
  return addr.hostname.includes(":")
    ? `[${addr.hostname}]:${addr.port}`
    : `${addr.hostname}:${addr.port}`;
}

export function describe(error: unknown): string {
  const text = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
  return text.split("\n", 1)[0];
}
