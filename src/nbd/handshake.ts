/**
 * The handshake (fixed newstyle): the server's greeting, the client's flags, then option
 * haggling. Pure request → replies logic: the session sends the greeting, hands over the
 * client flags, then feeds one complete option at a time and sends what comes back; the
 * outcome tells it whether to go on negotiating, enter transmission with a device, or close.
 */
import { OptionReader, clientFlagsOk, encodeOptionReply } from './codec.js';
import type { BlockDevice, NbdLogger } from './device.js';
import { describeError } from './errno.js';
import {
  effectiveBlockSizes,
  transmissionFlags,
  type ExportTable,
  type NbdExport,
} from './exports.js';
import {
  CLIENT_FLAG_NO_ZEROES,
  FLAG_FIXED_NEWSTYLE,
  FLAG_NO_ZEROES,
  IHAVEOPT,
  INFO_BLOCK_SIZE,
  INFO_DESCRIPTION,
  INFO_EXPORT,
  INFO_NAME,
  KNOWN_CLIENT_FLAGS,
  MAX_STRING_LENGTH,
  META_BASE_ALLOCATION,
  NBDMAGIC,
  OPT_ABORT,
  OPT_EXPORT_NAME,
  OPT_GO,
  OPT_INFO,
  OPT_LIST,
  OPT_LIST_META_CONTEXT,
  OPT_SET_META_CONTEXT,
  OPT_STARTTLS,
  OPT_STRUCTURED_REPLY,
  REP_ACK,
  REP_ERR_INVALID,
  REP_ERR_POLICY,
  REP_ERR_TLS_REQD,
  REP_ERR_TOO_BIG,
  REP_ERR_UNKNOWN,
  REP_ERR_UNSUP,
  REP_INFO,
  REP_META_CONTEXT,
  REP_SERVER,
  optionName,
} from './protocol.js';

/** Context id this server gives base:allocation. */
export const BASE_ALLOCATION_ID = 1;

export interface Selected {
  export: NbdExport;
  device: BlockDevice;
  structured: boolean;
  /** base:allocation was selected for this export. */
  allocation: boolean;
  flags: number;
}

export type Outcome =
  | { kind: 'continue'; replies: Buffer[] }
  | { kind: 'go'; replies: Buffer[]; selected: Selected }
  | { kind: 'close'; replies: Buffer[]; reason: string }
  /** Send the replies in clear, then run a TLS handshake on the connection. */
  | { kind: 'starttls'; replies: Buffer[] };

export interface NegotiationOptions {
  exports: ExportTable;
  maxRequest: number;
  logger: NbdLogger;
  /** STARTTLS is offered when set; with `require`, nothing but STARTTLS/ABORT before it. */
  tls?: { require: boolean };
}

const utf8 = (s: string): Buffer => Buffer.from(s, 'utf8');

export class Negotiation {
  private structured = false;
  /** Export name base:allocation was selected for, if any. */
  private allocationFor: string | undefined;
  /** The client asked for NO_ZEROES (no padding after EXPORT_NAME's reply). */
  private noZeroes = false;
  /** The connection runs over TLS (after STARTTLS). */
  tlsActive = false;

  constructor(private readonly o: NegotiationOptions) {}

  /** The first bytes the server sends: magics and handshake flags. */
  greeting(): Buffer {
    const b = Buffer.allocUnsafe(18);
    b.writeBigUInt64BE(NBDMAGIC, 0);
    b.writeBigUInt64BE(IHAVEOPT, 8);
    b.writeUInt16BE(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES, 16);
    return b;
  }

  /**
   * The client's 32-bit flags. Undefined when accepted; otherwise why the connection must be
   * closed (the fixed newstyle protocol has no way to refuse them).
   */
  clientFlags(flags: number): string | undefined {
    if (!clientFlagsOk(flags) || (flags & ~KNOWN_CLIENT_FLAGS) !== 0)
      return `unsupported client flags 0x${flags.toString(16)}`;
    this.noZeroes = (flags & CLIENT_FLAG_NO_ZEROES) !== 0;
    return undefined;
  }

