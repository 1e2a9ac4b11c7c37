import { hostname } from 'node:os';
import { Flags } from '@oclif/core';
import { BaseCommand } from '../base-command.js';
import { bytesWithExact, requestStats, secondsSince, toSeconds } from '../cli/results.js';
import type { CompactCommandResult } from '../cli/vocabulary.js';
import { formatBytes, formatDuration } from '../cli/units.js';
import { HyperError, isHyperError } from '../errors.js';
import { controlSocket, duration, fraction, progress, volumeUrl, yes } from '../flags.js';
import { compactOnlineInServer, type OnlineCompaction } from '../daemon/online.js';
import type { RetentionPolicy } from '../serve/compaction.js';
import {
  DEFAULT_GRACE_MS,
  DEFAULT_MIN_LIVE,
  compactVolume,
  type CompactResult,
} from '../format/volume/compact.js';

export type { CompactCommandResult };

export default class Compact extends BaseCommand<typeof Compact> {
  static override summary = 'Drop old checkpoints and reclaim the space no kept checkpoint uses.';

  static override description = `Compaction does three things, each an ordinary commit or a deletion that leaves the volume valid if it is interrupted at any point (a rerun finishes the job):

1. Live blocks of segments that are mostly garbage (less than --min-live of the segment is used by the current checkpoint) are copied into new segments.
2. The retention policy is recorded: --keep-last N keeps the newest N checkpoints (the one compaction commits counts), --keep-within keeps the checkpoints made within that duration; with both, a checkpoint either rule keeps is kept. Named snapshots and checkpoints clones start from are always kept. Without a policy no checkpoint is dropped and only unreachable data (for example from interrupted writers) is deleted.
3. Segments that no kept checkpoint reaches are deleted, but only once they have been unreachable for the --grace period, so that readers that opened an older checkpoint (an export, a "serve --at") can finish; the rest is left for a later run and counted as deferred.

Compaction takes the volume's lease like a writer. A volume that "hyper daemon" on this host serves read-write (mapped without --read-only or --at), or that "hyper serve --control-socket PATH" serves, is compacted by that server, online, beside its clients: the command asks it through its control socket (--control-socket) and prints what it did. Any other writer makes it refuse (LEASE_HELD, exit code 4). A compaction killed without a chance to clean up (SIGKILL, power loss) leaves its lease until it expires (30 s): wait, or rerun with --force. Ctrl-C stops cleanly (exit code 130) and releases the lease.

Dropping checkpoints cannot be undone: with --keep-last or --keep-within the command asks for confirmation on a terminal and needs --yes otherwise. --dry-run changes nothing and reports what a run would do.`;

  static override examples = [
    {
      description:
        'Keep only the current checkpoint (and named snapshots), reclaiming everything else now.',
      command:
        '<%= config.bin %> <%= command.id %> file://./vols/demo/ --keep-last 1 --grace 0s --yes',
    },
    {
      description: 'Keep a week of history; see first what it would do.',
      command:
        '<%= config.bin %> <%= command.id %> s3://my-bucket/vols/vm1/ --keep-within 7d --dry-run',
    },
    {
      description: 'Nightly compaction from cron, printing the summary as JSON.',
      command:
        '<%= config.bin %> <%= command.id %> s3://my-bucket/vols/vm1/ --keep-last 100 --keep-within 7d --yes --json',
    },
  ];

  static override args = {
    url: volumeUrl({ required: true }),
  };

  static override flags = {
    'keep-last': Flags.integer({
      summary: 'Keep the newest N checkpoints.',
      min: 1,
      helpValue: '<n>',
    }),
    'keep-within': duration({
      summary: 'Keep the checkpoints made within this duration (e.g. 7d, 12h).',
      minMs: 0,
    }),
    'min-live': fraction({
      summary: `Rewrite segments whose live fraction is below this (0 to 1, default ${DEFAULT_MIN_LIVE}; 0 rewrites nothing).`,
    }),
    grace: duration({
      summary: `Delete only data unreachable for at least this long (default ${formatDuration(DEFAULT_GRACE_MS)}).`,
      minMs: 0,
    }),
    'dry-run': Flags.boolean({ summary: 'Report what would be done; change nothing.' }),
    force: Flags.boolean({
      summary:
        "Take the lease even if another writer holds it (that writer's unflushed writes are lost).",
    }),
    yes,
    progress,
    'control-socket': controlSocket,
  };

