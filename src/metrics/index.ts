/**
 * Prometheus metrics for serving volumes: NBD requests, object-store requests and the volume
 * engine, every series labelled by export name. The exposition format is prom-client's.
 *
 *   const metrics = createMetrics();
 *   // hand metrics.nbd to the NBD server, metrics.storeObserver(…) / engineObserver(…) /
 *   // trackVolume(…) to each export's store and volume (src/serve/server.ts does this)
 *   const http = await startMetricsServer({ port: 9810, metrics });
 *   …
 *   await http.close();
 *
 * Nothing here is process-global: each `createMetrics()` has its own registry, so a process
 * may run several (tests do). The README lists every metric and what to alert on.
 */
import {
  Counter,
  Gauge,
  Histogram,
  Registry,
  collectDefaultMetrics,
  type CounterConfiguration,
  type LabelValues,
} from 'prom-client';
import type { NbdObserver, NbdRequestEvent } from '../nbd/observer.js';
import type { StoreObserver } from '../format/store/observed.js';
import { storeLabel } from '../format/store/observed.js';
import type { EngineObserver, EngineStats } from '../format/volume/types.js';

export { startMetricsServer, type MetricsServer, type MetricsServerOptions } from './http.js';

/** What `trackVolume` reads at each scrape (the engine's Volume satisfies it). */
export interface VolumeSource {
  readonly readOnly: boolean;
  stats(): EngineStats;
}

/** Where an export's stored bytes go (compaction debt): a listing and a walk of the indexes. */
export interface SpaceSample {
  storedBytes: number;
  liveBytes: number;
  deadBytes: number;
  historyBytes: number;
  garbageBytes: number;
}

export interface MetricsOptions {
  /** Also export prom-client's process and Node.js metrics (process_*, nodejs_*; default true). */
  processMetrics?: boolean;
  /**
   * How old the space sample of an export may get before a scrape starts a new one (it runs
   * in the background; the scrape reports the last one). Default 10 minutes.
   */
  spaceIntervalMs?: number;
  /** Clock for ages and expiries, in ms (tests). */
  now?: () => number;
}

/** The engine counters the counters fed from the engine follow. */
type FedFrom = {
  [K in keyof EngineStats]-?: EngineStats[K] extends number ? K : never;
}[keyof EngineStats];

/** The `cache` label of the cache counters, and the engine counters behind it. */
const CACHE_SERIES: readonly (readonly [string, FedFrom, FedFrom])[] = [
  ['node', 'nodeCacheHits', 'nodeCacheMisses'],
  ['data', 'dataCacheHits', 'dataCacheMisses'],
  ['disk', 'diskCacheHits', 'diskCacheMisses'],
];

/** NBD command names as metric labels. */
const COMMANDS: Record<string, string> = {
  READ: 'read',
  WRITE: 'write',
  FLUSH: 'flush',
  TRIM: 'trim',
  WRITE_ZEROES: 'zero',
  BLOCK_STATUS: 'block_status',
  CACHE: 'cache',
};

/** Seconds: 100 µs … 10 s for NBD requests (a memory hit to a slow S3 GET behind a flush). */
const NBD_BUCKETS = [
  0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
];
/** Seconds: 1 ms … 30 s for object-store requests (retries included). */
const STORE_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];
/** Seconds: 1 ms … 60 s for flushes (a segment PUT) and commits (a head CAS). */
const ENGINE_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

interface Tracked {
  exportName: string;
  source: VolumeSource;
  /** Measures compaction debt (optional); its last result and when it was taken. */
  space?: {
    probe: () => Promise<SpaceSample>;
    last?: SpaceSample;
    atMs: number;
    running: boolean;
  };
  /** The engine's counters as last added to the counters fed from them. */
  seen: EngineStats;
}

/** What an online compaction run reports (serve/compaction.ts). */
export interface CompactionObserver {
  ran(e: { ok: boolean; seconds: number; reclaimedBytes: number; movedBytes: number }): void;
}

export class HyperMetrics {
  readonly registry = new Registry();
  private readonly now: () => number;
  private readonly volumes = new Set<Tracked>();