  async handle(option: number, data: Buffer): Promise<Outcome> {
    const err = (type: number, msg: string): Outcome => {
      this.o.logger.debug('nbd option refused', {
        option: optionName(option),
        reply: type >>> 0,
        msg,
      });
      return { kind: 'continue', replies: [encodeOptionReply(option, type, utf8(msg))] };
    };
    const tls = this.o.tls;
    if (
      tls !== undefined &&
      tls.require &&
      !this.tlsActive &&
      option !== OPT_STARTTLS &&
      option !== OPT_ABORT
    ) {
      if (option === OPT_EXPORT_NAME)
        return { kind: 'close', replies: [], reason: 'TLS is required' };
      return err(REP_ERR_TLS_REQD, 'this server requires TLS: use STARTTLS first');
    }
    switch (option) {
      case OPT_STARTTLS:
        if (tls === undefined) return err(REP_ERR_UNSUP, 'TLS is not configured on this server');
        if (this.tlsActive) return err(REP_ERR_INVALID, 'TLS is already active');
        if (data.length !== 0) return err(REP_ERR_INVALID, 'STARTTLS takes no data');
        // Nothing negotiated in clear survives the upgrade.
        this.structured = false;
        this.allocationFor = undefined;
        return { kind: 'starttls', replies: [encodeOptionReply(option, REP_ACK)] };
      case OPT_EXPORT_NAME:
        return this.exportName(data);
      case OPT_ABORT:
        return {
          kind: 'close',
          replies: [encodeOptionReply(option, REP_ACK)],
          reason: 'client sent ABORT',
        };
      case OPT_LIST: {
        if (data.length !== 0) return err(REP_ERR_INVALID, 'LIST takes no data');
        const replies = this.o.exports.list().map((e) => {
          const name = utf8(e.name);
          const desc = utf8(e.description ?? '');
          const b = Buffer.allocUnsafe(4 + name.length + desc.length);
          b.writeUInt32BE(name.length, 0);
          name.copy(b, 4);
          desc.copy(b, 4 + name.length);
          return encodeOptionReply(option, REP_SERVER, b);
        });
        replies.push(encodeOptionReply(option, REP_ACK));
        return { kind: 'continue', replies };
      }
      case OPT_STRUCTURED_REPLY:
        if (data.length !== 0) return err(REP_ERR_INVALID, 'STRUCTURED_REPLY takes no data');
        this.structured = true;
        return { kind: 'continue', replies: [encodeOptionReply(option, REP_ACK)] };
      case OPT_LIST_META_CONTEXT:
      case OPT_SET_META_CONTEXT:
        return this.metaContext(option, data, err);
      case OPT_INFO:
      case OPT_GO:
        return this.infoOrGo(option, data, err);
      default:
        return err(REP_ERR_UNSUP, `option ${optionName(option)} is not supported`);
    }
  }

  /** Reply to an option whose payload was too long to buffer (it has been skipped). */
  tooBig(option: number, length: number): Buffer {
    return encodeOptionReply(
      option,
      REP_ERR_TOO_BIG,
      utf8(`option data of ${length} bytes is too long`),
    );
  }

  private async openDevice(e: NbdExport): Promise<BlockDevice> {
    return await e.open();
  }

  private async exportName(data: Buffer): Promise<Outcome> {
    const name = data.toString('utf8');
    const e = data.length <= MAX_STRING_LENGTH ? this.o.exports.lookup(name) : undefined;
    if (e === undefined)
      return { kind: 'close', replies: [], reason: `unknown export ${JSON.stringify(name)}` };
    let device: BlockDevice;
    try {
      device = await this.openDevice(e);
    } catch (error) {
      this.o.logger.warn('nbd export could not be opened', {
        export: e.name,
        ...describeError(error),
      });
      return { kind: 'close', replies: [], reason: 'export could not be opened' };
    }
    const flags = transmissionFlags(device, this.structured);
    const b = Buffer.alloc(this.noZeroes ? 10 : 134);
    b.writeBigUInt64BE(BigInt(device.size), 0);
    b.writeUInt16BE(flags, 8);
    return {
      kind: 'go',
      replies: [b],
      selected: {
        export: e,
        device,
        structured: this.structured,
        allocation: this.allocationFor === e.name,
        flags,
      },
    };
  }

