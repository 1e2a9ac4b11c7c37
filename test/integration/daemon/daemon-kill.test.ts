/**
 * `hyper daemon` killed (SIGKILL) at random moments while control requests and NBD writes are
 * in flight, then started again on the same state file. Volumes on `file://` and on RGW.
 * Each round starts one to four operations at once, with seeded choices (map read-write or
 * read-only, unmap plain or forced, a 4 KiB write and a FLUSH over NBD, an online compaction
 * asked through the control API as `hyper compact` does), and in about half
 * of the rounds kills the daemon part-way through them. After every round:
 *  (a) the restarted daemon maps every export whose map it had acknowledged and whose unmap
 *      nobody asked for, and nothing whose map it never received or whose unmap it acknowledged
 *      (a request cut by the kill may land either way);
 *  (b) every export it lists is mapped (no store fails here, so nothing has a reason to fail),
 *      with the read-only setting it was mapped with, and its state file lists the same;
 *  (c) the NBD server offers exactly the mapped exports;
 *  (d) any volume not mapped read-write can be mapped read-write at once: no lease of a
 *      killed daemon is left in the way;
 *  (e) every write whose FLUSH was acknowledged is in its volume, and a write cut by the kill
 *      is there whole or not at all.
 * Seeded: HYPER_DAEMON_KILL_SEED=N replays one seed, HYPER_DAEMON_KILL_SEEDS=K runs K seeds
 * from HYPER_DAEMON_KILL_FIRST_SEED (default 1).
 */
import assert from 'node:assert/strict';
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { openStore, type OpenStoreOptions } from '../../../src/format/store/index.js';
import { Volume } from '../../../src/format/volume/volume.js';
import { fileUrl, tempDir } from '../../helpers/cli.js';
import { controlCall, startDaemon, type RunningDaemon } from '../../helpers/daemon.js';
import { needS3 } from '../../helpers/env.js';
import { RawClient, offeredExports } from '../../helpers/raw-nbd-client.js';
import { rng, weighted } from '../../helpers/rng.js';
import { s3Options, uniqueS3Url } from '../../helpers/s3.js';
import { WriteLog } from '../../helpers/write-log.js';

const VOLUMES = ['v0', 'v1', 's3'];
/** Two export names per volume, so that one volume can be mapped twice. */
const NAMES = VOLUMES.flatMap((v) => [v, `${v}b`]);
const volumeOf = (name: string): string => name.replace(/b$/, '');
const SIZE = 4 * 1024 * 1024;
const ROUNDS = 24;

interface Listed {
  name: string;
  state: string;
  readOnly: boolean;
  error: { message: string } | null;
}

class Violation extends Error {}

function check(ok: boolean, what: string): void {
  if (!ok) throw new Violation(what);
}

describe('hyper daemon killed at random moments', () => {
  it('maps again what it acknowledged, frees what it held, keeps every flushed write (seeded)', async (t) => {
    const cfg = needS3(t);
    if (!cfg) return;
    const one = process.env['HYPER_DAEMON_KILL_SEED'];
    const first = Number(process.env['HYPER_DAEMON_KILL_FIRST_SEED'] ?? 1);
    const count = Number(process.env['HYPER_DAEMON_KILL_SEEDS'] ?? 1);
    const seeds =
      one !== undefined ? [Number(one)] : Array.from({ length: count }, (_, i) => first + i);
    let kills = 0;
    let cut = 0;
    let flushed = 0;
    for (const seed of seeds) {
      const dir = await tempDir(t, 'hyper-daemon-kill-');
      const urls = new Map<string, string>([
        ['v0', fileUrl(join(dir, 'vols', 'v0'))],
        ['v1', fileUrl(join(dir, 'vols', 'v1'))],
        ['s3', uniqueS3Url(cfg, `daemon-kill-${seed}`)],
      ]);
      const out = await runSeed(seed, dir, urls, s3Options(cfg), cfg.endpoint);
      kills += out.kills;
      cut += out.cut;
      flushed += out.flushed;
      if (process.env['HYPER_DAEMON_KILL_VERBOSE']) console.log(out.log.join('\n'));
    }
    // The kills happened and cut requests in flight, and writes were flushed (a run without
    // them tested nothing of what this test is about).
    assert.ok(kills >= 3, `${kills} kills`);
    assert.ok(cut >= 1, `${cut} requests cut by a kill`);
    assert.ok(flushed >= 5, `${flushed} flushed writes`);
  });
});

