// A connection accepted behind a load balancer, as its handler sees it once the PROXY
// protocol header has been read: a whole `Deno.TcpConn` whose addresses are the ones the
// header carries (the client's, and the address the client connected to), and whose first
// reads return the bytes read past the header. After those, every call goes straight to the
// real conn: a read costs one extra call and one null check, nothing per byte.
import { closeQuietly } from "./_close_quietly.ts";
import type { Operation } from "./intents.ts";
import { type ProxyHeaderResult, readProxyHeader } from "./proxy_protocol.ts";

export class ProxiedConn implements Deno.TcpConn {
  readonly localAddr: Deno.NetAddr;
  readonly remoteAddr: Deno.NetAddr;
  #conn: Deno.TcpConn;
  #rest: Uint8Array | null;
  #readable: ReadableStream<Uint8Array<ArrayBuffer>> | null = null;

  constructor(conn: Deno.Conn, header: ProxyHeaderResult) {
    this.#conn = conn as Deno.TcpConn;
    // A header without usable addresses (UNKNOWN, AF_UNSPEC): the spec says to keep the
    // conn's own.
    this.remoteAddr = header.remoteAddr ?? conn.remoteAddr as Deno.NetAddr;
    this.localAddr = header.localAddr ?? conn.localAddr as Deno.NetAddr;
    this.#rest = header.rest.length > 0 ? header.rest : null;
  }

  read(p: Uint8Array): Promise<number | null> {
    return this.#rest === null ? this.#conn.read(p) : Promise.resolve(this.#readRest(p));
  }

  #readRest(p: Uint8Array): number {
    const rest = this.#rest!;
    const n = Math.min(p.length, rest.length);
    p.set(rest.subarray(0, n));
    this.#rest = n === rest.length ? null : rest.subarray(n);
    return n;
  }

  write(p: Uint8Array): Promise<number> {
    return this.#conn.write(p);
  }

  closeWrite(): Promise<void> {
    return this.#conn.closeWrite();
  }

  close(): void {
    this.#conn.close();
  }

  ref(): void {
    this.#conn.ref();
  }

  unref(): void {
    this.#conn.unref();
  }

  setNoDelay(noDelay?: boolean): void {
    this.#conn.setNoDelay?.(noDelay);
  }

  setKeepAlive(keepAlive?: boolean): void {
    this.#conn.setKeepAlive?.(keepAlive);
  }

  get readable(): ReadableStream<Uint8Array<ArrayBuffer>> {
    if (this.#readable !== null) return this.#readable;
    if (this.#rest === null) return this.#readable = this.#conn.readable;
    const rest = this.#rest;
    this.#rest = null;
    const reader = this.#conn.readable.getReader();
    // A byte stream, as the conn's own is, so that BYOB readers work on it too.
    return this.#readable = new ReadableStream({
      type: "bytes",
      start(controller) {
        controller.enqueue(new Uint8Array(rest));
      },
      async pull(controller) {
        const { done, value } = await reader.read();
        if (!done) return controller.enqueue(value);
        controller.close();
        controller.byobRequest?.respond(0);
      },
      cancel: (reason) => reader.cancel(reason),
    });
  }

  get writable(): WritableStream<Uint8Array<ArrayBufferLike>> {
    return this.#conn.writable;
  }

  [Symbol.dispose](): void {
    closeQuietly(this.#conn);
  }
}

/**
 * Reads the PROXY protocol header at the start of `conn` within `ms`, and returns the conn
 * its handler is to see, or null for a v2 LOCAL header (the balancer's own health check).
 * Throws what `readProxyHeader` throws; never closes `conn`.
 */
export function* acceptProxied(conn: Deno.Conn, ms: number): Operation<ProxiedConn | null> {
  const header = yield* readProxyHeader(conn, { timeout: ms });
  return header.command === "LOCAL" ? null : new ProxiedConn(conn, header);
}