  // ---- NBD
  private readonly nbdRequests: Counter<'export' | 'command'>;
  private readonly nbdBytes: Counter<'export' | 'command'>;
  private readonly nbdErrors: Counter<'export' | 'command' | 'errno'>;
  private readonly nbdDuration: Histogram<'export' | 'command'>;
  private readonly nbdAccepted: Counter;
  private readonly nbdOpen: Gauge<'export'>;
  private readonly nbdConnections: Counter<'export'>;

  // ---- store
  private readonly storeRequests: Counter<'export' | 'store' | 'op'>;
  private readonly storeBytes: Counter<'export' | 'store' | 'op'>;
  private readonly storeErrors: Counter<'export' | 'store' | 'op' | 'code'>;
  private readonly storeRetries: Counter<'export' | 'store' | 'op' | 'code'>;
  private readonly storeDuration: Histogram<'export' | 'store' | 'op'>;

  // ---- engine
  private readonly flushDuration: Histogram<'export' | 'kind'>;
  private readonly flushFailures: Counter<'export' | 'kind'>;
  private readonly commitDuration: Histogram<'export'>;
  private readonly commitFailures: Counter<'export'>;
  private readonly segments: Counter<'export'>;
  private readonly cacheHits: Counter<'export' | 'cache'>;
  private readonly cacheMisses: Counter<'export' | 'cache'>;
  private readonly diskCacheDropped: Counter<'export'>;
  private readonly diskCacheWriteFailures: Counter<'export'>;

  // ---- online compaction (serve/compaction.ts)
  private readonly compactionRuns: Counter<'export' | 'result'>;
  private readonly compactionReclaimed: Counter<'export'>;
  private readonly compactionMoved: Counter<'export'>;
  private readonly compactionDuration: Histogram<'export'>;

  /** The NBD server's observer (pass it as `observer` to NbdServer). */
  readonly nbd: NbdObserver;

  private readonly spaceIntervalMs: number;

