#!/usr/bin/env -S node --max-semi-space-size=4
// V8's young generation is capped at 4 MiB semi-spaces (new space 8 MiB instead of 32): the
// server's short-lived objects die young either way, and `serve` keeps ~25 MiB less resident
// with no measured cost in CPU or throughput (README, "Memory"). `node bin/run.js` skips it.
import { execute } from '@oclif/core';

await execute({ dir: import.meta.url });
