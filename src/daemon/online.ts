/**
 * Maintenance of a volume a daemon serves, done by that daemon: `hyper compact` of a volume
 * whose lease a daemon on this host holds asks it, through its control socket, to compact the
 * volume online (POST /v1/exports/NAME/compact), rather than failing with LEASE_HELD or
 * fencing the daemon with --force. The writer runs the compaction beside its clients, as its
 * --compact-every schedule does.
 *
 * The daemon is found on the control socket given (the default one unless told otherwise);
 * the export must be mapped read-write with its lease held, at the same URL, and serve the
 * same volume (its uuid, which the daemon checks): a same-named volume at another endpoint is
 * never compacted by mistake.
 */
import type { ExportStatus } from '../cli/vocabulary.js';
import { normalizeVolumeUrl } from '../cli/url.js';
import { isHyperError } from '../errors.js';
import type { ObjectStore } from '../format/store/types.js';
import type { CompactResult } from '../format/volume/compact.js';
import { readHead } from '../format/volume/heads.js';
import type { RetentionPolicy } from '../serve/compaction.js';
import { ControlClient } from './control.js';
import type { CompactRequest } from './schema.js';

export interface OnlineCompaction {
  result: CompactResult;
  controlSocket: string;
  /** The export that serves the volume. */
  name: string;
}

/**
 * Compact the volume at `url` (opened as `store`) in the daemon on `controlSocket` that serves
 * it read-write; undefined when no daemon listens there (or may not be used by this user) or
 * none of its exports holds this volume.
 */
export async function compactOnlineInDaemon(
  store: ObjectStore,
  url: string,
  o: {
    controlSocket: string;
    policy: RetentionPolicy;
    signal?: AbortSignal;
    /** Called once the daemon was asked, with the export's name. */
    onAsked?: (name: string) => void;
  },
): Promise<OnlineCompaction | undefined> {
  const client = new ControlClient(o.controlSocket);
  let exports: ExportStatus[];
  try {
    exports = (await client.get<{ exports: ExportStatus[] }>('/v1/exports', o.signal)).exports;
  } catch (e) {
    if (isHyperError(e, 'DAEMON_NOT_RUNNING') || isHyperError(e, 'PERMISSION_DENIED'))
      return undefined;
    throw e;
  }
  const serving = exports.filter(
    (e) => e.state === 'mapped' && !e.readOnly && e.lease !== null && sameUrl(e.url, url),
  );
  if (serving.length === 0) return undefined;
  const { head } = await readHead(store);
  for (const e of serving) {
    const request: CompactRequest = { ...o.policy, volumeUuid: head.uuid };
    o.onAsked?.(e.name);
    try {
      const result = await client.post<CompactResult>(
        `/v1/exports/${encodeURIComponent(e.name)}/compact`,
        request,
        o.signal,
      );
      return { result, controlSocket: o.controlSocket, name: e.name };
    } catch (err) {
      // Another volume under the same URL (another endpoint): not this one.
      if (isHyperError(err, 'PRECONDITION_FAILED') && /serves volume/.test(err.message)) continue;
      throw err;
    }
  }
  return undefined;
}

function sameUrl(a: string, b: string): boolean {
  try {
    return normalizeVolumeUrl(a) === normalizeVolumeUrl(b);
  } catch {
    return false;
  }
}
