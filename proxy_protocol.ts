/**
 * The PROXY protocol, receiving side: the header a load balancer such as HAProxy writes at
 * the start of each connection it forwards (`send-proxy` for v1, text; `send-proxy-v2` for
 * v2, binary), so that the server learns the client's own address instead of the
 * balancer's. Specified in HAProxy's `doc/proxy-protocol.txt`.
 *
 * - {@linkcode parseProxyHeader}: a pure parser. Given the bytes received so far, it says
 *   "need more", "parsed" (with the header's length) or "invalid", and never looks past
 *   the header's end.
 * - {@linkcode readProxyHeader}: an operation that reads the header from a conn with a
 *   time limit, then hands over the addresses and any bytes it read past the header.
 *
 * Only accept the PROXY protocol from a trusted balancer: whoever can connect directly can
 * claim any address in it.
 *
 * @example A handler behind HAProxy greets the client by its own address
 * ```ts
 * import { type Operation, Scheduler, write } from "@genio/genio";
 * import { readProxyHeader } from "@genio/genio/proxy-protocol";
 * import { memoryConnPair } from "@genio/genio/testing";
 * import assert from "node:assert/strict";
 *
 * function* greet(conn: Deno.Conn): Operation<void> {
 *   try {
 *     const { remoteAddr } = yield* readProxyHeader(conn);
 *     const client = remoteAddr ?? (conn.remoteAddr as Deno.NetAddr);
 *     yield* write(conn, new TextEncoder().encode(`Hello ${client.hostname}\n`));
 *   } finally {
 *     conn.close();
 *   }
 * }
 *
 * const [balancer, server] = memoryConnPair();
 * await balancer.write(new TextEncoder().encode("PROXY TCP4 203.0.113.7 192.0.2.1 51000 25000\r\n"));
 * const scheduler = new Scheduler();
 * scheduler.spawn(greet(server));
 * await scheduler.run();
 * const reply = new Uint8Array(64);
 * const n = await balancer.read(reply);
 * assert.equal(new TextDecoder().decode(reply.subarray(0, n!)), "Hello 203.0.113.7\n");
 * balancer.close();
 * ```
 *
 * @module
 */
import { type Operation, read, timeout } from "./intents.ts";

/**
 * A PROXY protocol header, as {@linkcode parseProxyHeader} decodes it.
 *
 * The addresses are those of the client's own connection, seen from the server's side:
 * `remoteAddr` is the client, `localAddr` the address the client connected to (usually the
 * balancer's front end). Both are `null` when the header carries none the server can use: a
 * `LOCAL` command, a v1 `UNKNOWN` line, a v2 header for an unspecified family or protocol,
 * or a Unix socket. The spec then asks the server to use the conn's own addresses.
 *
 * @example The header HAProxy's `send-proxy` writes for an IPv4 client
 * ```ts
 * import { parseProxyHeader } from "@genio/genio/proxy-protocol";
 * import assert from "node:assert/strict";
 *
 * const line = "PROXY TCP4 203.0.113.7 192.0.2.1 51000 25000\r\n";
 * const parsed = parseProxyHeader(new TextEncoder().encode(line));
 * assert.equal(parsed.status, "parsed");
 * assert.deepEqual(parsed.status === "parsed" && parsed.header, {
 *   version: 1,
 *   command: "PROXY",
 *   remoteAddr: { transport: "tcp", hostname: "203.0.113.7", port: 51000 },
 *   localAddr: { transport: "tcp", hostname: "192.0.2.1", port: 25000 },
 *   length: line.length,
 * });
 * ```
 */
export interface ProxyHeader {
  /** The protocol version: 1 for the text line, 2 for the binary header. */
  readonly version: 1 | 2;
  /**
   * `"PROXY"`: the balancer relays a client's connection. `"LOCAL"` (v2 only): the
   * balancer opened the connection itself, typically for a health check.
   */
  readonly command: "PROXY" | "LOCAL";
  /** The client's address and port, or `null` when the header has none to use. */
  readonly remoteAddr: Deno.NetAddr | null;
  /** The address and port the client connected to, or `null` when the header has none. */
  readonly localAddr: Deno.NetAddr | null;
  /** The header's size in bytes, CRLF or TLVs included: where the connection's data begins. */
  readonly length: number;
}

