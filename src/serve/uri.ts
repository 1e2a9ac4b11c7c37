/** NBD URIs (the form nbdinfo, nbdcopy, qemu and fio take) for exports of a listening server. */

/** The address a server is bound to: a TCP host and port, or a unix socket path. */
export interface ListenAddress {
  port?: number;
  host?: string;
  path?: string;
}

/**
 * `nbd://host:port/name` or `nbd+unix:///name?socket=path`; with `tlsRequired` the scheme is
 * `nbds`, so that clients insist on TLS. An IPv6 host is bracketed; the name is escaped.
 */
export function nbdUri(
  address: ListenAddress,
  exportName: string,
  options: { tlsRequired?: boolean } = {},
): string {
  const scheme = options.tlsRequired ? 'nbds' : 'nbd';
  const name = encodeURIComponent(exportName);
  if (address.path !== undefined) return `${scheme}+unix:///${name}?socket=${address.path}`;
  const host = address.host?.includes(':') ? `[${address.host}]` : address.host;
  return `${scheme}://${host}:${address.port}/${name}`;
}
