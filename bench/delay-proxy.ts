/**
 * A TCP proxy on loopback that adds a fixed latency to every reply of the server behind it
 * (the kernel here has no netem). Each chunk the server sends back is held for `--delay`
 * milliseconds, then forwarded, in order: one timer queue per connection, so bandwidth is
 * kept and every request/response round trip gains the delay once. Requests go through at
 * once. No HTTP parsing; TCP_NODELAY on both sides.
 *
 *   node --import tsx bench/delay-proxy.ts --target 127.0.0.1:7480 --delay 20 [--port 0]
 *
 * Prints `LISTENING <port>` on stdout once it accepts connections; stops on SIGTERM.
 * Started by bench/s3.ts (see startDelayProxy in bench/lib.ts); not a benchmark section.
 */
import { connect, createServer, type Socket } from 'node:net';
import { arg } from './lib.js';

const [host, portText] = arg('target', '127.0.0.1:7480').split(':') as [string, string];
const targetPort = Number(portText);
const delayMs = Number(arg('delay', '20'));
const listenPort = Number(arg('port', '0'));

function relay(client: Socket): void {
  const upstream = connect({ host, port: targetPort, noDelay: true, allowHalfOpen: true });
  client.setNoDelay(true);
  const queue: Array<{ due: number; chunk: Buffer }> = [];
  let timer: NodeJS.Timeout | undefined;
  let upstreamEnded = false;

  const pump = (): void => {
    timer = undefined;
    const now = performance.now();
    while (queue.length > 0 && (queue[0] as { due: number }).due <= now) {
      const { chunk } = queue.shift() as { chunk: Buffer };
      // Backpressure: stop reading from the server while the client is not draining.
      if (!client.write(chunk)) {
        upstream.pause();
        client.once('drain', () => upstream.resume());
      }
    }
    if (queue.length > 0) schedule();
    else if (upstreamEnded) client.end();
  };
  const schedule = (): void => {
    if (timer !== undefined || queue.length === 0) return;
    const wait = Math.max(0, (queue[0] as { due: number }).due - performance.now());
    timer = setTimeout(pump, wait);
  };

  upstream.on('data', (chunk: Buffer) => {
    queue.push({ due: performance.now() + delayMs, chunk });
    schedule();
  });
  upstream.on('end', () => {
    upstreamEnded = true;
    if (queue.length === 0 && timer === undefined) client.end();
  });
  client.on('data', (chunk: Buffer) => {
    if (!upstream.write(chunk)) {
      client.pause();
      upstream.once('drain', () => client.resume());
    }
  });
  client.on('end', () => upstream.end());
  const close = (): void => {
    if (timer !== undefined) clearTimeout(timer);
    client.destroy();
    upstream.destroy();
  };
  client.on('error', close);
  upstream.on('error', close);
  client.on('close', () => upstream.destroy());
}

const server = createServer({ noDelay: true, allowHalfOpen: true }, relay);
server.listen(listenPort, '127.0.0.1', () => {
  const addr = server.address();
  process.stdout.write(
    `LISTENING ${typeof addr === 'object' && addr !== null ? addr.port : listenPort}\n`,
  );
});
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
