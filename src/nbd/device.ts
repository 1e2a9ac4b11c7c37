/**
 * The BlockDevice seam: everything the NBD server knows about what it exports. The volume
 * engine is adapted to it in src/serve/volume-device.ts; src/nbd/testing/memory-device.ts is a
 * sparse in-memory implementation for tests and transport benchmarks.
 *
 * The server validates every request (range, alignment, flags, read-only) before calling a
 * device, so a device only sees in-range requests with lengths between 1 and the server's
 * maximum request size. Devices report failures by throwing; src/nbd/errno.ts maps what
 * they throw to an NBD error number.
 */

export interface BlockSizes {
  /** Smallest addressable unit (power of two, 1..65536); requests must be aligned to it. */
  minimum: number;
  /** Preferred I/O size (power of two, ≥ minimum). */
  preferred: number;
  /** Largest payload of one READ/WRITE the device accepts (≥ preferred). */
  maximum: number;
}

export interface DeviceCapabilities {
  readOnly: boolean;
  canFlush: boolean;
  canFua: boolean;
  canTrim: boolean;
  canZero: boolean;
  /** WRITE_ZEROES with FAST_ZERO is always fast (no slower than a TRIM). */
  canFastZero: boolean;
  canCache: boolean;
  /** A FLUSH on one connection makes writes completed on every connection durable. */
  canMultiConn: boolean;
  canBlockStatus: boolean;
}

export interface WriteFlags {
  /** Force unit access: durable before the promise resolves. */
  fua: boolean;
}

export interface ZeroFlags extends WriteFlags {
  /** Keep storage allocated if the device distinguishes (reads are zeros either way). */
  noHole: boolean;
  /** Fail (rather than fall back to writing zeros slowly) unless zeroing is fast. */
  fastZero: boolean;
}

/** One run of the export for BLOCK_STATUS. */
export interface DeviceExtent {
  offset: number;
  length: number;
  /** No storage allocated for the run. */
  hole: boolean;
  /** The run reads as zeros. */
  zero: boolean;
}

export interface BlockDevice {
  /** Size in bytes (a safe integer). */
  readonly size: number;
  readonly blockSize: BlockSizes;
  readonly capabilities: DeviceCapabilities;
  /** Resolves to exactly `length` bytes. The buffer may be kept by the caller until sent. */
  read(offset: number, length: number): Promise<Buffer>;
  /**
   * Optional scatter read: pieces holding exactly `length` bytes from `offset`, in order. The
   * server sends them by reference, so they must not change until sent.
   */
  readv?(offset: number, length: number): Promise<Buffer[]>;
  /**
   * Optional: a buffer (or readv piece) a read returned has been sent: the socket is done
   * with it. Called once per buffer per read; the device may use the memory of a buffer it
   * lent for that read again (and ignores the others).
   */
  release?(buf: Buffer): void;
  /** The device must copy `data` if it keeps it beyond the returned promise. */
  write(offset: number, data: Buffer, flags: WriteFlags): Promise<void>;
  /**
   * Optional, together with writeOwned(): memory for the payload of a WRITE of `length` bytes
   * about to arrive. The server reads the payload into it and hands it to writeOwned() (or
   * drops it, when the request is refused). Lets a device that keeps what is written (a
   * replication queue) take payloads without copying them.
   */
  payloadBuffer?(length: number): Buffer;
  /** write(), with `data` from payloadBuffer(): it is the device's now, never touched again. */
  writeOwned?(offset: number, data: Buffer, flags: WriteFlags): Promise<void>;
  /**
   * Optional gather write: `parts` are consecutive pieces of one write starting at `offset`.
   * Without it the server joins the pieces (one copy) and calls write().
   */
  writev?(offset: number, parts: Buffer[], flags: WriteFlags): Promise<void>;
  flush(): Promise<void>;
  trim(offset: number, length: number, flags: WriteFlags): Promise<void>;
  zero(offset: number, length: number, flags: ZeroFlags): Promise<void>;
  /**
   * Runs covering at least the first byte of [offset, offset + length), in order and
   * contiguous from `offset`; they may stop early or run past the range (not past the end).
   */
  extents(offset: number, length: number): Promise<DeviceExtent[]>;
  /** Advisory prefetch (NBD_CMD_CACHE). */
  cache?(offset: number, length: number): Promise<void>;
  close(): Promise<void>;
}

/** Minimal structured logger (compatible with the engine's Logger). */
export interface NbdLogger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
}

export const quietLogger: NbdLogger = {
  debug() {},
  info() {},
  warn() {},
  error() {},
};
