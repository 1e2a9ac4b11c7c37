/**
 * The single-writer lease (FORMAT.md "Lease"). Taken with a create-only write or, when the
 * previous holder's lease has expired (or --force), with a compare-and-swap; renewed with
 * CAS; released by a CAS that sets its expiry to 0 (or to now, when a PUT may still be in
 * flight). Each acquisition raises the epoch; the new holder fences the previous one unless
 * it released the lease (commit.ts), so the previous holder commits nothing further.
 */
import { readFileSync, readlinkSync } from 'node:fs';
import { hostname } from 'node:os';
import { HyperError, isHyperError, rethrowUnavailable } from '../../errors.js';
import { DecodeError } from '../codec/binary.js';
import { decodeLease, encodeLease, type LeaseRecord } from '../codec/lease.js';
import { LEASE_KEY } from '../keys.js';
import type { ObjectStore } from '../store/types.js';
import { CONFLICT_RETRIES, type LeaseInfo } from './types.js';

export const DEFAULT_LEASE_TTL_MS = 30_000;

/**
 * What makes a holder's process identifiable on its own machine: its PID namespace and the
 * kernel's boot id (Linux). Two containers may share a host name and a PID but never both of
 * these; elsewhere it is empty and a holder is never judged dead (only expiry frees it).
 */
const processIdentity = ((): string => {
  try {
    const ns = /\[(\d+)\]/.exec(readlinkSync('/proc/self/ns/pid'))?.[1];
    const boot = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim().slice(0, 8);
    return ns && /^[0-9a-f]{8}$/.test(boot) ? `${ns}.${boot}` : '';
  } catch {
    return '';
  }
})();

/**
 * The lease holder name for this process: `name@host:pid`, followed by `#` and the process
 * identity when there is one. The part after `#` is for machines (see `holderIsDeadLocal`);
 * people are shown the rest (`displayHolder`).
 */
export const processHolder = (name?: string): string =>
  `${name ? `${name}@` : ''}${hostname()}:${process.pid}${processIdentity ? `#${processIdentity}` : ''}`;

export const defaultHolder = (): string => processHolder();