  constructor(options: MetricsOptions = {}) {
    this.now = options.now ?? Date.now;
    this.spaceIntervalMs = options.spaceIntervalMs ?? 10 * 60 * 1000;
    const r = this.registry;
    const counter = <L extends string>(c: CounterConfiguration<L>): Counter<L> =>
      new Counter({ ...c, registers: [r] });
    // Counters fed from the engine's own counters catch up at each scrape, whichever of them
    // the registry collects first.
    const fromEngine = {
      collect: () => {
        for (const t of this.volumes) this.catchUp(t);
      },
    };
    const gauge = <L extends string>(
      name: string,
      help: string,
      labelNames: readonly L[],
      collect?: (g: Gauge<L>) => void,
    ): Gauge<L> =>
      new Gauge<L>({
        name,
        help,
        labelNames,
        registers: [r],
        ...(collect === undefined
          ? {}
          : {
              collect(this: Gauge<L>) {
                collect(this);
              },
            }),
      });
    const histogram = <L extends string>(
      name: string,
      help: string,
      labelNames: readonly L[],
      buckets: number[],
    ): Histogram<L> => new Histogram<L>({ name, help, labelNames, buckets, registers: [r] });

    this.nbdRequests = counter({
      name: 'hyper_nbd_requests_total',
      help: 'NBD requests answered, by export and command (errors included).',
      labelNames: ['export', 'command'],
    });
    this.nbdBytes = counter({
      name: 'hyper_nbd_request_bytes_total',
      help: 'Bytes covered by answered NBD requests (payload of read/write; range of trim/zero/cache/block_status).',
      labelNames: ['export', 'command'],
    });
    this.nbdErrors = counter({
      name: 'hyper_nbd_request_errors_total',
      help: 'NBD requests answered with an error, by errno (refused requests included).',
      labelNames: ['export', 'command', 'errno'],
    });
    this.nbdDuration = histogram(
      'hyper_nbd_request_duration_seconds',
      'Time from dispatching an NBD request to its answer, by command.',
      ['export', 'command'],
      NBD_BUCKETS,
    );
    this.nbdAccepted = counter({
      name: 'hyper_nbd_connections_accepted_total',
      help: 'TCP or unix-socket connections accepted (before negotiation).',
    });
    this.nbdOpen = gauge(
      'hyper_nbd_connections_open',
      'NBD connections in transmission now, by export.',
      ['export'],
    );
    this.nbdConnections = counter({
      name: 'hyper_nbd_connections_total',
      help: 'NBD connections that reached transmission, by export.',
      labelNames: ['export'],
    });

    this.storeRequests = counter({
      name: 'hyper_store_requests_total',
      help: 'Object-store requests made, by operation (GET, PUT, HEAD, DELETE, LIST page); retries not counted again.',
      labelNames: ['export', 'store', 'op'],
    });
    this.storeBytes = counter({
      name: 'hyper_store_bytes_total',
      help: 'Object-store bytes received (GET) or sent (PUT).',
      labelNames: ['export', 'store', 'op'],
    });
    this.storeErrors = counter({
      name: 'hyper_store_errors_total',
      help: 'Object-store requests that failed after retries, by error code.',
      labelNames: ['export', 'store', 'op', 'code'],
    });
    this.storeRetries = counter({
      name: 'hyper_store_retries_total',
      help: 'Object-store attempts that failed transiently and were retried, by error code.',
      labelNames: ['export', 'store', 'op', 'code'],
    });
    this.storeDuration = histogram(
      'hyper_store_request_duration_seconds',
      'Object-store request time, retries included.',
      ['export', 'store', 'op'],
      STORE_BUCKETS,
    );

    this.flushDuration = histogram(
      'hyper_volume_flush_duration_seconds',
      'Flush time: kind="checkpoint" commits a checkpoint (its segment lands; the head update too, except for FLUSH and FUA), kind="segment" writes one for room.',
      ['export', 'kind'],
      ENGINE_BUCKETS,
    );
    this.flushFailures = counter({
      name: 'hyper_volume_flush_failures_total',
      help: 'Flushes that failed (the data stays dirty and is retried).',
      labelNames: ['export', 'kind'],
    });
    this.commitDuration = histogram(
      'hyper_volume_commit_duration_seconds',
      'Head update time: the compare-and-swap that names the newest committed checkpoint in the head object.',
      ['export'],
      ENGINE_BUCKETS,
    );
    this.commitFailures = counter({
      name: 'hyper_volume_commit_failures_total',
      help: 'Head updates (compare-and-swaps) that failed.',
      labelNames: ['export'],
    });
    this.segments = counter({
      ...fromEngine,
      name: 'hyper_volume_segments_written_total',
      help: 'Segments written by this process.',
      labelNames: ['export'],
    });
    this.cacheHits = counter({
      ...fromEngine,
      name: 'hyper_volume_cache_hits_total',
      help: 'Cache hits: cache="data" (clean data blocks in memory), "node" (index nodes in memory) or "disk" (blocks and nodes in the --cache-dir disk cache).',
      labelNames: ['export', 'cache'],
    });
    this.cacheMisses = counter({
      ...fromEngine,
      name: 'hyper_volume_cache_misses_total',
      help: 'Cache misses (for "data" and "disk", each one a store GET or part of one).',
      labelNames: ['export', 'cache'],
    });
    this.diskCacheDropped = counter({
      ...fromEngine,
      name: 'hyper_volume_disk_cache_dropped_total',
      help: 'Disk cache entries that failed their checksum when read (refetched from the store; a failing or tampered cache disk).',
      labelNames: ['export'],
    });
    this.diskCacheWriteFailures = counter({
      ...fromEngine,
      name: 'hyper_volume_disk_cache_write_failures_total',
      help: 'Blocks and index nodes the disk cache could not write (a full or failing cache disk): read from the store again next time.',
      labelNames: ['export'],
    });

    this.compactionRuns = counter({
      name: 'hyper_volume_compactions_total',
      help: 'Online compaction runs of the volume by its server (--compact-every), by result (ok, failed).',
      labelNames: ['export', 'result'],
    });
    this.compactionReclaimed = counter({
      name: 'hyper_volume_compaction_reclaimed_bytes_total',
      help: 'Bytes of segments online compaction deleted.',
      labelNames: ['export'],
    });
    this.compactionMoved = counter({
      name: 'hyper_volume_compaction_moved_bytes_total',
      help: 'Bytes of live blocks online compaction moved out of mostly dead segments.',
      labelNames: ['export'],
    });
    this.compactionDuration = histogram(
      'hyper_volume_compaction_duration_seconds',
      'Time an online compaction run took (successful runs).',
      ['export'],
      ENGINE_BUCKETS,
    );

    // Read from the tracked volumes at each scrape. Every collect starts from reset(), so the
    // series of an export that is gone disappear with it.
    const perVolume = (
      name: string,
      help: string,
      value: (s: EngineStats, t: Tracked) => number | undefined,
    ): void => {
      gauge(name, help, ['export'], (g) => {
        g.reset();
        for (const t of this.volumes) {
          const v = value(t.source.stats(), t);
          if (v !== undefined) g.set({ export: t.exportName }, v);
        }
      });
    };
    // Compaction debt, from the last space sample (a newer one starts when it is stale).
    const perSpace = (name: string, help: string, value: (x: SpaceSample) => number): void =>
      perVolume(name, help, (_s, t) => {
        this.refreshSpace(t);
        const x = t.space?.last;
        return x === undefined ? undefined : value(x);
      });
    perSpace(
      'hyper_volume_garbage_bytes',
      'Compaction debt: stored bytes no retained checkpoint reaches (what `hyper compact` deletes once the grace period is over).',
      (x) => x.garbageBytes,
    );
    perSpace(
      'hyper_volume_stored_bytes',
      'Bytes the volume stores (all its objects).',
      (x) => x.storedBytes,
    );
    perSpace(
      'hyper_volume_live_bytes',
      'Bytes the current checkpoint reads from its own segments.',
      (x) => x.liveBytes,
    );
    perSpace(
      'hyper_volume_dead_bytes',
      'Bytes of the segments the current checkpoint reads from that it does not read (replaced blocks and index nodes, segment headers): what compaction rewrites away once a segment is mostly dead.',
      (x) => x.deadBytes,
    );
    perSpace(
      'hyper_volume_history_bytes',
      'Bytes of the segments only older retained checkpoints (history, snapshots, clone origins) need.',
      (x) => x.historyBytes,
    );
    perVolume(
      'hyper_volume_dirty_bytes',
      'Bytes written but not yet in a segment.',
      (s) => s.dirtyBytes,
    );
    perVolume(
      'hyper_volume_dirty_limit_bytes',
      'Dirty bytes at which writers wait for a flush (back-pressure).',
      (s) => s.maxDirtyBytes,
    );
    perVolume(
      'hyper_volume_read_only',
      '1 if the export serves its volume read-only (no lease).',
      (_s, t) => (t.source.readOnly ? 1 : 0),
    );
    perVolume(
      'hyper_volume_checkpoint',
      'Newest committed checkpoint number.',
      (s) => s.checkpoint,
    );
    perVolume(
      'hyper_volume_checkpoint_age_seconds',
      'Seconds since the newest committed checkpoint (writable exports).',
      (s, t) => (t.source.readOnly ? undefined : Math.max(0, (this.now() - s.checkpointMs) / 1000)),
    );
    perVolume(
      'hyper_volume_lease_held',
      '1 while this process holds the lease, 0 once it was lost or fenced (writes then fail).',
      (s) => (s.lease === undefined ? undefined : s.lease.lost ? 0 : 1),
    );
    perVolume('hyper_volume_lease_epoch', 'Epoch of the lease this writer holds.', (s) =>
      s.lease === undefined ? undefined : s.lease.epoch,
    );
    perVolume(
      'hyper_volume_lease_expiry_seconds',
      'Seconds until the lease expires unless renewed (renewed every third of its TTL).',
      (s) => (s.lease === undefined ? undefined : (s.lease.expiresMs - this.now()) / 1000),
    );

    this.nbd = {
      accepted: () => this.nbdAccepted.inc(),
      transmitting: (_conn, exportName) => {
        this.nbdOpen.inc({ export: exportName });
        this.nbdConnections.inc({ export: exportName });
      },
      closed: (_conn, exportName) => {
        if (exportName !== undefined) this.nbdOpen.dec({ export: exportName });
      },
      request: (e) => this.nbdRequest(e),
    };

    if (options.processMetrics !== false) collectDefaultMetrics({ register: r });
  }

