import { BaseCommand } from '../../base-command.js';
import type { Setting } from '../../cli/config.js';
import type { ConfigShowResult } from '../../cli/vocabulary.js';

export type { ConfigShowResult };

type ConfigSettingJson = ConfigShowResult['profile'];

export default class ConfigShow extends BaseCommand<typeof ConfigShow> {
  static override summary = 'Show the store settings in effect and where each comes from.';

  static override description = `Prints the configuration file in use, the profile, the AWS profile used for credentials, the endpoint, the region, payload signing, and the store's timeouts and attempts per request, each with its source: a command-line flag, an environment variable, the selected profile's section of the file, the top of the file, or the built-in default. Precedence: flag > environment > profile > file > default.

The file is ~/.config/hyper/config.json ($XDG_CONFIG_HOME/hyper/config.json), or the one HYPER_CONFIG names. Example:

  {
    "profile": "lab",
    "region": "us-east-1",
    "profiles": {
      "lab": { "endpoint": "http://127.0.0.1:7480", "awsProfile": "rgw", "idleTimeout": "20s" },
      "aws": { "region": "eu-west-1" }
    },
    "defaults": {
      "compact": { "grace": "1h", "keep-within": "7d" },
      "*": { "force": false }
    }
  }

"connectTimeout" (default 5s), "idleTimeout" (how long a request may go without a byte moving, default 1m) and "maxAttempts" (per request, the first included, default 6) decide how long a command waits on a store that does not answer; HYPER_S3_CONNECT_TIMEOUT, HYPER_S3_IDLE_TIMEOUT and HYPER_S3_MAX_ATTEMPTS override them.

--profile NAME selects "profiles.NAME"; a name that is no section of the file is an AWS shared-config profile (~/.aws/config), as with "aws --profile". "defaults" gives flags per command ("file import", "compact", "*" for all); a flag on the command line always wins, and a profile's defaults override the top-level ones.`;

  static override examples = [
    {
      description: 'Show what applies and why.',
      command: '<%= config.bin %> <%= command.id %>',
    },
    {
      description: 'Show what a profile would use, as JSON.',
      command: '<%= config.bin %> <%= command.id %> --profile lab --json',
    },
  ];

  public async run(): Promise<ConfigShowResult> {
    const { loaded, settings } = this.hyperConfig;
    const json = (s: Setting): ConfigSettingJson => ({
      value: s.value,
      source: s.source,
      from: s.from,
    });
    const defaults: ConfigShowResult['defaults'] = [];
    const add = (
      d: Record<string, Record<string, string | number | boolean>> | undefined,
      source: string,
      prefix: string,
    ): void => {
      for (const [command, flags] of Object.entries(d ?? {})) {
        for (const [flag, value] of Object.entries(flags)) {
          defaults.push({
            command,
            flag,
            value,
            source,
            from: `${loaded.path}: ${prefix}.${command}.${flag}`,
          });
        }
      }
    };
    add(loaded.config.defaults, 'file', 'defaults');
    const name = settings.profile.value;
    if (name !== null && settings.profileInFile) {
      add(loaded.config.profiles?.[name]?.defaults, 'profile', `profiles.${name}.defaults`);
    }
    const result: ConfigShowResult = {
      configFile: loaded.path,
      configFileExists: loaded.exists,
      profile: json(settings.profile),
      profileInFile: settings.profileInFile,
      awsProfile: json(settings.awsProfile),
      endpoint: json(settings.endpoint),
      region: json(settings.region),
      payloadSigning: json(settings.payloadSigning),
      connectTimeout: json(settings.connectTimeout),
      idleTimeout: json(settings.idleTimeout),
      maxAttempts: json(settings.maxAttempts),
      defaults,
    };
    const show = (s: ConfigSettingJson): string => (s.value === null ? '(none)' : s.value);
    const src = (s: ConfigSettingJson): string =>
      s.from === null ? s.source : `${s.source} (${s.from})`;
    const rows: [string, string, string][] = [
      ['config file', `${loaded.path}${loaded.exists ? '' : ' (absent)'}`, ''],
      [
        'profile',
        show(result.profile) + (name !== null && !settings.profileInFile ? ' (AWS profile)' : ''),
        src(result.profile),
      ],
      ['aws profile', show(result.awsProfile), src(result.awsProfile)],
      ['endpoint', show(result.endpoint), src(result.endpoint)],
      ['region', show(result.region), src(result.region)],
      ['payload signing', show(result.payloadSigning), src(result.payloadSigning)],
      ['connect timeout', show(result.connectTimeout), src(result.connectTimeout)],
      ['idle timeout', show(result.idleTimeout), src(result.idleTimeout)],
      ['max attempts', show(result.maxAttempts), src(result.maxAttempts)],
    ];
    const lines = rows.map(([k, v, s]) => `${k}: ${v}${s ? `  [${s}]` : ''}`);
    for (const d of defaults) {
      lines.push(
        `default: hyper ${d.command.replaceAll(':', ' ')} --${d.flag}=${String(d.value)}  [${d.source} (${d.from})]`,
      );
    }
    this.log(lines.join('\n'));
    return result;
  }
}
