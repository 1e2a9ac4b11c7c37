/**
 * The rules of the transmission phase, apart from any connection: given what was negotiated
 * for an export and one request, decide whether the request is refused (with which errno, and
 * why), ends the connection, or goes to the device; and how a BLOCK_STATUS answer is cut into
 * descriptors. Pure: no sockets, no device calls, no clocks — so every rule can be tested on
 * its own, and the session only moves bytes and promises.
 *
 * The checks run in a fixed order and the first failing one decides the errno (clients and
 * tests see the errno, so the order is part of the behaviour):
 *   1. command known and its capability advertised (read-only before capability for writes);
 *   2. flags allowed for the command;
 *   3. length non-zero; for READ/WRITE at most the maximum block size (EOVERFLOW);
 *   4. range inside the export (ENOSPC for WRITE/WRITE_ZEROES, else EINVAL);
 *   5. offset and length aligned to the minimum block size.
 */
import type { DeviceExtent } from './device.js';
import type { NbdRequest } from './codec.js';
import {
  CMD_BLOCK_STATUS,
  CMD_CACHE,
  CMD_DISC,
  CMD_FLAG_DF,
  CMD_FLAG_FAST_ZERO,
  CMD_FLAG_FUA,
  CMD_FLAG_NO_HOLE,
  CMD_FLAG_REQ_ONE,
  CMD_FLUSH,
  CMD_READ,
  CMD_TRIM,
  CMD_WRITE,
  CMD_WRITE_ZEROES,
  EINVAL,
  ENOSPC,
  EOVERFLOW,
  EPERM,
  STATE_HOLE,
  STATE_ZERO,
  TF_SEND_CACHE,
  TF_SEND_FAST_ZERO,
  TF_SEND_FLUSH,
  TF_SEND_FUA,
  TF_SEND_TRIM,
  TF_SEND_WRITE_ZEROES,
  type DeviceCommand,
} from './protocol.js';

/** What was agreed for one export on one connection, fixed from GO / EXPORT_NAME on. */
export interface TransmissionState {
  /** Export size in bytes. */
  readonly size: number;
  /** The transmission flags sent to the client (TF_*): a command is allowed only if advertised. */
  readonly transmissionFlags: number;
  readonly readOnly: boolean;
  /** The client negotiated structured replies. */
  readonly structuredReplies: boolean;
  /** base:allocation was selected for this export and the device can report extents. */
  readonly blockStatus: boolean;
  /** Minimum block size advertised: offsets and lengths must be multiples of it. */
  readonly minimumBlockSize: number;
  /** Maximum block size advertised: the largest READ/WRITE payload. */
  readonly maximumBlockSize: number;
}

export interface Refuse {
  readonly action: 'refuse';
  /** NBD errno for the reply. */
  readonly errno: number;
  /** Which rule refused the request, for the debug log (never sent to the client). */
  readonly reason: string;
}

export interface Dispatch {
  readonly action: 'dispatch';
  readonly command: DeviceCommand;
}

export interface Disconnect {
  readonly action: 'disconnect';
}

export type Decision = Refuse | Dispatch | Disconnect;

// Every decision is a shared constant: deciding allocates nothing on the hot path.
const refuse = (errno: number, reason: string): Refuse =>
  Object.freeze({ action: 'refuse', errno, reason });
const dispatch = (command: DeviceCommand): Dispatch =>
  Object.freeze({ action: 'dispatch', command });

export const REFUSE_UNKNOWN_COMMAND = refuse(EINVAL, 'unknown command');
export const REFUSE_READ_ONLY = refuse(EPERM, 'export is read-only');
export const REFUSE_NOT_ADVERTISED = refuse(EINVAL, 'command not advertised for this export');
export const REFUSE_NO_BLOCK_STATUS = refuse(EINVAL, 'base:allocation was not negotiated');
export const REFUSE_FLUSH_ARGUMENTS = refuse(EINVAL, 'FLUSH takes no flags, offset or length');
export const REFUSE_FLAGS = refuse(EINVAL, 'flags not allowed for this command');
export const REFUSE_ZERO_LENGTH = refuse(EINVAL, 'zero length');
export const REFUSE_TOO_LONG = refuse(EOVERFLOW, 'length above the maximum block size');
export const REFUSE_WRITE_PAST_END = refuse(ENOSPC, 'range beyond the end of the export');
export const REFUSE_PAST_END = refuse(EINVAL, 'range beyond the end of the export');
export const REFUSE_UNALIGNED = refuse(EINVAL, 'not aligned to the minimum block size');

export const DISCONNECT: Disconnect = Object.freeze({ action: 'disconnect' });
const DISPATCH_READ = dispatch(CMD_READ);
const DISPATCH_WRITE = dispatch(CMD_WRITE);
const DISPATCH_FLUSH = dispatch(CMD_FLUSH);
const DISPATCH_TRIM = dispatch(CMD_TRIM);
const DISPATCH_CACHE = dispatch(CMD_CACHE);
const DISPATCH_WRITE_ZEROES = dispatch(CMD_WRITE_ZEROES);
const DISPATCH_BLOCK_STATUS = dispatch(CMD_BLOCK_STATUS);

