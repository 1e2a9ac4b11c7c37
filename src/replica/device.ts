/**
 * The replicated primary as an NBD BlockDevice: what `hyper replica serve` exports. Every
 * connection shares one Replicator (one file handle), so a FLUSH on any connection makes the
 * writes completed on all of them durable: multi-conn is safe.
 */
import type {
  BlockDevice,
  BlockSizes,
  DeviceCapabilities,
  DeviceExtent,
  WriteFlags,
  ZeroFlags,
} from '../nbd/device.js';
import type { Replicator } from './replicator.js';

const MIN_BLOCK = 512;
const MAX_REQUEST = 32 * 1024 * 1024;

export class ReplicaDevice implements BlockDevice {
  readonly blockSize: BlockSizes;
  readonly capabilities: DeviceCapabilities = {
    readOnly: false,
    canFlush: true,
    canFua: true,
    canTrim: true,
    canZero: true,
    canFastZero: false,
    canCache: false,
    canMultiConn: true,
    // base:allocation is granted in the handshake before the device is known: answer it (all
    // data, see extents) so that clients using block status (nbdcopy) can read.
    canBlockStatus: true,
  };

  constructor(
    private readonly replicator: Replicator,
    dataBlockSize: number,
  ) {
    this.blockSize = {
      minimum: MIN_BLOCK,
      preferred: Math.max(MIN_BLOCK, Math.min(dataBlockSize, 1024 * 1024)),
      maximum: MAX_REQUEST,
    };
  }

  get size(): number {
    return this.replicator.size;
  }

  read(offset: number, length: number): Promise<Buffer> {
    return this.replicator.read(offset, length);
  }

  write(offset: number, data: Buffer, flags: WriteFlags): Promise<void> {
    return this.replicator.write(offset, data, flags.fua);
  }

  /** Payloads go straight into the replication stream's memory (no copy for the queue). */
  payloadBuffer(length: number): Buffer {
    return this.replicator.payloadBuffer(length);
  }

  writeOwned(offset: number, data: Buffer, flags: WriteFlags): Promise<void> {
    return this.replicator.writeOwned(offset, data, flags.fua);
  }

  writev(offset: number, parts: Buffer[], flags: WriteFlags): Promise<void> {
    return this.replicator.writeParts(offset, parts, flags.fua);
  }

  flush(): Promise<void> {
    return this.replicator.flush();
  }

  trim(offset: number, length: number, flags: WriteFlags): Promise<void> {
    return this.replicator.zero(offset, length, true, flags.fua);
  }

  zero(offset: number, length: number, flags: ZeroFlags): Promise<void> {
    return this.replicator.zero(offset, length, false, flags.fua);
  }

  extents(offset: number, length: number): Promise<DeviceExtent[]> {
    return Promise.resolve([{ offset, length, hole: false, zero: false }]);
  }

  /** The replicator outlives connections; its owner closes it. */
  close(): Promise<void> {
    return Promise.resolve();
  }
}
