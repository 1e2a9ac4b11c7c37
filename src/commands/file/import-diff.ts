import { Args, Flags } from '@oclif/core';
import { BaseCommand } from '../../base-command.js';
import { bytesWithExact, diffStreamFields, iso, secondsSince } from '../../cli/results.js';
import type { FileImportDiffResult } from '../../cli/vocabulary.js';
import { formatBytes } from '../../cli/units.js';
import { HyperError } from '../../errors.js';
import { progress, volumeUrl } from '../../flags.js';
import { importDiff, type DiffProgress } from '../../format/volume/diff-stream.js';

export type { FileImportDiffResult };

const PHASES: Record<DiffProgress['phase'], string> = {
  export: 'Exporting',
  verify: 'Verifying the diff',
  compare: 'Comparing the target with its marker',
  apply: 'Applying the diff',
};

export default class FileImportDiff extends BaseCommand<typeof FileImportDiff> {
  static override summary = 'Apply a diff stream written by export-diff to a copy of its volume.';

  static override description = `Reads the whole stream first and checks it (every record's checksum, their order, the end record's counts and SHA-256), and checks that the target holds the diff's from-checkpoint; only then is the target written, resized to the to-checkpoint's size if that differs, and committed as one checkpoint. A damaged, truncated or unknown stream, or a target that does not hold the from-checkpoint, is refused and nothing is written. A stream from stdin (or a pipe) is first copied to a temporary file ($TMPDIR), since it cannot be read twice.

How the target proves its base: each import-diff names the checkpoint it commits with a snapshot diff-<first 8 hex digits of the source's uuid>-<to-checkpoint>, recording the source's uuid, and deletes the one it started from. The next diff (whose --from is that checkpoint) applies only if the target still holds that snapshot's content, or differs from it only where this diff writes anyway (what an import of the same diff that was killed half way leaves: run it again). The first diff of a chain is either a full stream (export-diff without --from) imported into a volume that holds no data (a new one: file create), or a diff onto a target you made from the from-checkpoint yourself (file export --at + file import, or snapshot clone) with --assume-base; its size must be the from-checkpoint's.

--dry-run does every check and writes nothing. If applying fails half way (the store, Ctrl-C), the target is restored to the checkpoint it started from; if the import is killed instead, running it again finishes it (--force while the killed one's lease has not lapsed). A first import (a full stream, or --assume-base) pins the checkpoint it starts from as a marker for that, and deletes it when done.`;

  static override examples = [
    {
      description:
        'Start a chain with a full stream into a new volume (like rbd export-diff without --from-snap).',
      command:
        '<%= config.bin %> file export-diff file://./vols/demo/ --to 7 - | (<%= config.bin %> file create file://./copy/ --size 1M && <%= config.bin %> <%= command.id %> - file://./copy/)',
    },
    {
      description: 'Or: a copy of checkpoint 7, then the diff from 7.',
      command:
        '<%= config.bin %> file export file://./vols/demo/ --at 7 base.img && <%= config.bin %> file import base.img file://./copy/ --create && <%= config.bin %> <%= command.id %> demo-7-9.diff file://./copy/ --assume-base',
    },
    {
      description: 'The next diff of the chain (from 9): the target proves its base itself.',
      command: '<%= config.bin %> <%= command.id %> demo-9-12.diff file://./copy/',
    },
    {
      description: 'From stdin, with progress lines for a CI log.',
      command:
        'zstdcat vm1-40-42.diff.zst | <%= config.bin %> <%= command.id %> - s3://backup/vols/vm1/ --progress',
    },
    {
      description: 'Check a diff against the target without changing it, as JSON.',
      command: '<%= config.bin %> <%= command.id %> demo-9-12.diff file://./copy/ --dry-run --json',
    },
  ];

  static override args = {
    file: Args.string({
      description: 'The diff stream: a file written by export-diff, or - for stdin.',
      required: true,
    }),
    url: volumeUrl({ required: true }),
  };