async function runSeed(
  seed: number,
  dir: string,
  urls: Map<string, string>,
  s3: OpenStoreOptions,
  endpoint: string,
): Promise<{ log: string[]; kills: number; cut: number; flushed: number }> {
  const r = rng(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
  const log: string[] = [];
  const url = (v: string): string => urls.get(v)!;
  const storeOptions = (v: string): OpenStoreOptions => (v === 's3' ? s3 : {});
  for (const v of VOLUMES) {
    if (v !== 's3') await mkdir(join(dir, 'vols', v), { recursive: true });
    const s = await openStore(url(v), storeOptions(v));
    await Volume.create(s, { size: SIZE });
    await s.close();
  }
  const stateFile = join(dir, 'state.json');
  const controlSocket = join(dir, 'control.sock');
  const start = () =>
    startDaemon(
      ['--port', '0', '--state-file', stateFile, '--endpoint', endpoint, '--drain', '1s'],
      { controlSocket },
    );
  let d: RunningDaemon = await start();

  /** What the daemon acknowledged: name → read-only. */
  const mapped = new Map<string, boolean>();
  const writes = new WriteLog(seed, SIZE);
  let kills = 0;
  let cut = 0;
  let writesCut = 0;

  const nbd = async (name: string): Promise<RawClient> => {
    const c = await RawClient.open(d.port);
    try {
      await c.handshake();
      await c.go(name);
      return c;
    } catch (e) {
      c.close();
      throw e;
    }
  };
  const list = async (): Promise<Listed[]> => {
    const res = await controlCall(controlSocket, 'GET', '/v1/exports');
    assert.equal(res.status, 200);
    return (res.body as { exports: Listed[] }).exports;
  };

  /** One operation; resolves to what it did, or rejects if the kill cut it (outcome unknown). */
  // Names with control requests sent and not answered, counted: two requests for one name
  // may run in one round, and the first answered must not hide the second (seed 69).
  const begin = (inFlight: Map<string, number>, name: string): void => {
    inFlight.set(name, (inFlight.get(name) ?? 0) + 1);
  };
  const end = (inFlight: Map<string, number>, name: string): void => {
    const n = (inFlight.get(name) ?? 1) - 1;
    if (n === 0) inFlight.delete(name);
    else inFlight.set(name, n);
  };
  const ops: Record<string, (inFlight: Map<string, number>) => Promise<string>> = {
    map: async (inFlight) => {
      const name = pick(NAMES);
      const readOnly = r() < 0.25;
      begin(inFlight, name);
      const res = await controlCall(
        controlSocket,
        'POST',
        '/v1/exports',
        JSON.stringify({ url: url(volumeOf(name)), name, ...(readOnly ? { readOnly } : {}) }),
      );
      end(inFlight, name);
      if (res.status === 201) mapped.set(name, readOnly);
      return `map ${name}${readOnly ? ' ro' : ''}: ${res.status} ${errorCode(res.body)}`;
    },
    unmap: async (inFlight) => {
      const name = pick(NAMES);
      const force = r() < 0.3;
      begin(inFlight, name);
      const res = await controlCall(
        controlSocket,
        'DELETE',
        `/v1/exports/${name}${force ? '?force=true' : ''}`,
      );
      end(inFlight, name);
      if (res.status === 200) mapped.delete(name);
      return `unmap ${name}${force ? ' --force' : ''}: ${res.status} ${errorCode(res.body)}`;
    },
    write: async () => {
      const writable = [...mapped].filter(([, ro]) => !ro).map(([n]) => n);
      if (writable.length === 0) return 'write: nothing writable';
      const name = pick(writable);
      // An unmap in the same round may end the connection: that is no failure of the test.
      try {
        return await writes.writeAndFlush(() => nbd(name), volumeOf(name), name);
      } catch (e) {
        writesCut++;
        return `write ${name}: ${String(e)}`;
      }
    },
    // What `hyper compact` of a mapped volume asks for: an online run the kill may cut.
    compact: async () => {
      const writable = [...mapped].filter(([, ro]) => !ro).map(([n]) => n);
      if (writable.length === 0) return 'compact: nothing writable';
      const name = pick(writable);
      const keepLast = r() < 0.7 ? 1 : undefined;
      const res = await controlCall(
        controlSocket,
        'POST',
        `/v1/exports/${name}/compact`,
        JSON.stringify({ ...(keepLast ? { keepLast } : {}), graceMs: 0, minLive: 0.9 }),
      );
      return `compact ${name}${keepLast ? ' keep-last 1' : ''}: ${res.status} ${errorCode(res.body)}`;
    },
  };
  const chooseOp = weighted(r, [
    ['map', 5],
    ['unmap', 3.5],
    ['write', 5],
    ['compact', 2],
  ] as const);

  const checkData = async (): Promise<void> => {
    for (const v of VOLUMES) {
      const store = await openStore(url(v), storeOptions(v));
      const vol = await Volume.open(store, { readOnly: true });
      try {
        const bad = await writes.mismatch(v, (o, n) => vol.read(o, n));
        check(bad === undefined, `(e) ${bad}`);
      } finally {
        await vol.close();
        await store.close();
      }
    }
  };

  const checkRound = async (round: number, maybe: Set<string>): Promise<void> => {
    const exports = await list();
    const names = new Set(exports.map((e) => e.name));
    // (a)
    for (const [name] of mapped) {
      if (maybe.has(name)) continue;
      check(names.has(name), `(a) ${name} was mapped, and is not after the restart`);
    }
    for (const name of names) {
      check(
        mapped.has(name) || maybe.has(name),
        `(a) ${name} is mapped, but no map of it was acknowledged or cut short`,
      );
    }
    // (b)
    for (const e of exports) {
      check(e.state === 'mapped', `(b) ${e.name} is ${e.state}: ${e.error?.message ?? ''}`);
      if (!maybe.has(e.name)) {
        check(e.readOnly === mapped.get(e.name), `(b) ${e.name} came back read-only ${e.readOnly}`);
      }
    }
    const file = JSON.parse(await readFile(stateFile, 'utf8')) as {
      exports: { name: string; readOnly?: boolean }[];
    };
    const fromFile = file.exports.map((e) => `${e.name} ${e.readOnly === true}`).sort();
    const fromList = exports.map((e) => `${e.name} ${e.readOnly}`).sort();
    check(
      JSON.stringify(fromFile) === JSON.stringify(fromList),
      `(b) state file ${JSON.stringify(fromFile)} vs listed ${JSON.stringify(fromList)}`,
    );
    // What the daemon maps now is what the next rounds expect.
    mapped.clear();
    for (const e of exports) mapped.set(e.name, e.readOnly);
    // (c)
    const offered = await offeredExports(NAMES, nbd);
    for (const name of NAMES) {
      check(
        offered.has(name) === names.has(name),
        `(c) ${name}: offered ${offered.has(name)}, mapped ${names.has(name)}`,
      );
    }
    // (d)
    for (const v of VOLUMES) {
      if (exports.some((e) => volumeOf(e.name) === v && !e.readOnly)) continue;
      const probe = NAMES.find((n) => volumeOf(n) === v && !names.has(n));
      if (probe === undefined) continue;
      const m = await controlCall(
        controlSocket,
        'POST',
        '/v1/exports',
        JSON.stringify({ url: url(v), name: probe }),
      );
      check(
        m.status === 201,
        `(d) ${v} is not held, but mapping it failed: ${JSON.stringify(m.body)}`,
      );
      const u = await controlCall(controlSocket, 'DELETE', `/v1/exports/${probe}`);
      check(u.status === 200, `(d) unmapping the probe ${probe} failed: ${JSON.stringify(u.body)}`);
    }
    log.push(`  round ${round} ok: ${fromList.join(', ')}`);
  };

  try {
    for (let round = 0; round < ROUNDS; round++) {
      const n = 1 + Math.floor(r() * 4);
      const chosen = Array.from({ length: n }, chooseOp);
      const killAt = r() < 0.5 ? Math.floor(r() * r() * 120) : undefined;
      log.push(
        `round ${round}: ${chosen.join(', ')}${killAt === undefined ? '' : `, kill at ${killAt} ms`}`,
      );
      // Names with a control request sent and not answered: if the kill cuts it, it may
      // have taken effect or not.
      const inFlight = new Map<string, number>();
      const running = chosen.map(async (op) => {
        await new Promise((res) => setTimeout(res, Math.floor(r() * 30)));
        return ops[op]!(inFlight);
      });
      let killed: Promise<number> | undefined;
      if (killAt !== undefined) {
        killed = new Promise((res) => setTimeout(res, killAt)).then(() => d.stop('SIGKILL'));
      }
      const results = await Promise.allSettled(running);
      for (const res of results) {
        if (res.status === 'fulfilled') log.push(`  ${res.value}`);
        else {
          cut++;
          log.push(`  ! ${String(res.reason)}`);
        }
      }
      if (killed !== undefined) {
        const code = await killed;
        check(code === 137, `the daemon exited ${code} before it was killed: ${d.stderr()}`);
        kills++;
        d = await start();
      } else {
        check(
          results.every((x) => x.status === 'fulfilled'),
          'a request failed without a kill',
        );
      }
      await checkRound(round, new Set(inFlight.keys()));
      if (killed !== undefined) await checkData();
    }
    await d.stop('SIGKILL');
    await checkData();
  } catch (e) {
    const tail = log.slice(-60).join('\n');
    await d.stop('SIGKILL');
    throw new Error(`seed ${seed}: ${e instanceof Violation ? e.message : String(e)}\n${tail}`, {
      cause: e,
    });
  }
  log.push(`${cut} control requests and ${writesCut} writes cut short`);
  return { log, kills, cut, flushed: writes.acked.length };
}

function errorCode(body: unknown): string {
  return (body as { error?: { code?: string } } | undefined)?.error?.code ?? '';
}
