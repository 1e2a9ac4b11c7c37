/**
 * NBD transport benchmark: hyper's server on the in-memory device against `nbdkit memory`
 * and `qemu-nbd` on a raw file in tmpfs, side by side in one run, with real clients:
 *   - nbdcopy 1 GiB write (random data from tmpfs) and read (after the full write) to null:
 *   - fio --ioengine=nbd 4k randread and randwrite at iodepth 16
 * Prints a table with ratios to each peer and writes bench-results/nbd.json.
 *
 *   node --import tsx bench/nbd.ts [--reps N] [--size-mib N] [--runtime S] [--only hyper,nbdkit,qemu-nbd]
 *                                  [--volume]   (also serve a file:// volume on tmpfs via bin/run.js serve;
 *                                                needs `npm run build` first)
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createWriteStream, existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, truncate, writeFile } from 'node:fs/promises';
import { once } from 'node:events';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';

const argv = process.argv.slice(2);
const arg = (name: string, dflt: string): string => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 && argv[i + 1] !== undefined ? argv[i + 1]! : dflt;
};
const reps = Number(arg('reps', '1'));
const sizeMiB = Number(arg('size-mib', '1024'));
const runtime = Number(arg('runtime', '6'));
const only = arg('only', 'hyper,nbdkit,qemu-nbd').split(',');
const withVolume = argv.includes('--volume');
const size = sizeMiB * 1024 * 1024;
const root = process.cwd();

interface Peer {
  name: string;
  start(port: number, dir: string): Promise<{ proc: ChildProcess; uri: string }>;
}

const children = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of children) c.kill('SIGKILL');
});

function launch(cmd: string, args: string[], readyLine?: RegExp): Promise<ChildProcess> {
  const proc = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], cwd: root });
  children.add(proc);
  proc.on('exit', () => children.delete(proc));
  let err = '';
  proc.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${cmd} did not start: ${err}`)), 20_000);
    proc.on('exit', (code) => reject(new Error(`${cmd} exited with ${code}: ${err}`)));
    if (readyLine === undefined) {
      clearTimeout(timer);
      resolve(proc);
      return;
    }
    let out = '';
    proc.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (readyLine.test(out)) {
        clearTimeout(timer);
        resolve(proc);
      }
    });
  });
}

async function waitPort(port: number): Promise<void> {
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline) {
    const r = spawnSync('nbdinfo', ['--size', `nbd://127.0.0.1:${port}/`], { encoding: 'utf8' });
    if (r.status === 0) return;
    await new Promise((res) => setTimeout(res, 100));
  }
  throw new Error(`nothing answered on port ${port}`);
}

async function stop(proc: ChildProcess): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  proc.kill('SIGTERM');
  const t = setTimeout(() => proc.kill('SIGKILL'), 5000);
  await once(proc, 'exit').catch(() => undefined);
  clearTimeout(t);
}

const peers: Peer[] = [
  {
    name: 'hyper',
    async start(port) {
      const proc = await launch(
        'node',
        [
          '--import',
          'tsx',
          'bench/serve-memory.ts',
          '--port',
          String(port),
          '--size',
          String(size),
        ],
        /READY/,
      );
      return { proc, uri: `nbd://127.0.0.1:${port}/` };
    },
  },
  {
    name: 'nbdkit',
    async start(port) {
      const proc = await launch('nbdkit', [
        '-f',
        '-i',
        '127.0.0.1',
        '-p',
        String(port),
        'memory',
        String(size),
      ]);
      await waitPort(port);
      return { proc, uri: `nbd://127.0.0.1:${port}/` };
    },
  },
  {
    name: 'qemu-nbd',
    async start(port, dir) {
      const img = join(dir, 'qemu.img');
      await writeFile(img, '');
      await truncate(img, size);
      const proc = await launch('qemu-nbd', [
        '-f',
        'raw',
        '-b',
        '127.0.0.1',
        '-p',
        String(port),
        '-t',
        '-e',
        '8',
        '--cache=writeback',
        '--aio=threads',
        img,
      ]);
      await waitPort(port);
      return { proc, uri: `nbd://127.0.0.1:${port}/` };
    },
  },
];

if (withVolume) {
  peers.push({
    name: 'hyper-volume',
    async start(port, dir) {
      const url = `file://${join(dir, 'vol')}/`;
      const created = spawnSync(
        'node',
        ['bin/run.js', 'file', 'create', url, '--size', `${sizeMiB}MiB`],
        { cwd: root, encoding: 'utf8' },
      );
      if (created.status !== 0) throw new Error(`volume create failed: ${created.stderr}`);
      const proc = await launch('node', [
        'bin/run.js',
        'serve',
        url,
        '--port',
        String(port),
        '--print-uri',
      ]);
      await waitPort(port);
      return { proc, uri: `nbd://127.0.0.1:${port}/` };
    },
  });
}

function timeIt(cmd: string, args: string[]): number {
  const t0 = performance.now();
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 300_000 });
  const t = (performance.now() - t0) / 1000;
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}): ${r.stderr}`);
  return t;
}

function fio(uri: string, rw: 'randread' | 'randwrite'): number {
  const r = spawnSync(
    'fio',
    [
      `--name=${rw}`,
      '--ioengine=nbd',
      `--uri=${uri}`,
      `--rw=${rw}`,
      '--bs=4k',
      '--iodepth=16',
      `--size=${size}`,
      `--runtime=${runtime}`,
      '--time_based',
      '--ramp_time=1',
      '--output-format=json',
    ],
    { encoding: 'utf8', timeout: (runtime + 60) * 1000 },
  );
  if (r.status !== 0) throw new Error(`fio ${rw} failed: ${r.stderr}`);
  const j = JSON.parse(r.stdout.slice(r.stdout.indexOf('{'))) as {
    jobs: { read: { iops: number }; write: { iops: number } }[];
  };
  const job = j.jobs[0]!;
  return rw === 'randread' ? job.read.iops : job.write.iops;
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
};

type Metric = 'copyWrite' | 'copyRead' | 'randread' | 'randwrite';
const metrics: Metric[] = ['copyWrite', 'copyRead', 'randread', 'randwrite'];
const labels: Record<Metric, string> = {
  copyWrite: `nbdcopy ${sizeMiB} MiB write (MiB/s)`,
  copyRead: `nbdcopy ${sizeMiB} MiB read (MiB/s)`,
  randread: 'fio 4k randread QD16 (IOPS)',
  randwrite: 'fio 4k randwrite QD16 (IOPS)',
};

async function main(): Promise<void> {
  for (const tool of [
    'nbdcopy',
    'fio',
    'nbdinfo',
    ...(only.includes('nbdkit') ? ['nbdkit'] : []),
    ...(only.includes('qemu-nbd') ? ['qemu-nbd'] : []),
  ]) {
    if (spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0)
      throw new Error(`missing ${tool}`);
  }
  const dir = await mkdtemp(join(existsSync('/dev/shm') ? '/dev/shm' : '/tmp', 'hyper-bench-'));
  try {
    const src = join(dir, 'src.img');
    const ws = createWriteStream(src);
    for (let i = 0; i < sizeMiB; i++)
      if (!ws.write(randomBytes(1024 * 1024))) await once(ws, 'drain');
    ws.end();
    await once(ws, 'finish');

    const results: Record<string, Record<Metric, number[]>> = {};
    let port = 20000 + Math.floor(Math.random() * 20000);
    const runs: Record<Metric, (uri: string) => number> = {
      copyWrite: (uri) => sizeMiB / timeIt('nbdcopy', [src, uri]),
      copyRead: (uri) => sizeMiB / timeIt('nbdcopy', [uri, 'null:']),
      randread: (uri) => fio(uri, 'randread'),
      randwrite: (uri) => fio(uri, 'randwrite'),
    };
    // The transport peers run side by side: in each repetition all of them are started, then
    // each workload runs on every peer in turn (the order rotates per repetition), so that a
    // change in machine load hits all peers alike. The volume row runs alone afterwards: its
    // background flushes would otherwise disturb whichever peer runs next.
    const sideBySide = peers.filter((p) => only.includes(p.name) && p.name !== 'hyper-volume');
    const alone = peers.filter((p) => p.name === 'hyper-volume');
    for (let rep = 0; rep < reps; rep++) {
      const order = sideBySide.map((_, k) => sideBySide[(k + rep) % sideBySide.length]!);
      for (const group of [order, ...alone.map((p) => [p])]) {
        const running: { name: string; proc: ChildProcess; uri: string; pdir: string }[] = [];
        try {
          for (const peer of group) {
            results[peer.name] ??= { copyWrite: [], copyRead: [], randread: [], randwrite: [] };
            const pdir = join(dir, `${peer.name}-${rep}`);
            await mkdir(pdir);
            const { proc, uri } = await peer.start(port++, pdir);
            running.push({ name: peer.name, proc, uri, pdir });
          }
          for (const m of metrics) {
            for (const p of running) {
              const v = runs[m](p.uri);
              results[p.name]![m].push(v);
              process.stderr.write(`rep ${rep + 1} ${m} ${p.name}: ${Math.round(v)}\n`);
            }
          }
        } finally {
          for (const p of running) {
            await stop(p.proc);
            await rm(p.pdir, { recursive: true, force: true });
          }
        }
      }
    }
    const med: Record<string, Record<Metric, number>> = {};
    for (const [name, r] of Object.entries(results)) {
      med[name] = {
        copyWrite: median(r.copyWrite),
        copyRead: median(r.copyRead),
        randread: median(r.randread),
        randwrite: median(r.randwrite),
      };
    }
    const names = Object.keys(med);
    const others = names.filter((n) => n !== 'hyper' && n !== 'hyper-volume');
    const rows: string[][] = [['workload', ...names, ...others.map((o) => `hyper/${o}`)]];
    for (const m of metrics) {
      const h = med.hyper?.[m];
      rows.push([
        labels[m],
        ...names.map((n) => Math.round(med[n]![m]).toString()),
        ...others.map((o) => (h === undefined ? '-' : `${(h / med[o]![m]).toFixed(2)}x`)),
      ]);
    }
    const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
    for (const r of rows)
      process.stdout.write(
        r.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ') +
          '\n',
      );
    await mkdir(join(root, 'bench-results'), { recursive: true });
    const out = {
      date: new Date().toISOString(),
      sizeMiB,
      reps,
      fioRuntimeSeconds: runtime,
      transport: 'tcp 127.0.0.1',
      medians: med,
      samples: results,
      ratios: Object.fromEntries(
        others.map((o) => [
          o,
          Object.fromEntries(
            metrics.map((m) => [m, med.hyper === undefined ? null : med.hyper[m] / med[o]![m]]),
          ),
        ]),
      ),
    };
    await writeFile(join(root, 'bench-results', 'nbd.json'), JSON.stringify(out, null, 2) + '\n');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