  static override flags = {
    'assume-base': Flags.boolean({
      summary:
        "Trust that the target holds the diff's from-checkpoint (the first diff of a chain).",
      description:
        "For a target made from the from-checkpoint by file export --at and file import, or by snapshot clone. Its size must be the from-checkpoint's, and a marker showing it holds another checkpoint of the source still refuses.",
    }),
    'dry-run': Flags.boolean({ summary: 'Verify the stream and the base; write nothing.' }),
    force: Flags.boolean({
      summary:
        'Take the lease even if another writer holds it (that writer is fenced and can commit nothing more).',
    }),
    progress,
  };

  public async run(): Promise<FileImportDiffResult> {
    const { file, url } = this.args;
    const started = performance.now();
    const stdin = file === '-';
    if (stdin && process.stdin.isTTY) {
      throw new HyperError(
        'invalid',
        'INVALID_ARGUMENT',
        'stdin is a terminal, not a diff stream',
        {
          suggestion:
            'Pipe the diff in (hyper file export-diff … - | hyper file import-diff - URL) or give its file.',
        },
      );
    }
    const store = await this.openStore(url);
    const spinner = this.spinner(`Importing ${stdin ? 'stdin' : file} into ${url}`);
    const progress = this.progress(spinner);
    let phase: DiffProgress['phase'] | undefined;
    const onProgress = (p: DiffProgress): void => {
      if (p.phase !== phase) {
        if (phase !== undefined) progress.finish();
        phase = p.phase;
      }
      progress.update(PHASES[p.phase], {
        done: p.done,
        ...(p.total === undefined ? {} : { total: p.total }),
        unit: 'bytes',
      });
    };
    const input = stdin
      ? { stream: process.stdin as AsyncIterable<Buffer>, name: 'stdin' }
      : { path: file };
    const r = await importDiff(
      input,
      store,
      {
        assumeBase: this.flags['assume-base'],
        dryRun: this.flags['dry-run'],
        force: this.flags.force,
        signal: this.interruptible(),
      },
      onProgress,
    );
    progress.finish();
    spinner.stop();

    const out: FileImportDiffResult = {
      file,
      url,
      ...diffStreamFields(r),
      base: r.base.kind,
      baseSnapshot: r.base.marker?.name ?? null,
      previousCheckpoint: r.previousCheckpoint,
      previousSize: r.previousSize,
      checkpoint: r.checkpoint ?? null,
      checkpointTime: r.checkpointTime ? iso(r.checkpointTime) : null,
      size: r.size,
      snapshot: r.snapshot ?? null,
      removedSnapshot: r.removedSnapshot ?? null,
      spooled: r.spooled,
      dryRun: r.dryRun,
      elapsedSeconds: secondsSince(started),
    };
    const what =
      out.fromCheckpoint === 0
        ? `the full stream of ${out.sourceUuid} at checkpoint ${out.toCheckpoint}`
        : `the diff of ${out.sourceUuid} from checkpoint ${out.fromCheckpoint} to ${out.toCheckpoint}`;
    const base =
      out.base === 'marker'
        ? `snapshot ${out.baseSnapshot ?? ''}`
        : out.base === 'resumed'
          ? `snapshot ${out.baseSnapshot ?? ''}, changed since only where this diff writes (an import of it cut short)`
          : out.base === 'empty'
            ? 'an empty volume (full stream)'
            : 'assumed (--assume-base)';
    const body =
      `${out.dataRecordCount} data record${out.dataRecordCount === 1 ? '' : 's'} (${formatBytes(out.dataBytes)}), ` +
      `${out.zeroRecordCount} zero record${out.zeroRecordCount === 1 ? '' : 's'} (${formatBytes(out.zeroBytes)})`;
    if (out.dryRun) {
      this.log(
        `Dry run: ${what} (${body}) verifies and applies to ${url} (base: ${base}); nothing was written.`,
      );
    } else {
      const resized =
        out.size === out.previousSize
          ? ''
          : `, resized from ${bytesWithExact(out.previousSize)} to ${bytesWithExact(out.size)}`;
      this.log(
        `Applied ${what} to ${url}: ${body}${resized}; checkpoint ${out.checkpoint ?? ''} (was ${out.previousCheckpoint}), ` +
          `named ${out.snapshot ?? ''}${out.removedSnapshot ? ` (${out.removedSnapshot} deleted)` : ''}; base: ${base}; ` +
          `${out.elapsedSeconds.toFixed(1)} s.`,
      );
    }
    return out;
  }
}
