/**
 * `hyper daemon`: one long-running NBD server whose exports are mapped and unmapped at
 * runtime through a control socket, remembered in a state file across restarts, and
 * (optionally) listed in a config file re-read on SIGHUP.
 *
 * Built on the serving library (`VolumeServer`): each mapping is one `addExports` call with
 * its own settings (read-only, --at, WAL, store endpoint), each unmapping one
 * `removeExport` (connections using it answer their requests in flight and are closed,
 * then the volume is flushed and its lease released). A failure concerns one request:
 * the daemon and its other exports keep serving.
 */
import type {
  DaemonStatus,
  ExportErrorJson,
  ExportStatus,
  UnmapResult,
} from '../cli/vocabulary.js';
import { HyperError, toHyperError } from '../errors.js';
import type { ObjectStore } from '../format/store/index.js';
import { displayHolder, processHolder } from '../format/volume/lease.js';
import { silentLogger, type CheckpointRef } from '../format/volume/types.js';
import type { ServeLogger } from '../serve/logger.js';
import { VolumeServer, type ListenTarget, type VolumeTuning } from '../serve/server.js';
import type { VolumeExport } from '../serve/exports.js';
import { exportProblem } from '../serve/health.js';
import { compactAsked, flushAsked, resizeAsked } from '../serve/maintenance.js';
import type { FlushAnswer, ResizeAnswer } from './online.js';
import { ControlServer, exportNotFound, type ControlHandler } from './control.js';
import { loadConfig } from './config.js';
import { mapRequest, nameOfUrl, parseOr, type ExportSpec, type StateEntry } from './schema.js';
import type { CompactResult } from '../format/volume/compact.js';
import { loadState, saveState } from './state.js';
import type { Notifier } from './systemd.js';

/** Opens a store for an export (S3 endpoint and region as the mapping asked). */
export type DaemonStoreOpener = (
  url: string,
  options: { endpoint?: string; region?: string; mkdir?: boolean },
) => Promise<ObjectStore>;

export interface DaemonOptions {
  /** The control socket path (created; a stale one is replaced). */
  controlSocket: string;
  /** An inherited listening control socket (socket activation) instead of binding the path. */
  controlFd?: number;
  /** File mode of the control socket (default 0600; 0660 with a group). */
  controlMode?: number;
  /** Group id given the control socket (its members may use it with mode 0660). */
  controlGid?: number;
  /** Where NBD clients connect (TCP, unix socket, or an inherited socket). */
  listen: ListenTarget;
  stateFile: string;
  configFile?: string;
  openStore: DaemonStoreOpener;
  logger?: ServeLogger;
  /** How long unmap and shutdown let connections finish requests in flight (default 10 s). */
  drainMs?: number;
  /** Serve Prometheus metrics (GET /metrics, /healthz) on this port (see src/metrics). */
  metricsPort?: number;
  /** Address of the metrics endpoint (default 127.0.0.1). */
  metricsHost?: string;
  notifier?: Notifier;
  /** Version reported on the control API. */
  version?: string;
  /**
   * The caches and write buffer of every export's volume; a disk cache directory holds one
   * subdirectory per export name (a name mapped again to the same volume finds its cache; to
   * another volume, the cache is recreated).
   */
  tuning?: VolumeTuning;
}

export type ExportState = 'mapping' | 'mapped' | 'unmapping' | 'failed';

/** One export as `hyper ls` shows it, the daemon, an unmapping: see src/cli/vocabulary.ts. */
export type { DaemonStatus, ExportStatus, UnmapResult };

interface Sample {
  t: number;
  read: number;
  written: number;
}

interface Entry {
  spec: ExportSpec;
  source: 'control' | 'config';
  state: ExportState;
  error?: HyperError;
  stores: ObjectStore[];
  samples: Sample[];
  /**
   * An unmapped export whose volume could not be flushed after its clients were gone: still
   * open here (its lease held, its writes kept) until an unmap closes it.
   */
  leftOpen?: VolumeExport;
  /** While mapping: the failed mapping of the same name this one replaces (if it fails, kept). */
  previous?: Entry;
}

