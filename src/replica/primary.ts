/**
 * The replication primary on local disk: a regular file or a block device whose first
 * PRIMARY_DATA_OFFSET bytes hold the metadata slots (codec/primary.ts) and whose exported
 * device follows. Reads and writes go through one file handle; `sync()` is fdatasync.
 */
import { constants, write, writeSync, type Stats } from 'node:fs';
import { open, readFile, stat, type FileHandle } from 'node:fs/promises';
import { HyperError, toHyperError } from '../errors.js';
import {
  PRIMARY_DATA_OFFSET,
  PRIMARY_SLOT_BYTES,
  encodePrimaryHeader,
  pickPrimaryHeader,
  type PrimaryHeader,
} from '../format/codec/primary.js';
import { Preader } from '../format/store/pread.js';

/**
 * Writes up to this size go to the page cache in the event loop (pwrite without a thread
 * hop): a buffered 4 KiB write takes ~4 µs, handing it to libuv's thread pool and back ~30 µs
 * of this thread's time on a busy machine (fio 4k randwrite QD16 on tmpfs: 25k IOPS through
 * the pool, 68k in the loop). Reads go in the loop only while the page cache serves them
 * (see Preader): a read may miss the cache and wait for the device. Durability is fdatasync
 * at FLUSH/FUA either way.
 */
const SYNC_WRITE_MAX = 64 * 1024;

/** Bytes of a file, or of a block device (from sysfs: Node cannot ask the kernel directly). */
async function capacity(path: string, st: Stats): Promise<number> {
  if (!st.isBlockDevice()) return st.size;
  const major = Math.floor(st.rdev / 256) & 0xfff;
  const minor = (st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00);
  try {
    const sectors = Number(
      (await readFile(`/sys/dev/block/${major}:${minor}/size`, 'utf8')).trim(),
    );
    return sectors * 512;
  } catch (e) {
    throw new HyperError('unavailable', 'STORE_UNAVAILABLE', `Cannot tell the size of ${path}`, {
      cause: e,
      suggestion: 'Check that /sys is mounted, or use a regular file as the primary.',
    });
  }
}

export class PrimaryFile {
  private constructor(
    readonly path: string,
    private readonly fh: FileHandle,
    /** Bytes of the whole file or device, metadata included. */
    readonly capacity: number,
    readonly isBlockDevice: boolean,
  ) {}

  /** Reads: in the loop while the page cache serves them, else on the thread pool. */
  private readonly preader = new Preader();

  /**
   * Open `path` for reading and writing. With `createSize`, a missing file is created as a
   * sparse regular file of that size; an existing file or device is never resized (one too
   * small is the caller's to refuse).
   */
  static async open(
    path: string,
    options: { createSize?: number; readOnly?: boolean } = {},
  ): Promise<PrimaryFile> {
    let st = await stat(path).catch((e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT' && options.createSize !== undefined) return undefined;
      throw toHyperError(e);
    });
    if (st !== undefined && !st.isFile() && !st.isBlockDevice()) {
      throw new HyperError('invalid', 'INVALID_ARGUMENT', `${path} is not a file or block device`, {
        suggestion: 'Pass a regular file or a block device as --file.',
      });
    }
    // A block device written to is opened exclusively (O_EXCL on a device: Linux refuses it
    // while the device is mounted, part of a RAID, LVM or device-mapper volume, or opened so
    // by another program), as mkfs and DRBD do: a primary is nobody else's to write.
    const flags = options.readOnly
      ? constants.O_RDONLY
      : constants.O_RDWR |
        (st === undefined ? constants.O_CREAT | constants.O_EXCL : 0) |
        (st?.isBlockDevice() ? constants.O_EXCL : 0);
    const created = st === undefined;
    const fh = await open(path, flags, 0o600).catch((e: unknown) => {
      if ((e as NodeJS.ErrnoException).code === 'EBUSY') throw deviceBusy(path, e);
      throw toHyperError(e);
    });
    try {
      if (created && options.createSize !== undefined) await fh.truncate(options.createSize);
      st = await fh.stat();
      return new PrimaryFile(path, fh, await capacity(path, st), st.isBlockDevice());
    } catch (e) {
      await fh.close();
      throw toHyperError(e);
    }
  }

  /** Bytes available to the exported device. */
  get dataCapacity(): number {
    return Math.max(0, this.capacity - PRIMARY_DATA_OFFSET);
  }

