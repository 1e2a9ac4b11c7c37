/**
 * Serving volumes over NBD: the library behind `hyper serve`, usable by anything that runs
 * volumes as block devices (a daemon mapping and unmapping them at runtime included).
 *
 * `start()` builds the export table from a URL, binds the listener and returns; `close()`
 * stops accepting, lets connections answer what they have in flight (bounded by `drainMs`),
 * then flushes and closes every opened volume, which releases its lease. A volume whose
 * lease is lost while served stays exported, but its writes fail (EPERM to the client).
 */
import { join } from 'node:path';
import { displayHolder, processHolder } from '../format/volume/lease.js';
import { setTimeout as sleep } from 'node:timers/promises';
import { HyperError, isHyperError } from '../errors.js';
import { isLocalStoreUrl, observeStore, type ObjectStore } from '../format/store/index.js';
import type { HyperMetrics, MetricsServer } from '../metrics/index.js';
import { listVolumes, statVolume } from '../format/volume/admin.js';
import {
  silentLogger,
  type CheckpointInfo,
  type CheckpointRef,
  type CreateOptions,
  type OpenOptions,
} from '../format/volume/types.js';
import { Volume } from '../format/volume/volume.js';
import { confirmKept, readHead } from '../format/volume/heads.js';
import { NbdServer, type ListenTarget } from '../nbd/server.js';
import { ExportTable, VolumeExport, type ExportDescription } from './exports.js';
import { exportProblem } from './health.js';
import type { ServeLogger } from './logger.js';
import { loadTlsCertificates, type TlsCredentials } from './tls.js';
import { nbdUri, type ListenAddress } from './uri.js';
import { VolumeDevice } from './volume-device.js';
import { AutoCompaction, type CompactionPolicy, type RetentionPolicy } from './compaction.js';
import type { CompactResult } from '../format/volume/compact.js';
import type { OpenStoreFn } from '../format/volume/segments.js';
import { ControlServer, maintenanceRoutes } from '../daemon/control.js';
import type { MaintainedExport } from '../daemon/online.js';
import { serveMaintenance } from './maintenance.js';

export type { ListenTarget } from '../nbd/server.js';

/** The caches and write buffer of each served volume (`serve` and `daemon` flags). */
export interface VolumeTuning {
  /**
   * Keep blocks read from the store in a cache on local disk: `dir` for a volume URL, one
   * subdirectory per volume (its path below the prefix) when serving a prefix; `sizeBytes`
   * per volume. `reuse` (default) keeps a cache of the same volume across restarts.
   * `perExport`: one subdirectory per export name whatever was added (a daemon, whose
   * exports of any volumes come and go in one server).
   */
  diskCache?: { dir: string; sizeBytes: number; mode?: 'reuse' | 'recreate'; perExport?: boolean };
  /** Bytes of clean data blocks each volume keeps in memory (default 32 MiB). */
  memoryCacheBytes?: number;
  /** Largest read-ahead window of sequential reads (default 16 MiB; 0 turns it off). */
  readAheadBytes?: number;
  /** Bytes of index nodes each volume keeps in memory (default 32 MiB). */
  indexCacheBytes?: number;
  /**
   * Bytes written and not yet stored, segments in flight included, at which a volume's
   * writers wait (OpenOptions.maxDirtyBytes: default three segments, two while writes are
   * scattered; at least two).
   */
  maxDirtyBytes?: number;
  /** Compact each writable volume online, beside its clients, on this schedule (compaction.ts). */
  compaction?: CompactionPolicy;
}

/** Opens the store at a URL; `mkdir` creates a file:// directory first. */
export type StoreOpener = (url: string, options?: { mkdir?: boolean }) => Promise<ObjectStore>;