const SAMPLE_MS = 5000;

export class Daemon implements ControlHandler {
  private readonly logger: ServeLogger;
  private readonly holder = processHolder('hyper-daemon');
  private readonly entries = new Map<string, Entry>();
  private server: VolumeServer | undefined;
  private control: ControlServer | undefined;
  private sampler: NodeJS.Timeout | undefined;
  private startedAt = new Date();
  private stopping: Promise<void> | undefined;
  /** Aborted when the daemon starts stopping (maps waiting for a lease end with it). */
  private readonly stopped = new AbortController();
  private saving: Promise<void> = Promise.resolve();
  private reloading: Promise<unknown> | undefined;

  constructor(private readonly options: DaemonOptions) {
    this.logger = options.logger ?? silentLogger;
  }

  /**
   * Bind the control socket (refused if another daemon is live on it), listen for NBD, map
   * the exports of the state file and the config file, then tell systemd it is ready. A
   * mapping that fails at start is logged and kept as `failed` (listed by `hyper ls`, tried
   * again on reload), so that a store down at boot does not make the daemon forget it.
   * Call `notifyReady()` next.
   */
  async start(): Promise<void> {
    const o = this.options;
    const state = await loadState(o.stateFile);
    const config = o.configFile === undefined ? undefined : await loadConfig(o.configFile);
    this.startedAt = new Date();
    this.control = new ControlServer(this, { logger: this.logger });
    await this.control.listen({
      path: o.controlSocket,
      ...(o.controlFd === undefined ? {} : { fd: o.controlFd }),
      mode: o.controlMode ?? (o.controlGid === undefined ? 0o600 : 0o660),
      ...(o.controlGid === undefined ? {} : { gid: o.controlGid }),
    });
    const server = new VolumeServer({
      openStore: (u, opts) => o.openStore(u, opts ?? {}),
      listen: o.listen,
      logger: this.logger,
      holder: this.holder,
      drainMs: o.drainMs ?? 10_000,
      ...o.tuning,
      // Exports of any volumes come and go in one server: each caches below the directory
      // by its export name (the one place this is decided).
      ...(o.tuning?.diskCache === undefined
        ? {}
        : { diskCache: { ...o.tuning.diskCache, perExport: true } }),
      ...(o.metricsPort === undefined
        ? {}
        : {
            metricsListen: {
              port: o.metricsPort,
              ...(o.metricsHost === undefined ? {} : { host: o.metricsHost }),
            },
          }),
    });
    this.server = server;
    // The remembered exports are mapped before the NBD socket accepts: under socket
    // activation a client may already be waiting for one of them.
    for (const e of state.exports) {
      const { source, ...spec } = e;
      await this.mapEntry(spec, source, { keepOnFailure: true }).catch(() => undefined);
    }
    if (config !== undefined) await this.reconcile(config.exports);
    try {
      await server.start();
    } catch (e) {
      await this.control.close();
      await server.close().catch(() => undefined);
      await Promise.allSettled([...this.entries.values()].map((x) => this.closeStores(x)));
      throw e;
    }
    await this.persist();
    this.sampler = setInterval(() => this.sample(), SAMPLE_MS);
    this.sampler.unref();
    this.logger.info('daemon ready', {
      control: o.controlSocket,
      listen: server.listenAddress,
      exports: this.entries.size,
    });
  }

  /**
   * Tell systemd the daemon is ready (READY=1). Separate from `start()` so that the caller
   * can install what must be in place first (the SIGHUP handler).
   */
  notifyReady(): Promise<void> {
    return (
      this.options.notifier?.notify(
        '--ready',
        `--status=serving ${this.mappedCount()} export(s)`,
      ) ?? Promise.resolve()
    );
  }

