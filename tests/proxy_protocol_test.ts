import assert from "node:assert/strict";
import {
  type Operation,
  parseProxyHeader,
  type ProxyHeader,
  ProxyHeaderError,
  type ProxyHeaderErrorReason,
  type ProxyHeaderResult,
  read,
  readProxyHeader,
  type ReadProxyHeaderOptions,
  Scheduler,
  TimeoutError,
  write,
} from "../mod.ts";
import { createTestScheduler, memoryConnPair } from "../testing.ts";
import { closeQuietly } from "../_close_quietly.ts";
import { concat, decode, encode, loopback, within } from "./_net.ts";
import {
  CLIENT4,
  CLIENT6,
  ipv6,
  TLVS,
  V1_LONGEST,
  V1_TCP4,
  V1_TCP6,
  V1_UNKNOWN,
  V2_LOCAL,
  V2_TCP4,
  V2_TCP6,
  V2_TLVS,
  v2Header,
} from "./_proxy_headers.ts";

const tcp = (hostname: string, port: number): Deno.NetAddr => ({
  transport: "tcp",
  hostname,
  port,
});
const IPV4_CLIENT = { remoteAddr: tcp("203.0.113.7", 51000), localAddr: tcp("192.0.2.1", 25000) };
const IPV6_CLIENT = { remoteAddr: tcp("2001:db8::7", 51000), localAddr: tcp("2001:db8::1", 25000) };
const NO_ADDRESSES = { remoteAddr: null, localAddr: null };

// Every valid header the tests send, with what it must parse to.
const VALID: { name: string; bytes: Uint8Array; header: ProxyHeader }[] = [
  {
    name: "v1 TCP4",
    bytes: encode(V1_TCP4),
    header: { version: 1, command: "PROXY", ...IPV4_CLIENT, length: V1_TCP4.length },
  },
  {
    name: "v1 TCP6",
    bytes: encode(V1_TCP6),
    header: { version: 1, command: "PROXY", ...IPV6_CLIENT, length: V1_TCP6.length },
  },
  {
    name: "v1 UNKNOWN",
    bytes: encode(V1_UNKNOWN),
    header: { version: 1, command: "PROXY", ...NO_ADDRESSES, length: 15 },
  },
  {
    name: "v1 longest",
    bytes: encode(V1_LONGEST),
    header: { version: 1, command: "PROXY", ...NO_ADDRESSES, length: 107 },
  },
  {
    name: "v2 IPv4",
    bytes: V2_TCP4,
    header: { version: 2, command: "PROXY", ...IPV4_CLIENT, length: 28 },
  },
  {
    name: "v2 IPv6",
    bytes: V2_TCP6,
    header: { version: 2, command: "PROXY", ...IPV6_CLIENT, length: 52 },
  },
  {
    name: "v2 with TLVs",
    bytes: V2_TLVS,
    header: { version: 2, command: "PROXY", ...IPV4_CLIENT, length: 28 + TLVS.length },
  },
  {
    name: "v2 LOCAL",
    bytes: V2_LOCAL,
    header: { version: 2, command: "LOCAL", ...NO_ADDRESSES, length: 16 },
  },
];

function parsedHeader(bytes: Uint8Array): ProxyHeader {
  const parsed = parseProxyHeader(bytes);
  assert.equal(parsed.status, "parsed", JSON.stringify(parsed));
  return (parsed as { header: ProxyHeader }).header;
}

function assertInvalid(bytes: Uint8Array, detail: RegExp, reason = "invalid"): void {
  const parsed = parseProxyHeader(bytes);
  assert.equal(
    parsed.status,
    "invalid",
    `${JSON.stringify(decode(bytes))}: ${JSON.stringify(parsed)}`,
  );
  const { reason: actual, detail: text } = parsed as { reason: string; detail: string };
  assert.equal(actual, reason);
  assert.match(text, detail);
}

// Runs `operation` on a fresh scheduler to the end and returns its result or throws its error.
async function run<T>(operation: Operation<T>, scheduler = new Scheduler()): Promise<T> {
  const task = scheduler.spawn(operation);
  const [outcome] = await Promise.allSettled([task.result, scheduler.run()]);
  if (outcome.status === "rejected") throw outcome.reason;
  return outcome.value;
}

