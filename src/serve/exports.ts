/**
 * What a server exports: export name → volume URL and its device, opened at most once and
 * shared by every connection. The table is live: the NBD server reads it at each negotiation,
 * so exports can be added and removed while it runs.
 */
import { HyperError, toHyperError } from '../errors.js';
import { ExportTable as NbdExportTable, type NbdExport } from '../nbd/exports.js';
import type { ServeLogger } from './logger.js';
import type { VolumeDevice } from './volume-device.js';

/** How an export is described to people and in `--json` results. */
export interface ExportDescription {
  name: string;
  url: string;
  readOnly: boolean;
}

/**
 * One export of a volume. Opening happens on the first `open()` (a connection asking for the
 * export) or up front with `VolumeExport.opened`; a failed open is forgotten, so the next
 * connection tries again (e.g. once another writer has released the lease).
 */
export class VolumeExport implements NbdExport {
  private device: VolumeDevice | undefined;
  private pending: Promise<VolumeDevice> | undefined;
  private closed = false;

  /**
   * `describedReadOnly` is how the export is described (the device, once open, decides what
   * clients may do).
   */
  constructor(
    readonly name: string,
    readonly url: string,
    private readonly opener: () => Promise<VolumeDevice>,
    private readonly describedReadOnly: boolean,
  ) {}

  /** An export whose device is already open (its lease taken, or refused, by the caller). */
  static opened(name: string, url: string, device: VolumeDevice): VolumeExport {
    const e = new VolumeExport(
      name,
      url,
      () => Promise.resolve(device),
      device.capabilities.readOnly,
    );
    e.device = device;
    return e;
  }

  get description(): string {
    return this.url;
  }

  /** The device, once opened (and until closed). */
  get openedDevice(): VolumeDevice | undefined {
    return this.device;
  }

  describe(): ExportDescription {
    return { name: this.name, url: this.url, readOnly: this.describedReadOnly };
  }

  open(): VolumeDevice | Promise<VolumeDevice> {
    // (Closed first: a device a failed close kept is not handed out again.)
    if (this.closed) {
      return Promise.reject(
        new HyperError(
          'invalid',
          'INVALID_ARGUMENT',
          `The export ${JSON.stringify(this.name)} is closed`,
        ),
      );
    }
    if (this.device !== undefined) return this.device;
    this.pending ??= this.opener().then(
      (d) => {
        this.device = d;
        this.pending = undefined;
        return d;
      },
      (e: unknown) => {
        this.pending = undefined;
        throw e;
      },
    );
    return this.pending;
  }

  /**
   * Flush and close the device if it was opened (waiting for an open in progress), releasing
   * the volume's lease. Later `open()` calls fail. True if a device was opened.
   *
   * When the flush fails the device stays open, its lease held and its writes kept
   * (`openedDevice` still names it), and the error is thrown: a later `close()` tries again,
   * `discard()` or `abandon()` gives up on those writes.
   */
  async close(): Promise<boolean> {
    this.closed = true;
    const device = this.device ?? (await this.pending?.catch(() => undefined));
    if (device === undefined) return false;
    this.device = device;
    await device.flush();
    this.device = undefined;
    await device.close();
    return true;
  }

  /**
   * Close the device even if its writes cannot be flushed: the volume tries once more, then
   * stops and gives its lease back (unless a segment it sent may still land: then the lease
   * lapses). Throws the flush's failure after closing. True if a device was open.
   */
  discard(): Promise<boolean> {
    return this.end((d) => d.close());
  }

  /**
   * Stop the device without flushing (VolumeDevice.abandon): for a server that stops after
   * a close failed. True if a device was open.
   */
  abandon(): Promise<boolean> {
    return this.end((d) => d.abandon());
  }

  /** Close for good, whatever becomes of the device's writes (`how` ends the device). */
  private async end(how: (d: VolumeDevice) => Promise<void>): Promise<boolean> {
    this.closed = true;
    const device = this.device ?? (await this.pending?.catch(() => undefined));
    this.device = undefined;
    if (device === undefined) return false;
    await how(device);
    return true;
  }
}

export interface CloseFailure {
  name: string;
  error: HyperError;
}

/** Export name → VolumeExport, with the live view the NBD server serves from. */
export class ExportTable {
  private readonly byName = new Map<string, VolumeExport>();
  /** Pass this to the NBD server: it follows every add and remove. */
  readonly nbd = new NbdExportTable();

  get size(): number {
    return this.byName.size;
  }

  get(name: string): VolumeExport | undefined {
    return this.byName.get(name);
  }

  list(): VolumeExport[] {
    return [...this.byName.values()];
  }

  add(e: VolumeExport): void {
    this.nbd.add(e); // throws on a duplicate name before anything changes
    this.byName.set(e.name, e);
  }

  /**
   * Stop offering an export to new connections; the caller closes it (after the connections
   * using it are gone).
   */
  remove(name: string): VolumeExport | undefined {
    const e = this.byName.get(name);
    if (e === undefined) return undefined;
    this.byName.delete(name);
    this.nbd.remove(name);
    return e;
  }

  /**
   * Close every export that was opened, each even if another fails (one whose flush fails is
   * abandoned: its unstored writes lost); logs each outcome and returns the failures.
   */
  async closeAll(logger: ServeLogger): Promise<CloseFailure[]> {
    const failures: CloseFailure[] = [];
    for (const e of this.byName.values()) {
      try {
        if (await e.close()) logger.info('closed export', { export: e.name });
      } catch (err) {
        const error = toHyperError(err);
        logger.error('could not flush and close an export', {
          export: e.name,
          error: error.message,
        });
        failures.push({ name: e.name, error });
        // Stopped all the same, as the process ending would: its lease is given back.
        await e.abandon().catch(() => undefined);
      }
    }
    return failures;
  }
}