  /** Map a volume (the control API's POST /v1/exports). */
  async map(request: unknown, signal?: AbortSignal): Promise<ExportStatus> {
    const r = parseOr(mapRequest, request, 'map request');
    const { force, wait, ...rest } = r;
    const spec: ExportSpec = { ...rest, name: r.name ?? nameOfUrl(r.url) };
    if (spec.name === '' || !/^[A-Za-z0-9._~-]/.test(spec.name)) {
      throw new HyperError('invalid', 'INVALID_ARGUMENT', `Cannot name an export after ${r.url}`, {
        suggestion: 'Pass --name.',
      });
    }
    await this.mapEntry(spec, 'control', {
      keepOnFailure: false,
      ...(force === undefined ? {} : { force }),
      ...(wait === undefined ? {} : { wait }),
      ...(signal === undefined ? {} : { signal }),
    });
    try {
      await this.persist();
    } catch (e) {
      // A mapping the state file does not hold would be gone after a restart without a word:
      // it is undone, and the map fails saying why.
      await this.unmap(spec.name, { force: true }).catch(() => undefined);
      throw this.stateError(e, `The export "${spec.name}" was not mapped`);
    }
    return this.status(spec.name);
  }

  /**
   * Compact a mapped export's volume now, beside its clients (POST /v1/exports/NAME/compact):
   * what `hyper compact` of a volume this daemon holds asks for. The answer comes when the run
   * has ended; an aborted request stops the run (cleanly).
   */
  async compact(name: string, request: unknown, signal?: AbortSignal): Promise<CompactResult> {
    this.mapped(name, 'compact it once it is mapped, or directly while it is not');
    return compactAsked(this.server!, name, request, signal);
  }

  /**
   * Commit what a mapped export acknowledged (POST /v1/exports/NAME/flush), as a client's
   * FLUSH does: `hyper snapshot create` asks for it first, so that its snapshot holds every
   * write acknowledged before it ran.
   */
  async flush(name: string, request: unknown): Promise<FlushAnswer> {
    this.mapped(name, 'snapshot it once it is mapped, or directly while it is not');
    return flushAsked(this.server!, name, request);
  }

  /**
   * Grow a mapped export's volume (POST /v1/exports/NAME/resize): what `hyper file set-len`
   * of a volume this daemon holds asks for. Connections made from then on see the new size.
   */
  async resize(name: string, request: unknown): Promise<ResizeAnswer> {
    this.mapped(name, 'resize it once it is mapped, or directly while it is not');
    return resizeAsked(this.server!, name, request);
  }

  /** The entry of export `name`, refused unless it is mapped (`then`: what to do instead). */
  private mapped(name: string, then: string): Entry {
    const entry = this.entries.get(name);
    if (entry === undefined) throw exportNotFound(name);
    if (entry.state !== 'mapped' || entry.leftOpen !== undefined) {
      throw new HyperError(
        'conflict',
        'PRECONDITION_FAILED',
        `The export ${JSON.stringify(name)} is ${entry.leftOpen ? 'unmapped but left open' : entry.state}, not mapped`,
        { suggestion: `See "hyper ls"; ${then}.` },
      );
    }
    return entry;
  }

  /** A failed write of the state file, in the words of what it means for `what`. */
  private stateError(e: unknown, what: string): HyperError {
    const err = toHyperError(e);
    return new HyperError(
      err.kind,
      err.code,
      `${what}: the daemon could not write its state file ${this.options.stateFile} (${err.message})`,
      {
        suggestion:
          err.suggestion ??
          'Make the state file writable (room on its file system, its directory in place), then run the command again.',
        cause: err,
      },
    );
  }

