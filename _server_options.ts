// The server's defaults, stated once: `serve()`, `tcpServer()`, `echoHandler()` and the
// command line's flags and help text all read them from here, with the checks on each option.

export const DEFAULT_HOSTNAME: string = "127.0.0.1";
export const DEFAULT_PORT: number = 25000;
export const DEFAULT_MAX_CONNECTIONS: number = 10_000;
export const DEFAULT_IDLE_TIMEOUT_MS: number = 300_000;
export const DEFAULT_GRACE_MS: number = 5_000;
export const DEFAULT_BUFFER_SIZE: number = 16 * 1024;
export const MAX_BUFFER_SIZE: number = 1 << 30;

export function checkPort(port: number): number {
  if (!(Number.isInteger(port) && port >= 0 && port <= 65535)) {
    throw new RangeError(`Cannot serve: port must be an integer from 0 to 65535, got "${port}"`);
  }
  return port;
}

export function checkGrace(grace: number): number {
  if (!(grace >= 0)) {
    throw new RangeError(
      `Cannot serve: grace must be a number of milliseconds >= 0, got "${grace}"`,
    );
  }
  return grace;
}

export function checkMaxConnections(maxConnections: number): number {
  if (!(Number.isInteger(maxConnections) && maxConnections >= 1) && maxConnections !== Infinity) {
    throw new RangeError(
      `Cannot serve: maxConnections must be a positive integer, got "${maxConnections}"`,
    );
  }
  return maxConnections;
}

export function checkBufferSize(bufferSize: number): number {
  if (!(Number.isInteger(bufferSize) && bufferSize >= 1 && bufferSize <= MAX_BUFFER_SIZE)) {
    throw new RangeError(
      `Cannot serve: bufferSize must be an integer from 1 to ${MAX_BUFFER_SIZE}, got "${bufferSize}"`,
    );
  }
  return bufferSize;
}

export function checkIdleTimeout(idleTimeout: number): number {
  if (!(idleTimeout >= 0)) {
    throw new RangeError(
      `Cannot serve: idleTimeout must be a number of milliseconds >= 0, got "${idleTimeout}"`,
    );
  }
  return idleTimeout;
}