// A handler's view of a connection: the header, then every byte after it, `rest` first.
function* receive(
  conn: Deno.Conn,
  options?: ReadProxyHeaderOptions,
): Operation<{ header: ProxyHeaderResult; data: Uint8Array }> {
  const header = yield* readProxyHeader(conn, options);
  const chunks = [header.rest];
  const buffer = new Uint8Array(100);
  let n: number | null;
  while ((n = yield* read(conn, buffer)) !== null) chunks.push(buffer.slice(0, n));
  return { header, data: concat(chunks) };
}

async function rejectsWith(
  promise: Promise<unknown>,
  reason: ProxyHeaderErrorReason,
  received: number,
  detail: RegExp,
): Promise<void> {
  await assert.rejects(promise, (error) => {
    assert.ok(error instanceof ProxyHeaderError, String(error));
    assert.equal(error.name, "ProxyHeaderError");
    assert.equal(error.reason, reason);
    assert.equal(error.received, received);
    assert.match(error.message, /^Cannot read the PROXY protocol header: /);
    assert.match(error.message, detail);
    return true;
  });
}

// --- parseProxyHeader: valid headers --------------------------------------------------------

for (const { name, bytes, header } of VALID) {
  Deno.test(`parseProxyHeader() parses a ${name} header`, () => {
    assert.deepEqual(parsedHeader(bytes), header);
  });

  Deno.test(`parseProxyHeader() asks for more at every split of a ${name} header`, () => {
    for (let cut = 0; cut < bytes.length; cut++) {
      const parsed = parseProxyHeader(bytes.subarray(0, cut));
      assert.equal(parsed.status, "incomplete", `cut at ${cut}: ${JSON.stringify(parsed)}`);
      const { needed } = parsed as { needed: number };
      assert.ok(needed > cut && needed <= bytes.length, `cut at ${cut}: needed ${needed}`);
    }
  });

  Deno.test(`parseProxyHeader() ignores what follows a ${name} header`, () => {
    for (const after of [encode("GET / HTTP/1.1\r\n"), new Uint8Array([0, 0xff, 0x0d]), V2_TCP4]) {
      assert.deepEqual(parsedHeader(concat([bytes, after])), header);
    }
  });
}

Deno.test("parseProxyHeader() knows a v2 header's exact length from its first 16 bytes", () => {
  const parsed = parseProxyHeader(V2_TLVS.subarray(0, 16));
  assert.deepEqual(parsed, { status: "incomplete", needed: V2_TLVS.length });
});

Deno.test("parseProxyHeader() ignores whatever a v1 UNKNOWN line carries", () => {
  const line = "PROXY UNKNOWN anything at all: 1.2.3.4.5 ::::\r\n";
  assert.deepEqual(parsedHeader(encode(line)), {
    version: 1,
    command: "PROXY",
    ...NO_ADDRESSES,
    length: line.length,
  });
});

Deno.test("parseProxyHeader() reads v1 TCP4 edge values: 0.0.0.0, 255.255.255.255, ports 0 and 65535", () => {
  const header = parsedHeader(encode("PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n"));
  assert.deepEqual(header.remoteAddr, tcp("0.0.0.0", 0));
  assert.deepEqual(header.localAddr, tcp("255.255.255.255", 65535));
});