  /**
   * Unmap (DELETE /v1/exports/NAME): flush while still serving (a failure leaves the export
   * mapped), stop offering it, end its connections after their requests in flight, flush
   * again, close the volume and release the lease. `force` skips the first flush and drops
   * the connections at once instead of letting them finish.
   */
  async unmap(name: string, options: { force?: boolean } = {}): Promise<UnmapResult> {
    const entry = this.entries.get(name);
    if (entry === undefined) throw exportNotFound(name);
    if (entry.state === 'mapping' || entry.state === 'unmapping') {
      throw new HyperError(
        'conflict',
        'PRECONDITION_FAILED',
        `The export ${JSON.stringify(name)} is being ${entry.state === 'mapping' ? 'mapped' : 'unmapped'}`,
        { suggestion: 'Try again once that has finished (see "hyper ls").' },
      );
    }
    const server = this.server!;
    const exp = server.getExport(name);
    if (entry.leftOpen !== undefined)
      return this.closeLeftOpen(name, entry, options.force === true);
    if (entry.state === 'failed' || exp === undefined) {
      this.entries.delete(name);
      await this.closeStores(entry);
      await this.persist();
      return { name, url: entry.spec.url, disconnectedClientCount: 0, wasMapped: false };
    }
    entry.state = 'unmapping';
    const device = exp.openedDevice;
    try {
      if (!options.force) await device?.flush();
    } catch (e) {
      entry.state = 'mapped';
      const err = toHyperError(e);
      throw new HyperError(
        err.kind,
        err.code,
        `Could not flush ${name}; it stays mapped: ${err.message}`,
        {
          suggestion: err.suggestion ?? 'Retry once the store is back, or unmap with --force.',
          cause: err,
        },
      );
    }
    const disconnected = server.connectionsTo(name);
    this.logger.info('unmapping', { export: name, connections: disconnected });
    try {
      await server.removeExport(name, options.force ? { drainMs: 0 } : {});
    } catch (e) {
      // Gone from clients, but the last flush failed: the volume stays open with the writes
      // it could not store, listed as failed until an unmap closes it.
      this.keepLeftOpen(name, entry, exp, e);
      throw entry.error;
    }
    return this.forget(name, entry, disconnected);
  }

  /** The end of an unmap: the export is gone from the table and from the state file. */
  private async forget(name: string, entry: Entry, disconnected: number): Promise<UnmapResult> {
    this.entries.delete(name);
    await this.closeStores(entry);
    try {
      await this.persist();
    } catch (e) {
      throw this.stateError(
        e,
        `The export "${name}" was unmapped, but the state file still lists it: the daemon maps it again when it restarts`,
      );
    }
    this.logger.info('unmapped', { export: name, url: entry.spec.url });
    return { name, url: entry.spec.url, disconnectedClientCount: disconnected, wasMapped: true };
  }

  /** A failed last flush: `exp` stays open, the entry failed with an error that says so. */
  private keepLeftOpen(name: string, entry: Entry, exp: VolumeExport, e: unknown): void {
    const err = toHyperError(e);
    entry.state = 'failed';
    entry.leftOpen = exp.openedDevice === undefined ? undefined : exp;
    entry.error =
      entry.leftOpen === undefined
        ? err
        : new HyperError(
            err.kind,
            err.code,
            `Could not flush ${name} after its clients were disconnected: ${err.message}. Its volume stays open in the daemon, holding its lease and the writes not yet stored`,
            {
              suggestion: `Run "hyper unmap ${name}" again once the store answers; "hyper unmap --force ${name}" closes the volume and loses those writes.`,
              cause: err,
            },
          );
    this.logger.error('unmap: the final flush failed', {
      export: name,
      error: entry.error.message,
    });
  }

  /**
   * Unmap an export whose volume was left open by a failed last flush: flush and close it
   * now (a failure keeps it as it was), or with `force` close it whatever the flush does.
   */
  private async closeLeftOpen(name: string, entry: Entry, force: boolean): Promise<UnmapResult> {
    const open = entry.leftOpen!;
    entry.state = 'unmapping';
    try {
      await (force ? open.discard() : open.close());
    } catch (e) {
      if (!force) {
        this.keepLeftOpen(name, entry, open, e);
        throw entry.error;
      }
      this.logger.error('unmap --force: closed the volume without storing its last writes', {
        export: name,
        error: toHyperError(e).message,
      });
    }
    delete entry.leftOpen;
    return this.forget(name, entry, 0);
  }

