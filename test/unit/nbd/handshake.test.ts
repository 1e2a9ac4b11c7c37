/**
 * The handshake driven with fabricated client bytes: the bytes go through the real push
 * parser into a Negotiation, one option at a time as the session does it, and what the
 * server would send is compared byte for byte with replies built by the small encoder below
 * (written from the spec's tables, sharing nothing with src/nbd).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { NbdParser, ParserMode, type ParserHandler } from '../../../src/nbd/codec.js';
import { quietLogger } from '../../../src/nbd/device.js';
import { ExportTable, type NbdExport } from '../../../src/nbd/exports.js';
import { Negotiation, type Outcome, type Selected } from '../../../src/nbd/handshake.js';
import { MemoryDevice } from '../../../src/nbd/testing/memory-device.js';

// ---- an independent encoder ----

const u16 = (n: number): number[] => [(n >>> 8) & 255, n & 255];
const u32 = (n: number): number[] => [(n >>> 24) & 255, (n >>> 16) & 255, (n >>> 8) & 255, n & 255];
const u64 = (n: number): number[] => [...u32(Math.floor(n / 2 ** 32)), ...u32(n % 2 ** 32)];
const text = (s: string): number[] => [...Buffer.from(s, 'utf8')];
const str32 = (s: string): number[] => [...u32(text(s).length), ...text(s)];

// Client side.
const IHAVEOPT = text('IHAVEOPT');
const option = (code: number, data: number[] = []): number[] => [
  ...IHAVEOPT,
  ...u32(code),
  ...u32(data.length),
  ...data,
];
const infoRequest = (name: string, infos: number[] = []): number[] => [
  ...str32(name),
  ...u16(infos.length),
  ...infos.flatMap(u16),
];
const contextRequest = (name: string, queries: string[]): number[] => [
  ...str32(name),
  ...u32(queries.length),
  ...queries.flatMap(str32),
];

// Server side.
const GREETING = [...text('NBDMAGIC'), ...text('IHAVEOPT'), 0, 3];
const REPLY_MAGIC = [0x00, 0x03, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9];
const reply = (opt: number, type: number, data: number[] = []): number[] => [
  ...REPLY_MAGIC,
  ...u32(opt),
  ...u32(type),
  ...u32(data.length),
  ...data,
];
const errorReply = (opt: number, type: number, message: string): number[] =>
  reply(opt, type, text(message));

// Options.
const EXPORT_NAME = 1;
const ABORT = 2;
const LIST = 3;
const PEEK_EXPORT = 4;
const STARTTLS = 5;
const INFO = 6;
const GO = 7;
const STRUCTURED_REPLY = 8;
const LIST_META_CONTEXT = 9;
const SET_META_CONTEXT = 10;
const EXTENDED_HEADERS = 11;

// Replies.
const ACK = 1;
const SERVER = 2;
const REP_INFO = 3;
const META_CONTEXT = 4;
const ERR_UNSUP = 0x80000001;
const ERR_POLICY = 0x80000002;
const ERR_INVALID = 0x80000003;
const ERR_TLS_REQD = 0x80000005;
const ERR_UNKNOWN = 0x80000006;
const ERR_TOO_BIG = 0x80000009;

// Information types.
const INFO_EXPORT = 0;
const INFO_NAME = 1;
const INFO_DESCRIPTION = 2;
const INFO_BLOCK_SIZE = 3;

const info = (opt: number, type: number, body: number[]): number[] =>
  reply(opt, REP_INFO, [...u16(type), ...body]);
const infoExport = (opt: number, size: number, flags: number): number[] =>
  info(opt, INFO_EXPORT, [...u64(size), ...u16(flags)]);
const infoBlockSize = (opt: number, min: number, pref: number, max: number): number[] =>
  info(opt, INFO_BLOCK_SIZE, [...u32(min), ...u32(pref), ...u32(max)]);

// ---- the exports under test ----

const MiB = 1024 * 1024;
const DISK_SIZE = 3 * MiB;
const RO_SIZE = MiB + 512;
const MAX_REQUEST = 8 * MiB;
// Transmission flags by bit, from the spec: HAS_FLAGS 1, READ_ONLY 2, SEND_FLUSH 4,
// SEND_FUA 8, SEND_TRIM 32, SEND_WRITE_ZEROES 64, SEND_DF 128, CAN_MULTI_CONN 256,
// SEND_CACHE 1024, SEND_FAST_ZERO 2048.
const DISK_FLAGS = 1 | 4 | 8 | 32 | 64 | 256 | 1024 | 2048;
const DISK_FLAGS_STRUCTURED = DISK_FLAGS | 128;
const RO_FLAGS = 1 | 2 | 4 | 256 | 1024;

function exportsFor(which: 'one' | 'three'): ExportTable {
  const disk: NbdExport = {
    name: 'disk',
    description: 'the test disk',
    open: () =>
      new MemoryDevice({
        size: DISK_SIZE,
        blockSize: { minimum: 512, preferred: 4096, maximum: MiB },
      }),
  };
  if (which === 'one') return new ExportTable([disk]);
  return new ExportTable([
    disk,
    { name: 'ro', open: () => new MemoryDevice({ size: RO_SIZE, readOnly: true }) },
    {
      name: 'locked',
      description: 'held elsewhere',
      open: () => Promise.reject(new Error('lease held by another writer')),
    },
  ]);
}

// ---- the driver: what Session does with the parser and a Negotiation, minus the socket ----

interface Run {
  /** Everything the server sent, greeting included. */
  sent: Buffer;
  /** How the handshake ended: 'go', 'close', 'starttls', 'protocol-error', or 'open'. */
  end: string;
  reason?: string;
  selected?: Selected;
  negotiation: Negotiation;
}