/**
 * What {@linkcode parseProxyHeader} makes of the bytes received so far:
 *
 * - `"incomplete"`: a valid start of a header; read more. `needed` is a lower bound on
 *   the header's total length, exact for v2 once its first 16 bytes are in.
 * - `"parsed"`: a whole, valid header, whose `length` says where the data after it begins.
 * - `"invalid"`: not a PROXY protocol header, or a broken one; close the connection.
 *   `reason` is `"oversized"` for a v1 line with no CRLF in its first 107 bytes, and
 *   `"invalid"` otherwise; `detail` says what is wrong, for a log line.
 *
 * @example Acting on each outcome
 * ```ts
 * import { parseProxyHeader, type ProxyHeaderParse } from "@genio/genio/proxy-protocol";
 * import assert from "node:assert/strict";
 *
 * function describe(parsed: ProxyHeaderParse): string {
 *   switch (parsed.status) {
 *     case "incomplete":
 *       return `at least ${parsed.needed} bytes`;
 *     case "parsed":
 *       return `client ${parsed.header.remoteAddr?.hostname ?? "unknown"}`;
 *     case "invalid":
 *       return `${parsed.reason}: ${parsed.detail}`;
 *   }
 * }
 * const bytes = new TextEncoder().encode("PROXY TCP6 2001:db8::7 2001:db8::1 51000 25000\r\n");
 * assert.equal(describe(parseProxyHeader(bytes.subarray(0, 20))), "at least 21 bytes");
 * assert.equal(describe(parseProxyHeader(bytes)), "client 2001:db8::7");
 * ```
 */
export type ProxyHeaderParse =
  | { readonly status: "incomplete"; readonly needed: number }
  | { readonly status: "parsed"; readonly header: ProxyHeader }
  | {
    readonly status: "invalid";
    readonly reason: "invalid" | "oversized";
    readonly detail: string;
  };

/**
 * Why {@linkcode readProxyHeader} refused a connection: `"invalid"` (not a PROXY protocol
 * header, or a broken one), `"oversized"` (a v1 line with no CRLF in its first 107 bytes)
 * or `"truncated"` (the connection ended before the header did).
 *
 * @example
 * ```ts
 * import type { ProxyHeaderErrorReason } from "@genio/genio/proxy-protocol";
 *
 * const quiet: ProxyHeaderErrorReason[] = ["truncated"];
 * ```
 */
export type ProxyHeaderErrorReason = "invalid" | "oversized" | "truncated";

/**
 * Thrown by {@linkcode readProxyHeader} when a connection does not begin with a valid
 * PROXY protocol header. The connection cannot be trusted and should be closed.
 *
 * @example Telling a cut connection from a bad header
 * ```ts
 * import { Scheduler } from "@genio/genio";
 * import { ProxyHeaderError, readProxyHeader } from "@genio/genio/proxy-protocol";
 * import { memoryConnPair } from "@genio/genio/testing";
 * import assert from "node:assert/strict";
 *
 * const [client, server] = memoryConnPair();
 * await client.write(new TextEncoder().encode("PROXY TCP4 203.0.113.7"));
 * client.close();
 * const scheduler = new Scheduler();
 * const task = scheduler.spawn(readProxyHeader(server));
 * const failed = assert.rejects(task.result, (error) => {
 *   assert.ok(error instanceof ProxyHeaderError);
 *   assert.equal(error.reason, "truncated");
 *   assert.equal(error.received, 22);
 *   return true;
 * });
 * await scheduler.run();
 * await failed;
 * server.close();
 * ```
 */
export class ProxyHeaderError extends Error {
  /** What was wrong with the header. */
  readonly reason: ProxyHeaderErrorReason;
  /** How many bytes had been received when the header was refused. */
  readonly received: number;