export interface ServeOptions extends VolumeTuning {
  /**
   * A volume URL (one export, named by the last segment of its path) or a prefix URL (one
   * export per volume below it, named by its path below the prefix). Without it the server
   * starts with no exports (add them with `addExports`).
   */
  url?: string;
  /**
   * Opens the store for `url`, for a WAL and for the parents of clones. The stores it returns
   * stay open until its owner closes them (the CLI does when the command ends).
   */
  openStore: StoreOpener;
  /** Create the volume at `url` with these settings first if there is none. */
  create?: CreateOptions;
  /** Serve without taking leases; nothing is written. */
  readOnly?: boolean;
  /** Serve this past checkpoint of each volume (read-only). */
  at?: CheckpointRef;
  /** Log every write to a write-ahead log at this URL (a local directory is created). */
  walUrl?: string;
  /** When writes are logged: before each reply (default) or at FLUSH (OpenOptions.walAck). */
  walAck?: 'write' | 'flush';
  /** Take leases even from a live holder (who is fenced). */
  force?: boolean;
  /** While another writer holds a volume's lease, wait for it to be released or expire. */
  waitForLease?: boolean;
  /** Name recorded in the leases (default `hyper-serve@host:pid`). */
  holder?: string;
  /**
   * TCP host and port (port 0 picks a free one), a unix socket path, or an inherited
   * listening socket (`{ fd }`, socket activation).
   */
  listen: ListenTarget;
  /** Offer STARTTLS with server-cert.pem and server-key.pem from `certificates`. */
  tls?: { certificates: string; require?: boolean };
  logger?: ServeLogger;
  /** Aborts start-up and the opening of volumes. */
  signal?: AbortSignal;
  /** How long `close()` lets connections finish requests in flight (default 10 s). */
  drainMs?: number;
  /**
   * Record Prometheus metrics here: NBD requests, each export's store requests and volume
   * state (see src/metrics). A daemon passes one instance to all its servers.
   */
  metrics?: HyperMetrics;
  /**
   * Serve the metrics over HTTP (GET /metrics, GET /healthz) on this address (port 0 picks a
   * free one; host default 127.0.0.1), from `start()` until `close()`. Creates `metrics` when
   * none is given.
   */
  metricsListen?: { port: number; host?: string };
  /**
   * Answer `hyper compact` and `hyper snapshot create` of the volumes open read-write here on
   * this unix socket (the daemon's maintenance routes: GET /v1/exports, POST
   * /v1/exports/NAME/compact and /flush; mode 0600), from `start()` until `close()`.
   */
  controlSocket?: string;
}

/**
 * Per-call settings of `addExports`; what is left out comes from the server's options (a
 * daemon maps each volume with its own).
 */
export interface AddExportOptions {
  /** Create the volume at the URL with these settings first if there is none. */
  create?: CreateOptions;
  /**
   * Export the one volume at the URL under this name (a prefix URL is refused with
   * NOT_A_VOLUME). Default: a volume is named by the last segment of its path.
   */
  name?: string;
  readOnly?: boolean;
  at?: CheckpointRef;
  walUrl?: string;
  walAck?: 'write' | 'flush';
  force?: boolean;
  waitForLease?: boolean;
  /**
   * Take a live lease back when its holder is this server's own (left behind by an open or a
   * close of this process that failed half-way). Only for a caller that knows none of the
   * volumes it has open is this one (the daemon).
   */
  reclaim?: boolean;
  openStore?: StoreOpener;
  signal?: AbortSignal;
}

/** An export's settings once the call's and the server's options are merged. */
type ExportSettings = Omit<AddExportOptions, 'create' | 'name'> & {
  openStore: StoreOpener;
  readOnly: boolean;
};

export class VolumeServer {
  private readonly table = new ExportTable();
  private readonly logger: ServeLogger;
  private readonly readOnly: boolean;
  private nbd: NbdServer | undefined;
  private address: ListenAddress | undefined;
  private tls: TlsCredentials | undefined;
  private closing: Promise<void> | undefined;
  private metrics: HyperMetrics | undefined;
  private metricsServer: MetricsServer | undefined;
  private control: ControlServer | undefined;
  /** The holder named in the leases this server takes. */
  private readonly holder: string;
  /** Opened volumes by export name (for the health check). */
  private readonly opened = new Map<string, Volume>();
  /** Online compaction of each volume open read-write here. */
  private readonly compactors = new Map<string, AutoCompaction>();

