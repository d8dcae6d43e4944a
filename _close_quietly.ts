// Closing a resource that its owner may already have closed: the outcome wanted either way.
export function closeQuietly(resource: { close(): void }): void {
  try {
    resource.close();
  } catch {
    // Already closed: that is what we wanted.
  }
}
