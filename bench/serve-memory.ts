/**
 * Serve one in-memory export over NBD in its own process, for benchmarks:
 *   node --import tsx bench/serve-memory.ts [--port N] [--socket PATH] [--size BYTES]
 * Prints "READY <uri>" on stdout once listening; exits cleanly on SIGTERM/SIGINT.
 */
import { NbdServer } from '../src/nbd/server.js';
import { MemoryDevice } from '../src/nbd/testing/memory-device.js';

const args = process.argv.slice(2);
const opt = (name: string): string | undefined => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : undefined;
};
const size = Number(opt('size') ?? 1024 * 1024 * 1024);
const chunkOpt = opt('chunk');
const prefault = !args.includes('--no-prefault');
const device = new MemoryDevice(
  chunkOpt === undefined ? { size, prefault } : { size, prefault, chunkSize: Number(chunkOpt) },
);
const server = new NbdServer({ exports: [{ name: 'mem', open: () => device }] });
const socket = opt('socket');
const addr =
  socket !== undefined
    ? await server.listen({ path: socket })
    : await server.listen({ port: Number(opt('port') ?? 10809), host: '127.0.0.1' });
process.stdout.write(
  `READY ${addr.path !== undefined ? `nbd+unix:///?socket=${addr.path}` : `nbd://127.0.0.1:${addr.port}/`}\n`,
);
const stop = (): void => {
  if (process.env.HYPER_BENCH_COUNTS === '1')
    process.stderr.write(`device calls: ${JSON.stringify(device.counts)}\n`);
  void server.close(2000).then(() => process.exit(0));
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