async function drive(
  clientBytes: number[],
  o: {
    cuts?: number[];
    exports?: ExportTable;
    tls?: { require: boolean };
    tlsActive?: boolean;
  } = {},
): Promise<Run> {
  const negotiation = new Negotiation({
    exports: o.exports ?? exportsFor('three'),
    maxRequest: MAX_REQUEST,
    logger: quietLogger,
    ...(o.tls === undefined ? {} : { tls: o.tls }),
  });
  if (o.tlsActive === true) negotiation.tlsActive = true;
  const sent: Buffer[] = [negotiation.greeting()];
  const run: Run = { sent: Buffer.alloc(0), end: 'open', negotiation };
  let pending: { code: number; data: Buffer } | undefined;
  const handler: ParserHandler = {
    payloadBuffer: (length) => Buffer.alloc(length),
    onClientFlags(flags) {
      const refused = negotiation.clientFlags(flags);
      if (refused === undefined) {
        parser.mode = ParserMode.Options;
      } else {
        run.end = 'protocol-error';
        run.reason = refused;
        parser.stop();
      }
    },
    onOption(code, data) {
      // One option at a time: stop parsing until it is answered.
      pending = { code, data: Buffer.from(data) };
      parser.mode = ParserMode.Stopped;
    },
    onOptionTooBig(code, length) {
      sent.push(negotiation.tooBig(code, length));
    },
    onRequest() {
      throw new Error('a request reached the parser during negotiation');
    },
    onProtocolError(message) {
      run.end = 'protocol-error';
      run.reason = message;
    },
  };
  const parser = new NbdParser(handler, MAX_REQUEST);
  const all = Buffer.from(clientBytes);
  const cuts = [...(o.cuts ?? []), all.length];
  let prev = 0;
  for (const cut of cuts) {
    let chunk = all.subarray(prev, cut);
    prev = cut;
    while (chunk.length > 0 && run.end === 'open') {
      const used = parser.push(chunk);
      chunk = chunk.subarray(used);
      if (pending === undefined) break;
      const { code, data } = pending;
      pending = undefined;
      const outcome: Outcome = await negotiation.handle(code, data);
      sent.push(...outcome.replies);
      if (outcome.kind === 'continue') {
        parser.mode = ParserMode.Options;
        continue;
      }
      run.end = outcome.kind;
      if (outcome.kind === 'close') run.reason = outcome.reason;
      if (outcome.kind === 'go') run.selected = outcome.selected;
    }
  }
  run.sent = Buffer.concat(sent);
  return run;
}