  /** Every export, in name order (GET /v1/exports). */
  list(): ExportStatus[] {
    return [...this.entries.keys()].sort().map((n) => this.status(n));
  }

  info(): DaemonStatus {
    const o = this.options;
    const listen = this.server?.listenAddress;
    return {
      pid: process.pid,
      version: o.version ?? null,
      startedAt: this.startedAt.toISOString(),
      controlSocket: o.controlSocket,
      stateFile: o.stateFile,
      configFile: o.configFile ?? null,
      listen: {
        host: listen?.host ?? null,
        port: listen?.port ?? null,
        path: listen?.path ?? null,
      },
      metricsUrl: this.server?.metricsAddress?.url ?? null,
      exportCount: this.mappedCount(),
      clientCount: this.server?.connections ?? 0,
    };
  }

  /**
   * Re-read the config file (SIGHUP, `systemctl reload`, POST /v1/reload): map what it
   * lists that is not mapped (and retry its failed mappings), unmap what came from it and
   * is no longer listed; mappings made with `hyper map` are left alone. A config that does
   * not parse changes nothing.
   */
  reload(): Promise<{ mapped: string[]; unmapped: string[]; failed: string[] }> {
    const run = async () => {
      const file = this.options.configFile;
      if (file === undefined) return { mapped: [], unmapped: [], failed: [] };
      await this.options.notifier?.notify('RELOADING=1');
      try {
        const config = await loadConfig(file);
        const r = await this.reconcile(config.exports);
        await this.persist();
        this.logger.info('reloaded the config', { file, ...r });
        return r;
      } finally {
        await this.options.notifier?.notify(
          '--ready',
          `--status=serving ${this.mappedCount()} export(s)`,
        );
      }
    };
    // One reload at a time; a reload asked for meanwhile runs after it.
    const next = (this.reloading ?? Promise.resolve()).catch(() => undefined).then(run);
    this.reloading = next;
    return next;
  }

  /**
   * Stop: no new connections, requests in flight answered, every volume flushed and its lease
   * released, then the control socket closed. The state file is kept, so the next start maps
   * the same exports.
   */
  stop(): Promise<void> {
    this.stopping ??= this.shutdown();
    return this.stopping;
  }

  private async shutdown(): Promise<void> {
    // Maps still waiting for a lease (--wait) end now, each answered with why.
    this.stopped.abort(daemonStopping());
    await this.options.notifier?.notify('STOPPING=1', '--status=stopping: draining connections');
    clearInterval(this.sampler);
    this.logger.info('stopping the daemon', { exports: this.mappedCount() });
    let failure: unknown;
    try {
      await this.server?.close();
    } catch (e) {
      failure = e;
    }
    // Volumes left open by a failed last flush: one more try, then closed all the same (the
    // process is ending; their writes would be lost with it).
    for (const [name, e] of this.entries) {
      const open = e.leftOpen;
      if (open === undefined) continue;
      delete e.leftOpen;
      await open.close().catch(async (err: unknown) => {
        this.logger.error('stopping: closed a volume without storing its last writes', {
          export: name,
          error: toHyperError(err).message,
        });
        await open.abandon().catch(() => undefined);
      });
    }
    await Promise.allSettled([...this.entries.values()].map((e) => this.closeStores(e)));
    await this.control?.close();
    await this.saving;
    if (failure !== undefined) throw toHyperError(failure);
  }

  // ---------------------------------------------------------------- internals