  /**
   * Creates the error for a refused header.
   *
   * @param reason What was wrong, as a code.
   * @param detail What was wrong, in words, for the message.
   * @param received How many bytes had been received.
   */
  constructor(reason: ProxyHeaderErrorReason, detail: string, received: number) {
    super(`Cannot read the PROXY protocol header: ${detail}`);
    this.name = "ProxyHeaderError";
    this.reason = reason;
    this.received = received;
  }
}

/** Options for {@linkcode readProxyHeader}. */
export interface ReadProxyHeaderOptions {
  /**
   * How long the whole header may take to arrive, in milliseconds. The spec asks for a
   * few seconds: at least 3, to cover a TCP retransmission.
   *
   * @default {5000}
   */
  timeout?: number;
}

/**
 * What {@linkcode readProxyHeader} returns: the header, and the bytes that came after it in
 * the same read.
 *
 * @example Handing the rest to the handler
 * ```ts
 * import type { ProxyHeaderResult } from "@genio/genio/proxy-protocol";
 *
 * function firstData(result: ProxyHeaderResult): string {
 *   return new TextDecoder().decode(result.rest);
 * }
 * ```
 */
export interface ProxyHeaderResult extends ProxyHeader {
  /**
   * Bytes read past the header: the first of the connection's data, to be handled before
   * anything read from the conn afterwards. Always empty for v2, whose header announces
   * its length; a v1 line is read in chunks of up to 107 bytes, so data sent with it may
   * be here.
   */
  readonly rest: Uint8Array;
}

const V1_MAX_LENGTH: number = 107;
const V1_MIN_LENGTH: number = "PROXY UNKNOWN\r\n".length;
const V1_PREFIX: Uint8Array = new TextEncoder().encode("PROXY ");
const V2_SIGNATURE: Uint8Array = new TextEncoder().encode("\r\n\r\n\0\r\nQUIT\n");
const V2_FIXED_LENGTH: number = 16;
const CR = 0x0d;
const LF = 0x0a;
const LOCAL = 0x0;
const PROXY = 0x1;
const AF_UNSPEC = 0x0;
const AF_INET = 0x1;
const AF_UNIX = 0x3;
const UNSPEC = 0x0;
const STREAM = 0x1;
const DGRAM = 0x2;
// The address block's size for each v2 family, ports included: UNSPEC, INET, INET6, UNIX.
const ADDRESS_SIZES: readonly number[] = [0, 12, 36, 216];
const DEFAULT_TIMEOUT_MS = 5_000;
const NOT_A_HEADER = `it begins with neither "PROXY " nor the v2 signature`;
const decoder = new TextDecoder();

/**
 * Parses a PROXY protocol header, v1 or v2, from the start of `bytes`: everything
 * received on the connection so far. Call it again with more bytes while it answers
 * `"incomplete"`. It looks at no byte past the header's end, so `bytes` may hold data
 * that follows, and it answers `"invalid"` as soon as the bytes cannot start a header.
 *
 * v1 addresses must be canonical, as the spec requires: IPv4 as four decimal numbers
 * 0-255 without leading zeros, IPv6 as colon-separated hex groups with at most one `::`;
 * ports are decimal 0-65535 without leading zeros. IPv6 addresses are returned in their
 * RFC 5952 form (`2001:db8::1`), whichever version carried them.
 *
 * @param bytes The connection's first bytes.
 * @returns Whether more bytes are needed, the header, or why it is invalid.
 *
 * @example Parsing a v2 header as HAProxy's `send-proxy-v2` writes it
 * ```ts
 * import { parseProxyHeader } from "@genio/genio/proxy-protocol";
 * import assert from "node:assert/strict";
 *
 * const header = new Uint8Array([
 *   0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, // signature
 *   0x21, // version 2, PROXY
 *   0x11, // TCP over IPv4
 *   0x00, 0x0c, // 12 bytes of addresses follow
 *   203, 0, 113, 7, // source address
 *   192, 0, 2, 1, // destination address
 *   0xc7, 0x38, // source port 51000
 *   0x61, 0xa8, // destination port 25000
 * ]);
 * const data = new TextEncoder().encode("hello");
 * const parsed = parseProxyHeader(new Uint8Array([...header, ...data]));
 * assert.ok(parsed.status === "parsed");
 * assert.deepEqual(parsed.header.remoteAddr, { transport: "tcp", hostname: "203.0.113.7", port: 51000 });
 * assert.equal(parsed.header.length, 28);
 * assert.equal(parseProxyHeader(header.subarray(0, 20)).status, "incomplete");
 * assert.equal(parseProxyHeader(data).status, "invalid");
 * ```
 */
