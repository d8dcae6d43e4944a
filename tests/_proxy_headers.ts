// PROXY protocol headers for the tests: samples of each kind, and a v2 builder that follows
// the spec's layout field by field and breaks it where asked.
import { concat, encode } from "./_net.ts";

export const ipv4 = (text: string): Uint8Array => new Uint8Array(text.split(".").map(Number));
export const ipv6 = (hex: string): Uint8Array =>
  new Uint8Array(hex.match(/../g)!.map((byte) => parseInt(byte, 16)));

const FAMILIES = { unspec: 0x0, inet: 0x1, inet6: 0x2, unix: 0x3 } as const;
const PROTOCOLS = { unspec: 0x0, stream: 0x1, dgram: 0x2 } as const;

interface V2Options {
  command: "PROXY" | "LOCAL";
  family?: keyof typeof FAMILIES;
  protocol?: keyof typeof PROTOCOLS;
  source?: Uint8Array;
  destination?: Uint8Array;
  sourcePort?: number;
  destinationPort?: number;
  addresses?: Uint8Array; // the raw address block, instead of the four above
  tlvs?: Uint8Array;
  versionCommand?: number; // the raw 13th byte, instead of version 2 and `command`
  familyByte?: number; // the raw 14th byte, instead of `family` and `protocol`
}

// A v2 header built field by field from the spec's layout, broken on purpose where asked.
export function v2Header(options: V2Options): Uint8Array {
  const family = options.family ??
    (options.source ? (options.source.length === 4 ? "inet" : "inet6") : "unspec");
  const protocol = options.protocol ?? "stream";
  let block = options.addresses ?? new Uint8Array(0);
  if (options.source && options.destination) {
    const ports = new Uint8Array(4);
    new DataView(ports.buffer).setUint16(0, options.sourcePort ?? 0);
    new DataView(ports.buffer).setUint16(2, options.destinationPort ?? 0);
    block = concat([options.source, options.destination, ports]);
  }
  const tlvs = options.tlvs ?? new Uint8Array(0);
  const fixed = new Uint8Array(16);
  fixed.set(encode("\r\n\r\n\0\r\nQUIT\n"));
  fixed[12] = options.versionCommand ?? (0x20 | (options.command === "PROXY" ? 1 : 0));
  fixed[13] = options.familyByte ?? ((FAMILIES[family] << 4) | PROTOCOLS[protocol]);
  new DataView(fixed.buffer).setUint16(14, block.length + tlvs.length);
  return concat([fixed, block, tlvs]);
}

export const V1_TCP4 = "PROXY TCP4 203.0.113.7 192.0.2.1 51000 25000\r\n";
export const V1_TCP6 = "PROXY TCP6 2001:db8::7 2001:db8::1 51000 25000\r\n";
export const V1_UNKNOWN = "PROXY UNKNOWN\r\n";
// The spec's longest line: exactly 107 bytes.
export const V1_LONGEST = `PROXY UNKNOWN ${"ffff:".repeat(7)}ffff ${
  "ffff:".repeat(7)
}ffff 65535 65535\r\n`;
export const CLIENT4 = {
  source: ipv4("203.0.113.7"),
  destination: ipv4("192.0.2.1"),
  sourcePort: 51000,
  destinationPort: 25000,
};
export const CLIENT6 = {
  source: ipv6("20010db8000000000000000000000007"),
  destination: ipv6("20010db8000000000000000000000001"),
  sourcePort: 51000,
  destinationPort: 25000,
};
export const V2_TCP4 = v2Header({ command: "PROXY", ...CLIENT4 });
export const V2_TCP6 = v2Header({ command: "PROXY", ...CLIENT6 });
export const V2_LOCAL = v2Header({ command: "LOCAL" });
// An ALPN TLV, a NOOP and an authority, as HAProxy may add them.
export const TLVS = new Uint8Array([
  0x01,
  0x00,
  0x02,
  0x68,
  0x32,
  0x04,
  0x00,
  0x00,
  0x02,
  0x00,
  0x03,
  0x61,
  0x2e,
  0x62,
]);
export const V2_TLVS = v2Header({ command: "PROXY", ...CLIENT4, tlvs: TLVS });