  constructor(private readonly options: ServeOptions) {
    this.logger = options.logger ?? silentLogger;
    this.metrics = options.metrics;
    this.readOnly = options.readOnly === true || options.at !== undefined;
    this.holder = options.holder ?? processHolder('hyper-serve');
    this.checkCreate(options.create);
  }

  /**
   * Build the exports and listen. A volume URL is opened now, so its lease is taken (or
   * refused) before anything listens; the volumes below a prefix are opened when a client
   * first asks for them, and then kept. On failure everything opened is closed again.
   */
  async start(): Promise<void> {
    if (this.nbd !== undefined || this.closing !== undefined) {
      throw new HyperError('invalid', 'INVALID_ARGUMENT', 'The server was already started');
    }
    const o = this.options;
    try {
      if (o.tls !== undefined) {
        this.tls = await loadTlsCertificates(o.tls.certificates, { require: o.tls.require });
      }
      // Loaded only when asked for: prom-client costs start-up time nothing else needs.
      const m = o.metricsListen === undefined ? undefined : await import('../metrics/index.js');
      if (m !== undefined) this.metrics ??= m.createMetrics();
      if (o.url !== undefined) {
        await this.addExports(o.url, o.create === undefined ? {} : { create: o.create });
      }
      const nbd = new NbdServer({
        exports: this.table.nbd,
        logger: this.logger,
        ...(this.tls === undefined ? {} : { tls: this.tls }),
        ...(this.metrics === undefined ? {} : { observer: this.metrics.nbd }),
      });
      this.nbd = nbd;
      this.address = await nbd.listen(o.listen);
      if (m !== undefined && o.metricsListen !== undefined) {
        this.metricsServer = await m.startMetricsServer({
          ...o.metricsListen,
          registry: this.metrics!.registry,
          health: () => this.health(),
          live: () => (this.closing === undefined ? undefined : 'stopping'),
        });
        this.logger.info('serving metrics', { url: this.metricsServer.url });
      }
      if (o.controlSocket !== undefined) {
        const control = new ControlServer(maintenanceRoutes(serveMaintenance(this)), {
          logger: this.logger,
          what: 'hyper serve',
        });
        await control.listen({ path: o.controlSocket });
        this.control = control;
        this.logger.info('answering maintenance requests', { controlSocket: o.controlSocket });
      }
    } catch (e) {
      await this.metricsServer?.close();
      this.metricsServer = undefined;
      await this.nbd?.close(0);
      await this.table.closeAll(this.logger);
      this.nbd = undefined;
      throw e;
    }
    const n = this.table.size;
    this.logger.info(
      `serving ${n} export${n === 1 ? '' : 's'} ${this.readOnly ? 'read-only' : 'read-write'}`,
      { uris: this.uris },
    );
  }

  /**
   * The exports whose volume is open here, as the control socket lists them: a writer's lease
   * and the volume's uuid are what `hyper compact` and `hyper snapshot create` look for.
   */
  maintained(): MaintainedExport[] {
    return this.table.list().flatMap((e) => {
      const v = this.opened.get(e.name);
      if (v === undefined) return [];
      const readOnly = v.info.readOnly;
      return [
        {
          name: e.name,
          url: e.describe().url,
          state: 'mapped' as const,
          readOnly,
          lease: readOnly
            ? null
            : { holder: displayHolder(this.holder), epoch: v.headRecord.epoch },
          volumeUuid: v.info.uuid,
        },
      ];
    });
  }

  /** The exports, as described to clients and people. */
  get exports(): ExportDescription[] {
    return this.table.list().map((e) => e.describe());
  }

  /** The NBD URI of each export, in table order (empty before `start()`). */
  get uris(): string[] {
    const address = this.address;
    if (address === undefined) return [];
    const tlsRequired = this.tls?.require === true;
    return this.table.list().map((e) => nbdUri(address, e.name, { tlsRequired }));
  }

  /** Where GET /metrics is served (`metricsListen`), once started. */
  get metricsAddress(): { host: string; port: number; url: string } | undefined {
    const s = this.metricsServer;
    return s === undefined ? undefined : { host: s.host, port: s.port, url: s.url };
  }