  private nbdRequest(e: NbdRequestEvent): void {
    const labels = { export: e.export, command: COMMANDS[e.command] ?? e.command.toLowerCase() };
    this.nbdRequests.inc(labels);
    if (e.bytes > 0) this.nbdBytes.inc(labels, e.bytes);
    if (e.seconds !== undefined) this.nbdDuration.observe(labels, e.seconds);
    if (e.errno !== undefined) this.nbdErrors.inc({ ...labels, errno: e.errno });
  }

  /** The observer for one export's requests to the store at `url` (see observeStore). */
  storeObserver(exportName: string, url: string): StoreObserver {
    const store = storeLabel(url);
    return {
      request: (e) => {
        const labels = { export: exportName, store, op: e.op };
        this.storeRequests.inc(labels);
        if (e.bytes > 0) this.storeBytes.inc(labels, e.bytes);
        this.storeDuration.observe(labels, e.seconds);
        if (e.error !== undefined) this.storeErrors.inc({ ...labels, code: e.error });
      },
      retry: (e) => this.storeRetries.inc({ export: exportName, store, op: e.op, code: e.code }),
    };
  }

  /** The observer for one export's volume (OpenOptions.observer). */
  engineObserver(exportName: string): EngineObserver {
    return {
      flushed: (e) => {
        if (e.ok) this.flushDuration.observe({ export: exportName, kind: e.kind }, e.seconds);
        else this.flushFailures.inc({ export: exportName, kind: e.kind });
      },
      committed: (e) => {
        if (e.ok) this.commitDuration.observe({ export: exportName }, e.seconds);
        else this.commitFailures.inc({ export: exportName });
      },
    };
  }

