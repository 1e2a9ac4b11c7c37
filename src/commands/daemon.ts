import { Flags } from '@oclif/core';
import { BaseCommand } from '../base-command.js';
import {
  compactionFlags,
  compactionOf,
  metricsFlags,
  tuningFlags,
  tuningOf,
  controlSocket,
  duration,
} from '../flags.js';
import type { DaemonListening, DaemonResult } from '../cli/vocabulary.js';
import { defaultStateFile } from '../daemon/paths.js';
import { runDaemon } from '../daemon/run.js';
import { lineLogger } from '../serve/logger.js';

export default class DaemonCommand extends BaseCommand<typeof DaemonCommand> {
  static override summary = 'Run the NBD daemon: exports mapped and unmapped at runtime.';

  static override description = `Serves NBD exports like "hyper serve", but its exports are added and removed while it runs, with "hyper map", "hyper unmap" and "hyper ls" over a control socket (HTTP+JSON on a unix socket; its file mode decides who may use it). The exports are remembered in a state file, so a restart maps them again; --config lists exports too, re-read on SIGHUP (systemctl reload). SIGINT/SIGTERM stop accepting connections, answer requests in flight, flush and release every lease. Under systemd it reports readiness (Type=notify) and takes sockets passed by socket activation (LISTEN_FDS, names "nbd" and "control"). With --json, stdout is JSON Lines: a {"event":"listening",…} line once ready (the daemon and its exports, as "hyper ls --json" shows them) and a {"event":"stopped",…} line at the end.`;

  static override examples = [
    {
      description: 'Run a daemon on the default port and control socket, then map a volume.',
      command:
        '<%= config.bin %> <%= command.id %> &\n<%= config.bin %> map s3://bucket/vols/vm1/ --endpoint http://127.0.0.1:7480',
    },
    {
      description:
        'Run with a config file, a group allowed to use the control socket, and a state file.',
      command:
        '<%= config.bin %> <%= command.id %> --config /etc/hyper/daemon.json --control-group hyper --state-file /var/lib/hyper/daemon.json',
    },
  ];

  static override jsonLines = true;

  /** daemon writes its JSON Lines itself (see run); oclif must not print the result again. */
  public override logJson(): void {}

  static override flags = {
    config: Flags.string({
      summary: 'JSON file listing exports to map (re-read on SIGHUP).',
      helpValue: '<file>',
    }),
    'control-socket': controlSocket,
    'control-group': Flags.string({
      summary: 'Give the control socket this group and mode 0660 (default: mode 0600).',
      helpValue: '<group>',
    }),
    'state-file': Flags.string({
      summary:
        'Where the export table is kept across restarts (default: $STATE_DIRECTORY/daemon.json under systemd, /var/lib/hyper/daemon.json as root, else ~/.local/state/hyper/daemon.json).',
      helpValue: '<file>',
    }),
    port: Flags.integer({
      summary: 'TCP port to listen on for NBD (0 picks a free one).',
      default: 10809,
      min: 0,
      max: 65535,
    }),
    bind: Flags.string({
      summary: 'Address to listen on for NBD.',
      default: '127.0.0.1',
      helpValue: '<address>',
    }),
    socket: Flags.string({
      summary: 'Listen for NBD on this unix socket instead of TCP.',
      helpValue: '<path>',
      exclusive: ['port', 'bind'],
    }),
    ...metricsFlags(
      'For every mapped export, as `hyper serve` reports them; 503 while one cannot make writes durable.',
    ),
    ...tuningFlags('one subdirectory per export, by name'),
    ...compactionFlags(),
    drain: duration({
      summary: 'How long unmap and shutdown let clients finish their requests in flight.',
      default: 10_000,
    }),
    verbose: Flags.boolean({
      char: 'v',
      summary: 'Log every connection and refused request (debug) on stderr.',
    }),
  };

  public async run(): Promise<DaemonResult> {
    const flags = this.flags;
    const signal = this.interruptible();
    const json = this.jsonEnabled();
    const last = await runDaemon({
      controlSocket: flags['control-socket'],
      stateFile: flags['state-file'] ?? defaultStateFile(),
      listen:
        flags.socket === undefined
          ? { port: flags.port, host: flags.bind }
          : { path: flags.socket },
      logger: lineLogger({
        level: flags.verbose ? 'debug' : 'info',
        write: (line) => process.stderr.write(line),
      }),
      signal,
      // --json: JSON Lines on stdout, one `listening` line now and one `stopped` line at the end.
      onReady: (ready) => {
        if (!json) return;
        const listening: DaemonListening = { event: 'listening', ...ready };
        process.stdout.write(`${JSON.stringify(listening)}\n`);
      },
      drainMs: flags.drain,
      tuning: { ...tuningOf(flags), ...compactionOf(flags) },
      version: this.config.version,
      ...(flags.config === undefined ? {} : { configFile: flags.config }),
      ...(flags['control-group'] === undefined ? {} : { controlGroup: flags['control-group'] }),
      ...(flags['metrics-port'] === undefined
        ? {}
        : {
            metricsPort: flags['metrics-port'],
            ...(flags['metrics-bind'] === undefined ? {} : { metricsHost: flags['metrics-bind'] }),
          }),
      ...(flags.endpoint === undefined ? {} : { endpoint: flags.endpoint }),
      ...(flags.region === undefined ? {} : { region: flags.region }),
      storeTuning: this.storeTuning(),
    });
    const result: DaemonResult = { event: 'stopped', ...last, reason: 'interrupted' };
    if (json) process.stdout.write(`${JSON.stringify(result)}\n`);
    return result;
  }
}