  /**
   * Compact the volume of export `name` now, beside its clients (compaction.ts runNow), with
   * `policy`: what `hyper compact` of a volume this server holds asks for. Refused when the
   * export's volume is not open read-write here (its lease is then not held here: compact it
   * directly).
   */
  async compactNow(
    name: string,
    policy: RetentionPolicy,
    options: { signal?: AbortSignal; dryRun?: boolean; volumeUuid?: string } = {},
  ): Promise<CompactResult> {
    const volume = this.opened.get(name);
    const { volumeUuid, ...run } = options;
    if (volume !== undefined) sameVolume(name, volume, volumeUuid);
    const c = this.compactors.get(name);
    if (c !== undefined) return c.runNow(policy, run);
    throw new HyperError(
      'invalid',
      'INVALID_ARGUMENT',
      `Export ${JSON.stringify(name)} is not open read-write here, so it holds no lease on its volume`,
      { suggestion: 'Compact the volume directly with `hyper compact URL`.' },
    );
  }

  /**
   * Commit what export `name`'s volume acknowledged (as a client's FLUSH does), for a snapshot
   * made from outside: the checkpoint that holds it. Refused when the volume is not open
   * read-write here.
   */
  async flushNow(name: string, options: { volumeUuid?: string } = {}): Promise<CheckpointInfo> {
    const volume = this.opened.get(name);
    if (volume === undefined || volume.info.readOnly)
      throw new HyperError(
        'invalid',
        'INVALID_ARGUMENT',
        `Export ${JSON.stringify(name)} is not open read-write here: it has nothing to flush`,
        { suggestion: 'Make the snapshot directly: it holds everything committed.' },
      );
    sameVolume(name, volume, options.volumeUuid);
    return volume.flush();
  }

  /**
   * Grow export `name`'s volume to `size` bytes while it is served (`hyper file set-len` of a
   * volume this server holds): committed as a checkpoint before the answer; connections made
   * from then on see the new size, those already open keep the size they were told (NBD has no
   * way to tell them). A shrink is refused: it would cut the device under its clients.
   */
  async resizeNow(
    name: string,
    size: number,
    options: { volumeUuid?: string } = {},
  ): Promise<{ previousSize: number; info: CheckpointInfo }> {
    const volume = this.opened.get(name);
    if (volume === undefined || volume.info.readOnly)
      throw new HyperError(
        'invalid',
        'INVALID_ARGUMENT',
        `Export ${JSON.stringify(name)} is not open read-write here, so it holds no lease on its volume`,
        { suggestion: 'Resize the volume directly with `hyper file set-len URL --size SIZE`.' },
      );
    sameVolume(name, volume, options.volumeUuid);
    const previousSize = volume.info.size;
    if (size < previousSize)
      throw new HyperError(
        'conflict',
        'DEVICE_BUSY',
        `Export ${JSON.stringify(name)} is served: shrinking its volume from ${previousSize} to ${size} bytes would cut the device under its clients`,
        {
          suggestion: `Stop serving it first (hyper unmap ${name}, or stop hyper serve), then run hyper file set-len --allow-shrink.`,
        },
      );
    // (The same size commits what is pending, a grow whose checkpoint failed before included.)
    const info = await volume.resize(size);
    if (size > previousSize)
      this.logger.info('grew export', { export: name, from: previousSize, to: size });
    return { previousSize, info };
  }

  /**
   * The checkpoints of volume `uuid` that read-only exports here serve: this server's online
   * compaction keeps them, as if snapshots named them.
   */
  private servedCheckpoints(uuid: string): number[] {
    return [...this.opened.values()]
      .filter((v) => v.info.readOnly && v.info.uuid === uuid)
      .map((v) => v.info.checkpoint);
  }

  /**
   * A read-only export just registered (servedCheckpoints now names its checkpoint): if this
   * server compacts the same volume, a run may have taken its last look at those checkpoints
   * before, and dropped this one. One more look at the head says (CHECKPOINT_NOT_FOUND, and
   * the export is not opened); a run that looks after the registration keeps it.
   */
  private async confirmServed(
    name: string,
    volume: Volume,
    store: ObjectStore,
    untrack: (() => void) | undefined,
  ): Promise<void> {
    const uuid = volume.info.uuid;
    const compacted = [...this.compactors.keys()].some(
      (n) => this.opened.get(n)?.info.uuid === uuid,
    );
    if (!compacted) return;
    try {
      await confirmKept(store, (await readHead(store)).head, [volume.info.checkpoint]);
    } catch (e) {
      if (this.opened.get(name) === volume) this.opened.delete(name);
      untrack?.();
      await volume.close().catch(() => undefined);
      throw e;
    }
  }