Deno.test("parseProxyHeader() returns IPv6 addresses in RFC 5952 form from v1 and v2 alike", () => {
  // As written in a v1 line, as the 16 bytes of a v2 header, and the form returned.
  const cases: [string, string, string][] = [
    ["2001:0DB8:0000:0000:0000:0000:0000:0001", "20010db8000000000000000000000001", "2001:db8::1"],
    ["2001:db8:0:0:1:0:0:1", "20010db8000000000001000000000001", "2001:db8::1:0:0:1"], // the first of equal runs
    ["2001:0:0:1:0:0:0:1", "20010000000000010000000000000001", "2001:0:0:1::1"], // the longest run
    ["1:0:2:3:4:5:6:7", "00010000000200030004000500060007", "1:0:2:3:4:5:6:7"], // a lone zero group stays
    ["1:2:3:4:5:6:7::", "00010002000300040005000600070000", "1:2:3:4:5:6:7:0"],
    ["::", "00000000000000000000000000000000", "::"],
    ["::1", "00000000000000000000000000000001", "::1"],
    ["fe80::", "fe800000000000000000000000000000", "fe80::"],
    ["FE80::ABCD:12", "fe80" + "0000".repeat(5) + "abcd0012", "fe80::abcd:12"],
    ["::FFFF:C000:0201", "00000000000000000000ffffc0000201", "::ffff:192.0.2.1"], // IPv4-mapped
    ["::ffff:192.0.2.1", "00000000000000000000ffffc0000201", "::ffff:192.0.2.1"],
    ["64:ff9b::192.0.2.1", "0064ff9b0000000000000000c0000201", "64:ff9b::c000:201"],
  ];
  for (const [written, bytes, canonical] of cases) {
    const v1 = parsedHeader(encode(`PROXY TCP6 ${written} ::1 1 2\r\n`));
    assert.equal(v1.remoteAddr?.hostname, canonical, written);
    const v2 = parsedHeader(v2Header({ command: "PROXY", ...CLIENT6, source: ipv6(bytes) }));
    assert.equal(v2.remoteAddr?.hostname, canonical, bytes);
  }
});

Deno.test("parseProxyHeader() reports UDP over IPv4 and IPv6 with the udp transport", () => {
  for (const client of [CLIENT4, CLIENT6]) {
    const header = parsedHeader(v2Header({ command: "PROXY", ...client, protocol: "dgram" }));
    const expected = client === CLIENT4 ? IPV4_CLIENT : IPV6_CLIENT;
    assert.deepEqual(header.remoteAddr, { ...expected.remoteAddr, transport: "udp" });
    assert.deepEqual(header.localAddr, { ...expected.localAddr, transport: "udp" });
  }
});

Deno.test("parseProxyHeader() accepts a v2 header without usable addresses, and gives none", () => {
  const headers = [
    v2Header({ command: "PROXY", family: "unspec" }), // the sender knows no addresses
    v2Header({ command: "PROXY", family: "unspec", addresses: new Uint8Array(12) }),
    v2Header({
      command: "PROXY",
      family: "inet",
      protocol: "unspec",
      addresses: new Uint8Array(12),
    }),
    v2Header({ command: "PROXY", family: "unix", addresses: new Uint8Array(216).fill(0x2f) }),
    v2Header({
      command: "PROXY",
      family: "unix",
      protocol: "dgram",
      addresses: new Uint8Array(216),
      tlvs: TLVS,
    }),
  ];
  for (const bytes of headers) {
    assert.deepEqual(parsedHeader(bytes), {
      version: 2,
      command: "PROXY",
      ...NO_ADDRESSES,
      length: bytes.length,
    });
  }
});

Deno.test("parseProxyHeader() skips a v2 LOCAL header's block, whatever its family says", () => {
  const bytes = v2Header({
    command: "LOCAL",
    familyByte: 0xff,
    addresses: new Uint8Array([1, 2, 3, 4, 5]),
  });
  assert.deepEqual(parsedHeader(bytes), {
    version: 2,
    command: "LOCAL",
    ...NO_ADDRESSES,
    length: 21,
  });
});

// --- parseProxyHeader: invalid headers ------------------------------------------------------

Deno.test("parseProxyHeader() refuses garbage from its first byte", () => {
  for (const text of ["G", "GET / HTTP/1.1\r\n", "\x00", "proxy TCP4", " PROXY"]) {
    assertInvalid(encode(text), /begins with neither "PROXY " nor the v2 signature/);
  }
  assertInvalid(encode("PROXX"), /begins with neither/);
  assertInvalid(encode("PROXYTCP4 "), /begins with neither/);
  assertInvalid(new Uint8Array([0x0d, 0x0a, 0x0d, 0x0a, 0x01]), /begins with neither/);
  assertInvalid(encode("\r\n\r\n\0\r\nQUIT\r"), /begins with neither/);
});

