/**
 * Start-up time of the CLI: median (and min/max) wall time of --runs runs (10 by default) of
 *   hyper --version                 (bin/run.js)
 *   hyper file stat file://…        (a small volume on HYPER_BENCH_DIR, else tmpfs/tmp)
 * side by side with `qemu-img --version` and `rbd --version` when installed, run in turns.
 * Prints a table and writes bench-results/startup.json.
 *
 *   node --import tsx bench/startup.ts [--runs 10]
 * Needs `npm run build` (bin/run.js runs dist/).
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { arg, haveTool, median, onExit, run, runOk, table, writeResults } from './lib.js';

const runs = Number(arg('runs', '10'));

interface Cmd {
  name: string;
  cmd: string;
  args: string[];
}

async function main(): Promise<void> {
  if (!existsSync('dist/commands')) throw new Error('run `npm run build` first');
  const base = process.env.HYPER_BENCH_DIR ?? (existsSync('/dev/shm') ? '/dev/shm' : '/tmp');
  const dir = await mkdtemp(join(base, 'hyper-bench-startup-'));
  const removeAtExit = onExit(() => spawnSync('rm', ['-rf', dir]));
  try {
    const url = `file://${join(dir, 'vol')}/`;
    await runOk('node', ['bin/run.js', 'file', 'create', url, '--size', '64MiB']);
    const cmds: Cmd[] = [
      { name: 'hyper --version', cmd: 'node', args: ['bin/run.js', '--version'] },
      { name: 'hyper file stat file://', cmd: 'node', args: ['bin/run.js', 'file', 'stat', url] },
    ];
    if (haveTool('qemu-img'))
      cmds.push({ name: 'qemu-img --version', cmd: 'qemu-img', args: ['--version'] });
    if (haveTool('rbd')) cmds.push({ name: 'rbd --version', cmd: 'rbd', args: ['--version'] });

    // One untimed run each (page cache), then the timed runs in turns.
    for (const c of cmds) await runOk(c.cmd, c.args);
    const times: Record<string, number[]> = Object.fromEntries(cmds.map((c) => [c.name, []]));
    const errors: string[] = [];
    for (let i = 0; i < runs; i++) {
      for (const c of cmds) {
        const r = await run(c.cmd, c.args, { timeoutMs: 60_000 });
        if (r.code !== 0) errors.push(`${c.name}: exit ${r.code}: ${r.stderr.trim().slice(-300)}`);
        else (times[c.name] as number[]).push(r.ms);
      }
    }
    const rows = cmds.map((c) => {
      const xs = times[c.name] as number[];
      return {
        command: c.name,
        runs: xs.length,
        medianMs: median(xs),
        minMs: Math.min(...xs),
        maxMs: Math.max(...xs),
      };
    });
    console.log(`\nCLI start-up, wall time of ${runs} runs each (in turns)\n`);
    console.log(
      table(
        ['command', 'runs', 'median ms', 'min ms', 'max ms'],
        rows.map((r) => [r.command, r.runs, r.medianMs, r.minMs, r.maxMs]),
      ),
    );
    if (errors.length > 0) console.log(`\nErrors\n  ${errors.join('\n  ')}`);
    const file = await writeResults('startup', { runs, commands: rows, errors });
    console.log(`\nwrote ${file}`);
    if (errors.length > 0) process.exitCode = 1;
  } finally {
    await rm(dir, { recursive: true, force: true });
    removeAtExit();
  }
}

await main();