  public async run(): Promise<CompactCommandResult> {
    const { url } = this.args;
    const keepLast = this.flags['keep-last'];
    const keepWithinMs = this.flags['keep-within'];
    const graceMs = this.flags.grace ?? DEFAULT_GRACE_MS;
    const minLive = this.flags['min-live'] ?? DEFAULT_MIN_LIVE;
    const dryRun = this.flags['dry-run'];
    const policy = keepLast !== undefined || keepWithinMs !== undefined;
    // One policy, whether this command runs it or the server holding the volume does.
    const retention: RetentionPolicy = {
      ...(keepLast === undefined ? {} : { keepLast }),
      ...(keepWithinMs === undefined ? {} : { keepWithinMs }),
      minLive,
      graceMs,
    };

    if (policy && !dryRun && !this.flags.yes) {
      if (!this.isInteractive()) {
        throw new HyperError(
          'invalid',
          'INVALID_ARGUMENT',
          `Refusing to drop checkpoints of ${url} without confirmation: stdin is not a terminal`,
          { suggestion: 'Add --yes to confirm, or --dry-run to see what would be dropped.' },
        );
      }
      await this.confirmOrAbort(
        `Drop the checkpoints of ${url} outside ${describePolicy(keepLast, keepWithinMs)} (named snapshots are kept)? This cannot be undone.`,
      );
    }

    const started = performance.now();
    const store = await this.openStore(url);
    const signal = this.interruptible();
    const spinner = this.spinner(`Compacting ${url}: scanning`);
    const report = this.progress(spinner);
    let r: CompactResult;
    let online: OnlineCompaction | undefined;
    try {
      r = await compactVolume(store, {
        ...retention,
        dryRun,
        force: this.flags.force,
        holder: `hyper compact on ${hostname()}:${process.pid}`,
        signal,
        onProgress: (phase, done, total) => {
          const sample = { done, ...(total === undefined ? {} : { total }) };
          if (phase === 'scan') report.status(`Compacting ${url}: scanning the index`);
          else if (phase === 'rewrite')
            report.update(`Compacting ${url}: rewriting live blocks`, {
              ...sample,
              unit: 'blocks',
            });
          else
            report.update(`Compacting ${url}: deleting segments`, { ...sample, unit: 'segments' });
        },
      });
    } catch (e) {
      if (!isHyperError(e, 'LEASE_HELD') || this.flags.force) {
        spinner.stop();
        throw e;
      }
      // Served read-write by a server here with a control socket: it compacts the volume
      // online, as asked.
      const seen: { unusable?: HyperError } = {};
      online = await compactOnlineInServer(store, url, {
        controlSocket: this.flags['control-socket'],
        unusable: (err) => (seen.unusable = err),
        policy: retention,
        signal,
        onAsked: (name) =>
          report.status(`Compacting ${url}: online, in the server that holds it (export ${name})`),
      }).catch((err: unknown) => {
        spinner.stop();
        throw err;
      });
      if (online === undefined) {
        spinner.stop();
        // A volume served read-write compacts itself, online, when its server is told to.
        const unusable = seen.unusable;
        const asked =
          unusable === undefined
            ? '"hyper compact" asks a daemon on this host that serves it, or a "hyper serve --control-socket", on --control-socket'
            : unusable.code === 'PERMISSION_DENIED'
              ? `"hyper compact" could not ask the server on ${this.flags['control-socket']}: this user may not use its control socket (run as that server's user, or join the daemon's --control-group)`
              : `"hyper compact" could not ask the server on ${this.flags['control-socket']}: ${unusable.message}`;
        throw new HyperError(e.kind, e.code, e.message, {
          cause: e,
          suggestion: `A served volume is compacted by its server, online: run it with --compact-every (hyper serve or hyper daemon) and the same policy; ${asked}. Or stop that writer, wait for its lease to expire, or take over with --force (it is fenced and can commit nothing more).`,
        });
      }
      r = online.result;
    }
    report.finish();
    spinner.stop();
    const result: CompactCommandResult = {
      url,
      dryRun: r.dryRun,
      checkpointCountBefore: r.checkpointsBefore,
      checkpointCountAfter: r.checkpointsAfter,
      droppedCheckpointCount: r.checkpointsDropped,
      segmentCountBefore: r.segmentsBefore,
      deletedSegmentCount: r.segmentsDeleted,
      deferredSegmentCount: r.segmentsDeferred,
      reclaimedBytes: r.bytesReclaimed,
      rewrittenSegmentCount: r.segmentsRewritten,
      rewrittenBlockCount: r.blocksRewritten,
      rewrittenBytes: r.bytesRewritten,
      storedBytesBefore: r.storedBytesBefore,
      storedBytesAfter: r.storedBytesAfter,
      liveBytes: r.liveBytes,
      checkpoint: r.checkpoint,
      rewriteSkipped: r.rewriteSkipped,
      keepLast: keepLast ?? null,
      keepWithinSeconds: keepWithinMs === undefined ? null : toSeconds(keepWithinMs),
      minLive,
      graceSeconds: toSeconds(graceMs),
      online:
        online === undefined ? null : { controlSocket: online.controlSocket, export: online.name },
      requests: requestStats(store),
      elapsedSeconds: secondsSince(started),
    };
    this.log(renderCompact(result, (rows) => this.keyValueTable(rows)));
    return result;
  }
}