  /** The observer of one export's online compaction runs (serve/compaction.ts). */
  compactionObserver(exportName: string): CompactionObserver {
    const labels = { export: exportName };
    return {
      ran: (e) => {
        this.compactionRuns.inc({ ...labels, result: e.ok ? 'ok' : 'failed' });
        if (!e.ok) return;
        this.compactionDuration.observe(labels, e.seconds);
        if (e.reclaimedBytes > 0) this.compactionReclaimed.inc(labels, e.reclaimedBytes);
        if (e.movedBytes > 0) this.compactionMoved.inc(labels, e.movedBytes);
      },
    };
  }

  /**
   * Export the state of an open volume (dirty bytes, lease, checkpoint age, caches) under
   * `exportName` until the returned function is called (when the volume is closed).
   */
  trackVolume(
    exportName: string,
    source: VolumeSource,
    space?: () => Promise<SpaceSample>,
  ): () => void {
    const s = source.stats();
    const t: Tracked = {
      exportName,
      source,
      ...(space ? { space: { probe: space, atMs: 0, running: false } } : {}),
      seen: s,
    };
    this.volumes.add(t);
    return () => {
      this.catchUp(t);
      this.volumes.delete(t);
    };
  }

  /** The registry's text exposition (what GET /metrics returns). */
  text(): Promise<string> {
    return this.registry.metrics();
  }

  /** Start a new space sample of `t` in the background when the last one is stale. */
  private refreshSpace(t: Tracked): void {
    const sp = t.space;
    if (!sp || sp.running || (sp.last !== undefined && this.now() - sp.atMs < this.spaceIntervalMs))
      return;
    sp.running = true;
    sp.probe().then(
      (x) => {
        sp.last = x;
        sp.atMs = this.now();
        sp.running = false;
      },
      () => {
        // Try again at a later scrape (the store may be down); the last sample stays.
        sp.atMs = this.now();
        sp.running = false;
      },
    );
  }

  /** Add what the engine's own counters gained since the last look. */
  private catchUp(t: Tracked): void {
    const s = t.source.stats();
    const l = t.seen;
    const e = t.exportName;
    const add = <L extends string>(c: Counter<L>, labels: LabelValues<L>, key: FedFrom): void => {
      if (s[key] > l[key]) c.inc(labels, s[key] - l[key]);
    };
    for (const [cache, hits, misses] of CACHE_SERIES) {
      add(this.cacheHits, { export: e, cache }, hits);
      add(this.cacheMisses, { export: e, cache }, misses);
    }
    add(this.diskCacheDropped, { export: e }, 'diskCacheDropped');
    add(this.diskCacheWriteFailures, { export: e }, 'diskCacheWriteFailures');
    add(this.segments, { export: e }, 'segmentsWritten');
    t.seen = s;
  }
}

export function createMetrics(options: MetricsOptions = {}): HyperMetrics {
  return new HyperMetrics(options);
}
