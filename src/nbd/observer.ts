/**
 * What the NBD server reports about its work, for metrics. Every callback is optional and
 * called synchronously on the connection's path, so an implementation must be cheap and must
 * not throw (a throwing observer is caught and ignored, never allowed to break a connection).
 *
 * Connections carry a correlation id (`conn`), the same one the server puts in every log line
 * about that connection.
 */
import type { NbdLogger } from './device.js';

export interface NbdRequestEvent {
  /** Correlation id of the connection. */
  conn: string;
  /** Export the connection transmits on. */
  export: string;
  /** Command name as in the protocol: READ, WRITE, FLUSH, TRIM, WRITE_ZEROES, BLOCK_STATUS, CACHE. */
  command: string;
  /** Bytes the request covers (its length field; 0 for FLUSH). */
  bytes: number;
  /** From dispatch to the device until its answer; undefined for a request refused before dispatch. */
  seconds: number | undefined;
  /** Errno name of a failed or refused request (EIO, EINVAL, …); undefined on success. */
  errno: string | undefined;
}

export interface NbdObserver {
  /** A client connected (before negotiation). */
  accepted?(conn: string, remote: string): void;
  /** A connection finished negotiating and transmits on `exportName`. */
  transmitting?(conn: string, exportName: string): void;
  /** A connection closed; `exportName` is set if it had reached transmission. */
  closed?(conn: string, exportName: string | undefined): void;
  /** A request was answered (successfully or with an error). */
  request?(event: NbdRequestEvent): void;
}

/** A logger that adds `fields` to every line (the connection's correlation id). */
export function withFields(logger: NbdLogger, fields: Record<string, unknown>): NbdLogger {
  const add =
    (f: (msg: string, extra?: Record<string, unknown>) => void) =>
    (msg: string, extra?: Record<string, unknown>): void =>
      f.call(logger, msg, extra === undefined ? fields : { ...fields, ...extra });
  return {
    debug: add(logger.debug),
    info: add(logger.info),
    warn: add(logger.warn),
    error: add(logger.error),
  };
}