/** Assert the server sent the greeting and then exactly `replies`. */
function assertSent(run: Run, replies: number[][]): void {
  assert.deepEqual([...run.sent], [...GREETING, ...replies.flat()]);
}

const FLAGS = u32(1 | 2); // FIXED_NEWSTYLE | NO_ZEROES

// ---- the tests ----

describe('handshake: greeting and client flags', () => {
  it('greets with both magics and FIXED_NEWSTYLE | NO_ZEROES', async () => {
    const r = await drive([]);
    assert.deepEqual([...r.sent], GREETING);
    assert.equal(r.end, 'open');
  });

  it('accepts FIXED_NEWSTYLE with or without NO_ZEROES', async () => {
    assert.equal((await drive(u32(1))).end, 'open');
    assert.equal((await drive(u32(3))).end, 'open');
  });

  it('closes on flags without FIXED_NEWSTYLE or with unknown bits', async () => {
    for (const flags of [0, 2, 1 | 4, 3 | 0x80000000]) {
      const r = await drive([...u32(flags), ...option(LIST)]);
      assert.equal(r.end, 'protocol-error', `flags ${flags}`);
      assert.match(r.reason!, /unsupported client flags/);
      assertSent(r, []); // nothing after the greeting, and the option is never read
    }
  });
});

describe('handshake: EXPORT_NAME', () => {
  it('answers with size and flags, then 124 zero bytes unless NO_ZEROES', async () => {
    const padded = await drive([...u32(1), ...option(EXPORT_NAME, text('disk'))]);
    assert.equal(padded.end, 'go');
    assertSent(padded, [
      [...u64(DISK_SIZE), ...u16(DISK_FLAGS), ...new Array<number>(124).fill(0)],
    ]);
    const bare = await drive([...FLAGS, ...option(EXPORT_NAME, text('disk'))]);
    assertSent(bare, [[...u64(DISK_SIZE), ...u16(DISK_FLAGS)]]);
    assert.equal(bare.selected!.export.name, 'disk');
    assert.equal(bare.selected!.structured, false);
    assert.equal(bare.selected!.allocation, false);
    assert.equal(bare.selected!.flags, DISK_FLAGS);
  });

  it('advertises DF after STRUCTURED_REPLY', async () => {
    const r = await drive([
      ...FLAGS,
      ...option(STRUCTURED_REPLY),
      ...option(EXPORT_NAME, text('ro')),
    ]);
    assertSent(r, [reply(STRUCTURED_REPLY, ACK), [...u64(RO_SIZE), ...u16(RO_FLAGS | 128)]]);
    assert.equal(r.selected!.structured, true);
  });

  it('maps "" to the only export', async () => {
    const r = await drive([...FLAGS, ...option(EXPORT_NAME)], { exports: exportsFor('one') });
    assert.equal(r.end, 'go');
    assert.equal(r.selected!.export.name, 'disk');
  });

  it('closes without a reply for an unknown, ambiguous, overlong or unopenable export', async () => {
    for (const [name, reason] of [
      ['nope', /unknown export "nope"/],
      ['', /unknown export ""/],
      ['x'.repeat(4097), /unknown export/],
      ['locked', /could not be opened/],
    ] as const) {
      const r = await drive([...FLAGS, ...option(EXPORT_NAME, text(name))]);
      assert.equal(r.end, 'close');
      assert.match(r.reason!, reason);
      assertSent(r, []);
    }
  });
});

