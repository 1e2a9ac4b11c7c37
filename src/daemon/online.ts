/**
 * Maintenance of a volume a server on this host holds, done by that server (as rbd hands
 * maintenance of a locked image to the lock's owner), through its control socket: the
 * daemon's, or that of `hyper serve --control-socket` (serve/maintenance.ts):
 * - `hyper compact` of a volume whose lease such a server holds asks it to compact the
 *   volume online (POST /v1/exports/NAME/compact), rather than failing with LEASE_HELD or
 *   fencing the server with --force; the writer runs it beside its clients, as its
 *   --compact-every schedule does;
 * - `hyper snapshot create` first asks it to commit what it acknowledged
 *   (POST /v1/exports/NAME/flush), so that the snapshot holds every write made before;
 * - `hyper file set-len` asks it to grow the volume (POST /v1/exports/NAME/resize) instead
 *   of failing with LEASE_HELD: its new connections see the new size.
 *
 * The server is found on the control socket given (the daemon's default one unless told
 * otherwise); the export must be open read-write with its lease held, at the same URL, and
 * serve the same volume (its uuid, listed and checked again by the server): a same-named
 * volume at another endpoint is never compacted by mistake.
 */
import type { ExportStatus } from '../cli/vocabulary.js';
import { normalizeVolumeUrl } from '../cli/url.js';
import { HyperError, isHyperError } from '../errors.js';
import type { ObjectStore } from '../format/store/types.js';
import type { CompactResult } from '../format/volume/compact.js';
import { readHead } from '../format/volume/heads.js';
import type { HeadRecord } from '../format/codec/head.js';
import type { RetentionPolicy } from '../serve/compaction.js';
import { ControlClient } from './control.js';
import type { CompactRequest } from './schema.js';

/**
 * An export as GET /v1/exports lists it, as far as this lookup reads it: the daemon lists
 * full ExportStatus objects, `hyper serve --control-socket` these fields of its open exports.
 */
export type MaintainedExport = Pick<
  ExportStatus,
  'name' | 'url' | 'state' | 'readOnly' | 'lease' | 'volumeUuid'
>;

export interface OnlineCompaction {
  result: CompactResult;
  controlSocket: string;
  /** The export that serves the volume. */
  name: string;
}

export interface OnlineFlush {
  /** The checkpoint the server committed (every write it acknowledged before is in it). */
  checkpoint: number;
  controlSocket: string;
  name: string;
}

/** What a server answers to POST /v1/exports/NAME/flush. */
export interface FlushAnswer {
  checkpoint: number;
  time: string;
}

/** What a server answers to POST /v1/exports/NAME/resize. */
export interface ResizeAnswer extends FlushAnswer {
  previousSize: number;
  size: number;
}

export interface OnlineResize extends ResizeAnswer {
  controlSocket: string;
  name: string;
}

/** How long the lookup waits for the server's list of exports. */
const LOOKUP_TIMEOUT_MS = 10_000;

/** Where to look for the server, and what to tell when its socket is there but not ours. */
export interface DaemonLookup {
  controlSocket: string;
  signal?: AbortSignal;
  /** How long the lookup waits for the server's list of exports (default 10 s). */
  timeoutMs?: number;
  /**
   * A server is there but could not be asked: this user may not use its socket
   * (PERMISSION_DENIED), or it did not answer the lookup in time. Nothing was asked.
   */
  unusable?: (e: HyperError) => void;
}

/**
 * Ask the server on `controlSocket` that serves the volume at `url` (opened as `store`)
 * read-write to `call` its export; undefined when no server listens there (or may not be used
 * by this user) or none of its exports holds this volume.
 */
