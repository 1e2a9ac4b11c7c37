/**
 * Reading a plain (TCP or unix) connection into memory the session chooses for each read.
 *
 * Read through 'data' events, every socket read lands in a new 64 KiB buffer that the stream
 * machinery wraps and emits, and the garbage of those buffers is most of the cost of taking
 * a sequential write in: receiving 2 GiB over loopback and copying each chunk once (the
 * sender in the same process) took 1.2–1.3 s of CPU per GiB that way, 0.37–0.49 s with
 * `onread` into reused memory. With `onread`, the memory of each read is chosen just before
 * it: a reused scratch buffer while request headers and small payloads arrive (after a large
 * WRITE, only up to the next request header: NbdParser.headerBytes), or the rest of a large
 * WRITE payload itself, so that the kernel copies the payload into place and nothing else
 * does.
 *
 * Node gives `onread` only to sockets constructed with it, never to the sockets a server
 * accepts. So the server accepts paused (nothing read yet) and adopt() moves the accepted
 * socket's handle into a socket constructed with `onread`. That uses the accepted socket's
 * `_handle`, which is not public API: adopt() checks what it finds and, on anything it does
 * not expect, leaves the socket alone and returns undefined; the session then reads through
 * 'data' events. TLS connections always do (the TLS layer reads the socket itself).
 */
import { Socket } from 'node:net';

/** Where reads go: chosen before each read, told after it. */
export interface ReadTarget {
  /** Memory for the next read (at least 1 byte). */
  next(): Buffer;
  /** `n` bytes (≥ 1) were read into `buf`, the buffer next() last returned. */
  read(n: number, buf: Buffer): void;
}

interface HandleLike {
  useUserBuffer?: unknown;
  reading?: unknown;
}

/**
 * Move an accepted, paused socket's handle into a socket that reads into `target`. Returns
 * the new socket (reading), or undefined when the accepted one is not as expected (it is
 * then untouched, still paused). The accepted socket is left closed, without its handle.
 */
export function adopt(accepted: Socket, target: ReadTarget): Socket | undefined {
  const raw = accepted as unknown as { _handle?: HandleLike | null };
  const handle = raw._handle;
  if (
    handle === null ||
    handle === undefined ||
    typeof handle.useUserBuffer !== 'function' ||
    handle.reading === true ||
    accepted.readableFlowing !== false ||
    accepted.readableLength > 0
  ) {
    return undefined;
  }
  raw._handle = null;
  // Closes nothing (it has no handle now); the server stops counting it as a connection.
  accepted.destroy();
  const socket = new Socket({
    handle,
    allowHalfOpen: accepted.allowHalfOpen,
    onread: {
      buffer: () => target.next(),
      callback: (n: number, buf: Uint8Array): boolean => {
        target.read(n, buf as Buffer);
        return true;
      },
    },
  } as ConstructorParameters<typeof Socket>[0]);
  socket.resume();
  return socket;
}

/** WRITE payloads shorter than this come from Node's shared pool and are not recycled. */
export const RECYCLED_MIN = 4 * 1024;

/**
 * Payload memory for devices that do not keep what they are given: a buffer goes back once
 * the device's write has settled. Kept by exact length (clients repeat a few request sizes),
 * at most `maxBytes` in all; below `min` bytes a buffer comes from Node's shared pool and is
 * not kept.
 */
export class RecycledBuffers {
  private readonly free = new Map<number, Buffer[]>();
  private bytes = 0;

  constructor(
    readonly min: number,
    private readonly maxBytes: number,
  ) {}

  /** Bytes waiting for reuse. */
  get held(): number {
    return this.bytes;
  }

  take(length: number): Buffer {
    if (length < this.min) return Buffer.allocUnsafe(length);
    const b = this.free.get(length)?.pop();
    if (b === undefined) return Buffer.allocUnsafeSlow(length);
    this.bytes -= length;
    return b;
  }

  give(b: Buffer): void {
    if (b.length < this.min || this.bytes + b.length > this.maxBytes) return;
    let list = this.free.get(b.length);
    if (list === undefined) this.free.set(b.length, (list = []));
    list.push(b);
    this.bytes += b.length;
  }
}
