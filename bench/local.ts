/**
 * The embedded case: hyper serving a file:// volume on tmpfs against qemu-nbd serving a raw
 * file and a qcow2 file (copy-on-write with internal snapshots, like a hyper volume) on the
 * same tmpfs (HYPER_BENCH_DIR, else /dev/shm). Same export size, one server up at a time, in
 * turns (the order rotates per repetition), medians of --reps:
 *   - nbdcopy write of random data over the whole export, ending with an NBD FLUSH
 *   - nbdcopy read of the whole export to null:
 *   - fio --ioengine=nbd 4k randread and randwrite at iodepth 16
 * Prints values with ratios against qcow2 and raw, the target (>= 1.0x qcow2 on all four),
 * and writes bench-results/local.json. Exit status 1 when the target is missed.
 *
 *   node --import tsx bench/local.ts [--reps 3] [--size-mib 1024] [--runtime 6]
 *                                    [--only hyper,qemu-raw,qemu-qcow2]
 * Needs `npm run build` (it runs bin/run.js).
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  arg,
  haveTool,
  LOCAL_METRICS,
  localLabels,
  localMedians,
  MiB,
  onExit,
  randomFile,
  ratio,
  runLocalMatrix,
  runOk,
  startHyper,
  startQemuNbd,
  table,
  writeResults,
  type LocalPeer,
} from './lib.js';

const reps = Number(arg('reps', '3'));
const sizeMiB = Number(arg('size-mib', '1024'));
const runtime = Number(arg('runtime', '6'));
const only = arg('only', 'hyper,qemu-raw,qemu-qcow2').split(',');
const size = sizeMiB * MiB;

const peers: LocalPeer[] = (
  [
    {
      name: 'hyper',
      start: (dir) => startHyper(`file://${join(dir, 'vol')}/`, { createSize: size }),
    },
    {
      name: 'qemu-raw',
      async start(dir) {
        const img = join(dir, 'disk.raw');
        await writeFile(img, '');
        await truncate(img, size);
        return startQemuNbd(img, 'raw');
      },
    },
    {
      name: 'qemu-qcow2',
      async start(dir) {
        const img = join(dir, 'disk.qcow2');
        await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', img, String(size)]);
        return startQemuNbd(img, 'qcow2');
      },
    },
  ] satisfies LocalPeer[]
).filter((p) => only.includes(p.name));

async function main(): Promise<void> {
  for (const tool of ['nbdcopy', 'fio', 'nbdinfo', 'qemu-nbd', 'qemu-img'])
    if (!haveTool(tool)) throw new Error(`missing ${tool} (scripts/install-deps.sh)`);
  if (!existsSync('dist/commands')) throw new Error('run `npm run build` first');
  const base = process.env.HYPER_BENCH_DIR ?? (existsSync('/dev/shm') ? '/dev/shm' : '/tmp');
  const dir = await mkdtemp(join(base, 'hyper-bench-local-'));
  const removeAtExit = onExit(() => spawnSync('rm', ['-rf', dir]));
  try {
    const src = join(dir, 'src.img');
    await randomFile(src, sizeMiB);
    const { samples, errors } = await runLocalMatrix({
      section: 'local',
      groups: peers.map((p) => [p]),
      reps,
      size,
      runtime,
      src,
      dir,
      flush: true,
    });
    const med = localMedians(samples);
    const labels = localLabels(sizeMiB);
    const names = peers.map((p) => p.name);
    const v = (n: string, m: keyof (typeof med)[string]): number | undefined => {
      const x = med[n]?.[m];
      return x === undefined || Number.isNaN(x) ? undefined : x;
    };
    console.log(
      `\nfile:// volume vs qemu-nbd on tmpfs (${base}), ${sizeMiB} MiB, medians of ${reps}\n`,
    );
    console.log(
      table(
        ['workload', ...names, 'hyper/qcow2', 'hyper/raw'],
        [
          ...LOCAL_METRICS.map((m) => [
            labels[m],
            ...names.map((n) => v(n, m) ?? 'error'),
            ratio(v('hyper', m), v('qemu-qcow2', m)),
            ratio(v('hyper', m), v('qemu-raw', m)),
          ]),
          ['server CPU seconds (all four)', ...names.map((n) => v(n, 'cpuSeconds') ?? '-'), '', ''],
        ],
      ),
    );
    const checks = LOCAL_METRICS.map((m) => {
      const h = v('hyper', m);
      const q = v('qemu-qcow2', m);
      return {
        target: `${labels[m]}: >= 1.0x qcow2`,
        ratio: h !== undefined && q !== undefined ? h / q : undefined,
      };
    });
    console.log('\nTarget\n');
    console.log(
      table(
        ['target', 'measured', 'result'],
        checks.map((c) => [
          c.target,
          c.ratio === undefined ? '-' : `${c.ratio.toFixed(2)}x`,
          c.ratio === undefined ? 'n/a' : c.ratio >= 1 ? 'met' : 'MISSED',
        ]),
      ),
    );
    if (errors.length > 0) console.log(`\nErrors\n  ${errors.join('\n  ')}`);
    const file = await writeResults('local', {
      sizeMiB,
      reps,
      fioRuntimeSeconds: runtime,
      dir: base,
      medians: med,
      samples,
      errors,
      targets: checks.map((c) => ({ ...c, ok: c.ratio === undefined ? null : c.ratio >= 1 })),
    });
    console.log(`\nwrote ${file}`);
    if (errors.length > 0 || checks.some((c) => c.ratio !== undefined && c.ratio < 1))
      process.exitCode = 1;
  } finally {
    await rm(dir, { recursive: true, force: true });
    removeAtExit();
  }
}

await main();