async function inHoldingServer<T>(
  store: ObjectStore,
  url: string,
  o: DaemonLookup & { onAsked?: (name: string) => void },
  call: (client: ControlClient, path: string, head: HeadRecord) => Promise<T>,
): Promise<{ answer: T; name: string } | undefined> {
  const client = new ControlClient(o.controlSocket);
  let exports: MaintainedExport[];
  // The lookup is implicit: a server that does not answer it soon is passed over, not waited for.
  const timeoutMs = o.timeoutMs ?? LOOKUP_TIMEOUT_MS;
  const listing = AbortSignal.timeout(timeoutMs);
  try {
    exports = (
      await client.get<{ exports: MaintainedExport[] }>(
        '/v1/exports',
        o.signal ? AbortSignal.any([o.signal, listing]) : listing,
      )
    ).exports;
  } catch (e) {
    if (isHyperError(e, 'DAEMON_NOT_RUNNING')) return undefined;
    if (isHyperError(e, 'PERMISSION_DENIED')) {
      o.unusable?.(e);
      return undefined;
    }
    if (listing.aborted && !o.signal?.aborted) {
      o.unusable?.(
        new HyperError(
          'unavailable',
          'DAEMON_NOT_RUNNING',
          `The server on ${o.controlSocket} did not answer within ${timeoutMs / 1000} s`,
        ),
      );
      return undefined;
    }
    throw e;
  }
  const serving = exports.filter(
    (e) => e.state === 'mapped' && !e.readOnly && e.lease !== null && sameUrl(e.url, url),
  );
  if (serving.length === 0) return undefined;
  // The same volume, not another one under the same URL (another endpoint); the server
  // checks the uuid again when asked.
  const { head } = await readHead(store);
  const e = serving.find((x) => x.volumeUuid === head.uuid);
  if (e === undefined) return undefined;
  o.onAsked?.(e.name);
  const answer = await call(client, `/v1/exports/${encodeURIComponent(e.name)}`, head);
  return { answer, name: e.name };
}

/**
 * Compact the volume at `url` (opened as `store`) in the server on `controlSocket` that serves
 * it read-write; undefined when there is none (see inHoldingServer).
 */
export async function compactOnlineInServer(
  store: ObjectStore,
  url: string,
  o: DaemonLookup & {
    policy: RetentionPolicy;
    /** Called once the server was asked, with the export's name. */
    onAsked?: (name: string) => void;
  },
): Promise<OnlineCompaction | undefined> {
  const r = await inHoldingServer(store, url, o, (client, path, head) => {
    const request: CompactRequest = { ...o.policy, volumeUuid: head.uuid };
    return client.post<CompactResult>(`${path}/compact`, request, o.signal);
  });
  return r && { result: r.answer, controlSocket: o.controlSocket, name: r.name };
}

/**
 * Have the server on `controlSocket` that serves the volume at `url` read-write commit what it
 * acknowledged (a client's FLUSH, asked from outside): `hyper snapshot create` then pins a
 * checkpoint holding every write acknowledged before it ran. Undefined when there is none.
 */
export async function flushInServer(
  store: ObjectStore,
  url: string,
  o: DaemonLookup,
): Promise<OnlineFlush | undefined> {
  const r = await inHoldingServer(store, url, o, (client, path, head) =>
    client.post<FlushAnswer>(`${path}/flush`, { volumeUuid: head.uuid }, o.signal),
  );
  return r && { checkpoint: r.answer.checkpoint, controlSocket: o.controlSocket, name: r.name };
}

/**
 * Have the server on `controlSocket` that serves the volume at `url` read-write grow it to
 * `size(current)` bytes (`current`: the size its head records; `size` may refuse by throwing);
 * a shrink the server refuses (DEVICE_BUSY). Undefined when there is none.
 */
export async function resizeInServer(
  store: ObjectStore,
  url: string,
  o: DaemonLookup & { size: (current: number) => number },
): Promise<OnlineResize | undefined> {
  const r = await inHoldingServer(store, url, o, (client, path, head) =>
    client.post<ResizeAnswer>(
      `${path}/resize`,
      { size: o.size(head.size), volumeUuid: head.uuid },
      o.signal,
    ),
  );
  return r && { ...r.answer, controlSocket: o.controlSocket, name: r.name };
}

function sameUrl(a: string, b: string): boolean {
  try {
    return normalizeVolumeUrl(a) === normalizeVolumeUrl(b);
  } catch {
    return false;
  }
}