describe('handshake: INFO and GO', () => {
  it('INFO sends EXPORT, DESCRIPTION, BLOCK_SIZE and ACK, and goes on negotiating', async () => {
    const r = await drive([...FLAGS, ...option(INFO, infoRequest('disk'))]);
    assert.equal(r.end, 'open');
    assertSent(r, [
      infoExport(INFO, DISK_SIZE, DISK_FLAGS),
      info(INFO, INFO_DESCRIPTION, text('the test disk')),
      infoBlockSize(INFO, 512, 4096, MiB),
      reply(INFO, ACK),
    ]);
  });

  it('adds NAME when asked for it, in a fixed order whatever the order asked', async () => {
    const r = await drive([
      ...FLAGS,
      ...option(INFO, infoRequest('disk', [INFO_BLOCK_SIZE, INFO_DESCRIPTION, INFO_NAME, 77])),
    ]);
    assertSent(r, [
      infoExport(INFO, DISK_SIZE, DISK_FLAGS),
      info(INFO, INFO_NAME, text('disk')),
      info(INFO, INFO_DESCRIPTION, text('the test disk')),
      infoBlockSize(INFO, 512, 4096, MiB),
      reply(INFO, ACK),
    ]);
  });

  it('GO on "" names the export it chose, and enters transmission', async () => {
    const r = await drive([...FLAGS, ...option(GO, infoRequest(''))], {
      exports: exportsFor('one'),
    });
    assert.equal(r.end, 'go');
    assertSent(r, [
      infoExport(GO, DISK_SIZE, DISK_FLAGS),
      info(GO, INFO_NAME, text('disk')),
      info(GO, INFO_DESCRIPTION, text('the test disk')),
      infoBlockSize(GO, 512, 4096, MiB),
      reply(GO, ACK),
    ]);
    assert.equal(r.selected!.export.name, 'disk');
    assert.equal(r.selected!.flags, DISK_FLAGS);
  });

  it('clamps the maximum block size to the server limit; no DESCRIPTION without one', async () => {
    const r = await drive([...FLAGS, ...option(GO, infoRequest('ro', [INFO_DESCRIPTION]))]);
    assertSent(r, [
      infoExport(GO, RO_SIZE, RO_FLAGS),
      infoBlockSize(GO, 1, 4096, MAX_REQUEST),
      reply(GO, ACK),
    ]);
  });

  it('answers ERR_UNKNOWN for an unknown export and goes on', async () => {
    const r = await drive([
      ...FLAGS,
      ...option(GO, infoRequest('nope')),
      ...option(INFO, infoRequest('')),
    ]);
    assert.equal(r.end, 'open');
    assertSent(r, [
      errorReply(GO, ERR_UNKNOWN, 'no export named "nope"'),
      errorReply(INFO, ERR_UNKNOWN, 'no export named ""'), // "" is ambiguous among three
    ]);
  });

  it('answers ERR_POLICY with the reason when the export cannot be opened', async () => {
    const r = await drive([...FLAGS, ...option(GO, infoRequest('locked'))]);
    assert.equal(r.end, 'open');
    assertSent(r, [
      errorReply(
        GO,
        ERR_POLICY,
        'export "locked" could not be opened: lease held by another writer',
      ),
    ]);
  });

  it('answers ERR_INVALID to malformed requests', async () => {
    const malformed: number[][] = [
      [], // no name length
      [0, 0, 0], // truncated name length
      [...u32(50), ...text('disk')], // name longer than the data
      str32('disk'), // no count
      [...str32('disk'), 0], // truncated count
      [...str32('disk'), ...u16(2), ...u16(INFO_NAME)], // fewer requests than counted
      [...infoRequest('disk', [INFO_NAME]), 0], // trailing byte
      [...infoRequest('disk'), 9], // trailing byte with no requests
      [...u32(4097), ...new Array<number>(4097).fill(0x61), ...u16(0)], // name over 4096 bytes
    ];
    for (const code of [INFO, GO]) {
      const name = code === INFO ? 'INFO' : 'GO';
      for (const data of malformed) {
        const r = await drive([...FLAGS, ...option(code, data)]);
        assert.equal(r.end, 'open');
        assertSent(r, [errorReply(code, ERR_INVALID, `malformed ${name} request`)]);
      }
    }
  });
});

