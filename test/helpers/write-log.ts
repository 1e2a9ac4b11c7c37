/**
 * Writes sent over NBD, each to a fresh 4 KiB block of its volume and followed by a FLUSH,
 * and what they must leave behind: a write whose FLUSH was acknowledged is in its volume; one
 * cut short (an error, a dropped connection, a killed server) is there whole or not at all.
 */
import type { RawClient } from './raw-nbd-client.js';
import { req } from './raw-nbd-client.js';

export interface Written {
  volume: string;
  offset: number;
  data: Buffer;
}

export class WriteLog {
  readonly acked: Written[] = [];
  readonly unsure: Written[] = [];
  private readonly next = new Map<string, number>();

  /**
   * `seed` marks every block written (so that a block from another run never matches);
   * `contents(volume)` is how many distinct blocks go to that volume in turn (few: blocks
   * repeat, for deduplicating volumes).
   */
  constructor(
    private readonly seed: number,
    private readonly volumeSize: number,
    readonly block = 4096,
    private readonly contents: (volume: string) => number = () => 250,
  ) {}

  /**
   * Write the next block of `volume` through a connection from `connect` (to an export of
   * `volume` named `name`), then FLUSH. Resolves with what happened; rejects when the
   * connection fails (the write stays unsure).
   */
  async writeAndFlush(
    connect: () => Promise<RawClient>,
    volume: string,
    name: string,
  ): Promise<string> {
    const n = this.next.get(volume) ?? 0;
    this.next.set(volume, n + 1);
    const w: Written = {
      volume,
      offset: (n % (this.volumeSize / this.block)) * this.block,
      data: Buffer.alloc(this.block, (n % this.contents(volume)) + 1),
    };
    w.data.writeUInt32BE(this.seed, 0);
    this.unsure.push(w);
    const c = await connect();
    try {
      c.send(req(1, 1n, BigInt(w.offset), this.block, 0, w.data));
      const wr = await c.simpleReply();
      c.send(req(3, 2n, 0n, 0));
      const fl = await c.simpleReply();
      if (wr.error === 0 && fl.error === 0) {
        this.unsure.splice(this.unsure.indexOf(w), 1);
        this.acked.push(w);
        return `write ${name} @${w.offset}: flushed`;
      }
      return `write ${name} @${w.offset}: errors ${wr.error}/${fl.error}`;
    } finally {
      c.close();
    }
  }

  /** The first way `read` (the content of `volume`) disagrees with the writes, if any. */
  async mismatch(
    volume: string,
    read: (offset: number, length: number) => Promise<Buffer>,
  ): Promise<string | undefined> {
    const acked = this.acked.filter((x) => x.volume === volume);
    for (const w of acked) {
      if (!(await read(w.offset, this.block)).equals(w.data))
        return `${volume} @${w.offset}: a flushed write is not there`;
    }
    for (const w of this.unsure.filter((x) => x.volume === volume)) {
      if (acked.some((x) => x.offset === w.offset)) continue;
      const got = await read(w.offset, this.block);
      if (!got.equals(w.data) && !got.equals(Buffer.alloc(this.block)))
        return `${volume} @${w.offset}: neither the write nor zeroes`;
    }
    return undefined;
  }
}
