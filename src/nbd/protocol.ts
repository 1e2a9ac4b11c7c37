/**
 * NBD wire constants (fixed newstyle negotiation, simple and structured replies), in one
 * place, with a name lookup for logs. Every integer on the wire is big-endian.
 */

// Negotiation magics.
export const NBDMAGIC = 0x4e42444d41474943n; // "NBDMAGIC"
export const IHAVEOPT = 0x49484156454f5054n; // "IHAVEOPT"
export const OPTION_REPLY_MAGIC = 0x3e889045565a9n;

// Handshake flags (server, 16 bits) and client flags (32 bits).
export const FLAG_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_NO_ZEROES = 1 << 1;
export const CLIENT_FLAG_FIXED_NEWSTYLE = 1 << 0;
export const CLIENT_FLAG_NO_ZEROES = 1 << 1;
export const KNOWN_CLIENT_FLAGS = CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES;

// Options.
export const OPT_EXPORT_NAME = 1;
export const OPT_ABORT = 2;
export const OPT_LIST = 3;
export const OPT_PEEK_EXPORT = 4;
export const OPT_STARTTLS = 5;
export const OPT_INFO = 6;
export const OPT_GO = 7;
export const OPT_STRUCTURED_REPLY = 8;
export const OPT_LIST_META_CONTEXT = 9;
export const OPT_SET_META_CONTEXT = 10;
export const OPT_EXTENDED_HEADERS = 11;

// Option reply types; errors have bit 31 set.
export const REP_ACK = 1;
export const REP_SERVER = 2;
export const REP_INFO = 3;
export const REP_META_CONTEXT = 4;
const ERR = 0x80000000;
export const REP_ERR_UNSUP = ERR + 1;
export const REP_ERR_POLICY = ERR + 2;
export const REP_ERR_INVALID = ERR + 3;
export const REP_ERR_PLATFORM = ERR + 4;
export const REP_ERR_TLS_REQD = ERR + 5;
export const REP_ERR_UNKNOWN = ERR + 6;
export const REP_ERR_SHUTDOWN = ERR + 7;
export const REP_ERR_BLOCK_SIZE_REQD = ERR + 8;
export const REP_ERR_TOO_BIG = ERR + 9;

// Information types of NBD_REP_INFO.
export const INFO_EXPORT = 0;
export const INFO_NAME = 1;
export const INFO_DESCRIPTION = 2;
export const INFO_BLOCK_SIZE = 3;

// Transmission flags (16 bits).
export const TF_HAS_FLAGS = 1 << 0;
export const TF_READ_ONLY = 1 << 1;
export const TF_SEND_FLUSH = 1 << 2;
export const TF_SEND_FUA = 1 << 3;
export const TF_ROTATIONAL = 1 << 4;
export const TF_SEND_TRIM = 1 << 5;
export const TF_SEND_WRITE_ZEROES = 1 << 6;
export const TF_SEND_DF = 1 << 7;
export const TF_CAN_MULTI_CONN = 1 << 8;
export const TF_SEND_RESIZE = 1 << 9;
export const TF_SEND_CACHE = 1 << 10;
export const TF_SEND_FAST_ZERO = 1 << 11;

// Requests and replies.
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;
export const REQUEST_HEADER_SIZE = 28;
export const SIMPLE_REPLY_SIZE = 16;
export const STRUCTURED_HEADER_SIZE = 20;
export const OPTION_HEADER_SIZE = 16;
export const OPTION_REPLY_HEADER_SIZE = 20;

// Commands.
export const CMD_READ = 0;
export const CMD_WRITE = 1;
export const CMD_DISC = 2;
export const CMD_FLUSH = 3;
export const CMD_TRIM = 4;
export const CMD_CACHE = 5;
export const CMD_WRITE_ZEROES = 6;
export const CMD_BLOCK_STATUS = 7;
export const CMD_RESIZE = 8;

/** Commands served by calling the device: every command this server implements but DISC. */
export type DeviceCommand =
  | typeof CMD_READ
  | typeof CMD_WRITE
  | typeof CMD_FLUSH
  | typeof CMD_TRIM
  | typeof CMD_CACHE
  | typeof CMD_WRITE_ZEROES
  | typeof CMD_BLOCK_STATUS;
/** Commands this server implements. A request's type is any 16-bit value until checked. */
export type Command = DeviceCommand | typeof CMD_DISC;

// Command flags (16 bits).
export const CMD_FLAG_FUA = 1 << 0;
export const CMD_FLAG_NO_HOLE = 1 << 1;
export const CMD_FLAG_DF = 1 << 2;
export const CMD_FLAG_REQ_ONE = 1 << 3;
export const CMD_FLAG_FAST_ZERO = 1 << 4;

