/**
 * The daemon's control operations at random, several at once, against a store that fails
 * requests: map (read-write, read-only or at a checkpoint, two names per volume), unmap
 * (plain or forced), reload of a rewritten config, writes through NBD with a FLUSH, online
 * compactions, flushes and grows asked through the control API (what `hyper compact`, `snapshot
 * create` and `file set-len` ask), and restarts racing the rest (one of the volumes deduplicates, and its writes
 * repeat a few contents). After each round, with the store answering again, the daemon must
 * agree with itself, its state file, its NBD server and the store:
 *  (a) no export is left half-mapped or half-unmapped;
 *  (b) the state file lists exactly the exports the daemon lists;
 *  (c) a restart maps every export of its state file again;
 *  (d) the NBD server offers exactly the mapped exports;
 *  (e) a volume is mapped read-write at most once, and holds the daemon's live lease;
 *  (f) any volume not held can be mapped read-write at once (no lease of the daemon's own
 *      left in the way);
 *  (g) every write whose FLUSH was acknowledged is in its volume, and nothing else appears;
 *  (i) every grow the daemon acknowledged is in its volume (never smaller), and what it
 *      added reads as zeros;
 *  (h) once every daemon has stopped, nothing of theirs touches the store (no volume left
 *      open behind the daemon's back, renewing its lease).
 * Seeded: HYPER_DAEMON_CHAOS_SEED=N replays one seed, HYPER_DAEMON_CHAOS_SEEDS=K runs K
 * seeds from HYPER_DAEMON_CHAOS_FIRST_SEED (default 1).
 */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { Daemon, type ExportStatus } from '../../../src/daemon/daemon.js';
import { openDaemonStore } from '../../../src/daemon/run.js';
import { isHyperError } from '../../../src/errors.js';
import { openStore } from '../../../src/format/store/index.js';
import { displayHolder, readLease } from '../../../src/format/volume/lease.js';
import { Volume } from '../../../src/format/volume/volume.js';
import { FlakyStore, type Faults } from '../../helpers/flaky-store.js';
import { RawClient, offeredExports } from '../../helpers/raw-nbd-client.js';
import { rng, weighted } from '../../helpers/rng.js';
import { WriteLog } from '../../helpers/write-log.js';

const VOLUMES = ['v0', 'v1', 'v2'];
/** Two export names per volume, so that one volume can be mapped twice. */
const NAMES = VOLUMES.flatMap((v) => [v, `${v}b`]);
const volumeOf = (name: string): string => name.replace(/b$/, '');
const SIZE = 1024 * 1024;
/** This one deduplicates, and its writes repeat three contents (compactions move them). */
const DEDUP = 'v2';
const ROUNDS = 24;

class Violation extends Error {}

function check(ok: boolean, what: string): void {
  if (!ok) throw new Violation(what);
}

/** Every seed's faults switch (each counts the requests of its daemons' stores). */
const allFaults: Faults[] = [];
const requestsSeen = (): number => allFaults.reduce((a, f) => a + (f.requests ?? 0), 0);

