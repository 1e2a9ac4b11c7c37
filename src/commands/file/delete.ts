import { Flags } from '@oclif/core';
import { BaseCommand } from '../../base-command.js';
import { formatBytes } from '../../cli/units.js';
import { HyperError, isHyperError } from '../../errors.js';
import { progress, volumeUrl, yes } from '../../flags.js';
import type { FileDeleteResult } from '../../cli/vocabulary.js';
import {
  checkDeletable,
  deleteVolume,
  statVolume,
  type DeleteResult,
  type VolumeStat,
} from '../../format/volume/admin.js';

export type { FileDeleteResult };

export default class FileDelete extends BaseCommand<typeof FileDelete> {
  static override aliases = ['file:rm'];

  static override summary = 'Delete a volume and every object it owns.';

  static override description = `Removes all objects of the volume: segments, head, lease and snapshots, so every checkpoint is gone too. This cannot be undone. Deleting a clone also releases its pin on its parent (so the parent's compaction may drop that checkpoint); with --force, a parent that cannot be reached keeps the pin, and the command says how to release it later.

On a terminal it asks for confirmation unless --yes is given; without a terminal (scripts, CI) --yes is required. It refuses while another process holds a live lease on the volume (for example a running "hyper serve") unless --force is given. A missing volume is an error (VOLUME_NOT_FOUND, exit code 3) unless --if-exists is given.`;

  static override examples = [
    {
      description: 'Delete a volume, asking first.',
      command: '<%= config.bin %> <%= command.id %> file://./vols/demo/',
    },
    {
      description: 'Delete from a script, succeeding if it is already gone.',
      command: '<%= config.bin %> <%= command.id %> s3://my-bucket/vols/vm1/ --yes --if-exists',
    },
    {
      description: 'Delete and print the result as JSON.',
      command: '<%= config.bin %> <%= command.id %> file://./vols/demo/ --yes --json',
    },
  ];

  static override args = {
    url: volumeUrl({ required: true }),
  };

  static override flags = {
    yes,
    progress,
    force: Flags.boolean({
      summary: 'Delete even while another process holds a live lease on the volume.',
    }),
    'if-exists': Flags.boolean({
      summary: 'Succeed without doing anything if there is no volume at the URL.',
    }),
  };

  public async run(): Promise<FileDeleteResult> {
    const { url } = this.args;
    const { force } = this.flags;
    const ifExists = this.flags['if-exists'];
    const missing = (): FileDeleteResult => {
      this.log(`No volume at ${url}; nothing to delete.`);
      return { url, deleted: false, deletedObjectCount: 0, parent: null };
    };
    let store;
    try {
      store = await this.openStore(url);
    } catch (e) {
      if (isMissing(e) && ifExists) return missing();
      throw e;
    }

    // Look first: a missing volume, a live lease and the confirmation come before any delete.
    let st: VolumeStat | undefined;
    try {
      st = await statVolume(store);
    } catch (e) {
      if (isMissing(e) && ifExists) return missing();
      // A damaged or half-deleted volume can still be deleted (deleteVolume refuses prefixes
      // holding anything else); any other failure stops here.
      const damaged = e instanceof HyperError && (e.kind === 'data' || e.code === 'NOT_A_VOLUME');
      if (!damaged) throw e;
      this.note(`Warning: ${e.message}; deleting what is left of the volume.`);
    }
    // The library decides whether the volume may be deleted; this command words the refusal.
    const leaseHeld = (e: unknown): unknown =>
      isHyperError(e, 'LEASE_HELD') ? leaseHeldError(url, st?.lease?.holder, e) : e;
    try {
      await checkDeletable(store, { force });
    } catch (e) {
      if (isMissing(e) && ifExists) return missing();
      throw leaseHeld(e);
    }

    if (!this.flags.yes) {
      if (!this.isInteractive()) {
        const why = this.jsonEnabled() ? 'with --json' : 'stdin is not a terminal';
        throw new HyperError(
          'invalid',
          'INVALID_ARGUMENT',
          `Refusing to delete ${url} without confirmation: ${why}`,
          { suggestion: 'Add --yes to confirm the deletion.' },
        );
      }
      const what = st
        ? `${formatBytes(st.size)}, ${plural(st.segments, 'segment')}, ${formatBytes(st.storedBytes)} stored, ` +
          plural(st.snapshots, 'named snapshot') +
          (st.clonePins > 0 ? `; ${plural(st.clonePins, 'clone')} still read from it` : '')
        : 'metadata unreadable';
      await this.confirmOrAbort(`Delete volume ${url} (${what}) and all its checkpoints?`);
    }

    const spinner = this.spinner(`Deleting ${url}`);
    const report = this.progress(spinner);
    let deleted: DeleteResult;
    try {
      deleted = await deleteVolume(store, {
        force,
        signal: this.interruptible(),
        openStore: (u) => this.openStore(u),
        onProgress: (p) => {
          report.update(`Deleting ${url}`, {
            done: p.done,
            ...(p.total === undefined ? {} : { total: p.total }),
            unit: p.unit,
          });
        },
      });
    } catch (e) {
      if (isMissing(e) && ifExists) return missing();
      throw leaseHeld(e);
    } finally {
      spinner.stop();
    }
    report.finish();
    const { objectsDeleted, pin } = deleted;
    const lines = [`Deleted ${url} (${objectsDeleted} objects).`];
    if (pin?.released) lines.push(`Released its pin ${pin.key} on the parent ${pin.parent}.`);
    this.log(lines.join('\n'));
    if (pin && !pin.released) {
      this.note(
        `Warning: ${pin.message}. It keeps the parent's checkpoint; release it with \`${this.config.bin} snapshot unpin ${pin.parent} ${url}\`.`,
      );
    }
    return {
      url,
      deleted: true,
      deletedObjectCount: objectsDeleted,
      parent: pin ? { url: pin.parent, pinKey: pin.key, pinReleased: pin.released } : null,
    };
  }
}

/** LEASE_HELD as this command words it: what holds the volume, and how to proceed. */
function leaseHeldError(url: string, holder: string | undefined, cause: unknown): HyperError {
  return new HyperError(
    'conflict',
    'LEASE_HELD',
    `${url} is in use${holder ? ` by ${holder}` : ''} (its lease is live)`,
    {
      suggestion:
        'Stop the process using it (e.g. hyper serve) and retry, or add --force to delete it anyway.',
      cause,
    },
  );
}

/** No volume there: nothing under the prefix, or (file://) not even the directory. */
const isMissing = (e: unknown): boolean =>
  isHyperError(e, 'VOLUME_NOT_FOUND') || isHyperError(e, 'BUCKET_NOT_FOUND');

const plural = (n: number, word: string): string => `${n} ${word}${n === 1 ? '' : 's'}`;