// Structured reply flags and chunk types.
export const REPLY_FLAG_DONE = 1 << 0;
export const REPLY_TYPE_NONE = 0;
export const REPLY_TYPE_OFFSET_DATA = 1;
export const REPLY_TYPE_OFFSET_HOLE = 2;
export const REPLY_TYPE_BLOCK_STATUS = 5;
export const REPLY_TYPE_ERROR = (1 << 15) + 1;
export const REPLY_TYPE_ERROR_OFFSET = (1 << 15) + 2;

// base:allocation metadata context.
export const META_BASE_ALLOCATION = 'base:allocation';
export const STATE_HOLE = 1 << 0;
export const STATE_ZERO = 1 << 1;

// Error numbers on the wire (not the host's errno values).
export const EPERM = 1;
export const EIO = 5;
export const ENOMEM = 12;
export const EINVAL = 22;
export const ENOSPC = 28;
export const EOVERFLOW = 75;
export const ENOTSUP = 95;
export const ESHUTDOWN = 108;

// Limits this server applies.
/** Largest option payload buffered during negotiation; larger ones are skipped (ERR_TOO_BIG). */
export const MAX_OPTION_LENGTH = 64 * 1024;
/** Longest string (export name, description, context query) accepted, per the spec. */
export const MAX_STRING_LENGTH = 4096;
/** Default largest READ/WRITE payload advertised as maximum block size and enforced. */
export const DEFAULT_MAX_REQUEST = 32 * 1024 * 1024;

const optionNames: Record<number, string> = {
  [OPT_EXPORT_NAME]: 'EXPORT_NAME',
  [OPT_ABORT]: 'ABORT',
  [OPT_LIST]: 'LIST',
  [OPT_PEEK_EXPORT]: 'PEEK_EXPORT',
  [OPT_STARTTLS]: 'STARTTLS',
  [OPT_INFO]: 'INFO',
  [OPT_GO]: 'GO',
  [OPT_STRUCTURED_REPLY]: 'STRUCTURED_REPLY',
  [OPT_LIST_META_CONTEXT]: 'LIST_META_CONTEXT',
  [OPT_SET_META_CONTEXT]: 'SET_META_CONTEXT',
  [OPT_EXTENDED_HEADERS]: 'EXTENDED_HEADERS',
};

const commandNames: Record<number, string> = {
  [CMD_READ]: 'READ',
  [CMD_WRITE]: 'WRITE',
  [CMD_DISC]: 'DISC',
  [CMD_FLUSH]: 'FLUSH',
  [CMD_TRIM]: 'TRIM',
  [CMD_CACHE]: 'CACHE',
  [CMD_WRITE_ZEROES]: 'WRITE_ZEROES',
  [CMD_BLOCK_STATUS]: 'BLOCK_STATUS',
  [CMD_RESIZE]: 'RESIZE',
};

const errnoNames: Record<number, string> = {
  0: 'OK',
  [EPERM]: 'EPERM',
  [EIO]: 'EIO',
  [ENOMEM]: 'ENOMEM',
  [EINVAL]: 'EINVAL',
  [ENOSPC]: 'ENOSPC',
  [EOVERFLOW]: 'EOVERFLOW',
  [ENOTSUP]: 'ENOTSUP',
  [ESHUTDOWN]: 'ESHUTDOWN',
};

const replyNames: Record<number, string> = {
  [REP_ACK]: 'ACK',
  [REP_SERVER]: 'SERVER',
  [REP_INFO]: 'INFO',
  [REP_META_CONTEXT]: 'META_CONTEXT',
  [REP_ERR_UNSUP]: 'ERR_UNSUP',
  [REP_ERR_POLICY]: 'ERR_POLICY',
  [REP_ERR_INVALID]: 'ERR_INVALID',
  [REP_ERR_PLATFORM]: 'ERR_PLATFORM',
  [REP_ERR_TLS_REQD]: 'ERR_TLS_REQD',
  [REP_ERR_UNKNOWN]: 'ERR_UNKNOWN',
  [REP_ERR_SHUTDOWN]: 'ERR_SHUTDOWN',
  [REP_ERR_BLOCK_SIZE_REQD]: 'ERR_BLOCK_SIZE_REQD',
  [REP_ERR_TOO_BIG]: 'ERR_TOO_BIG',
};

export const optionName = (n: number): string => optionNames[n] ?? `OPT_${n}`;
export const commandName = (n: number): string => commandNames[n] ?? `CMD_${n}`;
export const errnoName = (n: number): string => errnoNames[n] ?? `ERRNO_${n}`;
export const replyName = (n: number): string => replyNames[n] ?? `REP_0x${n.toString(16)}`;