export function parseProxyHeader(bytes: Uint8Array): ProxyHeaderParse {
  if (bytes.length === 0) return incomplete(V1_MIN_LENGTH);
  if (bytes[0] === V1_PREFIX[0]) return parseV1(bytes);
  if (bytes[0] === V2_SIGNATURE[0]) return parseV2(bytes);
  return invalid(NOT_A_HEADER);
}

/**
 * Reads the PROXY protocol header at the start of `conn` and returns it, with any bytes
 * read past it in `rest`. Call it first thing on a connection accepted behind the
 * balancer, before the handler reads anything.
 *
 * It reads only as much as the header can need: exactly the header for v2; for v1, at
 * most 107 bytes in all, so some data sent with the line may come back in `rest`. It does
 * not close `conn`, whatever happens: the caller does.
 *
 * @param conn The freshly accepted conn.
 * @param options The time limit.
 * @returns The header and the bytes read past it.
 * @throws {ProxyHeaderError} If the header is invalid, oversized, or cut short by the end of
 * the connection.
 * @throws {TimeoutError} If the whole header has not arrived within `options.timeout`.
 * @throws {RangeError} If `options.timeout` is negative or NaN.
 * @throws Whatever reading `conn` throws (a connection reset, say).
 *
 * @example An echo handler behind the balancer, data sent with the header included
 * ```ts
 * import { type Operation, read, Scheduler, write } from "@genio/genio";
 * import { readProxyHeader } from "@genio/genio/proxy-protocol";
 * import { memoryConnPair } from "@genio/genio/testing";
 * import assert from "node:assert/strict";
 *
 * function* echo(conn: Deno.Conn): Operation<string> {
 *   try {
 *     const { remoteAddr, rest } = yield* readProxyHeader(conn, { timeout: 3_000 });
 *     if (rest.length > 0) yield* write(conn, rest);
 *     const buffer = new Uint8Array(1024);
 *     let n: number | null;
 *     while ((n = yield* read(conn, buffer)) !== null) {
 *       yield* write(conn, buffer.subarray(0, n));
 *     }
 *     return `${remoteAddr?.hostname}:${remoteAddr?.port} left`;
 *   } finally {
 *     conn.close();
 *   }
 * }
 *
 * const [balancer, server] = memoryConnPair();
 * const scheduler = new Scheduler();
 * const handler = scheduler.spawn(echo(server));
 * const done = scheduler.run();
 * await balancer.write(new TextEncoder().encode("PROXY TCP4 203.0.113.7 192.0.2.1 51000 25000\r\nping"));
 * const reply = new Uint8Array(4);
 * assert.equal(await balancer.read(reply), 4);
 * assert.equal(new TextDecoder().decode(reply), "ping");
 * balancer.closeWrite();
 * await done;
 * assert.equal(await handler.result, "203.0.113.7:51000 left");
 * balancer.close();
 * ```
 */
export function* readProxyHeader(
  conn: Deno.Conn,
  options: ReadProxyHeaderOptions = {},
): Operation<ProxyHeaderResult> {
  return yield* timeout(options.timeout ?? DEFAULT_TIMEOUT_MS, readHeader(conn));
}

