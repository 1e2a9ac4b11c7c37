#!/usr/bin/env -S node --max-semi-space-size=4 --interrupt-budget=540672
// V8's young generation is capped at 4 MiB semi-spaces (new space 8 MiB instead of 32):
// `serve` keeps 25-60 MiB less resident for 2-4% more CPU in garbage collection (README,
// "Memory"). The interrupt budget is 8x V8's default: a function runs 8x longer before the
// optimizing compiler takes it, with riper type feedback, so a freshly started server spends
// far less CPU compiling (README, "Start-up CPU"). `node bin/run.js` runs without either.
import { fileURLToPath, URL } from 'node:url';
import { execute } from '@oclif/core';

// A reader of stdout that went away (`hyper help | head -1`): what is still written is
// dropped, never reported as a bug. A command whose own write failed so exits 141, as one
// killed by SIGPIPE (src/base-command.ts).
process.stdout.on('error', (e) => {
  if (e.code !== 'EPIPE') throw e;
});

// No user plugins (hyper installs none): oclif would otherwise read ~/.local/share/hyper/
// on every run, and warn when another user's HOME is not readable (`sudo -u`, a service).
await execute({
  loadOptions: { root: fileURLToPath(new URL('..', import.meta.url)), userPlugins: false },
});
