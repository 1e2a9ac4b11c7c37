/**
 * An unknown command or topic (`hyper file creat`, `hyper fle`) is a usage error like any
 * other: `Error [UNKNOWN_COMMAND]` on stderr (or the JSON error with --json), exit code 2, and
 * a suggestion naming the closest commands.
 */
import type { Hook } from '@oclif/core';
import { exitCodeFor } from '../base-command.js';
import {
  closest,
  colorEnabled,
  didYouMean,
  errorJson,
  errorText,
  jsonInArgv,
} from '../cli/output.js';
import { HyperError } from '../errors.js';

const hook: Hook<'command_not_found'> = async function (opts) {
  const { config, id, argv = [] } = opts;
  const sep = config.topicSeparator;
  const visible = config.commands.filter((c) => !c.hidden);
  const names = [
    ...visible.map((c) => c.id),
    ...visible.flatMap((c) => c.aliases),
    ...config.topics.filter((t) => !t.hidden).map((t) => t.name),
  ];
  // oclif joins the words it was given into `id` (`file:creat:file:///x/`): keep the known
  // topics and the first unknown word after them.
  const words = id.split(':');
  // A command followed by arguments it does not take (`hyper ls s3://bkt/`): oclif looks for
  // a longer command. Said as the command itself says an unexpected argument.
  for (let k = words.length - 1; k >= 1; k--) {
    const cmd = words.slice(0, k).join(':');
    if (config.findCommand(cmd) === undefined) continue;
    const extra = [words.slice(k).join(':'), ...argv.filter((a) => !a.startsWith('-'))][0] ?? '';
    const name = cmd.replaceAll(':', config.topicSeparator);
    const url = /^[a-z][a-z0-9+.-]*:\/\//i.test(extra);
    return report(
      new HyperError('invalid', 'INVALID_ARGUMENT', `Unexpected argument: ${extra}`, {
        suggestion:
          cmd === 'ls' && url
            ? `"${config.bin} ls" lists the daemon's exports and takes no URL; to list the volumes under a URL, run "${config.bin} file list ${extra}".`
            : `Run "${config.bin} ${name} --help" for usage.`,
      }),
      [id, ...argv],
    );
  }
  let known = 0;
  while (known < words.length - 1 && config.findTopic(words.slice(0, known + 1).join(':'))) known++;
  const topic = words.slice(0, known).join(':');
  const unknown = words[known] ?? '';
  const typed = words.slice(0, known + 1).join(sep);
  const under = (n: string): string | undefined =>
    topic === ''
      ? n.split(':')[0]
      : n.startsWith(`${topic}:`)
        ? n.slice(topic.length + 1).split(':')[0]
        : undefined;
  const prefix = topic === '' ? '' : `${topic}:`;
  let matches = closest(
    unknown,
    names.map(under).filter((n): n is string => n !== undefined),
  ).map((n) => prefix + n);
  // `hyper fle create`: a mistyped topic followed by a real command name.
  if (known === 0 && words.length > 1) {
    const two = `${unknown}:${words[1]}`;
    const full = closest(two, names, 3).filter((n) => n.endsWith(`:${words[1]}`));
    const viaTopic = matches.map((m) => `${m}:${words[1]}`).filter((n) => names.includes(n));
    if (full.length > 0) matches = full;
    else if (viaTopic.length > 0) matches = viaTopic;
  }
  const bin = config.bin;
  const hint = didYouMean(matches.map((m) => `"${bin} ${m.replaceAll(':', sep)}"`));
  const help = `Run "${bin} help" for the list of commands.`;
  const err = new HyperError('invalid', 'UNKNOWN_COMMAND', `Unknown command "${bin} ${typed}"`, {
    suggestion: hint ? `${hint} ${help}` : help,
  });
  return report(err, [id, ...argv]);
};

/** The error on stderr (or as JSON with --json), with its exit code. */
function report(err: HyperError, argv: string[]): undefined {
  const exitCode = exitCodeFor(err);
  process.exitCode = exitCode;
  // (oclif leaves the flags out of `argv` when a word it joined into `id` held a colon.)
  if (jsonInArgv(argv) || jsonInArgv(process.argv.slice(2))) {
    process.stdout.write(`${JSON.stringify(errorJson(err, exitCode), null, 2)}\n`);
  } else {
    process.stderr.write(`${errorText(err, colorEnabled(process.stderr.isTTY))}\n`);
  }
  return undefined;
}

export default hook;