  async readHeader(): Promise<{ header?: PrimaryHeader; damaged: string[] }> {
    if (this.capacity < PRIMARY_DATA_OFFSET) return { damaged: [] };
    const buf = Buffer.alloc(PRIMARY_DATA_OFFSET);
    await this.readFully(buf, 0);
    return pickPrimaryHeader(
      buf.subarray(0, PRIMARY_SLOT_BYTES),
      buf.subarray(PRIMARY_SLOT_BYTES, PRIMARY_DATA_OFFSET),
    );
  }

  /**
   * Write `header` into the slot its seq names (seq % 2) and make it durable. The caller
   * advances seq for every write so that the previous header stays whole in the other slot.
   */
  async writeHeader(header: PrimaryHeader): Promise<void> {
    const slot = encodePrimaryHeader(header);
    await this.writeFully(slot, (header.seq % 2) * PRIMARY_SLOT_BYTES);
    await this.sync();
  }

  /** Erase both metadata slots (the data is left alone). */
  async wipeHeader(): Promise<void> {
    await this.writeFully(Buffer.alloc(PRIMARY_DATA_OFFSET), 0);
    await this.sync();
  }

  /** `length` bytes at `position` of the file or device itself (metadata included). */
  async readRaw(position: number, length: number): Promise<Buffer> {
    const buf = Buffer.alloc(Math.max(0, Math.min(length, this.capacity - position)));
    await this.readFully(buf, position);
    return buf;
  }

  /** Read `length` bytes of the exported device at `offset`. */
  async read(offset: number, length: number): Promise<Buffer> {
    const buf = Buffer.allocUnsafe(length);
    await this.readFully(buf, PRIMARY_DATA_OFFSET + offset);
    return buf;
  }

  /** Fill `buf` with the exported device's bytes from `offset`. */
  async readInto(buf: Buffer, offset: number): Promise<Buffer> {
    await this.readFully(buf, PRIMARY_DATA_OFFSET + offset);
    return buf;
  }

  async write(offset: number, data: Buffer): Promise<void> {
    if (data.length <= SYNC_WRITE_MAX) {
      const at = PRIMARY_DATA_OFFSET + offset;
      try {
        for (let done = 0; done < data.length;)
          done += writeSync(this.fh.fd, data, done, data.length - done, at + done);
      } catch (e) {
        throw toHyperError(e);
      }
      return;
    }
    await this.writeFully(data, PRIMARY_DATA_OFFSET + offset);
  }

  async sync(): Promise<void> {
    try {
      await this.fh.datasync();
    } catch (e) {
      throw toHyperError(e);
    }
  }

  async close(): Promise<void> {
    await this.fh.close().catch(() => undefined);
  }

  private async readFully(buf: Buffer, position: number): Promise<void> {
    let done = 0;
    while (done < buf.length) {
      let n: number;
      try {
        n = await this.preader.read(this.fh.fd, buf, done, buf.length - done, position + done);
      } catch (e) {
        throw toHyperError(e);
      }
      if (n === 0) {
        // Past the end of a sparse file that was never extended: zeros.
        buf.fill(0, done);
        return;
      }
      done += n;
    }
  }

  private async writeFully(buf: Buffer, position: number): Promise<void> {
    let done = 0;
    while (done < buf.length) done += await this.io(buf, done, position);
  }

  // The callback API rather than FileHandle's promises: for the 4 KiB writes of a busy client
  // it costs a third of the CPU (FileHandle.write: ~46k writes/s on one core, fs.write ~138k).
  private io(buf: Buffer, done: number, position: number): Promise<number> {
    return new Promise<number>((resolve, reject) => {
      const cb = (e: NodeJS.ErrnoException | null, n: number): void => {
        if (e) reject(toHyperError(e));
        else resolve(n);
      };
      write(this.fh.fd, buf, done, buf.length - done, position + done, cb);
    });
  }
}

function deviceBusy(path: string, cause: unknown): HyperError {
  return new HyperError(
    'conflict',
    'PRIMARY_IN_USE',
    `The device ${path} is in use: mounted, part of a RAID, LVM or device-mapper volume, or held by another program (a "hyper replica serve" of it, qemu, …)`,
    {
      cause,
      suggestion: `See what holds it (findmnt ${path}; lsblk ${path}; fuser -v ${path}), stop or unmount that, then run the command again.`,
    },
  );
}
