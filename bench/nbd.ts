/**
 * NBD transport benchmark: hyper's server on the in-memory device against `nbdkit memory`
 * and `qemu-nbd` on a raw file in tmpfs, side by side in one run, with real clients:
 *   - nbdcopy 1 GiB write (random data from tmpfs) and read (after the full write) to null:
 *   - fio --ioengine=nbd 4k randread and randwrite at iodepth 16
 * Prints a table with ratios to each peer and writes bench-results/nbd.json.
 *
 *   node --import tsx bench/nbd.ts [--reps N] [--size-mib N] [--runtime S] [--only hyper,nbdkit,qemu-nbd]
 *                                  [--volume]   (also serve a file:// volume on tmpfs via bin/run.js serve;
 *                                                needs `npm run build` first; the `local` section
 *                                                compares that against qemu-nbd raw and qcow2)
 */
import { existsSync } from 'node:fs';
import { mkdtemp, rm, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  arg,
  flag,
  haveTool,
  launch,
  LOCAL_METRICS,
  localLabels,
  localMedians,
  MiB,
  randomFile,
  runLocalMatrix,
  startHyper,
  startQemuNbd,
  stopProc,
  waitNbd,
  writeResults,
  freePort,
  type LocalPeer,
} from './lib.js';

const reps = Number(arg('reps', '1'));
const sizeMiB = Number(arg('size-mib', '1024'));
const runtime = Number(arg('runtime', '6'));
const only = arg('only', 'hyper,nbdkit,qemu-nbd').split(',');
const withVolume = flag('volume');
const size = sizeMiB * MiB;

const peers: LocalPeer[] = [
  {
    name: 'hyper',
    async start() {
      const port = await freePort();
      const l = await launch(
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
        { ready: /READY/ },
      );
      return { uri: `nbd://127.0.0.1:${port}/`, pids: [l.pid], stop: () => stopProc(l.proc) };
    },
  },
  {
    name: 'nbdkit',
    async start() {
      const port = await freePort();
      const l = await launch('nbdkit', [
        '-f',
        '-i',
        '127.0.0.1',
        '-p',
        String(port),
        'memory',
        String(size),
      ]);
      const uri = `nbd://127.0.0.1:${port}/`;
      await waitNbd(uri);
      return { uri, pids: [l.pid], stop: () => stopProc(l.proc) };
    },
  },
  {
    name: 'qemu-nbd',
    async start(dir) {
      const img = join(dir, 'qemu.img');
      await writeFile(img, '');
      await truncate(img, size);
      return startQemuNbd(img, 'raw');
    },
  },
];
if (withVolume)
  peers.push({
    name: 'hyper-volume',
    start: (dir) => startHyper(`file://${join(dir, 'vol')}/`, { createSize: size }),
  });

async function main(): Promise<void> {
  for (const tool of [
    'nbdcopy',
    'fio',
    'nbdinfo',
    ...(only.includes('nbdkit') ? ['nbdkit'] : []),
    ...(only.includes('qemu-nbd') ? ['qemu-nbd'] : []),
  ])
    if (!haveTool(tool)) throw new Error(`missing ${tool}`);
  const dir = await mkdtemp(join(existsSync('/dev/shm') ? '/dev/shm' : '/tmp', 'hyper-bench-'));
  try {
    const src = join(dir, 'src.img');
    await randomFile(src, sizeMiB);
    // The transport peers run side by side: in each repetition all of them are started, then
    // each workload runs on every peer in turn (the order rotates per repetition), so that a
    // change in machine load hits all peers alike. The volume row runs alone afterwards: its
    // background flushes would otherwise disturb whichever peer runs next.
    const sideBySide = peers.filter((p) => only.includes(p.name) && p.name !== 'hyper-volume');
    const alone = peers.filter((p) => p.name === 'hyper-volume');
    const { samples, errors } = await runLocalMatrix({
      section: 'nbd',
      groups: [sideBySide, ...alone.map((p) => [p])],
      reps,
      size,
      runtime,
      src,
      dir,
    });
    const med = localMedians(samples);
    const labels = localLabels(sizeMiB);
    const names = Object.keys(med);
    const others = names.filter((n) => n !== 'hyper' && n !== 'hyper-volume');
    const rows: string[][] = [['workload', ...names, ...others.map((o) => `hyper/${o}`)]];
    for (const m of LOCAL_METRICS) {
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
    if (errors.length > 0) console.log(`\nErrors\n  ${errors.join('\n  ')}`);
    await writeResults('nbd', {
      sizeMiB,
      reps,
      fioRuntimeSeconds: runtime,
      transport: 'tcp 127.0.0.1',
      medians: med,
      samples,
      errors,
      ratios: Object.fromEntries(
        others.map((o) => [
          o,
          Object.fromEntries(
            LOCAL_METRICS.map((m) => [
              m,
              med.hyper === undefined ? null : med.hyper[m] / med[o]![m],
            ]),
          ),
        ]),
      ),
    });
    if (errors.length > 0) process.exitCode = 1;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