  private async mapEntry(
    spec: ExportSpec,
    source: 'control' | 'config',
    how: { keepOnFailure: boolean; force?: boolean; wait?: boolean; signal?: AbortSignal },
  ): Promise<void> {
    if (this.stopping !== undefined) {
      throw daemonStopping();
    }
    const existing = this.entries.get(spec.name);
    if (existing?.leftOpen !== undefined) {
      throw new HyperError(
        'conflict',
        'EXPORT_EXISTS',
        `The export ${JSON.stringify(spec.name)} is still open in the daemon (its last flush failed)`,
        { suggestion: `Unmap it first ("hyper unmap ${spec.name}").` },
      );
    }
    if (existing !== undefined && existing.state !== 'failed') {
      throw new HyperError(
        'conflict',
        'EXPORT_EXISTS',
        `An export named ${JSON.stringify(spec.name)} is already mapped (${existing.spec.url})`,
        { suggestion: 'Pick another name with --name, or unmap it first ("hyper unmap NAME").' },
      );
    }
    const conflict = this.volumeConflict(spec);
    if (conflict !== undefined) {
      // At start or reload the mapping is kept as failed, like one the store refused: a
      // restart keeps the state file's exports whichever of them gets the volume.
      if (how.keepOnFailure) {
        const failed: Entry = existing ?? {
          spec,
          source,
          state: 'failed',
          stores: [],
          samples: [],
        };
        failed.error = conflict;
        this.entries.set(spec.name, failed);
        this.logger.error('could not map an export', {
          export: spec.name,
          url: spec.url,
          code: conflict.code,
          error: conflict.message,
        });
      }
      throw conflict;
    }
    // In the table before anything is awaited: a request arriving meanwhile sees this one.
    const entry: Entry = {
      spec,
      source,
      state: 'mapping',
      stores: [],
      samples: [],
      ...(existing === undefined ? {} : { previous: existing }),
    };
    this.entries.set(spec.name, entry);
    if (existing !== undefined) await this.closeStores(existing);
    const opener = async (u: string, o?: { mkdir?: boolean }): Promise<ObjectStore> => {
      const store = await this.options.openStore(u, {
        ...(spec.endpoint === undefined ? {} : { endpoint: spec.endpoint }),
        ...(spec.region === undefined ? {} : { region: spec.region }),
        ...(o?.mkdir ? { mkdir: true } : {}),
      });
      entry.stores.push(store);
      return store;
    };
    const at = spec.at === undefined ? undefined : checkpointRef(spec.at);
    try {
      await this.server!.addExports(spec.url, {
        name: spec.name,
        openStore: opener,
        readOnly: spec.readOnly === true || at !== undefined,
        ...(at === undefined ? {} : { at }),
        ...(spec.walUrl === undefined ? {} : { walUrl: spec.walUrl }),
        ...(spec.walAck === undefined ? {} : { walAck: spec.walAck }),
        force: how.force === true,
        waitForLease: how.wait === true,
        signal:
          how.signal === undefined
            ? this.stopped.signal
            : AbortSignal.any([how.signal, this.stopped.signal]),
        // No volume open here is this one (see above): a lease of this daemon's own is left
        // from an open or close that failed half-way, and is taken back at once.
        reclaim: true,
      });
      entry.state = 'mapped';
      delete entry.error;
      delete entry.previous;
      this.sampleEntry(entry);
      this.logger.info('mapped', { export: spec.name, url: spec.url, source });
    } catch (e) {
      const err = toHyperError(e);
      await this.closeStores(entry);
      delete entry.previous;
      if (!how.keepOnFailure) {
        // A request's mapping that failed leaves nothing behind (a failed mapping it was to
        // replace is kept).
        if (existing === undefined) this.entries.delete(spec.name);
        else this.entries.set(spec.name, existing);
      } else {
        // At start or reload: keep it (listed as failed, retried on reload).
        entry.state = 'failed';
        entry.error = err;
        this.logger.error('could not map an export', {
          export: spec.name,
          url: spec.url,
          code: err.code,
          error: err.message,
        });
      }
      throw err;
    }
  }

