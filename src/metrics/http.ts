/**
 * The metrics endpoint: a small HTTP server with `GET /metrics` (Prometheus text format),
 * `GET /healthz` (200 "ok", or 503 with the reason when the owner's health check fails: for
 * alerting) and `GET /livez` (200 while the owner runs, 503 once it stops: for liveness
 * probes; a server that cannot store what it holds right now is unhealthy, but restarting it
 * would drop those writes). Anything else is 404 (405 for other methods on those paths). It
 * binds 127.0.0.1 unless told otherwise: metrics name exports and buckets, so exposing them
 * is the operator's choice.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';

export interface MetricsServerOptions {
  /** TCP port (0 picks a free one). */
  port: number;
  /** Address to bind (default 127.0.0.1). */
  host?: string;
  /** What GET /metrics exposes (a HyperMetrics' `registry`, or any prom-client registry). */
  registry: Registry;
  /** Called by GET /healthz: a string is a failure reason (503), undefined is healthy. */
  health?: () => string | undefined | Promise<string | undefined>;
  /** Called by GET /livez: a string (503) once the owner is stopping, undefined while it runs. */
  live?: () => string | undefined;
}

export interface MetricsServer {
  readonly host: string;
  readonly port: number;
  /** `http://host:port/metrics` */
  readonly url: string;
  /** Stop listening and close open scrape connections. */
  close(): Promise<void>;
}

export async function startMetricsServer(options: MetricsServerOptions): Promise<MetricsServer> {
  const server = createServer((req, res) => {
    handle(req, res, options).catch((e: unknown) => {
      if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain; charset=utf-8' });
      res.end(`${e instanceof Error ? e.message : String(e)}\n`);
    });
  });
  // Scrapers keep connections alive; close() must not wait for them.
  server.keepAliveTimeout = 5000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port, options.host ?? '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const a = server.address() as AddressInfo;
  const hostForUrl = a.family === 'IPv6' ? `[${a.address}]` : a.address;
  let closing: Promise<void> | undefined;
  return {
    host: a.address,
    port: a.port,
    url: `http://${hostForUrl}:${a.port}/metrics`,
    close() {
      closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
      return closing;
    },
  };
}

async function handle(
  req: IncomingMessage,
  res: ServerResponse,
  options: MetricsServerOptions,
): Promise<void> {
  const path = (req.url ?? '/').split('?')[0];
  if (path !== '/metrics' && path !== '/healthz' && path !== '/livez') {
    res.writeHead(404, { 'content-type': 'text/plain; charset=utf-8' });
    res.end('not found: try /metrics, /healthz or /livez\n');
    return;
  }
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain; charset=utf-8' });
    res.end('method not allowed\n');
    return;
  }
  let status = 200;
  let body: string;
  let type = 'text/plain; charset=utf-8';
  if (path === '/metrics') {
    body = await options.registry.metrics();
    type = options.registry.contentType;
  } else {
    const problem = path === '/livez' ? options.live?.() : await options.health?.();
    if (problem === undefined) body = 'ok\n';
    else {
      status = 503;
      body = `${problem}\n`;
    }
  }
  res.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(body) });
  res.end(req.method === 'HEAD' ? undefined : body);
}