function describePolicy(keepLast: number | undefined, keepWithinMs: number | undefined): string {
  const parts: string[] = [];
  if (keepLast !== undefined) parts.push(`the newest ${keepLast}`);
  if (keepWithinMs !== undefined) parts.push(`those made within ${formatDuration(keepWithinMs)}`);
  return parts.join(' and ');
}

const ratio = (a: number, b: number): string => (b > 0 ? `${(a / b).toFixed(2)}×` : '-');

export function renderCompact(
  r: CompactCommandResult,
  table: (rows: [string, string][]) => string,
): string {
  const would = r.dryRun ? ' (would be)' : '';
  const rows: [string, string][] = [
    ['Volume', r.url],
    ...(r.online === null
      ? []
      : ([
          [
            'Compacted by',
            `the server on ${r.online.controlSocket}, online (export ${r.online.export})`,
          ],
        ] satisfies [string, string][])),
    ['Checkpoint', String(r.checkpoint)],
    [
      `Checkpoints${would}`,
      `${r.checkpointCountBefore} → ${r.checkpointCountAfter} (${r.droppedCheckpointCount} dropped)`,
    ],
    [
      `Segments${would}`,
      `${r.segmentCountBefore} before, ${r.deletedSegmentCount} deleted, ${r.deferredSegmentCount} deferred (grace ${formatDuration(r.graceSeconds * 1000)})`,
    ],
    [
      `Rewritten${would}`,
      `${r.rewrittenSegmentCount} segments, ${r.rewrittenBlockCount} blocks, ${bytesWithExact(r.rewrittenBytes)}`,
    ],
    [`Reclaimed${would}`, bytesWithExact(r.reclaimedBytes)],
    [
      'Stored',
      `${formatBytes(r.storedBytesBefore)} → ${formatBytes(r.storedBytesAfter)}${would} (live ${formatBytes(r.liveBytes)}; ${ratio(r.storedBytesBefore, r.liveBytes)} → ${ratio(r.storedBytesAfter, r.liveBytes)} of live)`,
    ],
    [
      'Requests',
      `${r.requests.totalCount} (${r.requests.getCount} GET, ${r.requests.putCount} PUT, ${r.requests.listCount} LIST, ${r.requests.headCount} HEAD, ${r.requests.deleteCount} DELETE); ${formatBytes(r.requests.receivedBytes)} read, ${formatBytes(r.requests.sentBytes)} written`,
    ],
    ['Time', `${r.elapsedSeconds.toFixed(1)} s`],
  ];
  let out = table(rows);
  if (r.dryRun) out += '\nDry run: nothing was changed.';
  if (r.rewriteSkipped)
    out +=
      '\nThe store has no room for the blocks to move: this run only dropped checkpoints and deleted what nothing reads. Run it again once more room is made (deferred segments are deleted after the grace period).';
  const deferred = r.deferredSegmentCount;
  if (deferred > 0) {
    const verb = r.dryRun ? ' would be' : deferred === 1 ? ' is' : ' are';
    out += `\n${deferred} unreachable segment${deferred === 1 ? '' : 's'}${verb} kept for the grace period; a later run deletes ${deferred === 1 ? 'it' : 'them'}.`;
  }
  return out;
}
