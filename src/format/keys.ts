/**
 * The only place where object keys are built or parsed: a volume's keys, relative to the
 * volume's root (the store's URL), and the WAL's keys, relative to the WAL store's URL.
 * See FORMAT.md "Objects of a volume".
 */
import { HyperError } from '../errors.js';

export const HEAD_KEY = 'head';
export const LEASE_KEY = 'lease';
export const SEGMENT_PREFIX = 'seg/';
export const SNAPSHOT_PREFIX = 'snap/';
/**
 * A WAL kept inside the volume's own prefix (`--wal-url <volume>/wal/`) lives under here;
 * a half-deleted volume may still hold such keys, and deleting it removes them.
 */
export const WAL_PREFIX = 'wal/';
/** Pins that clones hold on their parent's checkpoints: pin/<clone volume uuid>. */
export const PIN_PREFIX = 'pin/';
/**
 * A replication replica's manifest (src/replica/manifest.ts): which device it mirrors and
 * which of its checkpoints are not crash-consistent images.
 */
export const REPLICA_KEY = 'replica';
/**
 * A flatten's copy of the head as it was before the flatten's detach commit. It exists from just
 * before that commit until the flatten has found nothing that reads through the checkpoints
 * the commit dropped (or has undone the detach): a volume with no clone link and this object
 * is a flatten that stopped in between.
 */
export const FLATTEN_KEY = 'flatten';

/** The replica volume of primary `uuid`, relative to the replica prefix. */
export const replicaVolumePrefix = (uuid: string): string => `${uuid}/`;

export function pinKey(cloneUuid: string): string {
  if (!/^[0-9a-f]{32}$/.test(cloneUuid))
    throw new HyperError('internal', 'INTERNAL', `invalid clone uuid ${cloneUuid}`);
  return PIN_PREFIX + cloneUuid;
}

/** The clone uuid of a key under pin/, or undefined for anything else. */
export function parsePinKey(key: string): string | undefined {
  if (!key.startsWith(PIN_PREFIX)) return undefined;
  const uuid = key.slice(PIN_PREFIX.length);
  return /^[0-9a-f]{32}$/.test(uuid) ? uuid : undefined;
}

/** Segment ids are 16 lower-case hex digits so that a listing sorts them numerically. */
const SEG_DIGITS = 16;

export function segmentKey(id: number): string {
  if (!Number.isSafeInteger(id) || id < 1) {
    throw new HyperError('internal', 'INTERNAL', `invalid segment id ${id}`);
  }
  return SEGMENT_PREFIX + id.toString(16).padStart(SEG_DIGITS, '0');
}

/** The segment id of a key under seg/, or undefined for anything else. */
export function parseSegmentKey(key: string): number | undefined {
  if (!key.startsWith(SEGMENT_PREFIX)) return undefined;
  const rest = key.slice(SEGMENT_PREFIX.length);
  if (rest.length !== SEG_DIGITS || !/^[0-9a-f]+$/.test(rest)) return undefined;
  const id = Number.parseInt(rest, 16);
  return Number.isSafeInteger(id) && id >= 1 ? id : undefined;
}

/** Snapshot names: 1-64 chars of letters, digits, `.`, `_`, `-`, not starting with `.` or `-`. */
export const SNAPSHOT_NAME = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$/;

export function snapshotKey(name: string): string {
  if (!SNAPSHOT_NAME.test(name)) {
    throw new HyperError('invalid', 'INVALID_ARGUMENT', `Invalid snapshot name "${name}"`, {
      suggestion:
        'Use 1-64 letters, digits, ".", "_" or "-", starting with a letter, digit or "_".',
    });
  }
  return SNAPSHOT_PREFIX + name;
}

export function parseSnapshotKey(key: string): string | undefined {
  if (!key.startsWith(SNAPSHOT_PREFIX)) return undefined;
  const name = key.slice(SNAPSHOT_PREFIX.length);
  return SNAPSHOT_NAME.test(name) ? name : undefined;
}

/** WAL records of one volume, in the WAL store: `<volume uuid>/<sequence, 16 hex>`. */
export const walPrefix = (uuid: string): string => `${uuid}/`;

export function walKey(uuid: string, seq: number): string {
  if (!Number.isSafeInteger(seq) || seq < 1) {
    throw new HyperError('internal', 'INTERNAL', `invalid WAL sequence ${seq}`);
  }
  return walPrefix(uuid) + seq.toString(16).padStart(SEG_DIGITS, '0');
}

/** The sequence number of one of `uuid`'s WAL keys, or undefined for anything else. */
export function parseWalKey(uuid: string, key: string): number | undefined {
  const prefix = walPrefix(uuid);
  if (!key.startsWith(prefix)) return undefined;
  const rest = key.slice(prefix.length);
  if (rest.length !== SEG_DIGITS || !/^[0-9a-f]+$/.test(rest)) return undefined;
  const seq = Number.parseInt(rest, 16);
  return Number.isSafeInteger(seq) && seq >= 1 ? seq : undefined;
}

/**
 * `hyper doctor`'s temporary objects, under the prefix it checks:
 * `.hyper-doctor-<run id>/<name>`. Deleted when the run ends; a leftover (a killed run) is
 * not part of any volume and may be deleted by hand.
 */
export const DOCTOR_PREFIX = '.hyper-doctor-';

export function doctorKey(runId: string, name: string): string {
  if (!/^[0-9a-f]{8,32}$/.test(runId) || !/^[a-z0-9-]+$/.test(name))
    throw new HyperError('internal', 'INTERNAL', `invalid doctor key ${runId}/${name}`);
  return `${DOCTOR_PREFIX}${runId}/${name}`;
}
