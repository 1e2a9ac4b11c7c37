/**
 * Serving a replicated primary: the library behind `hyper replica serve`. `start()` opens the
 * primary (refusing one another replicator holds), connects the replicator to the replica
 * volume (taking its lease), exports the primary over NBD and, with `controlSocket`, answers
 * the control API:
 *
 *   GET  /v1/replica          ReplicaStatus
 *   POST /v1/replica/resync   { full?: boolean } → { regions }
 *
 * With `metricsListen`, Prometheus metrics (GET /metrics: NBD requests and the replica series
 * of src/metrics/replica.ts), a health check (GET /healthz: 503 while the replica is not
 * connected) and a liveness check (GET /livez: 503 once stopping) are served over HTTP.
 *
 * `close()` stops accepting, lets connections finish, ships what is queued and releases the
 * primary and the lease.
 */
import { HyperError } from '../errors.js';
import { AbortableStore, type OpenStoreOptions } from '../format/store/index.js';
import { processHolder } from '../format/volume/lease.js';
import { silentLogger } from '../format/volume/types.js';
import { Volume } from '../format/volume/volume.js';
import { ControlClient, ControlServer, type ControlRoutes } from '../daemon/control.js';
import { NbdServer, type ListenTarget } from '../nbd/server.js';
import type { ServeLogger } from '../serve/logger.js';
import { nbdUri, type ListenAddress } from '../serve/uri.js';
import type { MetricsServer } from '../metrics/index.js';
import { openPrimary, openReplicaStore, type StoreOpener } from './admin.js';
import { ReplicaDevice } from './device.js';
import { DEFAULT_POOL_BYTES, Replicator, STOP_GRACE_MS, type ReplicaStatus } from './replicator.js';
import { WorkerTarget } from './shipper.js';

export interface ReplicaServeOptions {
  file: string;
  /** The primary's uuid; undefined serves whatever primary the file is. */
  uuid: string | undefined;
  openStore: StoreOpener;
  /**
   * Run the replica volume in a worker thread that opens its store with these options
   * (shipper.ts says why); without them it runs in this thread (tests, mem://).
   */
  workerStoreOptions?: OpenStoreOptions;
  listen: ListenTarget;
  controlSocket?: string;
  poolBytes?: number;
  recoverConcurrency?: number;
  commitIntervalMs?: number;
  /** Take the primary and the replica's lease even from a live holder. */
  force?: boolean;
  /** Open options of the replica volume (tuning). */
  flushPipeline?: number;
  logger?: ServeLogger;
  /** How long a stop lets NBD clients finish their requests in flight (default 10 s). */
  drainMs?: number;
  /** How long a stop keeps shipping what is queued (default 30 s; see Replicator.close). */
  shipDrainMs?: number;
  /** Serve metrics and a health check over HTTP on this address (port 0 picks a free one). */
  metricsListen?: { port: number; host?: string };
}

export const EXPORT_NAME = 'primary';

export class ReplicaServer {
  private replicator: Replicator | undefined;
  private nbd: NbdServer | undefined;
  private control: ControlServer | undefined;
  private metricsServer: MetricsServer | undefined;
  private stopping = false;
  private address: ListenAddress | undefined;
  private readonly logger: ServeLogger;

  constructor(private readonly o: ReplicaServeOptions) {
    this.logger = o.logger ?? silentLogger;
  }

