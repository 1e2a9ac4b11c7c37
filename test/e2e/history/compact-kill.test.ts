/**
 * `hyper compact` killed with SIGKILL at random points, then rerun.
 *
 * A volume with history is written through the library (heavy random overwrites, so most
 * segments become mostly garbage, plus two named snapshots), copied once per trial, and the
 * real CLI compacts each copy with `--keep-last 1 --grace 0s` until it is SIGKILLed: after a
 * seeded random delay, or when it has created or deleted a random number of segments (so the
 * kills land in the rewrite and the delete phases, not only during start-up). After every
 * kill the volume must open with exactly the expected content, the named snapshots must read
 * back exactly, and `file stat` must add up to the bytes on disk. A killed compaction leaves
 * its lease live (it cannot release it): the rerun without --force is refused with exit code
 * 4 naming the "hyper compact" holder, and the rerun with --force completes and leaves the
 * stored bytes within 1.15 × the live bytes (plus a small overhead for the snapshots' own data
 * and the head). Set HYPER_TEST_SEED to replay a run (the seed is in every failure message).
 */
import assert from 'node:assert/strict';
import { cp, mkdir, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ChildProcess } from 'node:child_process';
import type { CompactCommandResult } from '../../../src/commands/compact.js';
import type { FileStatResult } from '../../../src/commands/file/stat.js';
import { openStore, type OpenStoreOptions } from '../../../src/format/store/index.js';
import type { ObjectStore } from '../../../src/format/store/types.js';
import { statVolume } from '../../../src/format/volume/admin.js';
import { createSnapshot } from '../../../src/format/volume/history.js';
import { Volume } from '../../../src/format/volume/volume.js';
import { fileUrl, hyper, hyperJson, show, tempDir, type CliResult } from '../../helpers/cli.js';
import { needS3 } from '../../helpers/env.js';
import { emptyStore, s3Options, uniqueS3Url } from '../../helpers/s3.js';
import {
  exportSha,
  objectsOnDisk,
  randomBuffer,
  rng,
  sha256,
  shaAt,
  sum,
  tempFiles,
} from '../../helpers/volume-content.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const SEED = Number(process.env.HYPER_TEST_SEED ?? 20261123);
/** Stored bytes allowed above 1.15 × live: the head, lease and snapshot records, and the
 *  data only the "early" snapshot still uses (4 × 64 KiB) with its index nodes. */
const OVERHEAD = 512 * KiB;

interface Expected {
  current: string;
  snapshots: Record<string, string>;
}

/**
 * A volume of `size` bytes with 1 MiB segments: snapshot "empty" of the new volume, a small
 * first write pinned as "early", then `rounds` rounds of random 64 KiB overwrites of the
 * whole volume (one segment per MiB written) and a trim.
 */
async function buildHistory(
  store: ObjectStore,
  size: number,
  rounds: number,
  seed: number,
): Promise<Expected> {
  const rand = rng(seed);
  await Volume.create(store, { size, segmentSize: 1 * MiB });
  const v = await Volume.open(store, { flushIntervalMs: 0 });
  const ref = Buffer.alloc(size);
  const snapshots: Record<string, string> = {};
  try {
    await createSnapshot(store, 'empty');
    snapshots.empty = sha256(ref);
    const slots = size / (64 * KiB);
    const write = async (): Promise<void> => {
      const off = Math.floor(rand() * slots) * 64 * KiB;
      const data = randomBuffer(rand, 64 * KiB);
      await v.write(off, data);
      data.copy(ref, off);
    };
    for (let i = 0; i < 4; i++) await write();
    await v.flush();
    await createSnapshot(store, 'early');
    snapshots.early = sha256(ref);
    for (let r = 0; r < rounds; r++) {
      for (let i = 0; i < slots; i++) await write();
      await v.flush();
    }
    const trimAt = Math.floor(rand() * (slots - 4)) * 64 * KiB;
    await v.trim(trimAt, 256 * KiB);
    ref.fill(0, trimAt, trimAt + 256 * KiB);
    await v.flush();
  } finally {
    await v.close();
  }
  return { current: sha256(ref), snapshots };
}

