/**
 * Reply batching for one connection. Reply headers are written back to back into a slab, so
 * the replies completed in one turn of the event loop leave as few buffers as possible;
 * payloads are queued by reference (never copied). Everything queued before the loop's check
 * phase goes out in one corked burst (one writev), so replies to all the requests that arrived
 * in one poll phase share a system call.
 */
import type { Socket } from 'node:net';

const SLAB_SIZE = 64 * 1024;

export class Output {
  private slab = Buffer.allocUnsafe(SLAB_SIZE);
  private slabStart = 0;
  private slabPos = 0;
  private chunks: Buffer[] = [];
  /** Called once the socket is done with the chunk at the same index (payloads only). */
  private sentHooks: (((b: Buffer) => void) | undefined)[] = [];
  /** Payload bytes queued and not yet handed to the socket. */
  queuedBytes = 0;
  private scheduled = false;
  private closed = false;
  private urgent = false;
  private readonly flushBound = (): void => {
    if (this.scheduled) this.flush();
  };
  private readonly flushUrgent = (): void => {
    this.urgent = false;
    this.flush();
  };

  constructor(private socket: Socket) {}

  /** Write to another socket from now on (the TLS socket after STARTTLS). */
  setSocket(socket: Socket): void {
    this.socket = socket;
  }

  /** Bytes queued but not yet handed to the socket, plus what the socket still buffers. */
  get pendingBytes(): number {
    return this.socket.writableLength;
  }

  /** Space for a header of `n` bytes (≤ 64 KiB); write it at the returned offset of `buf`, then commit(n). */
  reserve(n: number): Buffer {
    if (this.slabPos + n > this.slab.length) {
      this.cut();
      this.slab = Buffer.allocUnsafe(Math.max(SLAB_SIZE, n));
      this.slabStart = 0;
      this.slabPos = 0;
    }
    return this.slab;
  }

  get offset(): number {
    return this.slabPos;
  }

  commit(n: number): void {
    this.slabPos += n;
    this.schedule();
  }

  /**
   * Queue a payload after the headers committed so far; `sent(buf)` runs once the socket is
   * done with it (written, or the write failed), not when the connection drops it unsent.
   */
  data(buf: Buffer, sent?: (b: Buffer) => void): void {
    if (buf.length === 0) return;
    this.cut();
    if (sent) this.sentHooks[this.chunks.length] = sent;
    this.chunks.push(buf);
    this.queuedBytes += buf.length;
    this.schedule();
  }

  /** Queue a complete, independent buffer (negotiation replies). */
  raw(buf: Buffer): void {
    this.data(buf);
  }

  private cut(): void {
    if (this.slabPos > this.slabStart) {
      this.chunks.push(this.slab.subarray(this.slabStart, this.slabPos));
      this.slabStart = this.slabPos;
    }
  }

  private schedule(): void {
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(this.flushBound);
    }
  }

  /**
   * Send what is queued as soon as the current callback and its microtasks are done, rather
   * than at the end of the event-loop turn: for replies to large requests, where a streaming
   * client waits on each reply and batching gains nothing.
   */
  soon(): void {
    if (!this.urgent) {
      this.urgent = true;
      process.nextTick(this.flushUrgent);
    }
  }

  /** Hand everything queued to the socket now. */
  flush(): void {
    this.scheduled = false;
    this.cut();
    const chunks = this.chunks;
    const hooks = this.sentHooks;
    this.queuedBytes = 0;
    if (chunks.length === 0 || this.closed) {
      this.chunks = [];
      this.sentHooks = [];
      return;
    }
    this.chunks = [];
    this.sentHooks = [];
    const s = this.socket;
    if (s.destroyed) return;
    if (chunks.length === 1) {
      write(s, chunks[0]!, hooks[0]);
      return;
    }
    s.cork();
    for (let i = 0; i < chunks.length; i++) write(s, chunks[i]!, hooks[i]);
    s.uncork();
  }

  /** Drop anything queued from now on (the socket is going away). */
  close(): void {
    this.closed = true;
    this.chunks = [];
    this.sentHooks = [];
  }
}

function write(s: Socket, c: Buffer, sent: ((b: Buffer) => void) | undefined): void {
  if (sent) s.write(c, () => sent(c));
  else s.write(c);
}
