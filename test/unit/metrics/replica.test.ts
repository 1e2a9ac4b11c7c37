/**
 * The replica series (src/metrics/replica.ts) from a changing ReplicaStatus: gauges follow
 * the status at each scrape, counters catch up with the status' cumulative counts, the mode
 * is one-hot, and the health check names a disconnected replica.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Registry } from 'prom-client';
import { replicaProblem, trackReplica } from '../../../src/metrics/replica.js';
import type { ReplicaStatus } from '../../../src/replica/replicator.js';
import { parseExposition, value } from '../../helpers/prometheus.js';

const status = (over: Partial<ReplicaStatus> = {}): ReplicaStatus => ({
  uuid: 'u',
  mode: 'logging',
  deviceSize: 64 << 20,
  regionSize: 1 << 20,
  replicaUrl: 's3://b/r/u/',
  live: true,
  replica: {
    connected: true,
    error: null,
    checkpoint: 5,
    lastConsistentCheckpoint: 5,
    lastConsistentTime: new Date(1_000_000).toISOString(),
    commitSeconds: null,
  },
  lag: { bytes: 0, ios: 0, seconds: 0, p50Seconds: 0, p99Seconds: 0 },
  pool: { bytes: 0, limit: 512 << 20, overflows: 0 },
  dirtyRegions: 0,
  regions: 64,
  resync: null,
  restore: null,
  shipped: { bytes: 1000, ios: 10, checkpoints: 2, bytesPerSecond: 0 },
  ...over,
});

describe('replica metrics', () => {
  it('follow the status at each scrape', async () => {
    const registry = new Registry();
    let now = 61_000_000;
    let st: ReplicaStatus | undefined = status();
    trackReplica(
      registry,
      () => st,
      () => now,
    );
    let e = parseExposition(await registry.metrics());
    assert.equal(value(e, 'hyper_replica_mode', { mode: 'logging' }), 1);
    assert.equal(value(e, 'hyper_replica_mode', { mode: 'forward-part' }), 0);
    assert.equal(value(e, 'hyper_replica_connected'), 1);
    assert.equal(value(e, 'hyper_replica_consistent_checkpoint_age_seconds'), 60_000);
    assert.equal(value(e, 'hyper_replica_shipped_bytes_total'), 1000);
    assert.equal(replicaProblem(st), undefined);

    now += 1000;
    st = status({
      mode: 'forward-part',
      replica: { ...status().replica, connected: false, error: 'NO_SPACE: full' },
      lag: { bytes: 4096, ios: 1, seconds: 12.5, p50Seconds: 0, p99Seconds: 0 },
      pool: { bytes: 4096, limit: 512 << 20, overflows: 1 },
      dirtyRegions: 3,
      resync: { pending: 3, copied: 0, total: 3 },
      shipped: { bytes: 5000, ios: 11, checkpoints: 3, bytesPerSecond: 0 },
    });
    e = parseExposition(await registry.metrics());
    assert.equal(value(e, 'hyper_replica_mode', { mode: 'logging' }), 0);
    assert.equal(value(e, 'hyper_replica_mode', { mode: 'forward-part' }), 1);
    assert.equal(value(e, 'hyper_replica_connected'), 0);
    assert.equal(value(e, 'hyper_replica_lag_bytes'), 4096);
    assert.equal(value(e, 'hyper_replica_lag_seconds'), 12.5);
    assert.equal(value(e, 'hyper_replica_dirty_regions'), 3);
    assert.equal(value(e, 'hyper_replica_resync_pending_regions'), 3);
    assert.equal(value(e, 'hyper_replica_pool_overflows_total'), 1);
    assert.equal(value(e, 'hyper_replica_shipped_bytes_total'), 5000);
    assert.equal(value(e, 'hyper_replica_checkpoints_total'), 3);
    assert.match(replicaProblem(st) ?? '', /^replica not connected .*lag 13 s\): NO_SPACE: full$/);

    // Not running (stopping): the series go away.
    now += 1000;
    st = undefined;
    e = parseExposition(await registry.metrics());
    assert.throws(() => value(e, 'hyper_replica_connected'));
  });
});