  /** Why `spec` may not be mapped now: its volume is open here read-write under another name. */
  private volumeConflict(spec: ExportSpec): HyperError | undefined {
    if (!writable(spec)) return undefined;
    for (const [name, e] of this.entries) {
      if (name === spec.name || !sameVolume(e.spec, spec)) continue;
      if (e.leftOpen !== undefined) {
        return new HyperError(
          'conflict',
          'EXPORT_EXISTS',
          `${spec.url} is still open in the daemon as ${JSON.stringify(name)} (its last flush failed)`,
          { suggestion: `Unmap ${JSON.stringify(name)} first ("hyper unmap ${name}").` },
        );
      }
      if (e.state !== 'failed' && writable(e.spec)) {
        return new HyperError(
          'conflict',
          'EXPORT_EXISTS',
          `${spec.url} is already mapped read-write as ${JSON.stringify(name)}`,
          { suggestion: 'Use that export, or map this one with --read-only or --at.' },
        );
      }
    }
    return undefined;
  }

  private async reconcile(
    wanted: { url: string; name?: string | undefined }[],
  ): Promise<{ mapped: string[]; unmapped: string[]; failed: string[] }> {
    const r = { mapped: [] as string[], unmapped: [] as string[], failed: [] as string[] };
    const specs = new Map<string, ExportSpec>();
    for (const w of wanted) {
      const spec = { ...w, name: w.name ?? nameOfUrl(w.url) } as ExportSpec;
      specs.set(spec.name, spec);
    }
    for (const [name, e] of [...this.entries]) {
      if (e.source !== 'config' || specs.has(name)) continue;
      try {
        await this.unmap(name);
        r.unmapped.push(name);
      } catch (err) {
        this.logger.error('reload: could not unmap', {
          export: name,
          error: toHyperError(err).message,
        });
        r.failed.push(name);
      }
    }
    for (const [name, spec] of specs) {
      const e = this.entries.get(name);
      if (e !== undefined && e.state !== 'failed') {
        if (e.source === 'control') {
          this.logger.warn('reload: the config names an export mapped by hand; leaving it', {
            export: name,
          });
        }
        continue;
      }
      if (e !== undefined && e.source === 'control') continue;
      try {
        await this.mapEntry(spec, 'config', { keepOnFailure: true });
        r.mapped.push(name);
      } catch {
        r.failed.push(name);
      }
    }
    return r;
  }

  private status(name: string): ExportStatus {
    const e = this.entries.get(name);
    if (e === undefined) throw exportNotFound(name);
    const s = e.spec;
    const server = this.server;
    const readOnly = s.readOnly === true || s.at !== undefined;
    const uri = e.state === 'failed' ? undefined : server?.uriOf(name);
    const out: ExportStatus = {
      name,
      url: s.url,
      source: e.source,
      state: e.state,
      uri: uri ?? null,
      readOnly,
      // A time from a config file may carry an offset: shown in UTC like every time.
      at:
        s.at === undefined
          ? null
          : 'time' in s.at
            ? { time: new Date(s.at.time).toISOString() }
            : s.at,
      walUrl: s.walUrl ?? null,
      clientCount: server?.connectionsTo(name) ?? 0,
      lease: null,
      volumeUuid: null,
      size: null,
      dirtyBytes: null,
      checkpoint: null,
      checkpointTime: null,
      checkpointAgeSeconds: null,
      readBytesPerSecond: null,
      writeBytesPerSecond: null,
      error: e.error === undefined ? null : exportErrorJson(e.error),
      health: null,
    };
    // (A volume left open by a failed unmap is shown too: its dirty bytes are what is at stake.)
    const device = server?.getExport(name)?.openedDevice ?? e.leftOpen?.openedDevice;
    if (device !== undefined) {
      const v = device.volume;
      const info = v.info;
      const now = Date.now();
      out.volumeUuid = info.uuid;
      out.size = info.size;
      out.checkpoint = info.checkpoint;
      out.checkpointTime = info.checkpointTime.toISOString();
      out.checkpointAgeSeconds =
        Math.max(0, Math.round(now - info.checkpointTime.getTime())) / 1000;
      const st = v.stats();
      // Held, segments in flight or to be written again included (like the metric).
      out.dirtyBytes = st.dirtyBytes;
      if (!readOnly) out.lease = { holder: displayHolder(this.holder), epoch: v.headRecord.epoch };
      out.health = exportProblem(st, now) ?? null;
      const base = e.samples[0];
      if (base !== undefined && now - base.t >= 500) {
        const dt = (now - base.t) / 1000;
        out.readBytesPerSecond = Math.max(0, Math.round((st.bytesRead - base.read) / dt));
        out.writeBytesPerSecond = Math.max(0, Math.round((st.bytesWritten - base.written) / dt));
      } else {
        out.readBytesPerSecond = 0;
        out.writeBytesPerSecond = 0;
      }
    }
    return out;
  }