async function runSeed(seed: number): Promise<{ log: string[]; injected: number }> {
  const r = rng(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
  const log: string[] = [];
  const dir = await mkdtemp(join(tmpdir(), 'hyper-daemon-chaos-'));
  const url = (v: string) => `file://${dir}/vols/${v}/`;
  const faults: Faults = { rate: 0, rand: rng(seed ^ 0x5bd1e995), injected: 0 };
  allFaults.push(faults);
  for (const v of VOLUMES) {
    await mkdir(join(dir, 'vols', v), { recursive: true });
    const s = await openStore(url(v));
    await Volume.create(s, { size: SIZE, ...(v === DEDUP ? { dedup: true } : {}) });
    await s.close();
  }
  const config = join(dir, 'daemon.json');
  const stateFile = join(dir, 'state.json');
  await writeFile(config, JSON.stringify({ exports: [] }));
  const start = async (): Promise<Daemon> => {
    const d = new Daemon({
      controlSocket: join(dir, 'control.sock'),
      listen: { port: 0, host: '127.0.0.1' },
      stateFile,
      configFile: config,
      openStore: async (u, o) => new FlakyStore(await openDaemonStore(u, o), faults),
      drainMs: 200,
    });
    await d.start();
    return d;
  };
  let d = await start();
  let stopped = false;
  const writes = new WriteLog(seed, SIZE, 4096, (v) => (v === DEDUP ? 3 : 250));

  const nbd = async (name: string): Promise<RawClient> => {
    const c = await RawClient.open(d.info().listen.port!);
    try {
      await c.handshake();
      await c.go(name);
      return c;
    } catch (e) {
      c.close();
      throw e;
    }
  };

  /** Per volume: the largest size a grow the daemon acknowledged asked for. */
  const grownTo = new Map<string, number>();
  const ops: Record<string, () => Promise<string>> = {
    map: async () => {
      const name = pick(NAMES);
      // Read-only now and then, or at the volume's first checkpoint (read-only too).
      const how = r();
      const extra = how < 0.2 ? { readOnly: true } : how < 0.3 ? { at: { checkpoint: 1 } } : {};
      await d.map({ url: url(volumeOf(name)), name, ...extra });
      return `map ${name}${how < 0.2 ? ' ro' : how < 0.3 ? ' --at 1' : ''}`;
    },
    unmap: async () => {
      const name = pick(NAMES);
      const force = r() < 0.3;
      await d.unmap(name, { force });
      return `unmap ${name}${force ? ' --force' : ''}`;
    },
    reload: async () => {
      const names = NAMES.filter(() => r() < 0.3);
      // Replaced whole (another reload of the round may be writing it too).
      const temp = `${config}.${Math.floor(r() * 1e9)}`;
      await writeFile(
        temp,
        JSON.stringify({ exports: names.map((n) => ({ url: url(volumeOf(n)), name: n })) }),
      );
      await rename(temp, config);
      const out = await d.reload();
      return `reload [${names.join(' ')}] -> ${JSON.stringify(out)}`;
    },
    write: async () => {
      const writable = d.list().filter((e) => e.state === 'mapped' && !e.readOnly);
      if (writable.length === 0) return 'write: nothing writable';
      const name = pick(writable).name;
      return writes.writeAndFlush(() => nbd(name), volumeOf(name), name);
    },
    // `hyper compact` and `hyper snapshot create` of a mapped volume: done by the daemon.
    compact: async () => {
      const writable = d.list().filter((e) => e.state === 'mapped' && !e.readOnly);
      if (writable.length === 0) return 'compact: nothing writable';
      const name = pick(writable).name;
      const keepLast = r() < 0.6 ? 1 + Math.floor(r() * 2) : undefined;
      const graceMs = r() < 0.7 ? 0 : 600_000;
      const minLive = pick([0, 0.5, 0.9, 1]);
      const res = await d.compact(name, {
        ...(keepLast === undefined ? {} : { keepLast }),
        graceMs,
        minLive,
      });
      return `compact ${name} keep-last ${keepLast ?? '-'} grace ${graceMs} min-live ${minLive}: dropped ${res.checkpointsDropped}, deleted ${res.segmentsDeleted}, moved ${res.blocksRewritten}`;
    },
    // `hyper file set-len` of a mapped volume: grown by the daemon (a smaller size is refused).
    grow: async () => {
      const writable = d.list().filter((e) => e.state === 'mapped' && !e.readOnly);
      if (writable.length === 0) return 'grow: nothing writable';
      const e = pick(writable);
      const v = volumeOf(e.name);
      const size = (e.size ?? SIZE) + 4096 * (1 + Math.floor(r() * 16));
      const res = await d.resize(e.name, { size });
      grownTo.set(v, Math.max(grownTo.get(v) ?? SIZE, res.size));
      return `grow ${e.name} ${res.previousSize} -> ${res.size}: checkpoint ${res.checkpoint}`;
    },
    flush: async () => {
      const writable = d.list().filter((e) => e.state === 'mapped' && !e.readOnly);
      if (writable.length === 0) return 'flush: nothing writable';
      const name = pick(writable).name;
      const res = await d.flush(name, {});
      return `flush ${name} -> checkpoint ${res.checkpoint}`;
    },
    restart: async () => {
      stopped = true;
      await d.stop();
      return 'stop';
    },
  };
  const chooseOp = weighted(r, [
    ['map', 5],
    ['unmap', 4],
    ['reload', 1.5],
    ['write', 4],
    ['compact', 1.5],
    ['flush', 0.8],
    ['restart', 0.7],
    ['grow', 0.6],
  ] as const);

  const listed = (): ExportStatus[] => d.list();

  const checkRound = async (round: number): Promise<void> => {
    const exports = listed();
    // (a)
    for (const e of exports) {
      check(e.state === 'mapped' || e.state === 'failed', `(a) ${e.name} is ${e.state}`);
    }
    // (b)
    const file = JSON.parse(await readFile(stateFile, 'utf8')) as {
      exports: { name: string; url: string; source: string; readOnly?: boolean; at?: unknown }[];
    };
    const fromFile = file.exports
      .map((e) => `${e.name} ${e.url} ${e.source} ${e.readOnly === true || e.at !== undefined}`)
      .sort();
    const fromList = exports.map((e) => `${e.name} ${e.url} ${e.source} ${e.readOnly}`).sort();
    check(
      JSON.stringify(fromFile) === JSON.stringify(fromList),
      `(b) state file ${JSON.stringify(fromFile)} vs listed ${JSON.stringify(fromList)}`,
    );
    // (d)
    const mapped = new Set(exports.filter((e) => e.state === 'mapped').map((e) => e.name));
    const offered = await offeredExports(NAMES, nbd);
    for (const name of NAMES) {
      check(
        offered.has(name) === mapped.has(name),
        `(d) ${name}: offered ${offered.has(name)}, mapped ${mapped.has(name)}`,
      );
    }
    // (e), (f)
    for (const v of VOLUMES) {
      const holders = exports.filter(
        (e) => volumeOf(e.name) === v && e.state === 'mapped' && !e.readOnly,
      );
      check(holders.length <= 1, `(e) ${v} mapped read-write as ${holders.map((e) => e.name)}`);
      const store = await openStore(url(v));
      const lease = await readLease(store);
      await store.close();
      if (holders.length === 1) {
        const h = holders[0]!;
        check(
          lease?.live === true && displayHolder(lease.lease.holder) === h.lease?.holder,
          `(e) ${v} is mapped as ${h.name} but its lease is ${JSON.stringify(lease?.lease)}`,
        );
        continue;
      }
      // Still open after a failed last flush: held, not mappable until unmapped.
      if (
        exports.some(
          (e) => volumeOf(e.name) === v && /stays open in the daemon/.test(e.error?.message ?? ''),
        )
      )
        continue;
      const probe = NAMES.find((n) => volumeOf(n) === v && !exports.some((e) => e.name === n));
      if (probe === undefined) continue;
      try {
        await d.map({ url: url(v), name: probe });
        await d.unmap(probe);
      } catch (e) {
        throw new Violation(
          `(f) ${v} is not held, but mapping it as ${probe} failed: ${String(e)}`,
        );
      }
    }
    log.push(`  round ${round} ok: ${fromList.join(', ')}`);
  };

  const checkData = async (): Promise<void> => {
    for (const v of VOLUMES) {
      const store = await openStore(url(v));
      const vol = await Volume.open(store, { readOnly: true });
      try {
        const bad = await writes.mismatch(v, (o, n) => vol.read(o, n));
        check(bad === undefined, `(g) ${bad}`);
        const size = vol.info.size;
        check(
          size >= (grownTo.get(v) ?? SIZE),
          `(i) ${v} is ${size} bytes, grown to ${grownTo.get(v)}`,
        );
        if (size > SIZE) {
          const added = await vol.read(SIZE, size - SIZE);
          check(!added.some((x) => x !== 0), `(i) ${v}: the grown range is not zeros`);
        }
      } finally {
        await vol.close();
        await store.close();
      }
    }
  };

  try {
    for (let round = 0; round < ROUNDS; round++) {
      const x = r();
      faults.rate = x < 0.45 ? 0 : x < 0.8 ? 0.08 : 0.25;
      faults.down = r() < 0.12 ? new Set(['put']) : undefined;
      const n = 1 + Math.floor(r() * 4);
      const chosen = Array.from({ length: n }, chooseOp);
      log.push(
        `round ${round}: faults ${faults.rate}${faults.down ? ' +puts down' : ''}: ${chosen.join(', ')}`,
      );
      const results = await Promise.allSettled(
        chosen.map(async (op) => {
          await new Promise((res) => setTimeout(res, Math.floor(r() * 25)));
          return ops[op]!();
        }),
      );
      for (const res of results) {
        log.push(
          res.status === 'fulfilled'
            ? `  ${res.value}`
            : `  ! ${isHyperError(res.reason) ? `${res.reason.code}: ${res.reason.message}` : String(res.reason)}`,
        );
      }
      faults.rate = 0;
      faults.down = undefined;
      if (stopped) {
        const wasMapped = listed()
          .filter((e) => e.state === 'mapped')
          .map((e) => e.name);
        const before = JSON.parse(await readFile(stateFile, 'utf8')) as {
          exports: { name: string; source: string }[];
        };
        d = await start();
        stopped = false;
        // (c) What was mapped is mapped again (unless the config it came from dropped it),
        // and nothing comes back that neither the state file nor the config names.
        const wanted = JSON.parse(await readFile(config, 'utf8')) as {
          exports: { name: string }[];
        };
        const inConfig = new Set(wanted.exports.map((e) => e.name));
        const again = listed();
        const state = new Map(again.map((e) => [e.name, e.state]));
        const allowed = new Set([...before.exports.map((e) => e.name), ...inConfig]);
        const dropped = (n: string) =>
          before.exports.some((e) => e.name === n && e.source === 'config') && !inConfig.has(n);
        const lost = wasMapped.filter((n) => !dropped(n) && state.get(n) !== 'mapped');
        check(
          lost.length === 0 && again.every((e) => allowed.has(e.name)),
          `(c) after a restart: ${JSON.stringify(again.map((e) => [e.name, e.state, e.error?.message]))}, mapped before: ${wasMapped}, state file ${JSON.stringify(before.exports)}`,
        );
      }
      await checkRound(round);
    }
    await d.stop();
    stopped = true;
    await checkData();
  } catch (e) {
    const tail = log.slice(-60).join('\n');
    if (e instanceof Violation) {
      throw new Error(`seed ${seed}: ${e.message}\n${tail}`, { cause: e });
    }
    throw new Error(`seed ${seed}: ${String(e)}\n${tail}`, { cause: e });
  } finally {
    if (!stopped) await d.stop().catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
  }
  return { log, injected: faults.injected };
}

describe('daemon under concurrent control requests and store faults', () => {
  it('keeps its table, state file, NBD exports, leases and data in agreement (seeded)', async () => {
    const one = process.env['HYPER_DAEMON_CHAOS_SEED'];
    const first = Number(process.env['HYPER_DAEMON_CHAOS_FIRST_SEED'] ?? 1);
    const count = Number(process.env['HYPER_DAEMON_CHAOS_SEEDS'] ?? 6);
    const seeds =
      one !== undefined ? [Number(one)] : Array.from({ length: count }, (_, i) => first + i);
    let injected = 0;
    for (const seed of seeds) {
      const out = await runSeed(seed);
      injected += out.injected;
      if (process.env['HYPER_DAEMON_CHAOS_VERBOSE']) console.log(out.log.join('\n'));
    }
    // The faults happened (a run that injected none tested nothing of them).
    assert.ok(injected > 0, 'no store fault was injected');
    // (h) Volume leases are renewed every 10 s: a volume left open would show by then.
    const seen = requestsSeen();
    await new Promise((res) => setTimeout(res, 11_000));
    assert.equal(requestsSeen(), seen, '(h) store requests after every daemon stopped');
  });
});
