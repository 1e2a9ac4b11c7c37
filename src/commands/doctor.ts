import { Flags } from '@oclif/core';
import { BaseCommand } from '../base-command.js';
import { prefixUrl } from '../flags.js';
import { msOf, runDoctor, type DoctorCheck, type DoctorReport } from '../doctor/doctor.js';

/** The result printed with --json. */
export type DoctorResult = DoctorReport;

/**
 * Exit codes of `hyper doctor` (README "hyper doctor"): 0 every check passed or was skipped,
 * 7 at least one warning (volumes work, at a cost or a risk to look at), 8 at least one
 * failure (do not keep volumes here). Errors before any check ran keep the usual codes.
 */
export const EXIT_DOCTOR_WARNINGS = 7;
export const EXIT_DOCTOR_FAILURES = 8;

const MARK: Record<DoctorCheck['status'], string> = {
  ok: 'ok',
  warn: 'WARN',
  fail: 'FAIL',
  skip: 'skip',
};

/** Wrap text at spaces so that the table stays within a terminal's width. */
function wrap(text: string, width: number): string {
  const lines: string[] = [];
  let line = '';
  for (const word of text.split(' ')) {
    if (line && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else line = line ? `${line} ${word}` : word;
  }
  if (line) lines.push(line);
  return lines.join('\n');
}

const size = (n: number): string =>
  n >= 1 << 20 ? `${n / (1 << 20)} MiB` : n >= 1024 ? `${n / 1024} KiB` : `${n} B`;

export default class Doctor extends BaseCommand<typeof Doctor> {
  static override summary = 'Check that an S3 bucket is safe and fast enough to hold volumes.';

  static override description = `Checks the prefix where volumes are (or will be) kept: that the credentials can list it; that the store really enforces conditional writes (a create-only PUT of an existing key and a compare-and-swap with a stale ETag must both be refused: hyper's single writer and crash consistency depend on it); PUT and GET latency and throughput for 4 KiB, 1 MiB and 8 MiB objects; and the bucket settings that cost or lose data: versioning, lifecycle rules that expire or move objects under the prefix, object lock, Block Public Access (bucket, and account with --account-id) and a public bucket policy. A setting the endpoint does not implement (Ceph RGW, MinIO, …) is reported as not supported. Temporary objects under <prefix>.hyper-doctor-<id>/ are deleted before it ends.

Exit code 0: every check passed (or was skipped); 7: warnings; 8: failures, do not keep volumes here.`;

  static override examples = [
    {
      description: 'Check a bucket on AWS, including the account-level Block Public Access.',
      command: '<%= config.bin %> <%= command.id %> s3://my-bucket/vols/ --account-id 123456789012',
    },
    {
      description: 'Check a Ceph RGW bucket, as JSON, with 10 samples per size.',
      command:
        '<%= config.bin %> <%= command.id %> s3://hyper/vols/ --endpoint http://127.0.0.1:7480 --samples 10 --json',
    },
  ];

  static override args = { url: prefixUrl({ required: true }) };

  static override flags = {
    'account-id': Flags.string({
      summary: 'AWS account id, for the account-level Block Public Access check (S3 Control).',
      helpValue: '<id>',
      parse: async (input) => {
        if (!/^\d{12}$/.test(input)) throw new Error(`--account-id must be 12 digits: ${input}`);
        return input;
      },
    }),
    samples: Flags.integer({
      summary: 'PUT and GET requests per object size in the latency test (0 skips it).',
      default: 3,
      min: 0,
      max: 100,
    }),
  };

  public async run(): Promise<DoctorResult> {
    const { url } = this.args;
    const flags = this.flags;
    const spinner = this.spinner(`Checking ${url}…`);
    const report = await runDoctor(url, {
      ...(flags.endpoint === undefined ? {} : { endpoint: flags.endpoint }),
      ...(flags.region === undefined ? {} : { region: flags.region }),
      ...(flags['account-id'] === undefined ? {} : { accountId: flags['account-id'] }),
      ...this.storeTuning(),
      samples: flags.samples,
      signal: this.interruptible(),
    });
    spinner.stop();
    if (report.status === 'fail') process.exitCode = EXIT_DOCTOR_FAILURES;
    else if (report.status === 'warn') process.exitCode = EXIT_DOCTOR_WARNINGS;

    this.log(`${report.url} at ${report.endpoint}`);
    this.log(
      this.table(
        ['check', 'status', 'detail'],
        report.checks.map((c) => [
          wrap(c.title, 18),
          MARK[c.status],
          wrap(c.suggestion !== null ? `${c.detail}. ${c.suggestion}` : c.detail, 46),
        ]),
      ),
    );
    if (report.performance.length > 0) {
      this.log(
        this.table(
          ['request', 'size', 'median', 'slowest', 'throughput'],
          report.performance.map((p) => [
            p.op.toUpperCase(),
            size(p.sizeBytes),
            `${msOf(p.p50Seconds)} ms`,
            `${msOf(p.maxSeconds)} ms`,
            `${(p.bytesPerSecond / (1 << 20)).toFixed(1)} MiB/s`,
          ]),
        ),
      );
    }
    const { okCount: ok, warnCount: warn, failCount: fail, skipCount: skip } = report;
    const verdict =
      report.status === 'fail'
        ? 'UNSAFE: do not keep volumes here'
        : report.status === 'warn'
          ? 'usable, with warnings'
          : 'ok';
    this.log(`${verdict} (${ok} ok, ${warn} warnings, ${fail} failures, ${skip} skipped)`);
    return report;
  }
}