  /**
   * Undefined when healthy; otherwise why not (GET /healthz answers 503 with it): the server
   * is stopping, or an export cannot make writes durable now (a line each: lease lost or
   * lapsed, flushes failing; see ./health.ts).
   */
  health(): string | undefined {
    if (this.closing !== undefined) return 'stopping';
    const lines = [...this.opened].flatMap(([name, v]) => {
      const p = exportProblem(v.stats());
      return p === undefined ? [] : [`${name}: ${p}`];
    });
    return lines.length > 0 ? lines.join('\n') : undefined;
  }

  /** Open client connections. */
  get connections(): number {
    return this.nbd?.connections ?? 0;
  }

  /**
   * Stop: no new connections, requests in flight answered (connections still open after
   * `drainMs` are dropped), then every opened volume flushed and closed, each even if
   * another fails. Throws the first failure; the rest are logged.
   */
  close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  private async shutdown(): Promise<void> {
    // No maintenance asked for from now on; a run in progress stops with its volume.
    await this.control?.close();
    const nbd = this.nbd;
    if (nbd !== undefined) {
      this.logger.info('stopping: finishing requests in flight', { connections: nbd.connections });
      await nbd.close(this.options.drainMs ?? 10_000);
    }
    const failures = await this.table.closeAll(this.logger);
    await this.metricsServer?.close();
    if (failures.length > 0) throw failures[0]!.error;
  }

  /**
   * Export the volume at `url`, or every volume below it; with `create`, create the volume
   * first if there is none. Called by `start()`; after it, the new exports are offered from
   * the next negotiation on. Settings left out of `options` come from the server's.
   */
  async addExports(url: string, options: AddExportOptions = {}): Promise<void> {
    const o = this.options;
    const { create } = options;
    const pick = <K extends keyof AddExportOptions & keyof ServeOptions>(k: K) =>
      options[k] ?? o[k];
    const at = pick('at');
    const settings: ExportSettings = {
      readOnly: at !== undefined || (options.readOnly ?? this.readOnly),
      openStore: options.openStore ?? o.openStore,
      ...(at === undefined ? {} : { at }),
      ...(pick('walUrl') === undefined ? {} : { walUrl: pick('walUrl') }),
      ...(pick('walAck') === undefined ? {} : { walAck: pick('walAck') }),
      ...(pick('force') === undefined ? {} : { force: pick('force') }),
      ...(pick('waitForLease') === undefined ? {} : { waitForLease: pick('waitForLease') }),
      ...(options.reclaim === undefined ? {} : { reclaim: options.reclaim }),
      ...(pick('signal') === undefined ? {} : { signal: pick('signal') }),
    };
    this.checkCreate(create, settings.readOnly);
    const signal = settings.signal;
    const store = await settings.openStore(url, { mkdir: create !== undefined });
    if (create !== undefined) {
      try {
        await Volume.create(store, { ...create, ...(signal ? { signal } : {}) });
        this.logger.info('created volume', { url, size: create.size });
      } catch (e) {
        if (!(e instanceof HyperError && e.code === 'VOLUME_EXISTS')) throw e;
      }
    }
    // A local WAL directory is created like the volume's own.
    if (settings.walUrl !== undefined) await settings.openStore(settings.walUrl, { mkdir: true });

    const listing = await listVolumes(store, signal ? { signal } : {});
    if (listing.length === 0) {
      throw new HyperError('not-found', 'VOLUME_NOT_FOUND', `No volume at or below ${url}`, {
        suggestion:
          'Create one with "hyper file create", or pass --create --size to serve a new one.',
      });
    }
    const single = listing.length === 1 && listing[0]!.name === '';
    if (options.name !== undefined && !single) {
      throw new HyperError(
        'invalid',
        'NOT_A_VOLUME',
        `${url} is not a volume but a prefix holding ${listing.length} volume(s)`,
        { suggestion: 'Give the URL of one volume (see "hyper file list").' },
      );
    }
    if (single) {
      const name = options.name ?? url.replace(/\/+$/, '').split('/').pop() ?? '';
      if (this.table.get(name) !== undefined) {
        throw new HyperError(
          'conflict',
          'EXPORT_EXISTS',
          `An export named ${JSON.stringify(name)} exists`,
          {
            suggestion: 'Pick another name, or remove that export first.',
          },
        );
      }
      // A daemon's exports share one directory: each has its own below it, by name.
      const sub = o.diskCache?.perExport ? name : '';
      const device = await this.openDevice(store, name, settings, sub);
      try {
        // Stopped meanwhile: its exports are closed already, so this one is too.
        if (this.closing !== undefined) {
          throw new HyperError('unavailable', 'ABORTED', 'The server is stopping');
        }
        this.table.add(VolumeExport.opened(name, url, device));
      } catch (e) {
        await device.close().catch(() => undefined);
        throw e;
      }
      return;
    }
    for (const v of listing) {
      if (v.error !== undefined) {
        this.logger.warn('skipping a volume that cannot be read', { url: v.url, error: v.error });
        continue;
      }
      const sub = store.sub(v.name);
      const name = v.name.replace(/\/+$/, '');
      // Not opened until a client asks: serving a prefix of many volumes takes no lease on
      // the ones nobody connects to.
      this.table.add(
        new VolumeExport(
          name,
          v.url,
          () => this.openDevice(sub, name, settings, o.diskCache?.perExport ? name : v.name),
          settings.readOnly,
        ),
      );
    }
  }

