/**
 * VolumeServer with metrics (`metricsListen`), in-process on a file:// volume: a raw NBD
 * client's requests move the NBD, store and engine series by what it did; /healthz turns 503
 * once another writer takes the volume over (the export's lease is lost), and while flushes
 * fail on a full store (200 again once one stores the writes); close() stops the endpoint.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { openStore, parseStoreUrl, type ObjectStore } from '../../../src/format/store/index.js';
import { Volume } from '../../../src/format/volume/volume.js';
import { lineLogger } from '../../../src/serve/logger.js';
import { VolumeServer, type StoreOpener } from '../../../src/serve/server.js';
import { scrape, select, total, value } from '../../helpers/prometheus.js';
import { RawClient, req } from '../../helpers/raw-nbd-client.js';
import { FillableStore } from '../../helpers/fillable-store.js';

const MiB = 1024 * 1024;
const ENOSPC = 28;
const CMD_READ = 0;
const CMD_WRITE = 1;
const CMD_FLUSH = 3;
const EINVAL = 22;

describe('VolumeServer metrics', () => {
  it('counts what a client did, reports the engine state, and fails /healthz once the lease is lost', async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'hyper-serve-metrics-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    const url = `file://${dir}/vol/`;
    const stores: ObjectStore[] = [];
    t.after(() => Promise.allSettled(stores.map((s) => s.close())));
    const open: StoreOpener = async (u, o = {}) => {
      const p = parseStoreUrl(u);
      if (o.mkdir && p.scheme === 'file') await mkdir(p.dir, { recursive: true });
      const s = await openStore(u);
      stores.push(s);
      return s;
    };
    const logs: string[] = [];
    const server = new VolumeServer({
      url,
      openStore: open,
      create: { size: 8 * MiB },
      listen: { port: 0, host: '127.0.0.1' },
      metricsListen: { port: 0 },
      logger: lineLogger({ format: 'json', write: (l) => logs.push(l) }),
    });
    t.after(() => server.close().catch(() => undefined));
    await server.start();
    const m = server.metricsAddress!;
    assert.match(m.url, /^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
    assert.ok(
      logs.some((l) => {
        const o = JSON.parse(l) as { msg: string; url?: string };
        return o.msg === 'serving metrics' && o.url === m.url;
      }),
    );
    const healthz = m.url.replace(/metrics$/, 'healthz');
    assert.equal((await fetch(healthz)).status, 200);

    let e = await scrape(m.url);
    const before = {
      put: total(e, 'hyper_store_requests_total', { export: 'vol', op: 'PUT' }),
      checkpoint: value(e, 'hyper_volume_checkpoint', { export: 'vol' }),
    };
    assert.ok(before.put >= 2, 'opening took the lease and rewrote the head');
    assert.equal(value(e, 'hyper_volume_lease_held', { export: 'vol' }), 1);

    const port = Number(/:(\d+)\//.exec(server.uris[0]!)![1]);
    const c = await RawClient.open(port);
    await c.handshake();
    await c.go('vol');
    const data = randomBytes(256 * 1024);
    c.send(req(CMD_WRITE, 1n, 0n, data.length, 0, data));
    assert.equal((await c.simpleReply()).error, 0);
    e = await scrape(m.url);
    assert.equal(value(e, 'hyper_volume_dirty_bytes', { export: 'vol' }), data.length);
    c.send(req(CMD_FLUSH, 2n, 0n, 0));
    assert.equal((await c.simpleReply()).error, 0);
    c.send(req(CMD_READ, 3n, 0n, 4096));
    assert.equal((await c.simpleReply()).error, 0);
    assert.deepEqual(await c.read(4096), data.subarray(0, 4096));
    c.send(req(CMD_READ, 4n, BigInt(8 * MiB), 4096));
    assert.equal((await c.simpleReply()).error, EINVAL);

    const vol = { export: 'vol' };
    // FLUSH returned once the segment landed; the head CAS that names it follows on its own.
    e = await scrape(m.url);
    for (
      let i = 0;
      i < 200 && total(e, 'hyper_volume_commit_duration_seconds_count', vol) < 1;
      i++
    ) {
      await new Promise((r) => setTimeout(r, 10));
      e = await scrape(m.url);
    }
    assert.equal(
      value(e, 'hyper_nbd_request_bytes_total', { ...vol, command: 'write' }),
      data.length,
    );
    assert.equal(value(e, 'hyper_nbd_requests_total', { ...vol, command: 'read' }), 2);
    assert.equal(value(e, 'hyper_nbd_requests_total', { ...vol, command: 'flush' }), 1);
    assert.equal(
      value(e, 'hyper_nbd_request_errors_total', { ...vol, command: 'read', errno: 'EINVAL' }),
      1,
    );
    assert.equal(value(e, 'hyper_nbd_connections_open', vol), 1);
    assert.equal(value(e, 'hyper_volume_dirty_bytes', vol), 0);
    assert.equal(value(e, 'hyper_volume_checkpoint', vol), before.checkpoint + 1);
    assert.ok(value(e, 'hyper_volume_checkpoint_age_seconds', vol) < 30);
    assert.equal(value(e, 'hyper_volume_segments_written_total', vol), 1);
    assert.equal(
      value(e, 'hyper_volume_flush_duration_seconds_count', { ...vol, kind: 'checkpoint' }),
      1,
    );
    assert.equal(value(e, 'hyper_volume_commit_duration_seconds_count', vol), 1);
    // The flush PUT one segment (at least the data) and the head.
    const puts = total(e, 'hyper_store_requests_total', { ...vol, store: 'file', op: 'PUT' });
    assert.ok(puts >= before.put + 2, `PUTs ${before.put} → ${puts}`);
    assert.ok(total(e, 'hyper_store_bytes_total', { ...vol, op: 'PUT' }) >= data.length);

    // Another writer takes the volume over: this server's next commit is fenced.
    const thief = await Volume.open(await open(url), { force: true, holder: 'thief' });
    t.after(() => thief.close().catch(() => undefined));
    c.send(req(CMD_WRITE, 5n, 0n, 4096, 0, data.subarray(0, 4096)));
    await c.simpleReply(); // accepted into the buffer, or refused: either way not committed
    c.send(req(CMD_FLUSH, 6n, 0n, 0));
    assert.notEqual((await c.simpleReply()).error, 0, 'a fenced writer cannot commit');
    e = await scrape(m.url);
    assert.equal(value(e, 'hyper_volume_lease_held', vol), 0);
    assert.ok(
      total(e, 'hyper_volume_commit_failures_total', vol) +
        total(e, 'hyper_volume_flush_failures_total', vol) >=
        1,
    );
    assert.ok(total(e, 'hyper_nbd_request_errors_total', { ...vol, command: 'flush' }) >= 1);
    const h = await fetch(healthz);
    assert.equal(h.status, 503);
    assert.match(await h.text(), /^vol: lease lost/m);
    c.close();

    await server.close().catch(() => undefined);
    await assert.rejects(fetch(m.url));
    assert.equal(select(e, 'hyper_volume_lease_epoch', vol).length, 1);
  });

  it('fails /healthz while flushes fail on a full store, and passes again once one stores the writes', async (t) => {
    const store = new FillableStore('mem://health-full/vol/', new Map());
    const server = new VolumeServer({
      url: 'mem://health-full/vol/',
      openStore: () => Promise.resolve(store),
      create: { size: 8 * MiB },
      listen: { port: 0, host: '127.0.0.1' },
      metricsListen: { port: 0 },
      logger: lineLogger({ format: 'json', write: () => undefined }),
    });
    t.after(() => server.close().catch(() => undefined));
    await server.start();
    const healthz = server.metricsAddress!.url.replace(/metrics$/, 'healthz');
    assert.equal((await fetch(healthz)).status, 200);
    const port = Number(/:(\d+)\//.exec(server.uris[0]!)![1]);
    const c = await RawClient.open(port);
    t.after(() => c.close());
    await c.handshake();
    await c.go('vol');
    const data = randomBytes(64 * 1024);
    store.full = true;
    c.send(req(CMD_WRITE, 1n, 0n, data.length, 0, data));
    assert.equal((await c.simpleReply()).error, 0, 'held in the buffer');
    c.send(req(CMD_FLUSH, 2n, 0n, 0));
    assert.equal((await c.simpleReply()).error, ENOSPC);
    let h = await fetch(healthz);
    assert.equal(h.status, 503);
    assert.match(await h.text(), /^vol: flushes failing for \d+ s \(1 failed; .*test: full/m);
    // Alive all the same: a liveness probe must not restart it (the writes it holds would go).
    const live = await fetch(healthz.replace(/healthz$/, 'livez'));
    assert.equal(live.status, 200);
    assert.equal(await live.text(), 'ok\n');

    store.full = false;
    c.send(req(CMD_FLUSH, 3n, 0n, 0));
    assert.equal((await c.simpleReply()).error, 0);
    h = await fetch(healthz);
    assert.equal(h.status, 200, await h.text());
    c.send(req(CMD_READ, 4n, 0n, data.length));
    assert.equal((await c.simpleReply()).error, 0);
    assert.deepEqual(await c.read(data.length), data);
  });
});
