// A connected pair of real loopback TCP conns for tests, closed by `using`.
export interface Loopback extends Disposable {
  client: Deno.TcpConn;
  server: Deno.TcpConn;
}

export async function loopback(): Promise<Loopback> {
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const [client, server] = await Promise.all([
    Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port }),
    listener.accept(),
  ]);
  return {
    client,
    server,
    [Symbol.dispose]() {
      for (const conn of [client, server]) {
        try {
          conn.close();
        } catch {
          // The test closed it already.
        }
      }
    },
  };
}

export const encode = (text: string): Uint8Array => new TextEncoder().encode(text);
export const decode = (bytes: Uint8Array): string => new TextDecoder().decode(bytes);

export async function readText(conn: Deno.Conn, size: number): Promise<string> {
  const buffer = new Uint8Array(size);
  let got = 0;
  while (got < size) {
    const n = await conn.read(buffer.subarray(got));
    if (n === null) break;
    got += n;
  }
  return decode(buffer.subarray(0, got));
}