/** Decide what to do with one request (its payload, if any, is not looked at). */
export function decide(state: TransmissionState, request: NbdRequest): Decision {
  const { type, flags, offset, length } = request;
  const tf = state.transmissionFlags;
  let allowed = 0;
  let accept: Dispatch;
  switch (type) {
    case CMD_READ:
      // DF is meaningful only with structured replies (it is advertised only then).
      if (state.structuredReplies) allowed = CMD_FLAG_DF;
      accept = DISPATCH_READ;
      break;
    case CMD_WRITE:
      if (state.readOnly) return REFUSE_READ_ONLY;
      if (tf & TF_SEND_FUA) allowed = CMD_FLAG_FUA;
      accept = DISPATCH_WRITE;
      break;
    case CMD_TRIM:
      if (state.readOnly) return REFUSE_READ_ONLY;
      if (!(tf & TF_SEND_TRIM)) return REFUSE_NOT_ADVERTISED;
      if (tf & TF_SEND_FUA) allowed = CMD_FLAG_FUA;
      accept = DISPATCH_TRIM;
      break;
    case CMD_WRITE_ZEROES:
      if (state.readOnly) return REFUSE_READ_ONLY;
      if (!(tf & TF_SEND_WRITE_ZEROES)) return REFUSE_NOT_ADVERTISED;
      allowed = CMD_FLAG_NO_HOLE;
      if (tf & TF_SEND_FUA) allowed |= CMD_FLAG_FUA;
      if (tf & TF_SEND_FAST_ZERO) allowed |= CMD_FLAG_FAST_ZERO;
      accept = DISPATCH_WRITE_ZEROES;
      break;
    case CMD_FLUSH:
      // FLUSH covers the whole export: nothing else is checked, but everything must be zero.
      if (!(tf & TF_SEND_FLUSH)) return REFUSE_NOT_ADVERTISED;
      if (flags !== 0 || offset !== 0 || length !== 0) return REFUSE_FLUSH_ARGUMENTS;
      return DISPATCH_FLUSH;
    case CMD_CACHE:
      if (!(tf & TF_SEND_CACHE)) return REFUSE_NOT_ADVERTISED;
      accept = DISPATCH_CACHE;
      break;
    case CMD_BLOCK_STATUS:
      if (!state.blockStatus) return REFUSE_NO_BLOCK_STATUS;
      allowed = CMD_FLAG_REQ_ONE;
      accept = DISPATCH_BLOCK_STATUS;
      break;
    case CMD_DISC:
      // A client asking to leave is never refused, whatever else the request carries.
      return DISCONNECT;
    default:
      return REFUSE_UNKNOWN_COMMAND;
  }
  if ((flags & ~allowed) !== 0) return REFUSE_FLAGS;
  if (length === 0) return REFUSE_ZERO_LENGTH;
  // Only READ/WRITE move payloads; TRIM, WRITE_ZEROES, CACHE and BLOCK_STATUS may span more.
  if ((type === CMD_READ || type === CMD_WRITE) && length > state.maximumBlockSize)
    return REFUSE_TOO_LONG;
  // offset is -1 when the client's 64-bit offset is not a safe integer (see NbdParser).
  if (offset < 0 || offset + length > state.size)
    return type === CMD_WRITE || type === CMD_WRITE_ZEROES
      ? REFUSE_WRITE_PAST_END
      : REFUSE_PAST_END;
  const m = state.minimumBlockSize;
  if (m > 1 && (offset % m !== 0 || length % m !== 0)) return REFUSE_UNALIGNED;
  return accept;
}

/**
 * Whether an error for this command is sent as a structured ERROR chunk (with a message)
 * rather than a simple reply: only for commands whose success reply is structured too.
 */
export function structuredError(state: TransmissionState, type: number): boolean {
  return state.structuredReplies && (type === CMD_READ || type === CMD_BLOCK_STATUS);
}

/** Most BLOCK_STATUS descriptors in one reply. */
export const MAX_EXTENTS = 65536;
const U32_MAX = 0xffffffff;

/** base:allocation descriptors for one BLOCK_STATUS reply, in order. */
export interface BlockStatusDescriptors {
  readonly lengths: number[];
  readonly states: number[];
}

/**
 * Turn what a device reported for [offset, offset + length) into descriptors: runs are
 * clamped to the request, neighbours in the same state merged, lengths kept within 32 bits
 * (split at a multiple of the minimum block size), at most MAX_EXTENTS of them, and just one
 * with REQ_ONE. Holes read as zeros, so a hole is HOLE|ZERO. Reporting stops at the first
 * run that does not continue where the previous one ended. Undefined when no run starts at
 * `offset` (the device broke its contract: the caller answers with an error).
 */
export function blockStatusDescriptors(
  extents: readonly DeviceExtent[],
  offset: number,
  length: number,
  minimumBlockSize: number,
  reqOne: boolean,
): BlockStatusDescriptors | undefined {
  const end = offset + length;
  const lengths: number[] = [];
  const states: number[] = [];
  // The longest descriptor that still keeps the next one aligned.
  const longest = U32_MAX - (U32_MAX % minimumBlockSize);
  let pos = offset;
  for (const e of extents) {
    if (e.offset !== pos || e.length <= 0) break;
    let len = Math.min(e.offset + e.length, end) - pos;
    if (len <= 0) break;
    const state = (e.hole ? STATE_HOLE : 0) | (e.zero || e.hole ? STATE_ZERO : 0);
    const last = lengths.length - 1;
    if (last >= 0 && states[last] === state && lengths[last]! + len <= U32_MAX) {
      lengths[last]! += len;
    } else {
      while (len > 0) {
        const piece = Math.min(len, longest);
        lengths.push(piece);
        states.push(state);
        len -= piece;
      }
    }
    pos = e.offset + e.length;
    if (pos >= end || lengths.length >= MAX_EXTENTS) break;
  }
  if (lengths.length === 0) return undefined;
  const n = reqOne ? 1 : Math.min(lengths.length, MAX_EXTENTS);
  lengths.length = n;
  states.length = n;
  return { lengths, states };
}