function* readHeader(conn: Deno.Conn): Operation<ProxyHeaderResult> {
  let buffer = new Uint8Array(V1_MAX_LENGTH);
  let received = 0;
  for (;;) {
    const parsed = parseProxyHeader(buffer.subarray(0, received));
    if (parsed.status === "parsed") {
      const { header } = parsed;
      return { ...header, rest: buffer.slice(header.length, received) };
    }
    if (parsed.status === "invalid") {
      throw new ProxyHeaderError(parsed.reason, parsed.detail, received);
    }
    // A v2 header announces its length, so it is read exactly and the data after it stays
    // in the conn. A v1 line ends at a CRLF nobody can see coming: reading it byte by byte
    // would cost a read per byte, so it is read in chunks up to its longest, and the
    // caller gets back whatever follows it.
    const isV1 = received > 0 && buffer[0] === V1_PREFIX[0];
    const end = isV1 ? V1_MAX_LENGTH : Math.max(parsed.needed, V2_FIXED_LENGTH);
    if (end > buffer.length) {
      const larger = new Uint8Array(end);
      larger.set(buffer.subarray(0, received));
      buffer = larger;
    }
    const n = yield* read(conn, buffer.subarray(received, end));
    if (n === null) {
      const detail = `the connection ended after ${received} bytes, before the header did`;
      throw new ProxyHeaderError("truncated", detail, received);
    }
    received += n;
  }
}

// --- v1: one line of text -------------------------------------------------------------

function parseV1(bytes: Uint8Array): ProxyHeaderParse {
  const prefixLength = Math.min(bytes.length, V1_PREFIX.length);
  for (let i = 0; i < prefixLength; i++) {
    if (bytes[i] !== V1_PREFIX[i]) {
      return invalid(NOT_A_HEADER);
    }
  }
  const end = Math.min(bytes.length, V1_MAX_LENGTH);
  for (let i = 0; i < end; i++) {
    const byte = bytes[i];
    if (byte === CR) {
      if (i + 2 > V1_MAX_LENGTH) break;
      if (i + 1 === bytes.length) return incomplete(i + 2);
      if (bytes[i + 1] !== LF) return invalid(`the v1 line has a CR without LF at byte ${i}`);
      return parseV1Line(decoder.decode(bytes.subarray(0, i)), i + 2);
    }
    if (byte < 0x20 || byte > 0x7e) {
      return invalid(
        `the v1 line has the byte "0x${hex(byte, 2)}" at byte ${i}, not printable ASCII`,
      );
    }
  }
  if (bytes.length >= V1_MAX_LENGTH) {
    return {
      status: "invalid",
      reason: "oversized",
      detail: "the v1 line has no CRLF in its first 107 bytes",
    };
  }
  return incomplete(Math.max(V1_MIN_LENGTH, bytes.length + 1));
}

function parseV1Line(line: string, length: number): ProxyHeaderParse {
  const fields = line.split(" ");
  const protocol = fields[1];
  // The spec says to ignore whatever an UNKNOWN line carries before its CRLF.
  if (protocol === "UNKNOWN") return parsed(1, "PROXY", null, null, length);
  if (protocol !== "TCP4" && protocol !== "TCP6") {
    return invalid(`the v1 line has the protocol "${protocol}", not "TCP4", "TCP6" or "UNKNOWN"`);
  }
  if (fields.length !== 6) {
    return invalid(`the v1 line has ${fields.length} fields, not 6 separated by single spaces`);
  }
  const [, , source, destination, sourcePort, destinationPort] = fields;
  const parseAddress = protocol === "TCP4" ? parseIPv4 : parseIPv6Text;
  const family = protocol === "TCP4" ? "IPv4" : "IPv6";
  const remote = parseAddress(source);
  if (remote === null) return invalid(`the source address "${source}" is not ${family}`);
  const local = parseAddress(destination);
  if (local === null) return invalid(`the destination address "${destination}" is not ${family}`);
  const remotePort = parsePort(sourcePort);
  if (remotePort === null) return invalid(`the source port "${sourcePort}" is not 0-65535`);
  const localPort = parsePort(destinationPort);
  if (localPort === null) {
    return invalid(`the destination port "${destinationPort}" is not 0-65535`);
  }
  return parsed(
    1,
    "PROXY",
    { transport: "tcp", hostname: remote, port: remotePort },
    { transport: "tcp", hostname: local, port: localPort },
    length,
  );
}