/** Where a trial's volume lives, and how to look at it. */
interface Target {
  url: string;
  /** Extra CLI arguments (the S3 endpoint). */
  cliArgs: string[];
  /** The volume's objects and their sizes, as the store (or the disk) has them. */
  objects(): Promise<Map<string, number>>;
  /** A store for library reads; closed by the caller. */
  open(): Promise<ObjectStore>;
  tempFiles(): Promise<string[]>;
  /** Names of the segment objects now (polled to kill at a given point). */
  segments(): Promise<string[]>;
}

function fileTarget(dir: string): Target {
  return {
    url: fileUrl(dir),
    cliArgs: [],
    objects: () => objectsOnDisk(dir),
    open: () => openStore(fileUrl(dir)),
    tempFiles: () => tempFiles(dir),
    segments: () => readdir(join(dir, 'seg')).catch(() => []),
  };
}

function s3Target(url: string, options: OpenStoreOptions, endpoint: string): Target {
  const open = (): Promise<ObjectStore> => openStore(url, options);
  return {
    url,
    cliArgs: ['--endpoint', endpoint],
    open,
    objects,
    tempFiles: async () => [],
    segments: async () => [...(await objects()).keys()].filter((k) => k.startsWith('seg/')),
  };
  async function objects(): Promise<Map<string, number>> {
    const store = await open();
    const out = new Map<string, number>();
    try {
      for await (const page of store.list('')) for (const o of page.objects) out.set(o.key, o.size);
    } finally {
      await store.close();
    }
    return out;
  }
}

/**
 * The checks after a kill and after a rerun: content, snapshots, stat vs what is stored.
 * With `cli` the content is exported and the stat taken by the real CLI, otherwise read
 * through the library (quicker; used after reruns).
 */
async function verify(
  target: Target,
  expected: Expected,
  image: string,
  what: string,
  cli = true,
): Promise<{ storedBytes: number }> {
  const store = await target.open();
  let st: FileStatResult | Awaited<ReturnType<typeof statVolume>>;
  try {
    const current = cli ? await exportSha(target.url, image, target.cliArgs) : await shaAt(store);
    assert.equal(current, expected.current, `${what}: current content`);
    for (const [name, sha] of Object.entries(expected.snapshots)) {
      assert.equal(await shaAt(store, { snapshot: name }), sha, `${what}: snapshot ${name}`);
    }
    st = cli
      ? await hyperJson<FileStatResult>(['file', 'stat', target.url, ...target.cliArgs])
      : await statVolume(store);
  } finally {
    await store.close();
  }
  const objects = await target.objects();
  assert.equal(st.storedBytes, sum(objects), `${what}: stat's stored bytes = the objects' sizes`);
  assert.equal(
    'segmentCount' in st ? st.segmentCount : st.segments,
    [...objects.keys()].filter((k) => k.startsWith('seg/')).length,
    `${what}: segments`,
  );
  return st;
}

const compactArgs = (t: Target): string[] => [
  'compact',
  t.url,
  '--keep-last',
  '1',
  '--grace',
  '0s',
  '--yes',
  '--json',
  ...t.cliArgs,
];

type KillPlan =
  | { kind: 'delay'; ms: number }
  | { kind: 'created'; segments: number }
  | { kind: 'deleted'; segments: number };

const describePlan = (p: KillPlan): string =>
  p.kind === 'delay' ? `after ${p.ms} ms` : `after ${p.segments} segments ${p.kind}`;