  /**
   * Stop offering an export, end the connections using it (each answers the requests it has
   * in flight, then closes; those still open after `drainMs`, default the server's, are
   * dropped), then close its volume if it was opened (flushed, lease released). False if
   * there was no such export. If the final flush fails the export stays removed, its volume
   * open (the caller may close or discard it through the export, see VolumeExport.close), and
   * the error is thrown.
   */
  async removeExport(name: string, options: { drainMs?: number } = {}): Promise<boolean> {
    const e = this.table.remove(name);
    if (e === undefined) return false;
    await this.nbd?.closeExportConnections(name, options.drainMs ?? this.options.drainMs ?? 10_000);
    await e.close();
    return true;
  }

  /** The export named `name`, if there is one. */
  getExport(name: string): VolumeExport | undefined {
    return this.table.get(name);
  }

  /** Connections that selected the export `name`. */
  connectionsTo(name: string): number {
    return this.nbd?.connectionsTo(name) ?? 0;
  }

  /** The address listened on (undefined before `start()`). */
  get listenAddress(): ListenAddress | undefined {
    return this.address;
  }

  /** The NBD URI of the export `name` (undefined before `start()`). */
  uriOf(name: string): string | undefined {
    const address = this.address;
    if (address === undefined) return undefined;
    return nbdUri(address, name, { tlsRequired: this.tls?.require === true });
  }

  private checkCreate(create: CreateOptions | undefined, readOnly = this.readOnly): void {
    if (create !== undefined && readOnly) {
      throw new HyperError(
        'invalid',
        'INVALID_ARGUMENT',
        '--create cannot be combined with --read-only or --at',
      );
    }
  }

