/**
 * The one error type of hyper. Every failure the library reports is a HyperError with
 * a coarse `kind` (what a caller can do about it), a stable `code` (what happened, safe to
 * match on in scripts), a message for people and, where there is one, a suggestion.
 *
 * Exit codes are derived from `kind` in exactly one place (src/base-command.ts) and NBD
 * errno values in exactly one place (src/nbd/errno.ts, which reads `kind` and `code`
 * duck-typed so that src/nbd does not import this module).
 */
export type ErrorKind =
  | 'invalid' // the request or input is wrong: fix it and retry
  | 'not-found' // the thing named does not exist
  | 'conflict' // someone else holds or changed it (lease, CAS lost, exists)
  | 'unavailable' // the store or network failed; retrying later may work
  | 'data' // stored bytes are damaged or missing: never silently returned
  | 'internal'; // a bug in hyper

export type ErrorCode =
  // invalid
  | 'INVALID_ARGUMENT'
  | 'INVALID_URL'
  | 'OUT_OF_RANGE'
  | 'READ_ONLY'
  | 'NOT_A_VOLUME'
  | 'UNSUPPORTED_FORMAT_VERSION'
  | 'UNSUPPORTED_STORE'
  | 'ADDRESS_IN_USE'
  | 'ADDRESS_NOT_AVAILABLE'
  | 'PATH_NOT_FOUND'
  | 'PERMISSION_DENIED'
  | 'FILE_TOO_LARGE'
  | 'INVALID_CONFIG'
  | 'UNKNOWN_COMMAND'
  | 'UNKNOWN_FLAG'
  | 'KEY_REQUIRED'
  | 'WRONG_KEY'
  | 'NOT_A_PRIMARY'
  // not-found
  | 'VOLUME_NOT_FOUND'
  | 'OBJECT_NOT_FOUND'
  | 'BUCKET_NOT_FOUND'
  | 'CHECKPOINT_NOT_FOUND'
  | 'SNAPSHOT_NOT_FOUND'
  | 'EXPORT_NOT_FOUND'
  // conflict
  | 'VOLUME_EXISTS'
  | 'OBJECT_EXISTS'
  | 'PRECONDITION_FAILED'
  | 'LEASE_HELD'
  | 'FENCED'
  | 'SNAPSHOT_EXISTS'
  | 'HAS_CLONES'
  | 'EXPORT_EXISTS'
  | 'DAEMON_RUNNING'
  | 'PRIMARY_EXISTS'
  | 'PRIMARY_IN_USE'
  | 'DEVICE_HAS_DATA'
  | 'DEVICE_BUSY'
  | 'REPLICA_MISMATCH'
  // unavailable
  | 'STORE_UNAVAILABLE'
  | 'ACCESS_DENIED'
  | 'CONDITIONAL_WRITES_UNSUPPORTED'
  | 'ABORTED'
  | 'NO_SPACE'
  | 'IO_ERROR'
  | 'TOO_MANY_OPEN_FILES'
  | 'DAEMON_NOT_RUNNING'
  // data
  | 'CHECKSUM_MISMATCH'
  | 'CORRUPT_OBJECT'
  | 'MISSING_OBJECT'
  | 'REPLICA_DIVERGED'
  // internal
  | 'INTERNAL';

export interface HyperErrorOptions {
  suggestion?: string;
  cause?: unknown;
  /** The object key concerned, when there is one (always set for data errors). */
  key?: string;
}

export class HyperError extends Error {
  override readonly name = 'HyperError';
  readonly kind: ErrorKind;
  readonly code: ErrorCode;
  readonly suggestion?: string;
  readonly key?: string;

  constructor(kind: ErrorKind, code: ErrorCode, message: string, options: HyperErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.kind = kind;
    this.code = code;
    if (options.suggestion !== undefined) this.suggestion = options.suggestion;
    if (options.key !== undefined) this.key = options.key;
  }

