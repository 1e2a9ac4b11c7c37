/**
 * Resident memory of `hyper serve` on a 1 TiB volume while fio writes 4 GiB of random 4 KiB
 * blocks across all of it (QD16, fio's nbd engine), then reads 256 MiB back at random.
 * Reports the peak (VmHWM) and final RSS of the serve process against the target of 300 MiB
 * with default caches: memory must follow the cache sizes, not the volume or data size.
 *
 * With `--breakdown`, serve also exposes its metrics, and each sample reads V8's heap and the
 * memory outside it that JavaScript holds (Buffers, ArrayBuffers) from them: the table then
 * shows, at the peak and at the end, how much of RSS is neither (Node's own code and data,
 * the allocator's free space, native modules). The metrics endpoint costs a little memory
 * itself, so the target is judged on runs without it.
 *
 * `--serve "--max-dirty 64M …"` adds flags to serve's (the target is for the defaults).
 *
 *   node --import tsx bench/memory.ts [--write 4g] [--size 1t] [--breakdown] [--serve FLAGS]
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { arg, flag, fmt, table, writeResults } from './lib.js';

const write = arg('write', '4g');
const size = arg('size', '1t');
const breakdown = flag('breakdown');
const serveFlags = arg('serve', '').split(/\s+/).filter(Boolean);
const TARGET_MIB = 300;
const MiB = 1024 * 1024;

function runCmd(cmd: string, args: string[]): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    const c = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    c.stdout.on('data', (d: Buffer) => (out += d.toString()));
    c.stderr.on('data', (d: Buffer) => (out += d.toString()));
    c.on('exit', (code) => resolve({ code: code ?? 1, out }));
  });
}

async function status(pid: number): Promise<{ rss: number; hwm: number }> {
  const s = await readFile(`/proc/${pid}/status`, 'utf8');
  const kb = (k: string): number => Number(new RegExp(`${k}:\\s+(\\d+)`).exec(s)?.[1] ?? 0);
  return { rss: kb('VmRSS') / 1024, hwm: kb('VmHWM') / 1024 };
}

/** MiB of V8's heap and of memory JavaScript holds outside it, from serve's metrics. */
interface Split {
  heap: number;
  external: number;
}

async function split(metricsUrl: string): Promise<Split | undefined> {
  const res = await fetch(metricsUrl).catch(() => undefined);
  if (!res?.ok) return undefined;
  const text = await res.text();
  const one = (name: string): number =>
    Number(new RegExp(`^${name} (\\S+)`, 'm').exec(text)?.[1] ?? NaN) / MiB;
  return {
    heap: one('nodejs_heap_size_total_bytes'),
    external: one('nodejs_external_memory_bytes'),
  };
}

