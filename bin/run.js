#!/usr/bin/env -S node --max-semi-space-size=4
// V8's young generation is capped at 4 MiB semi-spaces (new space 8 MiB instead of 32):
// `serve` keeps 25-60 MiB less resident for 2-4% more CPU in garbage collection (README,
// "Memory"). `node bin/run.js` runs without it.
import { execute } from '@oclif/core';

await execute({ dir: import.meta.url });