  toJSON(): {
    kind: ErrorKind;
    code: ErrorCode;
    message: string;
    suggestion?: string;
    key?: string;
  } {
    return {
      kind: this.kind,
      code: this.code,
      message: this.message,
      ...(this.suggestion === undefined ? {} : { suggestion: this.suggestion }),
      ...(this.key === undefined ? {} : { key: this.key }),
    };
  }
}

export function isHyperError(e: unknown, code?: ErrorCode): e is HyperError {
  return e instanceof HyperError && (code === undefined || e.code === code);
}

/** Wrap anything thrown into a HyperError without losing it. */
export function toHyperError(e: unknown): HyperError {
  if (e instanceof HyperError) return e;
  if (e instanceof Error && e.name === 'AbortError') {
    // An abort that says why (the signal's reason, which Node carries as the cause) keeps it.
    if (e.cause instanceof HyperError) return e.cause;
    return new HyperError('unavailable', 'ABORTED', 'The operation was interrupted.', { cause: e });
  }
  const system = systemError(e);
  if (system) return system;
  const message = e instanceof Error ? e.message : String(e);
  return new HyperError('internal', 'INTERNAL', `Unexpected error: ${message}`, {
    cause: e,
    suggestion: 'This is a bug in hyper; please report it with the command you ran.',
  });
}

/**
 * Ordinary system errors (a port in use, a missing directory, a full disk…) are the user's
 * to fix, not bugs: each gets a code and a suggestion. Undefined for anything else.
 */
function systemError(e: unknown): HyperError | undefined {
  if (!(e instanceof Error)) return undefined;
  const err = e as NodeJS.ErrnoException & { address?: string; port?: number; hostname?: string };
  const port = err.port !== undefined && err.port > 0 ? `:${err.port}` : '';
  const where = err.path ?? (err.address ? `${err.address}${port}` : '');
  const on = where ? ` (${where})` : '';
  const make = (
    kind: ErrorKind,
    code: ErrorCode,
    message: string,
    suggestion: string,
  ): HyperError => new HyperError(kind, code, message, { cause: e, suggestion });
  switch (err.code) {
    case 'EADDRINUSE':
      return make(
        'invalid',
        'ADDRESS_IN_USE',
        `The address is already in use${on}`,
        'Pick another --port (--port 0 picks a free one) or --socket, or stop the process using it.',
      );
    case 'EADDRNOTAVAIL':
      return make(
        'invalid',
        'ADDRESS_NOT_AVAILABLE',
        `The address is not one of this machine's${on}`,
        'Pass --bind an address of this machine (127.0.0.1, 0.0.0.0, ::1 or an interface address).',
      );
    case 'ENOENT':
      return make(
        'invalid',
        'PATH_NOT_FOUND',
        `No such file or directory${on}`,
        'Check the path; create the missing directory first (mkdir -p).',
      );
    case 'ENOTDIR':
      return make(
        'invalid',
        'PATH_NOT_FOUND',
        `A part of the path is a file, not a directory${on}`,
        'Check the path: each part before the last must be a directory.',
      );
    case 'EROFS':
      return make(
        'invalid',
        'PERMISSION_DENIED',
        `Read-only file system${on}`,
        'Pick a path on a writable file system, or remount it read-write.',
      );
    case 'EACCES':
    case 'EPERM':
      if (err.syscall === 'listen' || err.syscall === 'bind')
        return make(
          'invalid',
          'PERMISSION_DENIED',
          `Permission denied${on}`,
          err.port !== undefined && err.port > 0 && err.port < 1024
            ? 'Ports below 1024 need root (or CAP_NET_BIND_SERVICE): pick a port of 1024 or more (--port 0 picks a free one; NBD is 10809).'
            : 'Pick another --port or --socket, or a directory this user may write to for the socket.',
        );
      return make(
        'invalid',
        'PERMISSION_DENIED',
        `Permission denied${on}`,
        'Check that the directory exists and that you may write there, or pick another path.',
      );
    case 'EFBIG':
      return make(
        'invalid',
        'FILE_TOO_LARGE',
        `The file would be larger than the filesystem allows${on}`,
        'Write to a filesystem that supports files this large, or to a block device.',
      );
    case 'ENOSPC':
    case 'EDQUOT':
      return make(
        'unavailable',
        'NO_SPACE',
        `No space left on the device${on}`,
        'Free some space or pick another target, then run the command again.',
      );
    case 'EISDIR':
      return make(
        'invalid',
        'INVALID_ARGUMENT',
        `Is a directory${on}`,
        'Give the path of a file (or a block device), not of a directory.',
      );
    case 'EEXIST':
      return make(
        'invalid',
        'INVALID_ARGUMENT',
        `Already exists${on}`,
        'Pick another path, or remove what is there first.',
      );
    case 'ENAMETOOLONG':
      return make(
        'invalid',
        'INVALID_ARGUMENT',
        `File name too long${on}`,
        'Use a shorter path (a file name is at most 255 bytes, a path 4096, a unix socket path 107).',
      );
    case 'ELOOP':
      return make(
        'invalid',
        'PATH_NOT_FOUND',
        `Too many levels of symbolic links${on}`,
        'Check the symbolic links on the path: one of them points back at itself.',
      );
    case 'EIO':
      return make(
        'unavailable',
        'IO_ERROR',
        `The device reported an I/O error${on}`,
        'The disk (or network file system) under it is failing or gone: check the kernel log (dmesg) and the disk (smartctl); copy what matters elsewhere.',
      );
    case 'EBUSY':
      return make(
        'conflict',
        'DEVICE_BUSY',
        `The device is in use${on}: mounted, part of a RAID, LVM or device-mapper volume, or held by another program`,
        'See what holds it (findmnt, lsblk, fuser -v on the device), unmount or stop that, then run the command again.',
      );
    case 'ENOTFOUND':
      return make(
        'invalid',
        'ADDRESS_NOT_AVAILABLE',
        `The host name does not resolve${err.hostname ? ` (${err.hostname})` : on}`,
        'Check the name (or give an IP address); with --bind, an address of this machine (127.0.0.1, 0.0.0.0, ::1 or an interface address).',
      );
    case 'EMFILE':
    case 'ENFILE':
      return make(
        'unavailable',
        'TOO_MANY_OPEN_FILES',
        `Too many open files${on}`,
        'Raise the limit on open files (ulimit -n; LimitNOFILE= in a systemd unit), then run the command again.',
      );
    default:
      return undefined;
  }
}

