/**
 * Resident memory of `hyper serve` on a 1 TiB volume while fio writes 4 GiB of random 4 KiB
 * blocks across all of it (QD16, fio's nbd engine), then reads 256 MiB back at random.
 * Reports the peak (VmHWM) and final RSS of the serve process against the target of 300 MiB
 * with default caches: memory must follow the cache sizes, not the volume or data size.
 *
 *   node --import tsx bench/memory.ts [--write 4g] [--size 1t]
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { arg, fmt, table, writeResults } from './lib.js';

const write = arg('write', '4g');
const size = arg('size', '1t');
const TARGET_MIB = 300;

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

async function main(): Promise<void> {
  const base = existsSync('/dev/shm') ? '/dev/shm' : join(process.cwd(), '.tmp');
  const dir = join(base, `hyper-bench-memory-${Date.now().toString(36)}`);
  await mkdir(dir, { recursive: true });
  const serve = spawn(
    // bin/run.js itself, as a user runs `hyper`: its shebang sets node's flags.
    'bin/run.js',
    ['serve', `file://${dir}/vol/`, '--create', '--size', size, '--port', '0', '--print-uri'],
    {
      stdio: ['ignore', 'pipe', 'inherit'],
    },
  );
  try {
    const uri = await new Promise<string>((resolve, reject) => {
      let out = '';
      serve.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        const l = out.split('\n').find((x) => x.startsWith('nbd://'));
        if (l) resolve(l.trim());
      });
      serve.on('exit', () => reject(new Error('serve exited')));
    });
    const pid = serve.pid as number;
    const idle = await status(pid);
    let peakRss = idle.rss;
    const poll = setInterval(() => {
      status(pid)
        .then((s) => (peakRss = Math.max(peakRss, s.rss)))
        .catch(() => undefined);
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
    const rows = [
      ['idle (volume open)', fmt(idle.rss)],
      [`after ${write} random 4 KiB writes (${fmt(writeSecs)} s)`, fmt(afterWrite.rss)],
      ['after 256 MiB random reads', fmt(end.rss)],
      ['peak (VmHWM)', fmt(end.hwm)],
    ];
    console.log(`hyper serve resident memory, ${size} volume on file:// (tmpfs), default caches`);
    console.log(table(['moment', 'RSS MiB'], rows));
    const file = await writeResults('memory', {
      size,
      write,
      idleMiB: idle.rss,
      afterWriteMiB: afterWrite.rss,
      endMiB: end.rss,
      peakMiB: Math.max(end.hwm, peakRss),
      writeSeconds: writeSecs,
      targetMiB: TARGET_MIB,
    });
    console.log(`wrote ${file}`);
    if (Math.max(end.hwm, peakRss) > TARGET_MIB) {
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
