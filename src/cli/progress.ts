/**
 * Progress of long operations (import, export, compact, check --deep, delete, flatten): what
 * is done of how much, the rate, and the time left. Always on stderr, never on stdout. On a
 * terminal it is the text of a spinner line; with `--progress` on a non-terminal (CI logs) it
 * is a plain line every few seconds (HYPER_PROGRESS_INTERVAL, in milliseconds; default 2000),
 * plus one when the operation ends.
 */
import { formatBytes, formatDuration } from './units.js';

export interface ProgressSample {
  done: number;
  total?: number;
  /** `bytes` prints sizes and a byte rate; anything else is a count of that unit. */
  unit: string;
}

/** Time over which the rate is averaged (a sliding window, so the estimate follows changes). */
const RATE_WINDOW_MS = 10_000;

/** Rate and time-left bookkeeping for one phase of an operation. */
export class ProgressMeter {
  private samples: { t: number; done: number }[] = [];

  constructor(private readonly now: () => number = () => performance.now()) {}

  /** Forget the samples (a new phase starts). */
  reset(): void {
    this.samples = [];
  }

  /** Record a sample; returns units per second over the window (undefined until measurable). */
  rate(done: number): number | undefined {
    const t = this.now();
    const last = this.samples.at(-1);
    if (last !== undefined && done < last.done) this.samples = []; // a new phase
    this.samples.push({ t, done });
    while (this.samples.length > 2 && t - this.samples[0]!.t > RATE_WINDOW_MS) this.samples.shift();
    const first = this.samples[0]!;
    const dt = (t - first.t) / 1000;
    if (dt < 0.2 || done <= first.done) return undefined;
    return (done - first.done) / dt;
  }
}

/** `1.2 GiB of 4 GiB (30%), 120 MiB/s, 25 s left` or `120 of 400 blocks (30%), 50/s, 5 s left`. */
export function formatProgress(s: ProgressSample, rate: number | undefined): string {
  const bytes = s.unit === 'bytes';
  const n = (v: number): string => (bytes ? formatBytes(v) : String(v));
  let text =
    s.total === undefined
      ? `${n(s.done)}${bytes ? '' : ` ${s.unit}`}`
      : `${n(s.done)} of ${n(s.total)}${bytes ? '' : ` ${s.unit}`}`;
  if (s.total !== undefined && s.total > 0) {
    text += ` (${Math.floor((Math.min(s.done, s.total) / s.total) * 100)}%)`;
  }
  if (rate !== undefined && rate > 0) {
    text += `, ${bytes ? `${formatBytes(rate)}/s` : `${rate < 10 ? rate.toFixed(1) : Math.round(rate)} ${s.unit}/s`}`;
    if (s.total !== undefined && s.total > s.done) {
      text += `, ${formatDuration(Math.ceil((s.total - s.done) / rate) * 1000)} left`;
    }
  }
  return text;
}

export interface ProgressSink {
  /** A terminal spinner line (replaced on each update), or undefined. */
  spinnerText?: (text: string) => void;
  /** Plain lines (non-terminal with --progress), or undefined. */
  line?: (text: string) => void;
  intervalMs?: number;
  now?: () => number;
}

/** Reports the progress of one operation to a spinner or as periodic plain lines. */
export class ProgressReporter {
  private readonly meter: ProgressMeter;
  private readonly now: () => number;
  private lastLine = -Infinity;
  private lastText = '';
  private lastPrinted = '';
  private phase = '';

  constructor(private readonly sink: ProgressSink) {
    this.now = sink.now ?? (() => performance.now());
    this.meter = new ProgressMeter(this.now);
  }

  /** Report `label: <progress>`; a new label starts a new phase (rate measured afresh). */
  update(label: string, sample: ProgressSample): void {
    if (label !== this.phase) {
      this.phase = label;
      this.meter.reset();
    }
    const text = `${label}: ${formatProgress(sample, this.meter.rate(sample.done))}`;
    this.lastText = text;
    this.sink.spinnerText?.(text);
    if (this.sink.line) {
      const t = this.now();
      if (t - this.lastLine >= (this.sink.intervalMs ?? 2000)) {
        this.lastLine = t;
        this.lastPrinted = text;
        this.sink.line(text);
      }
    }
  }

  /** A phase without a count (e.g. "flushing"). */
  status(text: string): void {
    this.lastText = text;
    this.sink.spinnerText?.(text);
    if (this.sink.line) {
      this.lastLine = this.now();
      this.lastPrinted = text;
      this.sink.line(text);
    }
  }

  /** The last line, printed once more at the end when lines are on (so a log shows 100%). */
  finish(): void {
    if (this.sink.line && this.lastText !== '' && this.lastText !== this.lastPrinted) {
      this.sink.line(this.lastText);
    }
    this.lastText = this.lastPrinted = '';
  }
}
