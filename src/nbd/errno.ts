/**
 * The one place where errors become NBD error numbers. Devices throw whatever their layer
 * throws; errors carrying a `kind` and `code` (hyper's HyperError, read by duck typing so
 * that src/nbd stays independent of the rest of hyper) are mapped by code, then by kind.
 */
import { EINVAL, EIO, ENOMEM, ENOSPC, ENOTSUP, EPERM, ESHUTDOWN } from './protocol.js';

interface Coded {
  kind?: unknown;
  code?: unknown;
}

/** Thrown by devices (and used by the server) to pick an errno explicitly. */
export class NbdError extends Error {
  override readonly name = 'NbdError';
  constructor(
    readonly errno: number,
    message: string,
  ) {
    super(message);
  }
}

const byCode: Record<string, number> = {
  READ_ONLY: EPERM,
  ACCESS_DENIED: EPERM,
  OUT_OF_RANGE: EINVAL,
  INVALID_ARGUMENT: EINVAL,
  FENCED: EPERM, // the writer lost its lease: writes are refused from now on
  ABORTED: ESHUTDOWN,
  NOT_SUPPORTED: ENOTSUP,
  NO_SPACE: ENOSPC,
};

const byKind: Record<string, number> = {
  invalid: EINVAL,
  'not-found': EIO,
  conflict: EIO,
  unavailable: EIO,
  data: EIO,
  internal: EIO,
};

/** NBD errno for an error thrown while serving a request of `write` kind (or not). */
export function toErrno(err: unknown, isWrite = false): number {
  if (err instanceof NbdError) return err.errno;
  if (err !== null && typeof err === 'object') {
    const { kind, code } = err as Coded;
    if (typeof code === 'string') {
      if (code === 'OUT_OF_RANGE' && isWrite) return ENOSPC;
      const e = byCode[code];
      if (e !== undefined) return e;
    }
    if (typeof kind === 'string') {
      const e = byKind[kind];
      if (e !== undefined) return e;
    }
    if (err instanceof RangeError && /allocation failed/i.test(err.message)) return ENOMEM;
  }
  return EIO;
}

/** Fields describing an error for the log (message, code, kind, object key when known). */
export function describeError(err: unknown): Record<string, unknown> {
  if (err !== null && typeof err === 'object') {
    const o = err as { message?: unknown; code?: unknown; kind?: unknown; key?: unknown };
    const fields: Record<string, unknown> = {
      error: typeof o.message === 'string' ? o.message : String(err),
    };
    if (o.code !== undefined) fields.code = o.code;
    if (o.kind !== undefined) fields.kind = o.kind;
    if (o.key !== undefined) fields.key = o.key;
    return fields;
  }
  return { error: String(err) };
}