/** A holder as people read it (without the machine-readable identity). */
export const displayHolder = (holder: string): string =>
  holder.replace(/#[0-9]+\.[0-9a-f]{8}$/, '');

/**
 * Who holds the volume's lease for writing now, as people read it: undefined when nobody
 * live does, or when the lease cannot be read (this only informs, it decides nothing).
 */
export async function liveWriter(store: ObjectStore): Promise<string | undefined> {
  try {
    const l = await readLease(store);
    return l?.live && !holderIsDeadLocal(l.lease.holder)
      ? displayHolder(l.lease.holder)
      : undefined;
  } catch {
    return undefined;
  }
}

/**
 * True only when the holder is provably a process of this machine (same host name, PID
 * namespace and boot) that no longer exists: its lease is free although not expired, so a
 * restart after a crash needs neither --force nor a wait. Anything unsure is false.
 */
export function holderIsDeadLocal(holder: string): boolean {
  const m = /(?:^|@)([^@]+):(\d+)#([0-9]+\.[0-9a-f]{8})$/.exec(holder);
  if (!m || !processIdentity) return false;
  const [, host, pidText, identity] = m;
  const pid = Number(pidText);
  if (host !== hostname() || identity !== processIdentity || pid === process.pid) return false;
  try {
    process.kill(pid, 0);
    return false;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'ESRCH';
  }
}

/** A lease record as stored, judged (`judgeLease`) when it was read. */
export interface StoredLease {
  lease: LeaseRecord;
  etag: string;
  /** Still held (not released, not expired). */
  live: boolean;
  /** When it expires, by this machine's clock. */
  expiresAt: Date;
}

export async function readLease(store: ObjectStore): Promise<StoredLease | undefined> {
  const got = await readLeaseObject(store);
  if (got?.damaged) throw got.damaged;
  return got as StoredLease | undefined;
}

/** The lease object as stored: judged, or damaged (with the ETag to replace it by CAS). */
async function readLeaseObject(
  store: ObjectStore,
): Promise<(Partial<StoredLease> & { etag: string; damaged?: HyperError }) | undefined> {
  let got;
  try {
    got = await store.get(LEASE_KEY);
  } catch (e) {
    if (isHyperError(e, 'OBJECT_NOT_FOUND')) return undefined;
    throw e;
  }
  try {
    const lease = decodeLease(got.body);
    return { lease, etag: got.etag, ...judgeLease(lease, got.storeClock) };
  } catch (e) {
    if (!(e instanceof DecodeError)) throw e;
    const damaged = new HyperError(
      'data',
      'CORRUPT_OBJECT',
      `Lease object is damaged: ${e.message} (object ${LEASE_KEY})`,
      { key: LEASE_KEY, suggestion: 'Take the volume over with --force (it replaces the lease).' },
    );
    return { etag: got.etag, damaged };
  }
}

/**
 * The store clock's resolution: Last-Modified and Date are whole seconds (truncated), so a
 * record may have been written up to this much later than its modification time says.
 */
const STORE_CLOCK_SLACK_MS = 1000;

/**
 * Whether a lease record still holds, and until when by this machine's clock (`now`).
 *
 * Hosts' clocks disagree (a VM after a suspend, NTP not running); the store's is one clock
 * for all of them. So when the store tells its time (`clock`: S3's Last-Modified and Date)
 * and the record says its TTL, the record holds for that TTL after the store wrote it,
 * judged by the store's clock alone. The holder, for its part, counts the TTL from before it
 * sent the record (its own clock), which is never later: it stops committing before anyone
 * else judges its lease expired. Otherwise (a store without a clock, a record of a hyper
 * before TTLs were recorded) the holder's expiry is compared with this machine's clock.
 */
export function judgeLease(
  l: LeaseRecord,
  clock?: { modifiedMs: number; nowMs: number },
  now = Date.now(),
): { live: boolean; expiresAt: Date } {
  // Released (0), or given back with a PUT maybe in flight (TTL 0): free now.
  if (l.expiresMs === 0 || l.ttlMs === 0) return { live: false, expiresAt: new Date(l.expiresMs) };
  if (clock && l.ttlMs !== undefined) {
    const left = clock.modifiedMs + STORE_CLOCK_SLACK_MS + l.ttlMs - clock.nowMs;
    return { live: left > 0, expiresAt: new Date(now + left) };
  }
  return { live: l.expiresMs > now, expiresAt: new Date(l.expiresMs) };
}

export function leaseInfo(l: StoredLease): LeaseInfo {
  return {
    holder: displayHolder(l.lease.holder),
    epoch: l.lease.epoch,
    expiresAt: l.expiresAt,
    live: l.live,
  };
}

export function leaseHeldError(l: StoredLease): HyperError {
  return new HyperError(
    'conflict',
    'LEASE_HELD',
    `The volume is in use by ${displayHolder(l.lease.holder)} (lease epoch ${l.lease.epoch}, expires ${l.expiresAt.toISOString()})`,
    {
      suggestion:
        'Stop that writer, wait for its lease to expire, or take over with --force (the old writer is fenced and can commit nothing more).',
    },
  );
}

export interface LeaseOptions {
  holder: string;
  ttlMs: number;
  force: boolean;
  /**
   * Take a live lease back when its holder is this one (a reconnect of a holder whose earlier
   * open was given up). The holder is checked on the record the compare-and-swap replaces, so
   * a takeover by another holder in between is never undone.
   */
  reclaim?: boolean;
  /** The new epoch must exceed this (the head's epoch). */
  minEpoch: number;
}

export class Lease {
  private timer: NodeJS.Timeout | undefined;
  /** Set once the lease is known lost; every later write fails with it. */
  lost: HyperError | undefined;
  /**
   * Why the lease expired without being renewed (the store refused or did not answer), until
   * a renewal succeeds. Nothing is committed meanwhile (`validFor` is false); a renewal is a
   * CAS on the record this holder last wrote, so it succeeds only if nobody took the lease in
   * between, and a takeover meanwhile makes the lease lost for good.
   */
  lapsed: HyperError | undefined;
  private onLapse: ((why: HyperError | undefined) => void) | undefined;
  private renewing: Promise<void> | undefined;

  private constructor(
    private readonly store: ObjectStore,
    public record: LeaseRecord,
    private etag: string,
    private readonly ttlMs: number,
    /**
     * Whether the previous holder is known to be done: it gave the lease back (or there was
     * none). Otherwise (expired, taken by force, its holder dead) it may still have segment
     * PUTs in flight, and the new holder fences them (FORMAT.md "Lease and epochs").
     */
    readonly previousDone: boolean,
  ) {}

  get epoch(): number {
    return this.record.epoch;
  }

  static async acquire(store: ObjectStore, o: LeaseOptions): Promise<Lease> {
    for (let attempt = 0; attempt < CONFLICT_RETRIES; attempt++) {
      const cur = await readLeaseObject(store);
      // A damaged lease hides its holder and expiry: only --force replaces it. The epoch then
      // comes from the head, which every holder that ever committed has raised to its own.
      if (cur?.damaged && !o.force) throw cur.damaged;
      const now = Date.now();
      const live =
        cur?.lease !== undefined && cur.live === true && !holderIsDeadLocal(cur.lease.holder);
      const own = o.reclaim === true && cur?.lease?.holder === o.holder;
      if (live && !o.force && !own) throw leaseHeldError(cur as StoredLease);
      const epoch = Math.max(cur?.lease?.epoch ?? 0, o.minEpoch) + 1;
      const record: LeaseRecord = {
        holder: o.holder,
        epoch,
        acquiredMs: now,
        expiresMs: now + o.ttlMs,
        ttlMs: o.ttlMs,
      };
      try {
        const { etag } = await store.put(
          LEASE_KEY,
          encodeLease(record),
          cur ? { ifMatch: cur.etag } : { ifNoneMatch: true },
        );
        const done = cur === undefined || (cur.lease !== undefined && cur.lease.expiresMs === 0);
        return new Lease(store, record, etag, o.ttlMs, done);
      } catch (e) {
        // Someone else moved first: look again.
        if (isHyperError(e, 'OBJECT_EXISTS') || isHyperError(e, 'PRECONDITION_FAILED')) continue;
        throw e;
      }
    }
    const cur = await readLease(store);
    if (cur) throw leaseHeldError(cur);
    throw new HyperError('conflict', 'LEASE_HELD', 'Could not take the lease: it keeps changing');
  }

  /**
   * Renew every third of the TTL; on loss, record it (the engine checks `lost`). A lease that
   * expires because the store keeps failing its renewal has lapsed, not been lost: renewals
   * go on, and `onLapse` is told when it lapses (with why) and when a renewal takes it back
   * (undefined).
   */
  startRenewal(
    onLost: (e: HyperError) => void,
    onLapse: (why: HyperError | undefined) => void = () => undefined,
  ): void {
    const every = Math.max(250, Math.floor(this.ttlMs / 3));
    this.onLapse = onLapse;
    this.timer = setInterval(() => {
      this.renew().catch((e: unknown) => {
        if (this.lost) onLost(this.lost);
        else if (!this.lapsed && e instanceof HyperError && Date.now() >= this.record.expiresMs) {
          this.lapsed = e;
          onLapse(e);
        }
      });
    }, every);
    this.timer.unref();
  }

  /** True when the lease is still ours for at least `marginMs`. */
  validFor(marginMs: number): boolean {
    return !this.lost && this.record.expiresMs - Date.now() > marginMs;
  }

  renew(): Promise<void> {
    this.renewing ??= this.doRenew().finally(() => {
      this.renewing = undefined;
    });
    return this.renewing;
  }

  private async doRenew(): Promise<void> {
    if (this.lost) throw this.lost;
    const now = Date.now();
    const next: LeaseRecord = { ...this.record, expiresMs: now + this.ttlMs, ttlMs: this.ttlMs };
    for (let attempt = 0; ; attempt++) {
      try {
        const { etag } = await this.store.put(LEASE_KEY, encodeLease(next), {
          ifMatch: this.etag,
        });
        this.record = next;
        this.etag = etag;
        if (this.lapsed) {
          this.lapsed = undefined;
          this.onLapse?.(undefined);
        }
        return;
      } catch (e) {
        if (!isHyperError(e, 'PRECONDITION_FAILED')) throw e;
        // (A store that fails this read leaves the renewal failed, not the lease lost.)
        const cur = await readLeaseObject(this.store).catch(rethrowUnavailable);
        // A renewal of ours whose answer was lost (a timeout) landed after all: the record is
        // still this holder's, same epoch and acquisition. Renew on top of it.
        const l = cur?.lease;
        if (
          attempt === 0 &&
          cur &&
          l &&
          l.holder === this.record.holder &&
          l.epoch === this.record.epoch &&
          l.acquiredMs === this.record.acquiredMs
        ) {
          this.etag = cur.etag;
          continue;
        }
        this.lost = new HyperError(
          'conflict',
          'FENCED',
          `This writer's lease was taken over${l ? ` by ${displayHolder(l.holder)} (epoch ${l.epoch})` : ''}; no further writes are accepted`,
          { suggestion: 'Re-open the volume once the other writer is done.' },
        );
        throw this.lost;
      }
    }
  }

  /**
   * Stop renewing and give the lease back if it is still ours. `done`: this holder, and the
   * one it took the lease from, have nothing in flight; the lease is marked released (expiry
   * 0) and the next holder need not fence anyone. Otherwise it is marked expired now: free to
   * take without --force, and the next holder fences first (FORMAT.md "Lease and epochs").
   */
  async release(done = true): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    if (this.lost) return;
    await this.renewing?.catch(() => undefined);
    const released: LeaseRecord = { ...this.record, expiresMs: done ? 0 : Date.now(), ttlMs: 0 };
    try {
      await this.store.put(LEASE_KEY, encodeLease(released), { ifMatch: this.etag });
    } catch (e) {
      if (!isHyperError(e, 'PRECONDITION_FAILED')) throw e;
    }
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }
}