  /**
   * Open a volume exported as `name`; `cacheSub` is its disk cache directory below
   * --cache-dir: its path below a served prefix, '' for a volume URL, or the export's name
   * (`diskCache.perExport`).
   */
  private async openDevice(
    unobserved: ObjectStore,
    name: string,
    s: ExportSettings,
    cacheSub: string,
  ): Promise<VolumeDevice> {
    const o = this.options;
    const cache = o.diskCache;
    const m = this.metrics;
    // With metrics, every store request for this export (its parents' and WAL's included)
    // is counted under its name.
    const observed = (s: ObjectStore): ObjectStore =>
      m === undefined ? s : observeStore(s, m.storeObserver(name, s.url));
    const store = observed(unobserved);
    const options: OpenOptions = {
      readOnly: s.readOnly,
      holder: this.holder,
      logger: this.logger,
      force: s.force === true,
      ...(s.reclaim === undefined ? {} : { reclaim: s.reclaim }),
      ...(s.signal === undefined ? {} : { signal: s.signal }),
      ...(s.at === undefined ? {} : { at: s.at }),
      ...(s.walUrl === undefined ? {} : { walUrl: s.walUrl }),
      ...(s.walAck === undefined ? {} : { walAck: s.walAck }),
      // Parent volumes of clones and the WAL are opened like the volume's own store.
      openStore: async (u: string) => observed(await s.openStore(u)),
      ...(m === undefined ? {} : { observer: m.engineObserver(name) }),
      ...(o.memoryCacheBytes === undefined ? {} : { dataCacheBytes: o.memoryCacheBytes }),
      ...(o.readAheadBytes === undefined ? {} : { readAheadBytes: o.readAheadBytes }),
      ...(o.indexCacheBytes === undefined ? {} : { nodeCacheBytes: o.indexCacheBytes }),
      ...(o.maxDirtyBytes === undefined ? {} : { maxDirtyBytes: o.maxDirtyBytes }),
      // On a remote store every index node a cold read misses is another round trip.
      warmIndex: !isLocalStoreUrl(store.url),
      ...(cache === undefined
        ? {}
        : {
            diskCache: { ...cache, dir: cacheSub === '' ? cache.dir : join(cache.dir, cacheSub) },
          }),
    };
    for (let logged = false; ;) {
      try {
        const volume = await Volume.open(store, options);
        const untrack = m?.trackVolume(name, volume, async () => {
          // Compaction debt: a listing and a walk of the retained indexes (at most every few
          // minutes, in the background of a scrape).
          const st = await statVolume(store, { space: true, openStore: options.openStore });
          const sp = st.space as NonNullable<typeof st.space>;
          return {
            storedBytes: st.storedBytes,
            liveBytes: sp.liveBytes,
            deadBytes: sp.deadBytes,
            historyBytes: sp.historyBytes,
            garbageBytes: sp.garbageBytes,
          };
        });
        this.opened.set(name, volume);
        if (volume.info.readOnly) await this.confirmServed(name, volume, store, untrack);
        // Every volume open read-write here can be compacted online: on the schedule of
        // --compact-every, and when asked (compactNow).
        const compaction =
          !s.readOnly && !volume.info.readOnly
            ? new AutoCompaction(volume, store, o.compaction, {
                name,
                logger: this.logger,
                openStore: options.openStore as OpenStoreFn,
                ...(m === undefined ? {} : { observer: m.compactionObserver(name) }),
                keeps: () => this.servedCheckpoints(volume.info.uuid),
              })
            : undefined;
        if (compaction) this.compactors.set(name, compaction);
        return new VolumeDevice(volume, {
          readOnly: s.readOnly,
          ...(compaction ? { beforeClose: () => compaction.stop() } : {}),
          onClose: () => {
            untrack?.();
            if (this.opened.get(name) === volume) this.opened.delete(name);
            if (compaction && this.compactors.get(name) === compaction)
              this.compactors.delete(name);
          },
        });
      } catch (e) {
        if (!s.waitForLease || !isHyperError(e, 'LEASE_HELD')) throw e;
        if (!logged) this.logger.info('waiting for the lease', { url: store.url, why: e.message });
        logged = true;
        await sleep(1000, undefined, s.signal ? { signal: s.signal } : {});
      }
    }
  }
}

/** Refuse a request meant for another volume than the one the export serves. */
function sameVolume(name: string, volume: Volume, volumeUuid: string | undefined): void {
  if (volumeUuid === undefined || volume.info.uuid === volumeUuid) return;
  throw new HyperError(
    'conflict',
    'PRECONDITION_FAILED',
    `Export ${JSON.stringify(name)} serves volume ${volume.info.uuid} (${volume.info.url}), not ${volumeUuid}`,
    { suggestion: 'See "hyper ls" for what each export serves.' },
  );
}