/** Run compaction and SIGKILL it according to `plan` (polling the segment objects for events). */
async function compactAndKill(
  target: Target,
  plan: KillPlan,
): Promise<CliResult & { pid: number }> {
  let stop = false;
  let timer: NodeJS.Timeout | undefined;
  let pid = 0;
  const before = new Set(await target.segments());
  const onSpawn = (child: ChildProcess): void => {
    pid = child.pid ?? 0;
    if (plan.kind === 'delay') {
      timer = setTimeout(() => child.kill('SIGKILL'), plan.ms);
      return;
    }
    void (async () => {
      while (!stop) {
        const now = await target.segments().catch(() => [...before]);
        const created = now.filter((n) => !before.has(n)).length;
        const nowSet = new Set(now);
        const deleted = [...before].filter((n) => !nowSet.has(n)).length;
        if (
          (plan.kind === 'created' && created >= plan.segments) ||
          (plan.kind === 'deleted' && deleted >= plan.segments)
        ) {
          child.kill('SIGKILL');
          return;
        }
        await sleep(2);
      }
    })();
  };
  try {
    return { ...(await hyper(compactArgs(target), { onSpawn, timeoutMs: 120_000 })), pid };
  } finally {
    stop = true;
    if (timer) clearTimeout(timer);
  }
}

/** Rerun after a kill: refused while the dead run's lease is live (exit 4), then --force. */
async function rerun(
  target: Target,
  what: string,
): Promise<{ result: CompactCommandResult; refused: boolean }> {
  const first = await hyper(compactArgs(target));
  let refused = false;
  let done = first;
  if (first.code === 4) {
    refused = true;
    const err = JSON.parse(first.stdout) as { error: { code: string; message: string } };
    assert.equal(err.error.code, 'LEASE_HELD', `${what}: ${show(first)}`);
    assert.match(
      err.error.message,
      /in use by hyper compact on \S+:\d+/,
      `${what}: names the holder`,
    );
    done = await hyper([...compactArgs(target), '--force']);
  }
  assert.equal(done.code, 0, `${what}: rerun: ${show(done)}`);
  return { result: JSON.parse(done.stdout) as CompactCommandResult, refused };
}

function assertCompacted(r: CompactCommandResult, st: { storedBytes: number }, what: string): void {
  const bound = 1.15 * r.liveBytes + OVERHEAD;
  assert.ok(r.liveBytes > 0, what);
  assert.ok(
    r.storedBytesAfter <= bound,
    `${what}: segments stored ${r.storedBytesAfter} > 1.15 × live ${r.liveBytes} + ${OVERHEAD}`,
  );
  assert.ok(
    st.storedBytes <= bound,
    `${what}: all objects ${st.storedBytes} > 1.15 × live ${r.liveBytes} + ${OVERHEAD}`,
  );
}