Deno.test("parseProxyHeader() answers incomplete, not invalid, for nothing at all", () => {
  assert.deepEqual(parseProxyHeader(new Uint8Array(0)), { status: "incomplete", needed: 15 });
});

Deno.test("parseProxyHeader() refuses a v1 line with no CRLF in its first 107 bytes as oversized", () => {
  const long = `PROXY UNKNOWN ${"f".repeat(100)}\r\n`;
  assertInvalid(encode(long), /no CRLF in its first 107 bytes/, "oversized");
  assertInvalid(encode(long.slice(0, 107)), /no CRLF/, "oversized");
  // The CR as 107th byte would put the LF 108th.
  assertInvalid(encode(V1_LONGEST.replace("65535 65535", "65535 655351")), /no CRLF/, "oversized");
  const tcp6 = `PROXY TCP6 ${"0000:".repeat(7)}0001 ${"0000:".repeat(7)}0001 65535 6553\r\n`;
  assert.equal(tcp6.length, 103);
  assert.equal(parseProxyHeader(encode(tcp6)).status, "parsed");
  const padded = (spaces: number) =>
    encode(tcp6.replace("6553\r\n", `6553${" ".repeat(spaces)}\r\n`));
  assertInvalid(padded(4), /10 fields/); // 107 bytes: a whole line, wrong inside
  assertInvalid(padded(5), /no CRLF/, "oversized");
  assert.equal(parseProxyHeader(encode(long.slice(0, 106))).status, "incomplete");
});

Deno.test("parseProxyHeader() refuses a v1 line with a bare LF, a bare CR or a control byte", () => {
  assertInvalid(encode("PROXY UNKNOWN\n"), /"0x0a" at byte 13/);
  assertInvalid(encode("PROXY UNKNOWN\rX"), /CR without LF at byte 13/);
  assertInvalid(encode("PROXY TCP4 1.2.3.4\t"), /"0x09" at byte 18/);
  assertInvalid(encode("PROXY UNKNOWN \x00\r\n"), /"0x00"/);
  assertInvalid(new Uint8Array([...encode("PROXY UNKNOWN "), 0xc3, 0xa9]), /"0xc3"/);
});

Deno.test("parseProxyHeader() refuses a v1 line whose fields are not exactly the spec's", () => {
  const cases: [string, RegExp][] = [
    ["PROXY TCP5 1.2.3.4 5.6.7.8 1 2", /protocol "TCP5"/],
    ["PROXY  TCP4 1.2.3.4 5.6.7.8 1 2", /protocol ""/],
    ["PROXY tcp4 1.2.3.4 5.6.7.8 1 2", /protocol "tcp4"/],
    ["PROXY UNKNOWNX", /protocol "UNKNOWNX"/],
    ["PROXY TCP4 1.2.3.4 5.6.7.8 1", /5 fields/],
    ["PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3", /7 fields/],
    ["PROXY TCP4 1.2.3.4  5.6.7.8 1 2", /7 fields/],
    ["PROXY TCP4 1.2.3.4 5.6.7.8 1 2 ", /7 fields/],
    ["PROXY TCP4", /2 fields/],
  ];
  for (const [line, detail] of cases) assertInvalid(encode(`${line}\r\n`), detail);
});

Deno.test("parseProxyHeader() refuses a v1 address that is not canonical for its family", () => {
  const ipv4 = [
    "1.2.3.256",
    "1.2.3",
    "1.2.3.4.5",
    "01.2.3.4",
    "1.2.3.04",
    "1.2.3.-4",
    "1.2.3.4a",
    "a.b.c.d",
    "",
    "::1",
    "1.2.3.4 ",
  ];
  for (const address of ipv4.slice(0, -1)) {
    assertInvalid(
      encode(`PROXY TCP4 ${address} 5.6.7.8 1 2\r\n`),
      /source address ".*" is not IPv4/,
    );
    assertInvalid(
      encode(`PROXY TCP4 5.6.7.8 ${address} 1 2\r\n`),
      /destination address ".*" is not IPv4/,
    );
  }
  const ipv6 = [
    "1::2::3",
    "1:2:3:4:5:6:7:8:9",
    "1:2:3:4:5:6:7",
    "1:2:3:4:5:6:7:8::",
    "::1:2:3:4:5:6:7:8",
    "12345::",
    "g::1",
    ":1::2",
    "1::2:",
    ":::",
    "fe80::1%eth0",
    "1.2.3.4",
    "::1.2.3.4:5",
    "::ffff:1.2.3.256",
    "1:2:3:4:5:6:7:1.2.3.4",
    "[::1]",
  ];
  for (const address of ipv6) {
    assertInvalid(encode(`PROXY TCP6 ${address} ::1 1 2\r\n`), /source address ".*" is not IPv6/);
    assertInvalid(
      encode(`PROXY TCP6 ::1 ${address} 1 2\r\n`),
      /destination address ".*" is not IPv6/,
    );
  }
});