  private async infoOrGo(
    option: number,
    data: Buffer,
    err: (t: number, m: string) => Outcome,
  ): Promise<Outcome> {
    const r = new OptionReader(data);
    const name = r.str32(MAX_STRING_LENGTH);
    const n = r.u16();
    if (name === undefined || n === undefined || r.remaining !== n * 2) {
      return err(REP_ERR_INVALID, `malformed ${optionName(option)} request`);
    }
    const wanted = new Set<number>();
    for (let i = 0; i < n; i++) wanted.add(r.u16()!);
    const e = this.o.exports.lookup(name);
    if (e === undefined) return err(REP_ERR_UNKNOWN, `no export named ${JSON.stringify(name)}`);
    let device: BlockDevice;
    try {
      device = await this.openDevice(e);
    } catch (error) {
      const d = describeError(error);
      this.o.logger.warn('nbd export could not be opened', { export: e.name, ...d });
      return err(
        REP_ERR_POLICY,
        `export ${JSON.stringify(e.name)} could not be opened: ${String(d.error)}`,
      );
    }
    const flags = transmissionFlags(device, this.structured);
    const replies: Buffer[] = [];
    const info = (type: number, body: Buffer): void => {
      const b = Buffer.allocUnsafe(2 + body.length);
      b.writeUInt16BE(type, 0);
      body.copy(b, 2);
      replies.push(encodeOptionReply(option, REP_INFO, b));
    };
    const ex = Buffer.allocUnsafe(10);
    ex.writeBigUInt64BE(BigInt(device.size), 0);
    ex.writeUInt16BE(flags, 8);
    info(INFO_EXPORT, ex);
    if (wanted.has(INFO_NAME) || name !== e.name) info(INFO_NAME, utf8(e.name));
    if (e.description !== undefined && e.description !== '')
      info(INFO_DESCRIPTION, utf8(e.description));
    const bs = effectiveBlockSizes(device, this.o.maxRequest);
    const sizes = Buffer.allocUnsafe(12);
    sizes.writeUInt32BE(bs.minimum, 0);
    sizes.writeUInt32BE(bs.preferred, 4);
    sizes.writeUInt32BE(bs.maximum, 8);
    info(INFO_BLOCK_SIZE, sizes);
    replies.push(encodeOptionReply(option, REP_ACK));
    if (option === OPT_INFO) return { kind: 'continue', replies };
    return {
      kind: 'go',
      replies,
      selected: {
        export: e,
        device,
        structured: this.structured,
        allocation: this.allocationFor === e.name,
        flags,
      },
    };
  }

  private metaContext(
    option: number,
    data: Buffer,
    err: (t: number, m: string) => Outcome,
  ): Outcome {
    const set = option === OPT_SET_META_CONTEXT;
    if (set && !this.structured)
      return err(REP_ERR_INVALID, 'SET_META_CONTEXT needs structured replies first');
    const r = new OptionReader(data);
    const name = r.str32(MAX_STRING_LENGTH);
    const n = r.u32();
    if (name === undefined || n === undefined)
      return err(REP_ERR_INVALID, `malformed ${optionName(option)} request`);
    const queries: string[] = [];
    for (let i = 0; i < n; i++) {
      const q = r.str32(MAX_STRING_LENGTH);
      if (q === undefined) return err(REP_ERR_INVALID, `malformed ${optionName(option)} request`);
      queries.push(q);
    }
    if (r.remaining !== 0) return err(REP_ERR_INVALID, `malformed ${optionName(option)} request`);
    const e = this.o.exports.lookup(name);
    if (e === undefined) return err(REP_ERR_UNKNOWN, `no export named ${JSON.stringify(name)}`);
    const matches = set
      ? queries.includes(META_BASE_ALLOCATION)
      : queries.length === 0 || queries.some((q) => q === META_BASE_ALLOCATION || q === 'base:');
    if (set) this.allocationFor = matches ? e.name : undefined;
    const replies: Buffer[] = [];
    if (matches) {
      const ctx = utf8(META_BASE_ALLOCATION);
      const b = Buffer.allocUnsafe(4 + ctx.length);
      b.writeUInt32BE(set ? BASE_ALLOCATION_ID : 0, 0);
      ctx.copy(b, 4);
      replies.push(encodeOptionReply(option, REP_META_CONTEXT, b));
    }
    replies.push(encodeOptionReply(option, REP_ACK));
    return { kind: 'continue', replies };
  }
}