describe('hyper compact interrupted (SIGKILL at random points, SIGINT)', () => {
  it('leaves a valid volume every time, and a rerun finishes the job (file://)', async (t) => {
    const what0 = `seed ${SEED}`;
    const dir = await tempDir(t, 'hyper-compact-');
    const base = join(dir, 'base');
    const image = join(dir, 'out.img');
    await mkdir(base);
    const baseStore = await openStore(fileUrl(base));
    let expected: Expected;
    let before: { storedBytes: number };
    try {
      expected = await buildHistory(baseStore, 16 * MiB, 4, SEED);
      before = await statVolume(baseStore);
    } finally {
      await baseStore.close();
    }
    const baseSegs = new Set(await readdir(join(base, 'seg')));

    // An uninterrupted run first: what a complete compaction does, and how long it takes.
    const full = fileTarget(join(dir, 'full'));
    await cp(base, join(dir, 'full'), { recursive: true });
    // A dry run changes nothing (no request writes) and predicts the checkpoints dropped.
    const fullObjects = await objectsOnDisk(join(dir, 'full'));
    const dry = await hyperJson<CompactCommandResult>([
      ...compactArgs(full).filter((a) => a !== '--yes' && a !== '--json'),
      '--dry-run',
    ]);
    assert.equal(dry.dryRun, true);
    assert.equal(dry.requests.putCount + dry.requests.deleteCount, 0);
    assert.deepEqual(await objectsOnDisk(join(dir, 'full')), fullObjects);
    const t0 = performance.now();
    const fullRun = await hyper(compactArgs(full));
    const fullMs = performance.now() - t0;
    assert.equal(fullRun.code, 0, show(fullRun));
    const r = JSON.parse(fullRun.stdout) as CompactCommandResult;
    assert.ok(r.droppedCheckpointCount > 0, `dropped: ${r.droppedCheckpointCount}`);
    // (The real run also drops the checkpoint that was current, superseded by its own commit;
    // the dry run counts that one as kept.)
    assert.ok(
      r.droppedCheckpointCount - dry.droppedCheckpointCount >= 0 &&
        r.droppedCheckpointCount - dry.droppedCheckpointCount <= 1,
      `dry run predicted ${dry.droppedCheckpointCount} dropped, the run dropped ${r.droppedCheckpointCount}`,
    );
    assert.ok(r.rewrittenSegmentCount > 0, `rewritten: ${r.rewrittenSegmentCount}`);
    assert.ok(r.deletedSegmentCount > 0 && r.reclaimedBytes > 0);
    const segBytes = [...(await objectsOnDisk(base))].filter(([k]) => k.startsWith('seg/'));
    assert.equal(r.storedBytesBefore, sum(new Map(segBytes)), 'stored before = segment bytes');
    assert.ok(r.requests.totalCount > 0 && r.requests.deleteCount > 0 && r.requests.putCount > 0);
    const afterFull = await verify(full, expected, image, `${what0}, after a full run`);
    assertCompacted(r, afterFull, `${what0}, full run`);
    assert.ok(afterFull.storedBytes < before.storedBytes / 2, 'most of the history is gone');
    const created = (await readdir(join(dir, 'full', 'seg'))).filter((n) => !baseSegs.has(n));
    t.diagnostic(
      `full run: ${Math.round(fullMs)} ms, ${r.rewrittenSegmentCount} segments rewritten into ${created.length}, ${r.deletedSegmentCount} deleted, stored ${r.storedBytesBefore} -> ${r.storedBytesAfter}, live ${r.liveBytes}`,
    );
    // Rerunning a finished compaction keeps it within bounds (it may still tidy a few
    // segments the first run's own index writes left under --min-live) and grows nothing.
    const again = await hyperJson<CompactCommandResult>(compactArgs(full).slice(0, -1));
    assert.ok(again.storedBytesAfter <= r.storedBytesAfter, JSON.stringify(again));
    assertCompacted(again, await verify(full, expected, image, 'again', false), 'again');

    // Killed runs: by time, after some new segments are written, after some are deleted.
    const rand = rng(SEED);
    const trials = 6;
    let killed = 0;
    let refusals = 0;
    for (let i = 0; i < trials; i++) {
      const plan: KillPlan =
        i % 3 === 0
          ? { kind: 'delay', ms: Math.round(fullMs * (0.3 + 0.4 * rand())) }
          : i % 3 === 1
            ? {
                kind: 'created',
                segments: 1 + Math.floor(rand() * Math.max(1, created.length - 1)),
              }
            : {
                kind: 'deleted',
                segments: 1 + Math.floor(rand() * Math.max(1, r.deletedSegmentCount / 2)),
              };
      const what = `${what0}, trial ${i}, kill ${describePlan(plan)}`;
      const trialDir = join(dir, `t${i}`);
      await cp(base, trialDir, { recursive: true });
      const target = fileTarget(trialDir);
      const run = await compactAndKill(target, plan);
      if (run.code === 137) killed++;
      else assert.equal(run.code, 0, `${what}: ${show(run)}`);

      await verify(target, expected, image, `${what}, after the kill`);
      const { result, refused } = await rerun(target, what);
      if (refused) refusals++;
      const st = await verify(target, expected, image, `${what}, after the rerun`, false);
      assertCompacted(result, st, what);
      // The killed run may leave a temp file (an object it was writing); the file store sweeps
      // those of dead processes after a minute. Nothing else may be left.
      for (const f of await target.tempFiles()) {
        assert.ok(f.startsWith(`${run.pid}-`), `${what}: temp file ${f} not the killed run's`);
      }
      t.diagnostic(
        `${what}: exit ${run.code}, rerun ${refused ? 'refused, then --force' : 'ran'}: dropped ${result.droppedCheckpointCount}, deleted ${result.deletedSegmentCount}, rewrote ${result.rewrittenSegmentCount}`,
      );
    }
    // The test means something only if runs were really cut short mid-way (a timed kill may
    // come after a fast run ended; the kills on segment events cannot).
    assert.ok(killed >= trials - 2, `${what0}: only ${killed} of ${trials} runs were killed`);
    assert.ok(refusals >= 3, `${what0}: only ${refusals} kills left a lease (none mid-way?)`);
  });

  it('stops cleanly on SIGINT (exit 130), releasing the lease', async (t) => {
    const dir = await tempDir(t, 'hyper-compact-int-');
    const volDir = join(dir, 'vol');
    await mkdir(volDir);
    const store = await openStore(fileUrl(volDir));
    let expected: Expected;
    try {
      expected = await buildHistory(store, 16 * MiB, 3, SEED + 7);
    } finally {
      await store.close();
    }
    const target = fileTarget(volDir);
    const before = new Set(await target.segments());
    let stop = false;
    const run = await hyper(compactArgs(target), {
      onSpawn: (child) => {
        void (async () => {
          // Interrupt once the rewrite has written its first segment.
          while (!stop) {
            const now = await target.segments();
            if (now.some((n) => !before.has(n))) {
              child.kill('SIGINT');
              return;
            }
            await sleep(2);
          }
        })();
      },
    });
    stop = true;
    assert.equal(run.code, 130, show(run));
    assert.match(run.stderr, /Received SIGINT: stopping cleanly/);
    const err = JSON.parse(run.stdout) as { error: { code: string } };
    assert.equal(err.error.code, 'ABORTED');
    await verify(target, expected, join(dir, 'out.img'), 'after SIGINT');
    // The lease was released: a rerun needs no --force.
    const again = await hyperJson<CompactCommandResult>(compactArgs(target).slice(0, -1));
    assert.ok(again.storedBytesAfter <= 1.15 * again.liveBytes + OVERHEAD);
    await verify(target, expected, join(dir, 'out.img'), 'after the rerun', false);
  });

  it('the same on S3 (RGW)', async (t) => {
    const cfg = needS3(t);
    if (!cfg) return;
    const dir = await tempDir(t, 'hyper-compact-s3-');
    const image = join(dir, 'out.img');
    const options = s3Options(cfg);
    const rand = rng(SEED + 1);
    let killed = 0;
    for (let i = 0; i < 2; i++) {
      const url = uniqueS3Url(cfg, 'compact-kill');
      const target = s3Target(url, options, cfg.endpoint);
      const store = await openStore(url, options);
      t.after(async () => {
        await emptyStore(store);
        await store.close();
      });
      const expected = await buildHistory(store, 8 * MiB, 3, SEED + i);
      const plan: KillPlan =
        i === 0
          ? { kind: 'created', segments: 1 + Math.floor(rand() * 2) }
          : { kind: 'deleted', segments: 1 + Math.floor(rand() * 3) };
      const what = `s3, seed ${SEED}, trial ${i}, kill ${describePlan(plan)}`;
      const run = await compactAndKill(target, plan);
      if (run.code === 137) killed++;
      else assert.equal(run.code, 0, `${what}: ${show(run)}`);
      await verify(target, expected, image, `${what}, after the kill`);
      const { result, refused } = await rerun(target, what);
      const st = await verify(target, expected, image, `${what}, after the rerun`, false);
      assertCompacted(result, st, what);
      t.diagnostic(
        `${what}: exit ${run.code}, rerun ${refused ? 'refused, then --force' : 'ran'}: dropped ${result.droppedCheckpointCount}, deleted ${result.deletedSegmentCount}, rewrote ${result.rewrittenSegmentCount}`,
      );
    }
    assert.ok(killed >= 1, `s3, seed ${SEED}: no run was killed mid-way`);
  });
});