  private sample(): void {
    for (const e of this.entries.values()) this.sampleEntry(e);
  }

  /** Keep the last two samples; rates are taken over the older one (5–10 s ago). */
  private sampleEntry(e: Entry): void {
    const v = this.server?.getExport(e.spec.name)?.openedDevice?.volume;
    if (v === undefined) return;
    const st = v.stats();
    e.samples.push({ t: Date.now(), read: st.bytesRead, written: st.bytesWritten });
    if (e.samples.length > 2) e.samples.shift();
  }

  private mappedCount(): number {
    let n = 0;
    for (const e of this.entries.values()) if (e.state === 'mapped') n++;
    return n;
  }

  private async closeStores(e: Entry): Promise<void> {
    const stores = e.stores.splice(0);
    await Promise.allSettled(stores.map((s) => s.close()));
  }

  /** Write the state file; writes are queued so that the last one wins. */
  private persist(): Promise<void> {
    // What each name was when its last request ended: a mapping in progress is not there yet
    // (or is still the failed mapping it replaces), an unmapping in progress still is.
    // Failed mappings last: a restart maps the file in order, so the exports that were live
    // get their volumes first (a failed one of the same volume then fails again).
    const live: StateEntry[] = [];
    const failed: StateEntry[] = [];
    for (const e of this.entries.values()) {
      const settled = e.state === 'mapping' ? e.previous : e;
      if (settled === undefined) continue;
      (settled.state === 'failed' ? failed : live).push({
        ...settled.spec,
        source: settled.source,
      });
    }
    const exports = [...live, ...failed];
    const next = this.saving
      .catch(() => undefined)
      .then(() => saveState(this.options.stateFile, { version: 1, exports }));
    this.saving = next.catch((e: unknown) =>
      this.logger.error('could not write the state file', {
        file: this.options.stateFile,
        error: toHyperError(e).message,
      }),
    );
    return next;
  }
}

/** Why a map fails once the daemon is stopping: not an interruption by the user. */
function daemonStopping(): HyperError {
  return new HyperError(
    'unavailable',
    'DAEMON_NOT_RUNNING',
    'The daemon is stopping: the volume was not mapped',
    {
      suggestion:
        'Map it again once the daemon is back ("systemctl start hyper-daemon" or "hyper daemon"); a mapping made before the stop is mapped again at start from the state file.',
    },
  );
}

/** Whether an export writes to its volume (and so holds its lease). */
function writable(spec: ExportSpec): boolean {
  return !(spec.readOnly === true || spec.at !== undefined);
}

function sameVolume(a: ExportSpec, b: ExportSpec): boolean {
  const norm = (u: string) => u.replace(/\/+$/, '');
  return norm(a.url) === norm(b.url) && (a.endpoint ?? '') === (b.endpoint ?? '');
}

function checkpointRef(at: NonNullable<ExportSpec['at']>): CheckpointRef {
  if ('time' in at) return { time: new Date(at.time) };
  return at;
}

/** A mapping's error as JSON (`error` of an export): absent parts are null. */
function exportErrorJson(e: HyperError): ExportErrorJson {
  return {
    kind: e.kind,
    code: e.code,
    message: e.message,
    suggestion: e.suggestion ?? null,
    key: e.key ?? null,
  };
}
