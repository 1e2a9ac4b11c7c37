/**
 * The metrics module: every observer moves the series it should, labelled by export; the
 * exposition parses (TYPE declared once per family, histograms cumulative); tracked volumes
 * are read at scrape time and disappear when untracked; the HTTP endpoint answers /metrics,
 * /healthz, 404 and 405, and closes.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { EngineStats } from '../../../src/format/volume/types.js';
import { createMetrics, startMetricsServer } from '../../../src/metrics/index.js';
import { parseExposition, scrape, select, total, value } from '../../helpers/prometheus.js';

function stats(over: Partial<EngineStats> = {}): EngineStats {
  return {
    flushes: 0,
    segmentsWritten: 0,
    bytesWritten: 0,
    bytesRead: 0,
    nodeCacheHits: 0,
    nodeCacheMisses: 0,
    dataCacheHits: 0,
    dataCacheMisses: 0,
    dataGets: 0,
    diskCacheHits: 0,
    diskCacheMisses: 0,
    diskCacheDropped: 0,
    diskCacheWrites: 0,
    diskCacheWriteFailures: 0,
    prefetchedBlocks: 0,
    prefetchHits: 0,
    readAroundBlocks: 0,
    readAroundHits: 0,
    readAroundSkipped: 0,
    dirtyBytes: 0,
    maxDirtyBytes: 48 << 20,
    checkpoint: 1,
    checkpointMs: 0,
    ...over,
  };
}

describe('metrics', () => {
  it('counts NBD requests, bytes, errors and latency by export and command', async () => {
    const m = createMetrics({ processMetrics: false });
    const nbd = m.nbd;
    nbd.accepted!('c-1', '127.0.0.1');
    nbd.transmitting!('c-1', 'vm1');
    nbd.accepted!('c-2', '127.0.0.1');
    nbd.transmitting!('c-2', 'vm2');
    for (let i = 0; i < 3; i++) {
      nbd.request!({
        conn: 'c-1',
        export: 'vm1',
        command: 'WRITE',
        bytes: 4096,
        seconds: 0.002,
        errno: undefined,
      });
    }
    nbd.request!({
      conn: 'c-1',
      export: 'vm1',
      command: 'READ',
      bytes: 65536,
      seconds: 0.0003,
      errno: undefined,
    });
    nbd.request!({
      conn: 'c-1',
      export: 'vm1',
      command: 'READ',
      bytes: 512,
      seconds: undefined,
      errno: 'EINVAL',
    });
    nbd.request!({
      conn: 'c-2',
      export: 'vm2',
      command: 'WRITE_ZEROES',
      bytes: 1 << 20,
      seconds: 0.01,
      errno: 'EPERM',
    });
    nbd.request!({
      conn: 'c-2',
      export: 'vm2',
      command: 'FLUSH',
      bytes: 0,
      seconds: 0.5,
      errno: undefined,
    });
    nbd.closed!('c-2', 'vm2');
    nbd.closed!('c-3', undefined); // never reached transmission: no export series touched

    const e = parseExposition(await m.text());
    assert.equal(e.types.get('hyper_nbd_requests_total'), 'counter');
    assert.equal(e.types.get('hyper_nbd_request_duration_seconds'), 'histogram');
    assert.equal(value(e, 'hyper_nbd_requests_total', { export: 'vm1', command: 'write' }), 3);
    assert.equal(value(e, 'hyper_nbd_requests_total', { export: 'vm1', command: 'read' }), 2);
    assert.equal(
      value(e, 'hyper_nbd_request_bytes_total', { export: 'vm1', command: 'write' }),
      3 * 4096,
    );
    assert.equal(
      value(e, 'hyper_nbd_request_bytes_total', { export: 'vm1', command: 'read' }),
      65536 + 512,
    );
    assert.equal(
      value(e, 'hyper_nbd_request_bytes_total', { export: 'vm2', command: 'zero' }),
      1 << 20,
    );
    assert.equal(select(e, 'hyper_nbd_request_bytes_total', { command: 'flush' }).length, 0);
    assert.equal(
      value(e, 'hyper_nbd_request_errors_total', {
        export: 'vm1',
        command: 'read',
        errno: 'EINVAL',
      }),
      1,
    );
    assert.equal(
      value(e, 'hyper_nbd_request_errors_total', {
        export: 'vm2',
        command: 'zero',
        errno: 'EPERM',
      }),
      1,
    );
    assert.equal(total(e, 'hyper_nbd_request_errors_total'), 2);
    // A refused request (no duration) is counted but not timed.
    assert.equal(
      value(e, 'hyper_nbd_request_duration_seconds_count', { export: 'vm1', command: 'read' }),
      1,
    );
    const flushBuckets = select(e, 'hyper_nbd_request_duration_seconds_bucket', {
      export: 'vm2',
      command: 'flush',
    });
    assert.equal(flushBuckets.find((b) => b.labels.le === '0.25')!.value, 0);
    assert.equal(flushBuckets.find((b) => b.labels.le === '0.5')!.value, 1);
    assert.equal(flushBuckets.find((b) => b.labels.le === '+Inf')!.value, 1);
    assert.equal(value(e, 'hyper_nbd_connections_accepted_total'), 2);
    assert.equal(value(e, 'hyper_nbd_connections_total', { export: 'vm2' }), 1);
    assert.equal(value(e, 'hyper_nbd_connections_open', { export: 'vm1' }), 1);
    assert.equal(value(e, 'hyper_nbd_connections_open', { export: 'vm2' }), 0);
    // Histogram buckets are cumulative.
    const series = new Map<string, number[]>();
    for (const b of select(e, 'hyper_nbd_request_duration_seconds_bucket')) {
      const k = `${b.labels.export}/${b.labels.command}`;
      series.set(k, [...(series.get(k) ?? []), b.value]);
    }
    assert.equal(series.size, 4);
    for (const [k, vals] of series) {
      assert.deepEqual(
        vals,
        [...vals].sort((a, b) => a - b),
        `buckets of ${k} are cumulative`,
      );
    }
  });

  it('counts store requests, bytes, errors and retries by export, store and operation', async () => {
    const m = createMetrics({ processMetrics: false });
    const a = m.storeObserver('vm1', 's3://bucket/vols/vm1/');
    const b = m.storeObserver('vm2', 'file:///srv/vols/vm2/');
    a.request!({ op: 'PUT', bytes: 1000, seconds: 0.05, error: undefined });
    a.request!({ op: 'PUT', bytes: 24, seconds: 0.01, error: 'PRECONDITION_FAILED' });
    a.request!({ op: 'GET', bytes: 4096, seconds: 0.02, error: undefined });
    a.retry!({ op: 'GET', code: 'STORE_UNAVAILABLE', attempt: 1 });
    a.retry!({ op: 'GET', code: 'STORE_UNAVAILABLE', attempt: 2 });
    b.request!({ op: 'LIST', bytes: 0, seconds: 0.001, error: undefined });
    const e = parseExposition(await m.text());
    const s3 = { export: 'vm1', store: 's3://bucket' };
    assert.equal(value(e, 'hyper_store_requests_total', { ...s3, op: 'PUT' }), 2);
    assert.equal(value(e, 'hyper_store_bytes_total', { ...s3, op: 'PUT' }), 1024);
    assert.equal(value(e, 'hyper_store_bytes_total', { ...s3, op: 'GET' }), 4096);
    assert.equal(
      value(e, 'hyper_store_errors_total', { ...s3, op: 'PUT', code: 'PRECONDITION_FAILED' }),
      1,
    );
    assert.equal(
      value(e, 'hyper_store_retries_total', { ...s3, op: 'GET', code: 'STORE_UNAVAILABLE' }),
      2,
    );
    assert.equal(
      value(e, 'hyper_store_requests_total', { export: 'vm2', store: 'file', op: 'LIST' }),
      1,
    );
    assert.equal(value(e, 'hyper_store_request_duration_seconds_count', { ...s3, op: 'PUT' }), 2);
  });

  it('reads tracked volumes at each scrape: dirty bytes, lease, checkpoint age, caches; untracked ones disappear', async () => {
    let now = 1_000_000;
    const m = createMetrics({ processMetrics: false, now: () => now });
    let s = stats({
      dirtyBytes: 12345,
      checkpoint: 7,
      checkpointMs: now - 30_000,
      lease: { epoch: 3, expiresMs: now + 20_000, lost: false, lapsed: false },
      dataCacheHits: 10,
      dataCacheMisses: 5,
      diskCacheHits: 3,
      diskCacheDropped: 1,
    });
    const untrack = m.trackVolume('vm1', { readOnly: false, stats: () => s });
    m.trackVolume('ro', { readOnly: true, stats: () => stats({ checkpointMs: 0 }) });
    const engine = m.engineObserver('vm1');
    engine.flushed!({ kind: 'checkpoint', seconds: 0.2, ok: true });
    engine.flushed!({ kind: 'segment', seconds: 1.5, ok: false });
    engine.committed!({ seconds: 0.01, ok: true });

    let e = parseExposition(await m.text());
    assert.equal(value(e, 'hyper_volume_dirty_bytes', { export: 'vm1' }), 12345);
    assert.equal(value(e, 'hyper_volume_dirty_limit_bytes', { export: 'vm1' }), 48 << 20);
    assert.equal(value(e, 'hyper_volume_checkpoint', { export: 'vm1' }), 7);
    assert.equal(value(e, 'hyper_volume_checkpoint_age_seconds', { export: 'vm1' }), 30);
    assert.equal(value(e, 'hyper_volume_lease_held', { export: 'vm1' }), 1);
    assert.equal(value(e, 'hyper_volume_lease_epoch', { export: 'vm1' }), 3);
    assert.equal(value(e, 'hyper_volume_lease_expiry_seconds', { export: 'vm1' }), 20);
    assert.equal(value(e, 'hyper_volume_read_only', { export: 'ro' }), 1);
    // A read-only export has no lease and no checkpoint age to alert on.
    assert.equal(select(e, 'hyper_volume_lease_held', { export: 'ro' }).length, 0);
    assert.equal(select(e, 'hyper_volume_checkpoint_age_seconds', { export: 'ro' }).length, 0);
    // Counters start from what the volume had when tracked: nothing gained yet.
    assert.equal(select(e, 'hyper_volume_cache_hits_total', { export: 'vm1' }).length, 0);
    assert.equal(
      value(e, 'hyper_volume_flush_duration_seconds_count', { export: 'vm1', kind: 'checkpoint' }),
      1,
    );
    assert.equal(
      value(e, 'hyper_volume_flush_failures_total', { export: 'vm1', kind: 'segment' }),
      1,
    );
    assert.equal(value(e, 'hyper_volume_commit_duration_seconds_count', { export: 'vm1' }), 1);

    now += 10_000;
    s = {
      ...s,
      dataCacheHits: 25,
      dataCacheMisses: 6,
      nodeCacheHits: 4,
      diskCacheHits: 11,
      diskCacheMisses: 2,
      diskCacheDropped: 3,
      diskCacheWriteFailures: 5,
      segmentsWritten: 2,
      lease: { epoch: 3, expiresMs: now - 1000, lost: true, lapsed: false },
    };
    e = parseExposition(await m.text());
    assert.equal(value(e, 'hyper_volume_cache_hits_total', { export: 'vm1', cache: 'data' }), 15);
    assert.equal(value(e, 'hyper_volume_cache_misses_total', { export: 'vm1', cache: 'data' }), 1);
    assert.equal(value(e, 'hyper_volume_cache_hits_total', { export: 'vm1', cache: 'node' }), 4);
    assert.equal(value(e, 'hyper_volume_cache_hits_total', { export: 'vm1', cache: 'disk' }), 8);
    assert.equal(value(e, 'hyper_volume_cache_misses_total', { export: 'vm1', cache: 'disk' }), 2);
    assert.equal(value(e, 'hyper_volume_disk_cache_dropped_total', { export: 'vm1' }), 2);
    assert.equal(value(e, 'hyper_volume_disk_cache_write_failures_total', { export: 'vm1' }), 5);
    assert.equal(value(e, 'hyper_volume_segments_written_total', { export: 'vm1' }), 2);
    assert.equal(value(e, 'hyper_volume_lease_held', { export: 'vm1' }), 0);
    assert.equal(value(e, 'hyper_volume_lease_expiry_seconds', { export: 'vm1' }), -1);
    assert.equal(value(e, 'hyper_volume_checkpoint_age_seconds', { export: 'vm1' }), 40);
    // A scrape without change adds nothing.
    e = parseExposition(await m.text());
    assert.equal(value(e, 'hyper_volume_cache_hits_total', { export: 'vm1', cache: 'data' }), 15);

    s = { ...s, dataCacheHits: 30 };
    untrack();
    e = parseExposition(await m.text());
    assert.equal(select(e, 'hyper_volume_dirty_bytes', { export: 'vm1' }).length, 0);
    assert.equal(select(e, 'hyper_volume_lease_held', { export: 'vm1' }).length, 0);
    // What it gained up to untracking is kept (counters never go back).
    assert.equal(value(e, 'hyper_volume_cache_hits_total', { export: 'vm1', cache: 'data' }), 20);
    assert.equal(value(e, 'hyper_volume_dirty_bytes', { export: 'ro' }), 0);
  });

  it('reports compaction debt from a space sample taken in the background, at most once per interval', async () => {
    let now = 1_000_000;
    const m = createMetrics({ processMetrics: false, now: () => now, spaceIntervalMs: 60_000 });
    let probes = 0;
    let garbage = 4096;
    const probe = async () => {
      probes++;
      return {
        storedBytes: 10 * garbage,
        liveBytes: 5 * garbage,
        deadBytes: garbage,
        historyBytes: 3 * garbage,
        garbageBytes: garbage,
      };
    };
    m.trackVolume('vm1', { readOnly: false, stats: () => stats() }, probe);
    m.trackVolume('nodebt', { readOnly: false, stats: () => stats() });
    const vm1 = { export: 'vm1' };
    // The first scrape starts the sample; it shows from the next one.
    let e = parseExposition(await m.text());
    assert.equal(select(e, 'hyper_volume_garbage_bytes').length, 0);
    await new Promise((r) => setImmediate(r));
    e = parseExposition(await m.text());
    assert.equal(value(e, 'hyper_volume_garbage_bytes', vm1), 4096);
    assert.equal(value(e, 'hyper_volume_stored_bytes', vm1), 40960);
    assert.equal(value(e, 'hyper_volume_live_bytes', vm1), 20480);
    assert.equal(value(e, 'hyper_volume_dead_bytes', vm1), 4096);
    assert.equal(value(e, 'hyper_volume_history_bytes', vm1), 12288);
    assert.equal(select(e, 'hyper_volume_garbage_bytes', { export: 'nodebt' }).length, 0);
    assert.equal(probes, 1, 'one sample within the interval');
    // Stale: the next scrape reports the old sample and starts a new one.
    garbage = 8192;
    now += 61_000;
    e = parseExposition(await m.text());
    assert.equal(value(e, 'hyper_volume_garbage_bytes', vm1), 4096);
    await new Promise((r) => setImmediate(r));
    e = parseExposition(await m.text());
    assert.equal(value(e, 'hyper_volume_garbage_bytes', vm1), 8192);
    assert.equal(probes, 2);
  });

  it('keeps two instances apart and adds process metrics unless told not to', async () => {
    const a = createMetrics();
    const b = createMetrics({ processMetrics: false });
    a.nbd.accepted!('x-1', 'unix');
    const ea = parseExposition(await a.text());
    const eb = parseExposition(await b.text());
    assert.equal(value(ea, 'hyper_nbd_connections_accepted_total'), 1);
    assert.equal(value(eb, 'hyper_nbd_connections_accepted_total'), 0);
    assert.ok(
      select(ea, 'process_resident_memory_bytes').length === 1 ||
        select(ea, 'nodejs_heap_size_used_bytes').length === 1,
    );
    assert.equal(eb.samples.filter((s) => s.name.startsWith('nodejs_')).length, 0);
  });

  it('serves GET /metrics and /healthz over HTTP, 404 and 405 otherwise, and closes', async () => {
    const m = createMetrics({ processMetrics: false });
    m.nbd.accepted!('c-1', '127.0.0.1');
    let problem: string | undefined;
    const http = await startMetricsServer({ port: 0, registry: m.registry, health: () => problem });
    try {
      assert.equal(http.host, '127.0.0.1');
      assert.match(http.url, /^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
      const r = await fetch(http.url);
      assert.equal(r.status, 200);
      assert.match(r.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
      assert.equal(value(await scrape(http.url), 'hyper_nbd_connections_accepted_total'), 1);
      const base = http.url.replace(/metrics$/, '');
      let h = await fetch(`${base}healthz`);
      assert.equal(h.status, 200);
      assert.equal(await h.text(), 'ok\n');
      problem = 'lease lost (writes fail) on: vm1';
      h = await fetch(`${base}healthz`);
      assert.equal(h.status, 503);
      assert.equal(await h.text(), 'lease lost (writes fail) on: vm1\n');
      assert.equal((await fetch(`${base}nope`)).status, 404);
      assert.equal((await fetch(http.url, { method: 'POST', body: 'x' })).status, 405);
    } finally {
      await http.close();
    }
    await assert.rejects(fetch(http.url));
    await http.close(); // idempotent
  });

  it('reports a port in use as an error', async () => {
    const m = createMetrics({ processMetrics: false });
    const first = await startMetricsServer({ port: 0, registry: m.registry });
    try {
      await assert.rejects(
        startMetricsServer({ port: first.port, registry: m.registry }),
        /EADDRINUSE/,
      );
    } finally {
      await first.close();
    }
  });
});
