import { hostname } from 'node:os';
import { Flags } from '@oclif/core';
import { BaseCommand } from '../../base-command.js';
import { bytesWithExact } from '../../cli/results.js';
import type { SnapshotFlattenResult } from '../../cli/vocabulary.js';
import { progress, volumeUrl } from '../../flags.js';
import { flattenVolume } from '../../format/volume/clone.js';

export type { SnapshotFlattenResult };

export default class SnapshotFlatten extends BaseCommand<typeof SnapshotFlatten> {
  static override summary = 'Make a clone independent of its parent.';

  static override description = `Copies every block the clone still reads from its parent (and the parent's parents) into the clone's own segments, commits a checkpoint that no longer names the parent, and releases the parent's pin, so that the parent's compaction can drop that checkpoint and the parent can be deleted. The clone's checkpoints from before the flatten are dropped (they read parent data).

It takes the clone's lease: it refuses while another writer holds it (LEASE_HELD, exit code 4) unless --force. It refuses a volume that is not a clone (exit code 2), and a clone that has named snapshots or clones of its own (exit code 4): delete or flatten those first. Interrupted, the clone stays a valid clone; run it again. Interrupted right after it dropped the parent link, the volume is no clone any more but keeps its pin, and its compaction waits: run it again to finish (it then releases the pin, or, if a clone or snapshot of the volume was made meanwhile, puts the link back).`;

  static override examples = [
    {
      description: 'Flatten a clone.',
      command: '<%= config.bin %> <%= command.id %> file://./vols/vm7/',
    },
    {
      description: 'Flatten a clone on S3 and print the result as JSON.',
      command: '<%= config.bin %> <%= command.id %> s3://my-bucket/vols/vm1-copy/ --json',
    },
  ];

  static override args = {
    url: volumeUrl({ required: true }),
  };

  static override flags = {
    force: Flags.boolean({
      summary:
        "Take the lease even if another writer holds it (that writer's unflushed writes are lost).",
    }),
    progress,
  };

  public async run(): Promise<SnapshotFlattenResult> {
    const { url } = this.args;
    const store = await this.openStore(url);
    const spinner = this.spinner(`Flattening ${url}`);
    const report = this.progress(spinner);
    let r;
    try {
      r = await flattenVolume(store, {
        force: this.flags.force,
        holder: `hyper snapshot flatten on ${hostname()}:${process.pid}`,
        openStore: (u) => this.openStore(u),
        signal: this.interruptible(),
        onProgress: (done, total) => {
          report.update(`Flattening ${url}: copying blocks`, { done, total, unit: 'blocks' });
        },
      });
    } finally {
      spinner.stop();
    }
    report.finish();
    const parent = r.parent.url;
    const result: SnapshotFlattenResult = {
      url,
      parent: r.parent,
      copiedBlockCount: r.blocksCopied,
      copiedBytes: r.bytesCopied,
      checkpoint: r.checkpoint,
      resumed: r.resumed,
    };
    if (r.resumed) {
      this.log(
        `Finished the flatten of ${url} that stopped after dropping the link to ${parent}: nothing reads ${parent} through ${url}, and its checkpoint ${result.parent.checkpoint} is unpinned.`,
      );
      return result;
    }
    this.log(
      `Flattened ${url}: copied ${bytesWithExact(result.copiedBytes)} (${result.copiedBlockCount} blocks) from ${parent}; ` +
        `checkpoint ${result.checkpoint} no longer reads from it, and its checkpoint ${result.parent.checkpoint} is unpinned.`,
    );
    return result;
  }
}
