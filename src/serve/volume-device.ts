/**
 * The volume engine as an NBD BlockDevice: the adapter through which src/serve hands volumes
 * to src/nbd (which knows only its BlockDevice interface). One open Volume is shared by every connection to its export, so a FLUSH on any connection
 * covers writes completed on all of them (multi-conn is safe).
 */
import type {
  BlockDevice,
  BlockSizes,
  DeviceCapabilities,
  DeviceExtent,
  WriteFlags,
  ZeroFlags,
} from '../nbd/device.js';
import type { Volume } from '../format/volume/volume.js';

/** Sector alignment asked of clients; the engine read-modify-writes partial data blocks. */
const MIN_BLOCK = 512;
const MAX_REQUEST = 32 * 1024 * 1024;

export class VolumeDevice implements BlockDevice {
  readonly blockSize: BlockSizes;
  readonly capabilities: DeviceCapabilities;

  constructor(
    readonly volume: Volume,
    private readonly options: {
      readOnly?: boolean;
      /** Runs before the volume closes (what works on the open volume stops first). */
      beforeClose?: () => Promise<void>;
      onClose?: () => void;
    } = {},
  ) {
    const info = volume.info;
    const readOnly = options.readOnly === true || info.readOnly;
    this.blockSize = {
      minimum: MIN_BLOCK,
      preferred: Math.max(MIN_BLOCK, Math.min(info.dataBlockSize, 64 * 1024 * 1024)),
      maximum: MAX_REQUEST,
    };
    this.capabilities = {
      readOnly,
      canFlush: true,
      canFua: !readOnly,
      canTrim: !readOnly,
      canZero: !readOnly,
      canFastZero: !readOnly, // zeroing stores holes: never slower than a trim
      canCache: false,
      canMultiConn: true,
      canBlockStatus: true,
    };
  }

  get size(): number {
    return this.volume.info.size;
  }

  read(offset: number, length: number): Promise<Buffer> {
    return this.volume.read(offset, length);
  }

  release(buf: Buffer): void {
    this.volume.release(buf);
  }

  readv(offset: number, length: number): Promise<Buffer[]> {
    return this.volume.readv(offset, length);
  }

  write(offset: number, data: Buffer, flags: WriteFlags): Promise<void> {
    return this.volume.write(offset, data, { fua: flags.fua });
  }

  /**
   * Memory for a WRITE payload: the volume's, which keeps a large block-aligned write's
   * payload as its blocks instead of copying it (writeOwned).
   */
  payloadBuffer(length: number): Buffer {
    return this.volume.payloadBuffer(length);
  }

  writeOwned(offset: number, data: Buffer, flags: WriteFlags): Promise<void> {
    return this.volume.writeOwned(offset, data, { fua: flags.fua });
  }

  /** A payload that arrived in pieces is copied into the write buffer once, not joined first. */
  writev(offset: number, parts: Buffer[], flags: WriteFlags): Promise<void> {
    return this.volume.write(offset, parts, { fua: flags.fua });
  }

  async flush(): Promise<void> {
    if (this.capabilities.readOnly) return;
    await this.volume.sync();
  }

  trim(offset: number, length: number, flags: WriteFlags): Promise<void> {
    return this.volume.trim(offset, length, { fua: flags.fua });
  }

  zero(offset: number, length: number, flags: ZeroFlags): Promise<void> {
    return this.volume.writeZeroes(offset, length, { fua: flags.fua, noHole: flags.noHole });
  }

  async extents(offset: number, length: number): Promise<DeviceExtent[]> {
    const ext = await this.volume.extents(offset, length);
    return ext.map((e) => ({ offset: e.offset, length: e.length, hole: e.hole, zero: e.hole }));
  }

  async close(): Promise<void> {
    try {
      await this.options.beforeClose?.();
      await this.volume.close();
    } finally {
      this.options.onClose?.();
    }
  }

  /** Stop without flushing (Volume.abandon): what the last commit holds is what stays. */
  async abandon(): Promise<void> {
    try {
      await this.options.beforeClose?.();
      await this.volume.abandon();
    } finally {
      this.options.onClose?.();
    }
  }
}
