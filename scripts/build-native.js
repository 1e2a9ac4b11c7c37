#!/usr/bin/env node
/**
 * Compiles hyper's native addon (native/: CRC-32C on the processor's CRC32 instruction in three
 * streams at once) with node-gyp. npm runs this as the package's `install` script, after the
 * dependencies, with its bundled node-gyp on the PATH (and `npm_config_node_gyp` naming it).
 *
 * A failed build does not fail the install: block checksums then run as a table walk, about
 * twice the CPU, and `hyper doctor` warns. Where the tests require their tools (CI), a test
 * checks that the addon is in use on a processor that has the instruction.
 *
 *   node scripts/build-native.js     (or: npm rebuild hyper / npm run build:native)
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const dir = join(dirname(fileURLToPath(import.meta.url)), '..', 'native');
const gyp = process.env.npm_config_node_gyp;
const [cmd, args] =
  gyp && existsSync(gyp) ? [process.execPath, [gyp, 'rebuild']] : ['node-gyp', ['rebuild']];
const r = spawnSync(cmd, args, { cwd: dir, stdio: 'inherit' });
if (r.status !== 0) {
  const why = r.error ? r.error.message : `node-gyp exited with ${r.status ?? r.signal}`;
  console.warn(
    `hyper: the native CRC-32C addon did not build (${why}); block checksums will use a ` +
      'table walk (about twice the CPU). It needs g++, make and python3: install them and run ' +
      '"npm run build:native".',
  );
}
