/** What a server exports, and how flags and block sizes are derived from a device. */
import type { BlockDevice, BlockSizes } from './device.js';
import {
  TF_CAN_MULTI_CONN,
  TF_HAS_FLAGS,
  TF_READ_ONLY,
  TF_SEND_CACHE,
  TF_SEND_DF,
  TF_SEND_FAST_ZERO,
  TF_SEND_FLUSH,
  TF_SEND_FUA,
  TF_SEND_TRIM,
  TF_SEND_WRITE_ZEROES,
} from './protocol.js';

export interface NbdExport {
  /** Export name as clients ask for it. */
  name: string;
  description?: string;
  /**
   * The device for a new connection. Called on every INFO/GO/EXPORT_NAME; it may return one
   * shared device each time (the server never closes devices: their owner does).
   */
  open(): BlockDevice | Promise<BlockDevice>;
}

/**
 * Export lookup: exact name, or "" for the only export when there is just one. A server given
 * a table (rather than a list) reads it live, so exports added or removed later are seen by
 * the next negotiation; connections already transmitting keep their device.
 */
export class ExportTable {
  private readonly byName = new Map<string, NbdExport>();

  constructor(exports: Iterable<NbdExport> = []) {
    for (const e of exports) this.add(e);
  }

  add(e: NbdExport): void {
    if (this.byName.has(e.name)) throw new Error(`duplicate export name ${JSON.stringify(e.name)}`);
    this.byName.set(e.name, e);
  }

  /** Stop offering an export; true if it was there. */
  remove(name: string): boolean {
    return this.byName.delete(name);
  }

  get size(): number {
    return this.byName.size;
  }

  list(): NbdExport[] {
    return [...this.byName.values()];
  }

  lookup(name: string): NbdExport | undefined {
    const e = this.byName.get(name);
    if (e !== undefined) return e;
    if (name === '' && this.byName.size === 1) return this.byName.values().next().value;
    return undefined;
  }
}

/** Transmission flags for a device, computed once per connection at GO/EXPORT_NAME. */
export function transmissionFlags(device: BlockDevice, structured: boolean): number {
  const c = device.capabilities;
  let f = TF_HAS_FLAGS;
  if (c.canFlush) f |= TF_SEND_FLUSH;
  if (c.readOnly) {
    f |= TF_READ_ONLY;
  } else {
    if (c.canFua) f |= TF_SEND_FUA;
    if (c.canTrim) f |= TF_SEND_TRIM;
    if (c.canZero) {
      f |= TF_SEND_WRITE_ZEROES;
      if (c.canFastZero) f |= TF_SEND_FAST_ZERO;
    }
  }
  if (structured) f |= TF_SEND_DF;
  if (c.canMultiConn) f |= TF_CAN_MULTI_CONN;
  if (c.canCache && device.cache !== undefined) f |= TF_SEND_CACHE;
  return f;
}

/** Block sizes advertised for a device under a server-wide request limit. */
export function effectiveBlockSizes(device: BlockDevice, maxRequest: number): BlockSizes {
  const minimum = Math.max(1, device.blockSize.minimum);
  let maximum = Math.min(device.blockSize.maximum, maxRequest);
  maximum -= maximum % minimum;
  const preferred = Math.min(Math.max(device.blockSize.preferred, minimum), maximum);
  return { minimum, preferred, maximum };
}