export const invalid = (message: string, suggestion?: string): HyperError =>
  new HyperError('invalid', 'INVALID_ARGUMENT', message, suggestion ? { suggestion } : {});

export const dataError = (
  code: 'CHECKSUM_MISMATCH' | 'CORRUPT_OBJECT' | 'MISSING_OBJECT',
  key: string,
  message: string,
  suggestion = CHECK_DEEP_SUGGESTION,
): HyperError => new HyperError('data', code, `${message} (object ${key})`, { key, suggestion });

/** Where a damaged object leads: the deep check names every damaged object and a checkpoint to restore. */
export const CHECK_DEEP_SUGGESTION =
  'Run `hyper file check --deep` on this volume: it lists every damaged object and names the newest checkpoint that does not use them, to restore with `hyper snapshot restore --to N`.';

/**
 * For a lookup that explains a missing object: a store that failed it (kind `unavailable`:
 * down, timed out, throttled) is the answer to report; any other failure explains nothing.
 */
export function unlessUnavailable(e: unknown): Error | undefined {
  return isHyperError(e) && e.kind === 'unavailable' ? e : undefined;
}

/**
 * For a look whose failure is taken to mean "nothing usable there" (a damaged record): a
 * failure of the store itself (kind `unavailable`) says nothing either way, so it is thrown on.
 */
export function rethrowUnavailable(e: unknown): undefined {
  if (isHyperError(e) && e.kind === 'unavailable') throw e;
  return undefined;
}
