/**
 * The daemon in-process on file:// volumes: the control API (map, unmap, ls, reload), its
 * refusals (each leaves the daemon and its other exports serving), the control socket's
 * mode and takeover rules, the state file across restarts, config reconciliation, and a map
 * that waits for another holder's lease.
 */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { ControlClient, MAX_CONTROL_BODY } from '../../../src/daemon/control.js';
import {
  exportStatusSchema,
  lsSchema,
  unmapSchema,
  type DaemonStatus,
} from '../../../src/cli/vocabulary.js';
import { Daemon, type ExportStatus, type UnmapResult } from '../../../src/daemon/daemon.js';
import { openDaemonStore } from '../../../src/daemon/run.js';
import { isHyperError, type ErrorCode } from '../../../src/errors.js';
import { openStore } from '../../../src/format/store/index.js';
import { Volume } from '../../../src/format/volume/volume.js';
import { readHead } from '../../../src/format/volume/heads.js';
import type { CompactResult } from '../../../src/format/volume/compact.js';
import { checkVolume } from '../../../src/format/volume/check.js';
import {
  compactOnlineInServer,
  flushInServer,
  resizeInServer,
} from '../../../src/daemon/online.js';
import { createSnapshot } from '../../../src/format/volume/history.js';
import { FlakyStore, type Faults } from '../../helpers/flaky-store.js';
import { RawClient, req } from '../../helpers/raw-nbd-client.js';
import { leaveStaleSocket } from '../../helpers/stale-socket.js';
import { claimSocketPath } from '../../../src/nbd/socket-path.js';

interface Setup {
  dir: string;
  sock: string;
  state: string;
  url: (name: string) => string;
  client: ControlClient;
  start: (extra?: { configFile?: string }) => Promise<Daemon>;
}

async function setup(
  t: TestContext,
  volumes: string[],
  o: { stateDir?: string; faults?: Faults } = {},
): Promise<Setup> {
  const dir = await mkdtemp(join(tmpdir(), 'hyper-daemon-'));
  const daemons: Daemon[] = [];
  t.after(async () => {
    for (const d of daemons) await d.stop().catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
  });
  const url = (name: string) => `file://${dir}/vols/${name}/`;
  for (const v of volumes) {
    await mkdir(join(dir, 'vols', v), { recursive: true });
    const s = await openStore(url(v));
    await Volume.create(s, { size: 4 * 1024 * 1024 });
    await s.close();
  }
  const sock = join(dir, 'run', 'control.sock');
  const state = join(dir, o.stateDir ?? '', 'state.json');
  const start = async (extra: { configFile?: string } = {}) => {
    const d = new Daemon({
      controlSocket: sock,
      listen: { port: 0, host: '127.0.0.1' },
      stateFile: state,
      openStore: o.faults
        ? async (u, opts) => new FlakyStore(await openDaemonStore(u, opts), o.faults!)
        : openDaemonStore,
      drainMs: 2000,
      ...extra,
    });
    await d.start();
    daemons.push(d);
    return d;
  };
  return { dir, sock, state, url, client: new ControlClient(sock), start };
}

/** An NBD client of the daemon's export `name`, past the handshake; closed after the test. */
async function nbdClient(t: TestContext, d: Daemon, name: string): Promise<RawClient> {
  const c = await RawClient.open(d.info().listen.port!);
  t.after(() => c.close());
  await c.handshake();
  await c.go(name);
  return c;
}

const rejectsWith = (p: Promise<unknown>, code: ErrorCode, re?: RegExp) =>
  assert.rejects(p, (e) => {
    assert.ok(isHyperError(e), String(e));
    assert.equal(e.code, code, e.message);
    if (re) assert.match(e.message, re);
    return true;
  });

