/**
 * Prometheus metrics of a replicated primary (`hyper replica serve --metrics-port`): the
 * replicator's mode and connection, how far the replica lags (bytes, writes, seconds: the
 * recovery point), the pool, dirty regions, resync and restore progress, and what was
 * shipped; and the health check's words for it. Read from `ReplicaStatus` at each scrape.
 * Every series is labelled with the primary's uuid. The README ("Replication") lists them
 * with what to alert on.
 */
import { Counter, Gauge, type Registry } from 'prom-client';
import type { ReplicaMode } from '../format/codec/primary.js';
import type { ReplicaStatus } from '../replica/replicator.js';

const MODES: readonly ReplicaMode[] = ['logging', 'forward-part', 'forward-full', 'reverse-full'];

/**
 * Register the replica series in `registry`; `status` is asked at each scrape (undefined
 * while the replicator is not running: the series are then absent).
 */
export function trackReplica(
  registry: Registry,
  status: () => ReplicaStatus | undefined,
  now: () => number = Date.now,
): void {
  // One status per scrape, whichever series is collected first.
  let cached: { st: ReplicaStatus | undefined; at: number } | undefined;
  const current = (): ReplicaStatus | undefined => {
    const t = now();
    if (cached === undefined || t - cached.at > 100) cached = { st: status(), at: t };
    return cached.st;
  };
  // Labelled by the primary's uuid: a series can then be absent (while nothing runs).
  const gauge = (name: string, help: string, value: (s: ReplicaStatus) => number | undefined) =>
    new Gauge({
      name,
      help,
      labelNames: ['uuid'],
      registers: [registry],
      collect(this: Gauge<'uuid'>) {
        this.reset();
        const s = current();
        const v = s === undefined ? undefined : value(s);
        if (s !== undefined && v !== undefined) this.set({ uuid: s.uuid }, v);
      },
    });
  // Cumulative counts of the status, fed as counters (they only grow within a process).
  const counter = (name: string, help: string, value: (s: ReplicaStatus) => number) => {
    let seen = 0;
    return new Counter({
      name,
      help,
      labelNames: ['uuid'],
      registers: [registry],
      collect(this: Counter<'uuid'>) {
        const s = current();
        if (s === undefined) return;
        const v = value(s);
        if (v > seen) this.inc({ uuid: s.uuid }, v - seen);
        seen = Math.max(seen, v);
      },
    });
  };

  new Gauge({
    name: 'hyper_replica_mode',
    help: 'The replication mode: 1 for the current one (logging is the normal mode; forward-part and forward-full resync regions to the replica, reverse-full restores from it).',
    labelNames: ['uuid', 'mode'],
    registers: [registry],
    collect(this: Gauge<'uuid' | 'mode'>) {
      this.reset();
      const s = current();
      if (s === undefined) return;
      for (const m of MODES) this.set({ uuid: s.uuid, mode: m }, s.mode === m ? 1 : 0);
    },
  });
  gauge(
    'hyper_replica_connected',
    '1 while the replica volume is open and answering; 0 while it is unreachable, full or refused (writes go on; changed regions are resynced later).',
    (s) => (s.replica.connected ? 1 : 0),
  );
  gauge(
    'hyper_replica_lag_bytes',
    'Bytes written to the primary and not yet committed on the replica.',
    (s) => s.lag.bytes,
  );
  gauge(
    'hyper_replica_lag_ios',
    'Writes to the primary not yet committed on the replica.',
    (s) => s.lag.ios,
  );
  gauge(
    'hyper_replica_lag_seconds',
    'Age of the oldest write not yet committed on the replica (the recovery point: what losing the primary now would lose); 0 when caught up.',
    (s) => s.lag.seconds,
  );
  gauge(
    'hyper_replica_consistent_checkpoint_age_seconds',
    'Seconds since the newest replica checkpoint that is a consistent image of the primary (the one a restore would use).',
    (s) =>
      s.replica.lastConsistentTime === null
        ? undefined
        : Math.max(0, (now() - Date.parse(s.replica.lastConsistentTime)) / 1000),
  );
  gauge(
    'hyper_replica_dirty_regions',
    'Regions changed on the primary and not yet on the replica (persisted in the primary header).',
    (s) => s.dirtyRegions,
  );
  gauge('hyper_replica_regions', 'Regions of the device.', (s) => s.regions);
  gauge(
    'hyper_replica_pool_bytes',
    'Bytes of writes held in memory for the replica.',
    (s) => s.pool.bytes,
  );
  gauge(
    'hyper_replica_pool_limit_bytes',
    'The pool size (--pool-size): past it, writes are tracked by region instead.',
    (s) => s.pool.limit,
  );
  gauge(
    'hyper_replica_resync_pending_regions',
    'Regions a resync still has to copy to the replica (0 when none runs).',
    (s) => (s.resync === null ? 0 : s.resync.pending),
  );
  gauge(
    'hyper_replica_restore_remaining_regions',
    'Regions a restore (lazy or not) still has to copy from the replica (0 when none runs).',
    (s) => (s.restore === null ? 0 : Math.max(0, s.restore.total - s.restore.restored)),
  );
  counter(
    'hyper_replica_pool_overflows_total',
    'Times the pool overflowed and the replicator fell back to tracking regions.',
    (s) => s.pool.overflows,
  );
  counter(
    'hyper_replica_shipped_bytes_total',
    'Bytes committed on the replica.',
    (s) => s.shipped.bytes,
  );
  counter(
    'hyper_replica_shipped_ios_total',
    'Writes committed on the replica.',
    (s) => s.shipped.ios,
  );
  counter(
    'hyper_replica_checkpoints_total',
    'Checkpoints committed on the replica (each a restorable point).',
    (s) => s.shipped.checkpoints,
  );
}

/**
 * Why the replication is not healthy (GET /healthz answers 503 with it), or undefined: the
 * replica is not connected (unreachable, full, refused). The primary still serves at local
 * speed meanwhile, but the recovery point grows.
 */
export function replicaProblem(s: ReplicaStatus): string | undefined {
  if (s.replica.connected) return undefined;
  return `replica not connected (the primary serves; changes are tracked by region, lag ${Math.round(s.lag.seconds)} s): ${s.replica.error ?? 'connecting'}`;
}