function parseIPv4(text: string): string | null {
  const parts = text.split(".");
  if (parts.length !== 4) return null;
  for (const part of parts) {
    if (!/^(0|[1-9][0-9]{0,2})$/.test(part) || Number(part) > 255) return null;
  }
  return text;
}

function parseIPv6Text(text: string): string | null {
  const bytes = parseIPv6(text);
  return bytes === null ? null : formatIPv6(bytes);
}

// Hex groups with at most one "::" for a run of zero groups, the last 32 bits possibly
// written as a dotted quad (`::ffff:192.0.2.1`), as `inet_ntop` writes mapped addresses.
function parseIPv6(text: string): Uint8Array | null {
  const halves = text.split("::");
  if (halves.length > 2) return null;
  const compressed = halves.length === 2;
  const head = parseGroups(halves[0], !compressed);
  const tail = compressed ? parseGroups(halves[1], true) : [];
  if (head === null || tail === null) return null;
  if (compressed ? head.length + tail.length > 7 : head.length !== 8) return null;
  const bytes = new Uint8Array(16);
  const view = new DataView(bytes.buffer);
  head.forEach((group, i) => view.setUint16(2 * i, group));
  tail.forEach((group, i) => view.setUint16(2 * (8 - tail.length + i), group));
  return bytes;
}

function parseGroups(text: string, quadAllowed: boolean): number[] | null {
  if (text === "") return [];
  const pieces = text.split(":");
  const groups: number[] = [];
  for (let i = 0; i < pieces.length; i++) {
    const piece = pieces[i];
    if (/^[0-9a-fA-F]{1,4}$/.test(piece)) {
      groups.push(parseInt(piece, 16));
    } else if (quadAllowed && i === pieces.length - 1 && parseIPv4(piece) !== null) {
      const [a, b, c, d] = piece.split(".").map(Number);
      groups.push((a << 8) | b, (c << 8) | d);
    } else {
      return null;
    }
  }
  return groups;
}

function parsePort(text: string): number | null {
  if (!/^(0|[1-9][0-9]{0,4})$/.test(text)) return null;
  const port = Number(text);
  return port <= 65535 ? port : null;
}

// --- v2: binary -----------------------------------------------------------------------

function parseV2(bytes: Uint8Array): ProxyHeaderParse {
  const signatureLength = Math.min(bytes.length, V2_SIGNATURE.length);
  for (let i = 0; i < signatureLength; i++) {
    if (bytes[i] !== V2_SIGNATURE[i]) {
      return invalid(NOT_A_HEADER);
    }
  }
  if (bytes.length <= 12) return incomplete(V2_FIXED_LENGTH);
  const version = bytes[12] >> 4;
  const command = bytes[12] & 0xf;
  if (version !== 2) return invalid(`the v2 header has the version "${version}", not "2"`);
  if (command !== LOCAL && command !== PROXY) {
    return invalid(`the v2 header has the command "0x${hex(command, 1)}", not LOCAL or PROXY`);
  }
  // A LOCAL header's family is to be ignored, so only a PROXY header's is checked.
  const family = bytes.length > 13 ? bytes[13] >> 4 : AF_UNSPEC;
  const protocol = bytes.length > 13 ? bytes[13] & 0xf : UNSPEC;
  if (command === PROXY && family > AF_UNIX) {
    return invalid(`the v2 header has the address family "0x${hex(family, 1)}"`);
  }
  if (command === PROXY && protocol > DGRAM) {
    return invalid(`the v2 header has the transport protocol "0x${hex(protocol, 1)}"`);
  }
  if (bytes.length < V2_FIXED_LENGTH) return incomplete(V2_FIXED_LENGTH);
  const length = V2_FIXED_LENGTH + ((bytes[14] << 8) | bytes[15]);
  if (bytes.length < length) return incomplete(length);
  if (command === LOCAL) return parsed(2, "LOCAL", null, null, length);
  return parseV2Addresses(bytes.subarray(V2_FIXED_LENGTH, length), family, protocol, length);
}