/** A raw request on the control socket: status and parsed body. */
function raw(
  sock: string,
  method: string,
  path: string,
  body?: string | Buffer,
): Promise<{ status: number; json: { error?: { code: string; kind: string } } }> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath: sock, method, path }, (res) => {
      let text = '';
      res.setEncoding('utf8').on('data', (d: string) => (text += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, json: JSON.parse(text) }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

describe('hyper daemon (in-process)', () => {
  it('maps, lists and unmaps; the socket is 0600 and the state file follows', async (t) => {
    const s = await setup(t, ['a', 'b']);
    await s.start();
    assert.equal((await stat(s.sock)).mode & 0o777, 0o600);
    const a = await s.client.post<ExportStatus>('/v1/exports', { url: s.url('a') });
    assert.equal(a.name, 'a');
    assert.equal(a.state, 'mapped');
    assert.match(a.uri ?? '', /^nbd:\/\/127\.0\.0\.1:\d+\/a$/);
    assert.equal(a.lease?.epoch !== undefined && a.lease.epoch >= 1, true);
    const b = await s.client.post<ExportStatus>('/v1/exports', {
      url: s.url('b'),
      name: 'bee',
      readOnly: true,
    });
    assert.equal(b.readOnly, true);
    assert.equal(b.lease, null);
    const { exports } = await s.client.get<{ exports: ExportStatus[] }>('/v1/exports');
    assert.deepEqual(
      exports.map((e) => [e.name, e.state, e.clientCount, e.dirtyBytes, e.health]),
      [
        ['a', 'mapped', 0, 0, null],
        ['bee', 'mapped', 0, 0, null],
      ],
    );
    // Every field of the JSON vocabulary is present, a mapped export's too.
    lsSchema.parse({ daemon: await s.client.get('/v1/daemon'), exports });
    const st = JSON.parse(await readFile(s.state, 'utf8'));
    assert.deepEqual(
      st.exports.map((e: { name: string }) => e.name),
      ['a', 'bee'],
    );
    const r = await s.client.delete<UnmapResult>('/v1/exports/a');
    assert.deepEqual(r, {
      name: 'a',
      url: s.url('a'),
      disconnectedClientCount: 0,
      wasMapped: true,
    });
    unmapSchema.parse(r);
    // The lease was released: another writer opens the volume at once.
    const store = await openStore(s.url('a'));
    const v = await Volume.open(store, { holder: 'other' });
    await v.close();
    await store.close();
    const st2 = JSON.parse(await readFile(s.state, 'utf8'));
    assert.deepEqual(
      st2.exports.map((e: { name: string }) => e.name),
      ['bee'],
    );
  });

  it('a state file it cannot write: map is undone and says why, unmap says the export comes back', async (t) => {
    const s = await setup(t, ['a', 'b'], { stateDir: 'st' });
    await s.start();
    await s.client.post<ExportStatus>('/v1/exports', { url: s.url('a') });
    // The state file's directory becomes a file (its disk gone, a mistake): writes fail.
    const stDir = join(s.dir, 'st');
    await rm(stDir, { recursive: true });
    await writeFile(stDir, 'not a directory');
    await rejectsWith(
      s.client.post('/v1/exports', { url: s.url('b') }),
      'PATH_NOT_FOUND',
      /^The export "b" was not mapped: the daemon could not write its state file .*st\/state\.json \(A part of the path is a file, not a directory/,
    );
    let { exports } = await s.client.get<{ exports: ExportStatus[] }>('/v1/exports');
    assert.deepEqual(
      exports.map((e) => e.name),
      ['a'],
      'the mapping that could not be recorded is undone',
    );
    await rejectsWith(
      s.client.delete(`/v1/exports/a`),
      'PATH_NOT_FOUND',
      /^The export "a" was unmapped, but the state file still lists it: the daemon maps it again when it restarts/,
    );
    ({ exports } = await s.client.get<{ exports: ExportStatus[] }>('/v1/exports'));
    assert.deepEqual(exports, []);
    // Writable again: both work and are recorded.
    await rm(stDir);
    await s.client.post<ExportStatus>('/v1/exports', { url: s.url('b') });
    const st = JSON.parse(await readFile(s.state, 'utf8')) as { exports: { name: string }[] };
    assert.deepEqual(
      st.exports.map((e) => e.name),
      ['b'],
    );
  });

  it('maps with a WAL written at FLUSH and keeps that in its state', async (t) => {
    const s = await setup(t, ['w']);
    await s.start();
    await mkdir(join(s.dir, 'wal'));
    const walUrl = `file://${s.dir}/wal/`;
    const w = await s.client.post<ExportStatus>('/v1/exports', {
      url: s.url('w'),
      walUrl,
      walAck: 'flush',
    });
    assert.equal(w.state, 'mapped');
    assert.equal(w.walUrl, walUrl);
    const st = JSON.parse(await readFile(s.state, 'utf8'));
    assert.deepEqual(
      st.exports.map((e: { walUrl?: string; walAck?: string }) => [e.walUrl, e.walAck]),
      [[walUrl, 'flush']],
    );
    await s.client.delete('/v1/exports/w');
  });

  it('refuses bad requests with a code while the other exports keep serving', async (t) => {
    const s = await setup(t, ['a', 'held', 'p/x', 'p/y']);
    const d = await s.start();
    await s.client.post('/v1/exports', { url: s.url('a') });
    const cases: [() => Promise<unknown>, ErrorCode, RegExp?][] = [
      [() => s.client.post('/v1/exports', { url: s.url('missing') }), 'BUCKET_NOT_FOUND'],
      [() => s.client.post('/v1/exports', { url: s.url('a') }), 'EXPORT_EXISTS', /already mapped/],
      [
        () => s.client.post('/v1/exports', { url: s.url('a'), name: 'a2' }),
        'EXPORT_EXISTS',
        /read-write as "a"/,
      ],
      [() => s.client.post('/v1/exports', { url: s.url('p'), name: 'p' }), 'NOT_A_VOLUME'],
      [
        () => s.client.post('/v1/exports', { url: s.url('held'), name: 'x/../y' }),
        'INVALID_ARGUMENT',
        /name/,
      ],
      [
        () => s.client.post('/v1/exports', { url: s.url('held'), bogus: 1 }),
        'INVALID_ARGUMENT',
        /bogus|Unrecognized/i,
      ],
      [() => s.client.post('/v1/exports', { name: 'n' }), 'INVALID_ARGUMENT', /url/],
      [
        () => s.client.post('/v1/exports', { url: s.url('held'), walAck: 'sometimes' }),
        'INVALID_ARGUMENT',
        /walAck/,
      ],
      [
        () => s.client.post('/v1/exports', { url: s.url('held'), at: { time: 'yesterday' } }),
        'INVALID_ARGUMENT',
        /at/,
      ],
      [() => s.client.delete('/v1/exports/nope'), 'EXPORT_NOT_FOUND'],
      [() => s.client.get('/v1/exports/nope'), 'EXPORT_NOT_FOUND'],
      [() => s.client.call('PUT', '/v1/exports'), 'INVALID_ARGUMENT', /No route/],
      [() => s.client.delete('/v1/exports/a?force=maybe'), 'INVALID_ARGUMENT'],
    ];
    // An empty directory is no volume.
    await mkdir(join(s.dir, 'vols', 'empty'));
    cases.push([() => s.client.post('/v1/exports', { url: s.url('empty') }), 'VOLUME_NOT_FOUND']);
    // A volume another process holds.
    const store = await openStore(s.url('held'));
    const holder = await Volume.open(store, {
      holder: 'someone-else',
      leaseTtlMs: 60_000,
      flushIntervalMs: 0,
    });
    t.after(async () => {
      await holder.close().catch(() => undefined);
      await store.close();
    });
    cases.push([
      () => s.client.post('/v1/exports', { url: s.url('held') }),
      'LEASE_HELD',
      /someone-else/,
    ]);
    for (const [p, code, re] of cases) await rejectsWith(p(), code, re);

    const bad = await raw(s.sock, 'POST', '/v1/exports', '{"url":');
    assert.equal(bad.status, 400);
    assert.equal(bad.json.error?.code, 'INVALID_ARGUMENT');
    const big = await raw(s.sock, 'POST', '/v1/exports', Buffer.alloc(MAX_CONTROL_BODY + 1, 0x20));
    assert.equal(big.status, 413);
    assert.equal(big.json.error?.code, 'INVALID_ARGUMENT');
    const notFound = await raw(s.sock, 'DELETE', '/v1/exports/nope');
    assert.equal(notFound.status, 404);
    const conflict = await raw(
      s.sock,
      'POST',
      '/v1/exports',
      JSON.stringify({ url: s.url('held') }),
    );
    assert.equal(conflict.status, 409);

    // Nothing was left behind, and 'a' is still mapped and writable.
    const { exports } = await s.client.get<{ exports: ExportStatus[] }>('/v1/exports');
    assert.deepEqual(
      exports.map((e) => [e.name, e.state]),
      [['a', 'mapped']],
    );
    assert.equal(d.info().exportCount, 1);
    const st = JSON.parse(await readFile(s.state, 'utf8'));
    assert.deepEqual(
      st.exports.map((e: { name: string }) => e.name),
      ['a'],
    );
  });

  it('refuses a control socket a live daemon answers on, replaces a stale one', async (t) => {
    const s = await setup(t, []);
    await s.start();
    await rejectsWith(s.start(), 'DAEMON_RUNNING', /already running/);
    // The first one is unaffected.
    assert.equal((await s.client.get<{ pid: number }>('/v1/daemon')).pid, process.pid);

    // A stale socket: its listener was killed, the file stayed.
    const stale = join(s.dir, 'stale.sock');
    await leaveStaleSocket(stale);
    assert.equal((await stat(stale)).isSocket(), true);
    const d2 = new Daemon({
      controlSocket: stale,
      listen: { port: 0 },
      stateFile: join(s.dir, 'state2.json'),
      openStore: openDaemonStore,
    });
    await d2.start();
    t.after(() => d2.stop());
    assert.equal((await new ControlClient(stale).get<DaemonStatus>('/v1/daemon')).exportCount, 0);

    // Another daemon starting on the same stale socket right now (it holds the path's claim):
    // refused, and the file it is replacing is left to it.
    const racing = join(s.dir, 'racing.sock');
    await leaveStaleSocket(racing);
    const claim = await claimSocketPath(racing);
    assert.ok(claim !== undefined);
    const d3 = new Daemon({
      controlSocket: racing,
      listen: { port: 0 },
      stateFile: join(s.dir, 'state3.json'),
      openStore: openDaemonStore,
    });
    await rejectsWith(d3.start(), 'DAEMON_RUNNING', /already running/);
    assert.equal((await stat(racing)).isSocket(), true);
    claim.release();

    // A client with no daemon.
    await rejectsWith(
      new ControlClient(join(s.dir, 'none.sock')).get('/v1/daemon'),
      'DAEMON_NOT_RUNNING',
    );

    // A daemon that dies while a request waits for its answer (kill -9): no bug, a daemon gone.
    const dying = join(s.dir, 'dying.sock');
    const hangUp = createServer((c) => c.once('data', () => c.destroy()));
    await new Promise<void>((resolve) => hangUp.listen(dying, resolve));
    t.after(() => new Promise<void>((resolve) => hangUp.close(() => resolve())));
    await rejectsWith(
      new ControlClient(dying).post('/v1/exports', { url: s.url('x'), wait: true }),
      'DAEMON_NOT_RUNNING',
      /closed the connection before it answered/,
    );
  });

  it('maps the same exports again after a restart; a mapping that fails is kept as failed', async (t) => {
    const s = await setup(t, ['a', 'b']);
    const d1 = await s.start();
    await s.client.post('/v1/exports', { url: s.url('a') });
    await s.client.post('/v1/exports', { url: s.url('b'), name: 'b-at-0', at: { checkpoint: 1 } });
    await d1.stop();
    await rm(join(s.dir, 'vols', 'b'), { recursive: true });
    await s.start();
    const { exports } = await s.client.get<{ exports: ExportStatus[] }>('/v1/exports');
    assert.deepEqual(
      exports.map((e) => [e.name, e.state, e.error?.code]),
      [
        ['a', 'mapped', undefined],
        ['b-at-0', 'failed', 'BUCKET_NOT_FOUND'],
      ],
    );
    // A failed export: its error as JSON, the fields of an open volume null.
    const failed = exportStatusSchema.parse(exports[1]);
    assert.equal(failed.uri, null);
    assert.equal(failed.size, null);
    assert.deepEqual(failed.at, { checkpoint: 1 });
    // Still remembered until unmapped.
    const st = JSON.parse(await readFile(s.state, 'utf8'));
    assert.equal(st.exports.length, 2);
    const r = await s.client.delete<UnmapResult>('/v1/exports/b-at-0');
    assert.equal(r.wasMapped, false);
    const st2 = JSON.parse(await readFile(s.state, 'utf8'));
    assert.deepEqual(
      st2.exports.map((e: { name: string }) => e.name),
      ['a'],
    );
  });

  it('reconciles the config on reload: adds, keeps, removes only what came from it', async (t) => {
    const s = await setup(t, ['a', 'b', 'c', 'd']);
    const config = join(s.dir, 'daemon.json');
    await writeFile(
      config,
      JSON.stringify({ exports: [{ url: s.url('a') }, { url: s.url('b') }] }),
    );
    const d = await s.start({ configFile: config });
    await s.client.post('/v1/exports', { url: s.url('c') });
    const before = await s.client.get<{ exports: ExportStatus[] }>('/v1/exports');
    assert.deepEqual(
      before.exports.map((e) => [e.name, e.source]),
      [
        ['a', 'config'],
        ['b', 'config'],
        ['c', 'control'],
      ],
    );
    await writeFile(
      config,
      JSON.stringify({
        exports: [{ url: s.url('b') }, { url: s.url('c') }, { url: s.url('d'), readOnly: true }],
      }),
    );
    const r = await s.client.post<{ mapped: string[]; unmapped: string[]; failed: string[] }>(
      '/v1/reload',
      {},
    );
    assert.deepEqual(r, { mapped: ['d'], unmapped: ['a'], failed: [] });
    const after = await s.client.get<{ exports: ExportStatus[] }>('/v1/exports');
    assert.deepEqual(
      after.exports.map((e) => [e.name, e.source, e.readOnly]),
      [
        ['b', 'config', false],
        ['c', 'control', false],
        ['d', 'config', true],
      ],
    );
    // A config that does not parse changes nothing.
    await writeFile(config, '{"exports": [');
    await rejectsWith(d.reload(), 'INVALID_ARGUMENT', /not valid JSON/);
    assert.equal(
      (await s.client.get<{ exports: ExportStatus[] }>('/v1/exports')).exports.length,
      3,
    );
  });

  it('an unmap whose last flush failed keeps the volume open until an unmap closes it', async (t) => {
    const faults: Faults = { rate: 0, rand: Math.random, injected: 0 };
    const s = await setup(t, ['a'], { faults });
    const d = await s.start();
    await s.client.post('/v1/exports', { url: s.url('a') });
    // A write acknowledged and not yet flushed, then the store stops taking PUTs.
    const c = await nbdClient(t, d, 'a');
    const block = Buffer.alloc(4096, 0x5a);
    c.send(req(1, 1n, 8192n, block.length, 0, block));
    assert.equal((await c.simpleReply()).error, 0);
    faults.down = new Set(['put']);
    await rejectsWith(s.client.delete('/v1/exports/a?force=true'), 'STORE_UNAVAILABLE');
    const failed = (await s.client.get<{ exports: ExportStatus[] }>('/v1/exports')).exports;
    assert.deepEqual(
      failed.map((e) => [e.name, e.state, e.error?.code]),
      [['a', 'failed', 'STORE_UNAVAILABLE']],
    );
    // What is at stake is shown: the volume is open, its lease held, the write not stored.
    assert.ok((failed[0]!.dirtyBytes ?? 0) >= 4096, String(failed[0]!.dirtyBytes));
    assert.notEqual(failed[0]!.lease, null);
    assert.match(failed[0]!.error?.message ?? '', /stays open in the daemon/);
    // Mapping the volume again, under any name, is refused while it is still open here.
    await rejectsWith(
      s.client.post('/v1/exports', { url: s.url('a'), name: 'again' }),
      'EXPORT_EXISTS',
      /still open/,
    );
    // Unmapping again with the store still down fails the same way and keeps it.
    await rejectsWith(s.client.delete('/v1/exports/a'), 'STORE_UNAVAILABLE');
    // The store is back: the next unmap flushes the write, closes the volume, releases the lease.
    faults.down = undefined;
    const r = await s.client.delete<UnmapResult>('/v1/exports/a');
    assert.equal(r.name, 'a');
    assert.deepEqual((await s.client.get<{ exports: ExportStatus[] }>('/v1/exports')).exports, []);
    const store = await openStore(s.url('a'));
    const v = await Volume.open(store, { holder: 'other' });
    assert.ok((await v.read(8192, 4096)).equals(block), 'the acknowledged write was kept');
    await v.close();
    await store.close();
    // And it maps again.
    assert.equal(
      (await s.client.post<ExportStatus>('/v1/exports', { url: s.url('a') })).state,
      'mapped',
    );
  });

  it('map --wait: listed while it waits, ends with its client, maps once the holder lets go, and does not hold up a stop', async (t) => {
    const s = await setup(t, ['a', 'b']);
    const d = await s.start();
    const holders: Volume[] = [];
    const hold = async (name: string): Promise<Volume> => {
      const v = await Volume.open(await openStore(s.url(name)), { holder: 'other' });
      holders.push(v);
      return v;
    };
    t.after(async () => {
      for (const v of holders) await v.close().catch(() => undefined);
    });
    const listed = async () =>
      (await s.client.get<{ exports: ExportStatus[] }>('/v1/exports')).exports.map((e) => [
        e.name,
        e.state,
      ]);
    const until = async (what: string, ok: () => Promise<boolean>) => {
      for (let i = 0; i < 100; i++) {
        if (await ok()) return;
        await new Promise((r) => setTimeout(r, 50));
      }
      assert.fail(`timed out waiting until ${what}`);
    };
    const a = await hold('a');
    // Without --wait the held volume is refused at once.
    await rejectsWith(s.client.post('/v1/exports', { url: s.url('a') }), 'LEASE_HELD');
    // With it, the request waits, and the export is listed as being mapped.
    const ac = new AbortController();
    const first = s.client.post('/v1/exports', { url: s.url('a'), wait: true }, ac.signal);
    first.catch(() => undefined);
    await until('the waiting map is listed', async () =>
      (await listed()).some(([n, st]) => n === 'a' && st === 'mapping'),
    );
    // Meanwhile the name is taken, and an unmap says it is being mapped.
    await rejectsWith(s.client.post('/v1/exports', { url: s.url('a') }), 'EXPORT_EXISTS');
    await rejectsWith(s.client.delete('/v1/exports/a'), 'PRECONDITION_FAILED', /being mapped/);
    // Its client goes (Ctrl-C): the wait ends, nothing is left mapped, the holder keeps the lease.
    ac.abort();
    await rejectsWith(first, 'ABORTED');
    await until('the abandoned map is gone', async () => (await listed()).length === 0);
    await a.write(0, Buffer.alloc(4096, 0x11));
    await a.flush();
    // Waiting again: it maps once the holder closes, and serves what the holder wrote.
    const second = s.client.post<ExportStatus>('/v1/exports', { url: s.url('a'), wait: true });
    await new Promise((r) => setTimeout(r, 300));
    await a.close();
    const mapped = await second;
    assert.equal(mapped.state, 'mapped');
    assert.notEqual(mapped.lease, null);
    const c = await nbdClient(t, d, 'a');
    c.send(req(0, 1n, 0n, 4096));
    assert.equal((await c.simpleReply()).error, 0);
    assert.ok(
      (await c.read(4096)).equals(Buffer.alloc(4096, 0x11)),
      "the holder's write is served",
    );
    // A map waiting for another holder does not hold up the daemon's stop.
    await hold('b');
    const third = s.client.post('/v1/exports', { url: s.url('b'), wait: true });
    third.catch(() => undefined);
    await until('the third map waits', async () =>
      (await listed()).some(([n, st]) => n === 'b' && st === 'mapping'),
    );
    const t0 = Date.now();
    await d.stop();
    assert.ok(Date.now() - t0 < 5000, `the stop took ${Date.now() - t0} ms`);
    // Answered with why (exit 5), not a hang-up taken for a bug.
    await rejectsWith(third, 'DAEMON_NOT_RUNNING', /daemon is stopping/);
  });

  it('compacts, flushes and grows a mapped volume when asked, beside a client, and refuses what it cannot', async (t) => {
    const s = await setup(t, ['a', 'b', 'c']);
    const d = await s.start();
    const a = await s.client.post<ExportStatus>('/v1/exports', { url: s.url('a') });
    await s.client.post('/v1/exports', { url: s.url('b'), readOnly: true });
    const c = await nbdClient(t, d, 'a');
    // Rounds of overwrites, each flushed: checkpoints whose blocks the next round replaces.
    let handle = 1n;
    const expected = Buffer.alloc(256 * 1024);
    for (let round = 1; round <= 6; round++) {
      for (let off = 0; off < expected.length; off += 32 * 1024) {
        const data = Buffer.alloc(32 * 1024, round * 16 + off / 32768);
        c.send(req(1, handle++, BigInt(off), data.length, 0, data));
        assert.equal((await c.simpleReply()).error, 0);
        data.copy(expected, off);
      }
      c.send(req(3, handle++, 0n, 0));
      assert.equal((await c.simpleReply()).error, 0);
    }
    const store = await openStore(s.url('a'));
    t.after(() => store.close());
    const ro = await Volume.open(store, { readOnly: true });
    const uuid = ro.info.uuid;
    await ro.close();
    // The export names the volume it serves (what the lookup below matches).
    assert.equal((await s.client.get<ExportStatus>('/v1/exports/a')).volumeUuid, uuid);
    const path = '/v1/exports/a/compact';
    // Asked for the wrong volume, or with a bad policy: refused, nothing done.
    await rejectsWith(
      s.client.post(path, { keepLast: 1, volumeUuid: '0'.repeat(32) }),
      'PRECONDITION_FAILED',
      /serves volume/,
    );
    await rejectsWith(s.client.post(path, { keepLast: 0 }), 'INVALID_ARGUMENT');
    await rejectsWith(s.client.post(path, { keep: 1 }), 'INVALID_ARGUMENT');
    const r = await s.client.post<CompactResult>(path, {
      keepLast: 1,
      graceMs: 0,
      minLive: 0.9,
      volumeUuid: uuid,
    });
    assert.equal(r.dryRun, false);
    assert.ok(r.checkpointsDropped >= 5, JSON.stringify(r));
    assert.ok(r.segmentsDeleted >= 5, JSON.stringify(r));
    assert.ok(r.storedBytesAfter < r.storedBytesBefore, JSON.stringify(r));
    // Still mapped, same lease; the client reads what it wrote, and writes on.
    const after = await s.client.get<ExportStatus>('/v1/exports/a');
    assert.equal(after.state, 'mapped');
    assert.deepEqual(after.lease, a.lease);
    c.send(req(0, handle++, 0n, expected.length));
    assert.equal((await c.simpleReply()).error, 0);
    assert.ok((await c.read(expected.length)).equals(expected), 'data changed by compaction');
    const more = Buffer.alloc(4096, 0xee);
    c.send(req(1, handle++, 4096n, more.length, 0, more));
    assert.equal((await c.simpleReply()).error, 0);
    more.copy(expected, 4096);
    // A dry run changes nothing; a read-only export, an unknown one and a volume not open
    // read-write here are refused.
    const dry = await s.client.post<CompactResult>(path, { keepLast: 1, graceMs: 0, dryRun: true });
    assert.equal(dry.dryRun, true);
    await rejectsWith(
      s.client.post('/v1/exports/b/compact', { keepLast: 1 }),
      'INVALID_ARGUMENT',
      /not open read-write/,
    );
    await rejectsWith(s.client.post('/v1/exports/nope/compact', {}), 'EXPORT_NOT_FOUND');
    // A deduplicating volume mapped read-write is compacted online too: the blocks only its
    // content index still names (overwritten before the map) go.
    const dedupUrl = `file://${s.dir}/vols/dedup/`;
    await mkdir(join(s.dir, 'vols', 'dedup'), { recursive: true });
    const dedupStore = await openStore(dedupUrl);
    await Volume.create(dedupStore, { size: 1024 * 1024, dedup: true });
    const dv = await Volume.open(dedupStore, { flushIntervalMs: 0 });
    await dv.write(0, Buffer.alloc(64 * 1024, 0x11));
    await dv.flush();
    await dv.write(0, Buffer.alloc(64 * 1024, 0x22));
    await dv.close();
    await dedupStore.close();
    await s.client.post('/v1/exports', { name: 'dd', url: dedupUrl });
    const dd = await s.client.post<CompactResult>('/v1/exports/dd/compact', {
      keepLast: 1,
      graceMs: 0,
    });
    assert.equal(dd.dryRun, false);
    assert.ok(dd.segmentsDeleted >= 2, JSON.stringify(dd));
    // The library call `hyper compact` makes: finds the export by URL and asks it.
    const viaCli = await compactOnlineInServer(store, s.url('a'), {
      controlSocket: s.sock,
      policy: { keepLast: 1, graceMs: 0 },
    });
    assert.equal(viaCli?.name, 'a');
    assert.equal(viaCli?.controlSocket, s.sock);
    assert.equal(viaCli?.result.dryRun, false);
    // Not served by this daemon, or no daemon there: nothing asked.
    const storeC = await openStore(s.url('c'));
    t.after(() => storeC.close());
    assert.equal(
      await compactOnlineInServer(storeC, s.url('c'), { controlSocket: s.sock, policy: {} }),
      undefined,
    );
    assert.equal(
      await compactOnlineInServer(store, s.url('a'), {
        controlSocket: join(s.dir, 'none.sock'),
        policy: {},
      }),
      undefined,
    );
    // A snapshot made from outside holds what the daemon acknowledged: it commits it first.
    const late = Buffer.alloc(4096, 0x77);
    c.send(req(1, handle++, 8192n, late.length, 0, late));
    assert.equal((await c.simpleReply()).error, 0);
    late.copy(expected, 8192);
    // (Not yet in a checkpoint, unless the daemon's 5 s timer committed it meanwhile.)
    const before = await Volume.open(store, { readOnly: true });
    const committedAlready = (await before.read(8192, 4096)).equals(late);
    await before.close();
    const flushed = await flushInServer(store, s.url('a'), { controlSocket: s.sock });
    assert.equal(flushed?.name, 'a');
    if (!committedAlready) assert.ok(flushed!.checkpoint > before.info.checkpoint);
    const snap = await createSnapshot(store, 'outside');
    assert.ok(snap.checkpoint >= flushed!.checkpoint);
    const atSnap = await Volume.open(store, { readOnly: true, at: { snapshot: 'outside' } });
    assert.ok(
      (await atSnap.read(0, expected.length)).equals(expected),
      'the snapshot misses writes',
    );
    await atSnap.close();
    await rejectsWith(
      s.client.post('/v1/exports/a/flush', { volumeUuid: 'f'.repeat(32) }),
      'PRECONDITION_FAILED',
    );
    await rejectsWith(s.client.post('/v1/exports/b/flush', {}), 'INVALID_ARGUMENT');
    assert.equal(
      await flushInServer(storeC, s.url('c'), { controlSocket: s.sock }),
      undefined,
      'not served: nothing asked',
    );
    // A process on the socket that never answers is passed over after the lookup's timeout.
    const silentPath = join(s.dir, 'silent.sock');
    const silent = createServer(() => undefined);
    await new Promise<void>((res) => silent.listen(silentPath, res));
    t.after(() => silent.close());
    let why = '';
    assert.equal(
      await flushInServer(store, s.url('a'), {
        controlSocket: silentPath,
        timeoutMs: 200,
        unusable: (e) => (why = e.message),
      }),
      undefined,
    );
    assert.match(why, /did not answer within 0\.2 s/);
    // Grown from outside (hyper file set-len): by the daemon, committed before the answer; the
    // connection made before keeps writing within the size it was told.
    const grown = await resizeInServer(store, s.url('a'), {
      controlSocket: s.sock,
      size: (current) => current + 1024 * 1024,
    });
    assert.equal(grown?.name, 'a');
    assert.equal(grown.size, grown.previousSize + 1024 * 1024);
    const { head: grownHead } = await readHead(store);
    assert.equal(grownHead.size, grown.size, 'committed before the answer');
    assert.ok(grownHead.checkpoint >= grown.checkpoint);
    const grownWrite = Buffer.alloc(4096, 0x78);
    c.send(req(1, handle++, 12288n, grownWrite.length, 0, grownWrite));
    assert.equal((await c.simpleReply()).error, 0);
    grownWrite.copy(expected, 12288);
    await rejectsWith(s.client.post('/v1/exports/a/resize', { size: 4096 }), 'DEVICE_BUSY');
    await rejectsWith(s.client.post('/v1/exports/b/resize', { size: 1 << 30 }), 'INVALID_ARGUMENT');
    await rejectsWith(
      s.client.post('/v1/exports/a/resize', { size: grown.size, volumeUuid: 'f'.repeat(32) }),
      'PRECONDITION_FAILED',
    );
    assert.equal((await readHead(store)).head.size, grown.size, 'refusals change nothing');
    // After the unmap the volume holds every write, and a deep check is clean.
    await s.client.delete('/v1/exports/a');
    const v = await Volume.open(store, { readOnly: true });
    assert.ok((await v.read(0, expected.length)).equals(expected));
    await v.close();
    const report = await checkVolume(store, { deep: true });
    assert.deepEqual(report.problems, []);
  });

  it('its online compaction keeps the checkpoints its own read-only exports serve', async (t) => {
    const s = await setup(t, ['a']);
    const d = await s.start();
    await s.client.post('/v1/exports', { url: s.url('a') });
    const c = await nbdClient(t, d, 'a');
    const write = async (h: bigint, fill: number): Promise<void> => {
      c.send(req(1, h, 0n, 65536, 0, Buffer.alloc(65536, fill)));
      assert.equal((await c.simpleReply()).error, 0);
      c.send(req(3, h + 1000n, 0n, 0));
      assert.equal((await c.simpleReply()).error, 0);
    };
    await write(1n, 0x01);
    const old = (await s.client.get<ExportStatus>('/v1/exports/a')).checkpoint!;
    for (let i = 2; i <= 5; i++) await write(BigInt(i), i);
    await s.client.post('/v1/exports', {
      url: s.url('a'),
      name: 'a-old',
      at: { checkpoint: old },
    });
    const r = await s.client.post<CompactResult>('/v1/exports/a/compact', {
      keepLast: 1,
      graceMs: 0,
    });
    assert.ok(r.checkpointsDropped >= 3, JSON.stringify(r));
    assert.ok(r.segmentsDeleted >= 3, JSON.stringify(r));
    // The export at the old checkpoint still reads it (its checkpoint was kept)...
    const o = await nbdClient(t, d, 'a-old');
    o.send(req(0, 1n, 0n, 65536));
    assert.equal((await o.simpleReply()).error, 0);
    assert.ok((await o.read(65536)).equals(Buffer.alloc(65536, 0x01)));
    o.close();
    // ...and once it is unmapped, the next run drops it.
    await s.client.delete('/v1/exports/a-old');
    const again = await s.client.post<CompactResult>('/v1/exports/a/compact', {
      keepLast: 1,
      graceMs: 0,
    });
    assert.ok(again.checkpointsDropped >= 1, JSON.stringify(again));
    await rejectsWith(
      s.client.post('/v1/exports', { url: s.url('a'), name: 'a-old', at: { checkpoint: old } }),
      'CHECKPOINT_NOT_FOUND',
    );
  });
});