Deno.test("parseProxyHeader() refuses a v1 port outside 0-65535 or with a leading zero", () => {
  for (const port of ["65536", "99999", "123456", "080", "00", "-1", "+1", "1e3", "0x10", ""]) {
    assertInvalid(
      encode(`PROXY TCP4 1.2.3.4 5.6.7.8 ${port} 2\r\n`),
      /source port ".*" is not 0-65535/,
    );
    assertInvalid(
      encode(`PROXY TCP4 1.2.3.4 5.6.7.8 1 ${port}\r\n`),
      /destination port ".*" is not 0-65535/,
    );
  }
});

Deno.test("parseProxyHeader() refuses a v2 header with an unknown version, command, family or protocol", () => {
  assertInvalid(v2Header({ command: "PROXY", versionCommand: 0x11 }), /version "1", not "2"/);
  assertInvalid(v2Header({ command: "PROXY", versionCommand: 0x31 }), /version "3"/);
  assertInvalid(v2Header({ command: "PROXY", versionCommand: 0x22 }), /command "0x2"/);
  assertInvalid(v2Header({ command: "PROXY", familyByte: 0x41 }), /address family "0x4"/);
  assertInvalid(v2Header({ command: "PROXY", familyByte: 0x13 }), /transport protocol "0x3"/);
  // Refused as soon as the offending byte is in, without waiting for the rest.
  assertInvalid(
    v2Header({ command: "PROXY", versionCommand: 0x11 }).subarray(0, 13),
    /version "1"/,
  );
  assertInvalid(v2Header({ command: "PROXY", familyByte: 0x41 }).subarray(0, 14), /family "0x4"/);
});

Deno.test("parseProxyHeader() refuses a v2 address block too short for its family", () => {
  const cases: [Parameters<typeof v2Header>[0], RegExp][] = [
    [
      { command: "PROXY", family: "inet", addresses: new Uint8Array(11) },
      /11 bytes of addresses, not the 12/,
    ],
    [
      { command: "PROXY", family: "inet6", addresses: new Uint8Array(12) },
      /12 bytes of addresses, not the 36/,
    ],
    [
      { command: "PROXY", family: "unix", addresses: new Uint8Array(215) },
      /215 bytes of addresses, not the 216/,
    ],
  ];
  for (const [options, detail] of cases) assertInvalid(v2Header(options), detail);
});

