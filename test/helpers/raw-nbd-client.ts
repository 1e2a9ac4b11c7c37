/** A hand-rolled NBD client for tests that need to send exact (or wrong) bytes. */
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';

/** A hand-rolled client: sends whatever bytes a test wants and reads exact replies. */
export class RawClient {
  private buf = Buffer.alloc(0);
  private waiters: (() => void)[] = [];
  closed = false;
  constructor(readonly sock: Socket) {
    sock.on('data', (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.wake();
    });
    sock.on('close', () => {
      this.closed = true;
      this.wake();
    });
    sock.on('error', () => undefined);
  }
  static async open(port: number): Promise<RawClient> {
    const sock = connect(port, '127.0.0.1');
    await new Promise<void>((res, rej) => sock.once('connect', res).once('error', rej));
    return new RawClient(sock);
  }
  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }
  async read(n: number, timeoutMs = 5000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.buf.length < n) {
      if (this.closed) throw new Error(`closed after ${this.buf.length}/${n} bytes`);
      if (Date.now() > deadline) throw new Error('timed out');
      await new Promise<void>((res) => {
        this.waiters.push(res);
        setTimeout(res, 50);
      });
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }
  /** Resolves true when the server closes the connection within the timeout. */
  async waitClosed(timeoutMs = 5000): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    return this.closed;
  }
  send(b: Buffer | number[]): void {
    this.sock.write(Buffer.isBuffer(b) ? b : Buffer.from(b));
  }
  async handshake(): Promise<void> {
    const g = await this.read(18);
    assert.equal(g.toString('latin1', 0, 8), 'NBDMAGIC');
    assert.equal(g.toString('latin1', 8, 16), 'IHAVEOPT');
    this.send(u32(3)); // fixed newstyle + no zeroes
  }
  async readOptionReply(): Promise<{ option: number; type: number; data: Buffer }> {
    const h = await this.read(20);
    assert.equal(h.readBigUInt64BE(0), 0x3e889045565a9n);
    const data = await this.read(h.readUInt32BE(16));
    return { option: h.readUInt32BE(8), type: h.readUInt32BE(12), data };
  }
  /** GO on the default export; returns the size from INFO_EXPORT. */
  async go(name = ''): Promise<number> {
    this.send(optionFrame(7, goData(name)));
    let size = -1;
    for (;;) {
      const r = await this.readOptionReply();
      if (r.type === 3 && r.data.readUInt16BE(0) === 0) size = Number(r.data.readBigUInt64BE(2));
      if (r.type === 1) return size;
      if (r.type >= 0x80000000)
        throw new Error(`GO refused: 0x${r.type.toString(16)} ${r.data.toString()}`);
    }
  }
  async simpleReply(): Promise<{ error: number; handle: bigint }> {
    const h = await this.read(16);
    assert.equal(h.readUInt32BE(0), 0x67446698);
    return { error: h.readUInt32BE(4), handle: h.readBigUInt64BE(8) };
  }
  close(): void {
    this.sock.destroy();
  }
}

export function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}
export function optionFrame(code: number, data: Buffer): Buffer {
  const h = Buffer.alloc(16);
  h.write('IHAVEOPT', 0, 'latin1');
  h.writeUInt32BE(code, 8);
  h.writeUInt32BE(data.length, 12);
  return Buffer.concat([h, data]);
}
export function goData(name: string, infos: number[] = []): Buffer {
  const n = Buffer.from(name);
  const b = Buffer.alloc(4 + n.length + 2 + 2 * infos.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  b.writeUInt16BE(infos.length, 4 + n.length);
  infos.forEach((x, i) => b.writeUInt16BE(x, 6 + n.length + 2 * i));
  return b;
}
export function req(
  type: number,
  handle: bigint,
  offset: bigint,
  length: number,
  flags = 0,
  payload?: Buffer,
): Buffer {
  const b = Buffer.alloc(28);
  b.writeUInt32BE(0x25609513, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  b.writeBigUInt64BE(handle, 8);
  b.writeBigUInt64BE(offset, 16);
  b.writeUInt32BE(length, 24);
  return payload === undefined ? b : Buffer.concat([b, payload]);
}

/** Which of `names` an NBD server lets a client GO to (`connect` does the handshake and GO). */
export async function offeredExports(
  names: readonly string[],
  connect: (name: string) => Promise<RawClient>,
): Promise<Set<string>> {
  const offered = new Set<string>();
  for (const name of names) {
    const c = await connect(name).catch(() => undefined);
    if (c === undefined) continue;
    c.close();
    offered.add(name);
  }
  return offered;
}