async function main(): Promise<void> {
  const base = existsSync('/dev/shm') ? '/dev/shm' : join(process.cwd(), '.tmp');
  const dir = join(base, `hyper-bench-memory-${Date.now().toString(36)}`);
  await mkdir(dir, { recursive: true });
  const serve = spawn(
    // bin/run.js itself, as a user runs `hyper`: its shebang sets node's flags.
    'bin/run.js',
    [
      'serve',
      `file://${dir}/vol/`,
      '--create',
      '--size',
      size,
      '--port',
      '0',
      '--print-uri',
      ...(breakdown ? ['--metrics-port', '0'] : []),
      ...serveFlags,
    ],
    {
      stdio: ['ignore', 'pipe', 'inherit'],
    },
  );
  try {
    const [uri, metricsUrl] = await new Promise<[string, string | undefined]>((resolve, reject) => {
      let out = '';
      serve.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        const lines = out.split('\n').map((x) => x.trim());
        const nbd = lines.find((x) => x.startsWith('nbd://'));
        const http = lines.find((x) => x.startsWith('http://'));
        if (nbd && (!breakdown || http)) resolve([nbd, http]);
      });
      serve.on('exit', () => reject(new Error('serve exited')));
    });
    const pid = serve.pid as number;
    const idle = await status(pid);
    let peakRss = idle.rss;
    let atPeak: Split | undefined;
    let sampling = false;
    const poll = setInterval(() => {
      if (sampling) return;
      sampling = true;
      (async () => {
        const s = await status(pid);
        const m = metricsUrl ? await split(metricsUrl) : undefined;
        if (s.rss >= peakRss) {
          peakRss = s.rss;
          atPeak = m ?? atPeak;
        }
      })()
        .catch(() => undefined)
        .finally(() => (sampling = false));
    }, 250);
    const t0 = Date.now();
    const fio = await runCmd('fio', [
      '--name=fill',
      '--ioengine=nbd',
      `--uri=${uri}`,
      '--rw=randwrite',
      '--bs=4k',
      '--iodepth=16',
      `--size=${size}`,
      `--io_size=${write}`,
      '--norandommap',
      '--randrepeat=0',
      '--output-format=terse',
      '--terse-version=3',
    ]);
    if (fio.code !== 0) throw new Error(`fio failed: ${fio.out}`);
    const writeSecs = (Date.now() - t0) / 1000;
    const afterWrite = await status(pid);
    const fioRead = await runCmd('fio', [
      '--name=read',
      '--ioengine=nbd',
      `--uri=${uri}`,
      '--rw=randread',
      '--bs=4k',
      '--iodepth=16',
      `--size=${size}`,
      '--io_size=256m',
      '--norandommap',
      '--output-format=terse',
      '--terse-version=3',
    ]);
    if (fioRead.code !== 0) throw new Error(`fio read failed: ${fioRead.out}`);
    clearInterval(poll);
    const end = await status(pid);
    const endSplit = metricsUrl ? await split(metricsUrl) : undefined;
    const rows = [
      ['idle (volume open)', fmt(idle.rss)],
      [`after ${write} random 4 KiB writes (${fmt(writeSecs)} s)`, fmt(afterWrite.rss)],
      ['after 256 MiB random reads', fmt(end.rss)],
      ['peak (VmHWM)', fmt(end.hwm)],
    ];
    const setting = serveFlags.length > 0 ? serveFlags.join(' ') : 'default caches';
    console.log(`hyper serve resident memory, ${size} volume on file:// (tmpfs), ${setting}`);
    console.log(table(['moment', 'RSS MiB'], rows));
    const parts = (rss: number, x: Split | undefined): string[] =>
      x ? [fmt(rss), fmt(x.heap), fmt(x.external), fmt(rss - x.heap - x.external)] : [];
    if (breakdown) {
      console.log(
        table(
          ['sample', 'RSS MiB', 'V8 heap', 'Buffers/ArrayBuffers', 'rest (Node, allocator)'],
          [
            ['highest sampled RSS', ...parts(peakRss, atPeak)],
            ['end', ...parts(end.rss, endSplit)],
          ],
        ),
      );
    }
    const file = await writeResults('memory', {
      size,
      write,
      idleMiB: idle.rss,
      afterWriteMiB: afterWrite.rss,
      endMiB: end.rss,
      peakMiB: Math.max(end.hwm, peakRss),
      writeSeconds: writeSecs,
      targetMiB: TARGET_MIB,
      serveFlags,
      ...(breakdown ? { atPeak, atEnd: endSplit } : {}),
    });
    console.log(`wrote ${file}`);
    if (breakdown || serveFlags.length > 0) {
      console.log('(the target is judged on runs with the defaults and without --breakdown)');
    } else if (Math.max(end.hwm, peakRss) > TARGET_MIB) {
      console.error(
        `target missed: peak ${fmt(Math.max(end.hwm, peakRss))} MiB > ${TARGET_MIB} MiB`,
      );
      process.exitCode = 1;
    }
  } finally {
    serve.kill('SIGTERM');
    await new Promise((r) => serve.once('exit', r));
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