function parseV2Addresses(
  block: Uint8Array,
  family: number,
  protocol: number,
  length: number,
): ProxyHeaderParse {
  // The spec leaves an unspecified family or protocol's addresses to be ignored.
  if (family === AF_UNSPEC || protocol === UNSPEC) return parsed(2, "PROXY", null, null, length);
  const size = ADDRESS_SIZES[family];
  if (block.length < size) {
    return invalid(
      `the v2 header has ${block.length} bytes of addresses, not the ${size} its family needs`,
    );
  }
  const tlvProblem = checkTlvs(block.subarray(size), V2_FIXED_LENGTH + size);
  if (tlvProblem !== null) return invalid(tlvProblem);
  if (family === AF_UNIX) return parsed(2, "PROXY", null, null, length);
  const view = new DataView(block.buffer, block.byteOffset, block.byteLength);
  const transport = protocol === STREAM ? "tcp" : "udp";
  const ipv4 = family === AF_INET;
  const width = ipv4 ? 4 : 16;
  const format = ipv4 ? formatIPv4 : formatIPv6;
  return parsed(
    2,
    "PROXY",
    { transport, hostname: format(block.subarray(0, width)), port: view.getUint16(2 * width) },
    {
      transport,
      hostname: format(block.subarray(width, 2 * width)),
      port: view.getUint16(2 * width + 2),
    },
    length,
  );
}

// Returns what is wrong with the TLVs (type, 16-bit length, value) that fill the rest of
// the header, or null if they fit it exactly. `offset` is where they start in the header.
function checkTlvs(tlvs: Uint8Array, offset: number): string | null {
  let i = 0;
  while (i < tlvs.length) {
    if (tlvs.length - i < 3) {
      return `the v2 header ends inside the type and length of a TLV at byte ${offset + i}`;
    }
    const end = i + 3 + ((tlvs[i + 1] << 8) | tlvs[i + 2]);
    if (end > tlvs.length) {
      return `the v2 header's TLV at byte ${offset + i} runs past the header's end`;
    }
    i = end;
  }
  return null;
}

function formatIPv4(bytes: Uint8Array): string {
  return `${bytes[0]}.${bytes[1]}.${bytes[2]}.${bytes[3]}`;
}

// RFC 5952: lowercase, no leading zeros, the longest run of two or more zero groups (the
// first of equals) as "::", and an IPv4-mapped address with its dotted quad.
function formatIPv6(bytes: Uint8Array): string {
  const view = new DataView(bytes.buffer, bytes.byteOffset, 16);
  const groups = Array.from({ length: 8 }, (_, i) => view.getUint16(2 * i));
  if (groups.slice(0, 5).every((group) => group === 0) && groups[5] === 0xffff) {
    return `::ffff:${formatIPv4(bytes.subarray(12))}`;
  }
  let runStart = -1;
  let runLength = 1;
  for (let i = 0; i < 8;) {
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > runLength) [runStart, runLength] = [i, j - i];
    i = Math.max(j, i + 1);
  }
  const text = (part: number[]) => part.map((group) => group.toString(16)).join(":");
  if (runStart < 0) return text(groups);
  return `${text(groups.slice(0, runStart))}::${text(groups.slice(runStart + runLength))}`;
}

function hex(value: number, digits: number): string {
  return value.toString(16).padStart(digits, "0");
}

function incomplete(needed: number): ProxyHeaderParse {
  return { status: "incomplete", needed };
}

function invalid(detail: string): ProxyHeaderParse {
  return { status: "invalid", reason: "invalid", detail };
}

function parsed(
  version: 1 | 2,
  command: "PROXY" | "LOCAL",
  remoteAddr: Deno.NetAddr | null,
  localAddr: Deno.NetAddr | null,
  length: number,
): ProxyHeaderParse {
  return { status: "parsed", header: { version, command, remoteAddr, localAddr, length } };
}