describe('handshake: LIST, ABORT, STRUCTURED_REPLY', () => {
  it('LIST sends one SERVER reply per export (name, then description) and ACK', async () => {
    const r = await drive([...FLAGS, ...option(LIST)]);
    assertSent(r, [
      reply(LIST, SERVER, [...str32('disk'), ...text('the test disk')]),
      reply(LIST, SERVER, str32('ro')),
      reply(LIST, SERVER, [...str32('locked'), ...text('held elsewhere')]),
      reply(LIST, ACK),
    ]);
  });

  it('LIST with data is ERR_INVALID', async () => {
    const r = await drive([...FLAGS, ...option(LIST, [0])]);
    assertSent(r, [errorReply(LIST, ERR_INVALID, 'LIST takes no data')]);
  });

  it('ABORT is acknowledged and ends the handshake', async () => {
    const r = await drive([...FLAGS, ...option(ABORT), ...option(LIST)]);
    assert.equal(r.end, 'close');
    assertSent(r, [reply(ABORT, ACK)]);
  });

  it('STRUCTURED_REPLY is acknowledged; with data it is ERR_INVALID and not enabled', async () => {
    const bad = await drive([
      ...FLAGS,
      ...option(STRUCTURED_REPLY, [1]),
      ...option(GO, infoRequest('disk')),
    ]);
    assert.equal(bad.selected!.structured, false);
    assertSent(bad, [
      errorReply(STRUCTURED_REPLY, ERR_INVALID, 'STRUCTURED_REPLY takes no data'),
      infoExport(GO, DISK_SIZE, DISK_FLAGS), // no DF: structured replies are off
      info(GO, INFO_DESCRIPTION, text('the test disk')),
      infoBlockSize(GO, 512, 4096, MiB),
      reply(GO, ACK),
    ]);
    const good = await drive([...FLAGS, ...option(STRUCTURED_REPLY)]);
    assertSent(good, [reply(STRUCTURED_REPLY, ACK)]);
  });
});

describe('handshake: meta contexts', () => {
  const BASE = 'base:allocation';

  it('LIST_META_CONTEXT lists base:allocation (id 0) for no query, base: or itself', async () => {
    for (const queries of [[], ['base:'], [BASE], ['qemu:dirty-bitmap:x', BASE]]) {
      const r = await drive([
        ...FLAGS,
        ...option(LIST_META_CONTEXT, contextRequest('disk', queries)),
      ]);
      assertSent(r, [
        reply(LIST_META_CONTEXT, META_CONTEXT, [...u32(0), ...text(BASE)]),
        reply(LIST_META_CONTEXT, ACK),
      ]);
    }
  });

  it('LIST_META_CONTEXT with other queries lists nothing', async () => {
    const r = await drive([
      ...FLAGS,
      ...option(LIST_META_CONTEXT, contextRequest('disk', ['qemu:dirty-bitmap:x', 'base'])),
    ]);
    assertSent(r, [reply(LIST_META_CONTEXT, ACK)]);
  });

  it('SET_META_CONTEXT needs structured replies first', async () => {
    const r = await drive([...FLAGS, ...option(SET_META_CONTEXT, contextRequest('disk', [BASE]))]);
    assertSent(r, [
      errorReply(SET_META_CONTEXT, ERR_INVALID, 'SET_META_CONTEXT needs structured replies first'),
    ]);
  });

  it('SET_META_CONTEXT selects base:allocation (id 1) for the export GO then names', async () => {
    const r = await drive([
      ...FLAGS,
      ...option(STRUCTURED_REPLY),
      ...option(SET_META_CONTEXT, contextRequest('disk', ['qemu:x', BASE])),
      ...option(GO, infoRequest('disk')),
    ]);
    assert.equal(r.end, 'go');
    assertSent(r, [
      reply(STRUCTURED_REPLY, ACK),
      reply(SET_META_CONTEXT, META_CONTEXT, [...u32(1), ...text(BASE)]),
      reply(SET_META_CONTEXT, ACK),
      infoExport(GO, DISK_SIZE, DISK_FLAGS_STRUCTURED),
      info(GO, INFO_DESCRIPTION, text('the test disk')),
      infoBlockSize(GO, 512, 4096, MiB),
      reply(GO, ACK),
    ]);
    assert.equal(r.selected!.structured, true);
    assert.equal(r.selected!.allocation, true);
  });

  it('a context set for one export does not carry to another, and "base:" does not set', async () => {
    const other = await drive([
      ...FLAGS,
      ...option(STRUCTURED_REPLY),
      ...option(SET_META_CONTEXT, contextRequest('disk', [BASE])),
      ...option(GO, infoRequest('ro')),
    ]);
    assert.equal(other.selected!.allocation, false);
    const prefix = await drive([
      ...FLAGS,
      ...option(STRUCTURED_REPLY),
      ...option(SET_META_CONTEXT, contextRequest('disk', [BASE])),
      ...option(SET_META_CONTEXT, contextRequest('disk', ['base:'])),
      ...option(GO, infoRequest('disk')),
    ]);
    assert.equal(prefix.selected!.allocation, false, 'the later SET replaced the earlier one');
  });

  it('answers ERR_UNKNOWN for an unknown export and ERR_INVALID when malformed', async () => {
    const unknown = await drive([
      ...FLAGS,
      ...option(LIST_META_CONTEXT, contextRequest('nope', [BASE])),
    ]);
    assertSent(unknown, [errorReply(LIST_META_CONTEXT, ERR_UNKNOWN, 'no export named "nope"')]);
    const malformed: number[][] = [
      [],
      str32('disk'), // no count
      [...str32('disk'), ...u32(2), ...str32(BASE)], // fewer queries than counted
      [...contextRequest('disk', [BASE]), 0], // trailing byte
      [...str32('disk'), ...u32(1), ...u32(99), ...text('short')], // query longer than data
    ];
    for (const data of malformed) {
      const r = await drive([...FLAGS, ...option(LIST_META_CONTEXT, data)]);
      assertSent(r, [
        errorReply(LIST_META_CONTEXT, ERR_INVALID, 'malformed LIST_META_CONTEXT request'),
      ]);
    }
  });
});