Deno.test("parseProxyHeader() refuses v2 TLVs that do not fit the header exactly", () => {
  const header = (tlvs: number[]) =>
    v2Header({ command: "PROXY", ...CLIENT4, tlvs: new Uint8Array(tlvs) });
  assertInvalid(header([0x04]), /ends inside the type and length of a TLV at byte 28/);
  assertInvalid(header([0x04, 0x00]), /ends inside the type and length of a TLV at byte 28/);
  assertInvalid(header([0x04, 0x00, 0x01]), /TLV at byte 28 runs past the header's end/);
  assertInvalid(header([0x04, 0x00, 0x00, 0x01, 0xff, 0xff, 0x00]), /TLV at byte 31 runs past/);
  assertInvalid(header([0x04, 0x00, 0x00, 0x02]), /TLV at byte 31/);
  assert.equal(parseProxyHeader(header([0x04, 0x00, 0x00, 0x04, 0x00, 0x00])).status, "parsed");
});

// --- readProxyHeader over in-memory conns ---------------------------------------------------

for (const { name, bytes, header } of VALID) {
  Deno.test(`readProxyHeader() reads a ${name} header, and the data after it reaches the handler`, async () => {
    const [client, server] = memoryConnPair();
    const data = encode("x".repeat(300) + "end");
    await client.write(concat([bytes, data]));
    await client.closeWrite();
    const received = await run(receive(server));
    assert.deepEqual({ ...received.header, rest: undefined }, { ...header, rest: undefined });
    assert.deepEqual(received.data, data);
    client.close();
    server.close();
  });

  Deno.test(`readProxyHeader() reads a ${name} header arriving one byte per read`, async () => {
    // A capacity of one byte: every read gets exactly one.
    const [client, server] = memoryConnPair({ capacity: 1 });
    let reads = 0;
    const counting = {
      read: (buffer: Uint8Array) => {
        reads++;
        return server.read(buffer);
      },
      close: () => server.close(),
    } as unknown as Deno.Conn;
    const sending = (async () => {
      const all = concat([bytes, encode("after")]);
      for (let at = 0; at < all.length;) at += await client.write(all.subarray(at));
      await client.closeWrite();
    })();
    const received = await run(receive(counting));
    await sending;
    assert.deepEqual({ ...received.header, rest: undefined }, { ...header, rest: undefined });
    assert.equal(received.header.rest.length, 0);
    assert.equal(decode(received.data), "after");
    assert.equal(reads, bytes.length + "after".length + 1); // and the read that saw the end
    client.close();
    server.close();
  });
}

Deno.test("readProxyHeader() reads a v2 header exactly, leaving the data in the conn", async () => {
  const [client, server] = memoryConnPair();
  await client.write(concat([V2_TLVS, encode("data")]));
  const header = await run(readProxyHeader(server));
  assert.equal(header.rest.length, 0);
  const buffer = new Uint8Array(16);
  assert.equal(await server.read(buffer), 4);
  assert.equal(decode(buffer.subarray(0, 4)), "data");
  client.close();
  server.close();
});

Deno.test("readProxyHeader() hands back the data read with a v1 line in rest, and no more than 107 bytes in all", async () => {
  const [client, server] = memoryConnPair();
  const data = encode("y".repeat(200));
  await client.write(concat([encode(V1_TCP4), data]));
  const header = await run(readProxyHeader(server));
  assert.deepEqual(header.rest, data.subarray(0, 107 - V1_TCP4.length));
  const buffer = new Uint8Array(300);
  assert.equal(await server.read(buffer), 200 - header.rest.length);
  client.close();
  server.close();
});

Deno.test("readProxyHeader() fails as truncated when the conn ends inside the header", async () => {
  for (const { bytes } of VALID) {
    for (const cut of [0, 1, 5, 12, 14, bytes.length - 1]) {
      const [client, server] = memoryConnPair();
      await client.write(bytes.subarray(0, cut));
      client.close();
      await rejectsWith(
        run(readProxyHeader(server)),
        "truncated",
        cut,
        new RegExp(`ended after ${cut} bytes`),
      );
      server.close();
    }
  }
});

Deno.test("readProxyHeader() fails as oversized at 107 bytes of v1 without CRLF, reading no further", async () => {
  const [client, server] = memoryConnPair();
  await client.write(encode(`PROXY UNKNOWN ${"a".repeat(500)}\r\n`));
  await rejectsWith(
    run(readProxyHeader(server)),
    "oversized",
    107,
    /no CRLF in its first 107 bytes/,
  );
  const buffer = new Uint8Array(1000);
  assert.equal(await server.read(buffer), 14 + 500 + 2 - 107);
  client.close();
  server.close();
});

Deno.test("readProxyHeader() fails as invalid on garbage after the first read", async () => {
  const [client, server] = memoryConnPair();
  await client.write(encode("GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"));
  await rejectsWith(
    run(readProxyHeader(server)),
    "invalid",
    16,
    /neither "PROXY " nor the v2 signature/,
  );
  client.close();
  server.close();
});

Deno.test("readProxyHeader() fails as invalid on a v1 line with an invalid address", async () => {
  const [client, server] = memoryConnPair();
  const line = "PROXY TCP4 203.0.113.300 192.0.2.1 51000 25000\r\n";
  await client.write(encode(line + "hello"));
  await rejectsWith(
    run(readProxyHeader(server)),
    "invalid",
    line.length + 5,
    /source address "203\.0\.113\.300" is not IPv4/,
  );
  client.close();
  server.close();
});

Deno.test("readProxyHeader() fails as invalid on a v2 header with broken TLVs", async () => {
  const [client, server] = memoryConnPair();
  const broken = v2Header({
    command: "PROXY",
    family: "inet",
    addresses: new Uint8Array(12),
    tlvs: new Uint8Array([1, 0, 9]),
  });
  await client.write(broken);
  await rejectsWith(
    run(readProxyHeader(server)),
    "invalid",
    broken.length,
    /runs past the header's end/,
  );
  client.close();
  server.close();
});

Deno.test("readProxyHeader() gives up after 5 s when no header arrives", async () => {
  const { scheduler, clock } = createTestScheduler({ autojump: true });
  const [client, server] = memoryConnPair();
  await assert.rejects(run(readProxyHeader(server), scheduler), (error) => {
    assert.ok(error instanceof TimeoutError);
    assert.equal(error.ms, 5_000);
    return true;
  });
  assert.equal(clock.now(), 5_000);
  client.close();
  closeQuietly(server); // the scheduler may have: a read was left in flight on it
});

Deno.test("readProxyHeader() gives up after its timeout option when the header stalls halfway", async () => {
  const { scheduler, clock } = createTestScheduler({ autojump: true });
  const [client, server] = memoryConnPair();
  await client.write(V2_TCP6.subarray(0, 30));
  await assert.rejects(run(readProxyHeader(server, { timeout: 1_500 }), scheduler), TimeoutError);
  assert.equal(clock.now(), 1_500);
  client.close();
  closeQuietly(server); // the scheduler may have: a read was left in flight on it
});

Deno.test("readProxyHeader() refuses a negative timeout", async () => {
  const [client, server] = memoryConnPair();
  await assert.rejects(run(readProxyHeader(server, { timeout: -1 })), RangeError);
  client.close();
  server.close();
});

// --- readProxyHeader over real sockets ------------------------------------------------------

for (const { name, bytes, header } of VALID.filter(({ name }) => !name.includes("LOCAL"))) {
  Deno.test(`readProxyHeader() reads a ${name} header on a loopback socket, and the handler echoes what follows`, async () => {
    using pair = await loopback();
    function* echo(conn: Deno.Conn): Operation<ProxyHeaderResult> {
      try {
        const result = yield* readProxyHeader(conn);
        if (result.rest.length > 0) yield* write(conn, result.rest);
        const buffer = new Uint8Array(1024);
        let n: number | null;
        while ((n = yield* read(conn, buffer)) !== null) yield* write(conn, buffer.subarray(0, n));
        return result;
      } finally {
        conn.close();
      }
    }
    const scheduler = new Scheduler();
    const handler = scheduler.spawn(echo(pair.server));
    const done = scheduler.run();
    const data = crypto.getRandomValues(new Uint8Array(50_000));
    // The header alone first, then the data in pieces, the first sent at once with the header's tail.
    await pair.client.write(bytes.subarray(0, 10));
    await new Promise((resolve) => setTimeout(resolve, 5));
    await pair.client.write(concat([bytes.subarray(10), data.subarray(0, 1000)]));
    const echoed = new Uint8Array(data.length);
    let got = 0;
    const reading = (async () => {
      while (got < data.length) {
        const n = await pair.client.read(echoed.subarray(got));
        if (n === null) break;
        got += n;
      }
    })();
    for (let at = 1000; at < data.length; at += 7000) {
      await pair.client.write(data.subarray(at, at + 7000));
    }
    await within(10_000, "the echo of every byte", () => reading);
    await pair.client.closeWrite();
    await within(10_000, "the handler to end", () => done);
    const result = await handler.result;
    assert.deepEqual({ ...result, rest: undefined }, { ...header, rest: undefined });
    assert.equal(got, data.length);
    assert.deepEqual(echoed, data);
    assert.notDeepEqual(pair.server.remoteAddr, result.remoteAddr); // the socket's peer is not the client
  });
}
