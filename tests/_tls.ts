// Certificates for the tests that speak TLS: each test makes its own with `openssl`, as an
// operator would, into a temporary directory that `using` removes. Without openssl those
// tests are skipped with the reason printed (.ci/run installs it when apt-get works).
import { decode } from "./_net.ts";

export const OPENSSL_VERSION: string | null = (() => {
  try {
    const { success, stdout } = new Deno.Command("openssl", { args: ["version"] }).outputSync();
    return success ? decode(stdout).trim() : null;
  } catch {
    return null;
  }
})();

export function skipWithoutOpenssl(file: string): boolean {
  if (OPENSSL_VERSION !== null) return false;
  console.log(
    `SKIP the TLS tests of ${file}: openssl is not installed, so no test certificate can be ` +
      "made (install Debian's openssl package; .ci/run does when apt-get works)",
  );
  return true;
}

export interface Certificate extends Disposable {
  readonly dir: string;
  readonly certFile: string;
  readonly keyFile: string;
  // The PEM contents, as serve() and connectTls's caCerts take them.
  readonly cert: string;
  readonly key: string;
}

// A self-signed certificate for 127.0.0.1, ::1 and localhost. Deno refuses a self-signed
// certificate that is its own CA as a server's (CaUsedAsEndEntity), hence CA:FALSE.
export function makeCertificate(): Certificate {
  const dir = Deno.makeTempDirSync({ prefix: "genio-tls-" });
  const certFile = `${dir}/cert.pem`;
  const keyFile = `${dir}/key.pem`;
  const { success, stderr } = new Deno.Command("openssl", {
    args: [
      ...["req", "-x509", "-newkey", "ed25519", "-nodes", "-days", "1"],
      ...["-keyout", keyFile, "-out", certFile, "-subj", "/CN=localhost"],
      ...["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1"],
      ...["-addext", "basicConstraints=critical,CA:FALSE"],
    ],
  }).outputSync();
  if (!success) {
    Deno.removeSync(dir, { recursive: true });
    throw new Error(`openssl could not make a certificate: ${decode(stderr)}`);
  }
  return {
    dir,
    certFile,
    keyFile,
    cert: Deno.readTextFileSync(certFile),
    key: Deno.readTextFileSync(keyFile),
    [Symbol.dispose]() {
      Deno.removeSync(dir, { recursive: true });
    },
  };
}