describe('handshake: unsupported and oversized options', () => {
  it('answers ERR_UNSUP to options it does not implement, after reading their data', async () => {
    const r = await drive([
      ...FLAGS,
      ...option(PEEK_EXPORT),
      ...option(EXTENDED_HEADERS),
      ...option(4242, text('some payload')),
      ...option(STARTTLS), // no certificate configured
      ...option(LIST),
    ]);
    assertSent(r, [
      errorReply(PEEK_EXPORT, ERR_UNSUP, 'option PEEK_EXPORT is not supported'),
      errorReply(EXTENDED_HEADERS, ERR_UNSUP, 'option EXTENDED_HEADERS is not supported'),
      errorReply(4242, ERR_UNSUP, 'option OPT_4242 is not supported'),
      errorReply(STARTTLS, ERR_UNSUP, 'TLS is not configured on this server'),
      reply(LIST, SERVER, [...str32('disk'), ...text('the test disk')]),
      reply(LIST, SERVER, str32('ro')),
      reply(LIST, SERVER, [...str32('locked'), ...text('held elsewhere')]),
      reply(LIST, ACK),
    ]);
  });

  it('skips an option over 64 KiB unread, answers ERR_TOO_BIG and goes on', async () => {
    const big = new Array<number>(64 * 1024 + 1).fill(0x5a);
    const r = await drive([...FLAGS, ...option(GO, big), ...option(STRUCTURED_REPLY)], {
      cuts: [100, 30_000],
    });
    assertSent(r, [
      errorReply(GO, ERR_TOO_BIG, `option data of ${big.length} bytes is too long`),
      reply(STRUCTURED_REPLY, ACK),
    ]);
    // Exactly 64 KiB is still read (and then judged on its content).
    const edge = await drive([...FLAGS, ...option(4242, new Array<number>(64 * 1024).fill(0))]);
    assertSent(edge, [errorReply(4242, ERR_UNSUP, 'option OPT_4242 is not supported')]);
  });
});

