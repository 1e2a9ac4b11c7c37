#!/usr/bin/env node
/**
 * Writes oclif.manifest.json next to package.json: every command's id, flags, args and the
 * path of its compiled file. With the manifest, oclif starts without importing every command
 * (and everything they import) just to learn their names and flags, so `hyper --version`,
 * `hyper --help` and a single command start several hundred milliseconds sooner; only the
 * command that runs is loaded.
 *
 * Run after `tsc` (`npm run build` does both; `npm pack` runs a clean build through
 * `prepack`). The manifest lists the commands compiled into dist/ at that moment: a command
 * added later needs `npm run build` again before oclif sees it.
 *
 * This is what `oclif manifest` (the oclif CLI) does, with @oclif/core's own Plugin loader;
 * the oclif CLI itself is not a dependency because it brings hundreds of packages (a second
 * AWS SDK for its release tooling, code generators) for these few lines.
 */
import { writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Plugin } from '@oclif/core';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const plugin = new Plugin({
  root,
  type: 'core',
  ignoreManifest: true,
  errorOnManifestCreate: true,
});
await plugin.load();
const commands = Object.keys(plugin.manifest.commands);
if (commands.length === 0) {
  process.stderr.write('oclif-manifest: no commands found under dist/commands: build first\n');
  process.exit(1);
}
await writeFile(join(root, 'oclif.manifest.json'), `${JSON.stringify(plugin.manifest)}\n`);