  async start(): Promise<void> {
    const o = this.o;
    const { primary, header } = await openPrimary(o.file, o.uuid, { force: o.force === true });
    const holder = processHolder('hyper-replica');
    try {
      const opened = await openReplicaStore(header.replicaUrl, header.uuid, o.openStore);
      // Everything this process asks of the replica ends when a stop gives it up.
      const giveUp = new AbortController();
      const store = new AbortableStore(opened.store, giveUp.signal);
      let forceAtStart = o.force === true;
      const replicator = new Replicator({
        primary,
        header,
        replicaStore: store,
        owner: holder,
        openReplica: async () => {
          // --force takes the replica over at start only: a reconnect after another replicator
          // took it over must not take it back. The replicator's own lease (left live by a
          // failed close) is taken back at once, checked in the lease's compare-and-swap: a
          // takeover between a look at the lease and the take would be undone otherwise.
          const force = forceAtStart;
          forceAtStart = false;
          const pipeline = o.flushPipeline === undefined ? {} : { flushPipeline: o.flushPipeline };
          // (A mem:// store lives in this process only: no worker can open it.)
          if (o.workerStoreOptions !== undefined && !store.url.startsWith('mem:')) {
            return WorkerTarget.open(
              {
                url: store.url,
                storeOptions: o.workerStoreOptions,
                holder,
                force,
                reclaim: true,
                ...pipeline,
              },
              this.logger,
              // What the worker holds counts against the pool: a small pool, a small window.
              Math.min(
                64 * 1024 * 1024,
                Math.max(1024 * 1024, (o.poolBytes ?? DEFAULT_POOL_BYTES) / 4),
              ),
              giveUp.signal,
            );
          }
          return Volume.open(store, {
            holder,
            force,
            reclaim: true,
            flushIntervalMs: 0,
            logger: this.logger,
            ...pipeline,
          });
        },
        openReplicaAt: (checkpoint) => Volume.open(store, { at: { checkpoint } }),
        takeOver: o.force === true,
        giveUp,
        logger: this.logger,
        ...(o.poolBytes === undefined ? {} : { poolBytes: o.poolBytes }),
        ...(o.recoverConcurrency === undefined ? {} : { recoverConcurrency: o.recoverConcurrency }),
        ...(o.commitIntervalMs === undefined ? {} : { commitIntervalMs: o.commitIntervalMs }),
      });
      this.replicator = replicator;
      await replicator.start();
      const device = new ReplicaDevice(replicator, header.dataBlockSize);
      // (The metrics modules load prom-client: only when asked for.)
      const m = o.metricsListen === undefined ? undefined : await import('../metrics/index.js');
      const r = o.metricsListen === undefined ? undefined : await import('../metrics/replica.js');
      const metrics = m?.createMetrics();
      this.nbd = new NbdServer({
        exports: [
          {
            name: EXPORT_NAME,
            description: `hyper replica primary ${header.uuid}`,
            open: () => device,
          },
        ],
        logger: this.logger,
        ...(metrics === undefined ? {} : { observer: metrics.nbd }),
      });
      this.address = await this.nbd.listen(o.listen);
      if (m !== undefined && r !== undefined && metrics !== undefined && o.metricsListen) {
        r.trackReplica(metrics.registry, () => this.replicator?.status());
        this.metricsServer = await m.startMetricsServer({
          ...o.metricsListen,
          registry: metrics.registry,
          health: () => {
            const st = this.replicator?.status();
            return st === undefined ? 'stopping' : r.replicaProblem(st);
          },
          live: () => (this.stopping ? 'stopping' : undefined),
        });
        this.logger.info('serving metrics', { url: this.metricsServer.url });
      }
      if (o.controlSocket !== undefined) {
        this.control = new ControlServer(this.routes(), {
          logger: this.logger,
          what: 'hyper replicator',
        });
        await this.control.listen({ path: o.controlSocket });
      }
    } catch (e) {
      await this.close().catch(() => undefined);
      if (this.replicator === undefined) await primary.close();
      throw e;
    }
    this.logger.info('serving the primary', {
      uri: this.uri,
      uuid: header.uuid,
      mode: this.replicator.mode,
    });
  }

  /** Where GET /metrics is served (`metricsListen`), once started. */
  get metricsUrl(): string | undefined {
    return this.metricsServer?.url;
  }

  get uri(): string {
    if (this.address === undefined) return '';
    return nbdUri(this.address, EXPORT_NAME);
  }

  status(): ReplicaStatus {
    if (this.replicator === undefined) {
      throw new HyperError('unavailable', 'ABORTED', 'The replicator is not running');
    }
    return this.replicator.status();
  }

  /** Wait until every change so far is committed on the replica (tests and benchmarks). */
  settle(timeoutMs?: number): Promise<boolean> {
    return this.replicator?.settle(timeoutMs) ?? Promise.resolve(false);
  }

  private routes(): ControlRoutes {
    return async (method, url, body) => {
      const p = url.pathname;
      if (p === '/v1/replica' && method === 'GET') return { status: 200, body: this.status() };
      if (p === '/v1/replica/resync' && method === 'POST') {
        const b = (await body()) as { full?: unknown } | null;
        if (
          b !== null &&
          typeof b === 'object' &&
          b.full !== undefined &&
          typeof b.full !== 'boolean'
        ) {
          throw new HyperError('invalid', 'INVALID_ARGUMENT', 'full must be true or false');
        }
        return { status: 200, body: this.replicator!.resync(b?.full === true) };
      }
      if (p === '/v1/replica/settle' && method === 'POST') {
        return { status: 200, body: { settled: await this.settle() } };
      }
      return undefined;
    };
  }

  async close(): Promise<void> {
    this.stopping = true;
    await this.control?.close();
    this.control = undefined;
    await this.metricsServer?.close();
    this.metricsServer = undefined;
    await this.nbd?.close(this.o.drainMs ?? 10_000);
    this.nbd = undefined;
    const ship = this.o.shipDrainMs ?? 30_000;
    await this.replicator?.close(ship, Math.max(1000, Math.min(STOP_GRACE_MS, ship)));
  }
}

/** The control client of a replicator (its "not running" error names the right command). */
export function replicaClient(socket: string): ControlClient {
  return new ControlClient(
    socket,
    (path, cause) =>
      new HyperError(
        'unavailable',
        'DAEMON_NOT_RUNNING',
        `No hyper replica serve is listening on ${path}`,
        {
          cause,
          suggestion:
            'Start "hyper replica serve --control-socket PATH", or pass the socket it listens on.',
        },
      ),
  );
}