describe('handshake: TLS', () => {
  it('with TLS required, refuses everything but STARTTLS and ABORT', async () => {
    const r = await drive(
      [...FLAGS, ...option(LIST), ...option(GO, infoRequest('disk')), ...option(STARTTLS)],
      { tls: { require: true } },
    );
    assert.equal(r.end, 'starttls');
    const msg = 'this server requires TLS: use STARTTLS first';
    assertSent(r, [
      errorReply(LIST, ERR_TLS_REQD, msg),
      errorReply(GO, ERR_TLS_REQD, msg),
      reply(STARTTLS, ACK),
    ]);
    const byName = await drive([...FLAGS, ...option(EXPORT_NAME, text('disk'))], {
      tls: { require: true },
    });
    assert.equal(byName.end, 'close');
    assertSent(byName, []);
    const abort = await drive([...FLAGS, ...option(ABORT)], { tls: { require: true } });
    assertSent(abort, [reply(ABORT, ACK)]);
  });

  it('STARTTLS takes no data, and only once', async () => {
    const data = await drive([...FLAGS, ...option(STARTTLS, [0])], { tls: { require: false } });
    assertSent(data, [errorReply(STARTTLS, ERR_INVALID, 'STARTTLS takes no data')]);
    const again = await drive([...FLAGS, ...option(STARTTLS)], {
      tls: { require: true },
      tlsActive: true,
    });
    assertSent(again, [errorReply(STARTTLS, ERR_INVALID, 'TLS is already active')]);
  });

  it('forgets what was negotiated in clear at STARTTLS', async () => {
    const r = await drive(
      [
        ...FLAGS,
        ...option(STRUCTURED_REPLY),
        ...option(SET_META_CONTEXT, contextRequest('disk', ['base:allocation'])),
        ...option(STARTTLS),
      ],
      { tls: { require: false } },
    );
    assert.equal(r.end, 'starttls');
    // Continue on the same negotiation as the session does once the TLS handshake is done.
    r.negotiation.tlsActive = true;
    const go = await r.negotiation.handle(GO, Buffer.from(infoRequest('disk')));
    assert.equal(go.kind, 'go');
    assert.equal((go as { selected: Selected }).selected.structured, false);
    assert.equal((go as { selected: Selected }).selected.allocation, false);
  });
});

describe('handshake: byte boundaries', () => {
  const stream = [
    ...FLAGS,
    ...option(STRUCTURED_REPLY),
    ...option(LIST),
    ...option(4242, text('xyz')),
    ...option(LIST_META_CONTEXT, contextRequest('disk', [])),
    ...option(SET_META_CONTEXT, contextRequest('disk', ['base:allocation'])),
    ...option(INFO, [0, 0]), // malformed
    ...option(INFO, infoRequest('disk', [INFO_NAME])),
    ...option(GO, infoRequest('disk')),
  ];
  const expected = [
    reply(STRUCTURED_REPLY, ACK),
    reply(LIST, SERVER, [...str32('disk'), ...text('the test disk')]),
    reply(LIST, SERVER, str32('ro')),
    reply(LIST, SERVER, [...str32('locked'), ...text('held elsewhere')]),
    reply(LIST, ACK),
    errorReply(4242, ERR_UNSUP, 'option OPT_4242 is not supported'),
    reply(LIST_META_CONTEXT, META_CONTEXT, [...u32(0), ...text('base:allocation')]),
    reply(LIST_META_CONTEXT, ACK),
    reply(SET_META_CONTEXT, META_CONTEXT, [...u32(1), ...text('base:allocation')]),
    reply(SET_META_CONTEXT, ACK),
    errorReply(INFO, ERR_INVALID, 'malformed INFO request'),
    infoExport(INFO, DISK_SIZE, DISK_FLAGS_STRUCTURED),
    info(INFO, INFO_NAME, text('disk')),
    info(INFO, INFO_DESCRIPTION, text('the test disk')),
    infoBlockSize(INFO, 512, 4096, MiB),
    reply(INFO, ACK),
    infoExport(GO, DISK_SIZE, DISK_FLAGS_STRUCTURED),
    info(GO, INFO_DESCRIPTION, text('the test disk')),
    infoBlockSize(GO, 512, 4096, MiB),
    reply(GO, ACK),
  ];

  const check = (r: Run, what: string): void => {
    assert.equal(r.end, 'go', what);
    assert.deepEqual([...r.sent], [...GREETING, ...expected.flat()], what);
    assert.equal(r.selected!.structured, true, what);
    assert.equal(r.selected!.allocation, true, what);
  };

  it('gives the same replies when the client bytes arrive at once', async () => {
    check(await drive(stream), 'whole');
  });

  it('gives the same replies when split at every offset', async () => {
    for (let cut = 1; cut < stream.length; cut++)
      check(await drive(stream, { cuts: [cut] }), `cut ${cut}`);
  });

  it('gives the same replies when fed one byte at a time', async () => {
    const cuts = Array.from({ length: stream.length - 1 }, (_, i) => i + 1);
    check(await drive(stream, { cuts }), 'bytewise');
  });
});
