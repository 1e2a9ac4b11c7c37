/**
 * Spinners on stderr for long operations. ora is loaded only when a spinner will show (a
 * terminal, not --json or --quiet): loading it costs about 0.1 s of every command's start-up.
 */
import type { Ora } from 'ora';

export interface Spinner {
  text: string;
  succeed(text?: string): void;
  fail(text?: string): void;
  stop(): void;
}

/** A started spinner showing `text`; a silent one that only keeps its text when `!enabled`. */
export function startSpinner(text: string, enabled: boolean): Spinner {
  let current = text;
  if (!enabled) {
    return {
      get text() {
        return current;
      },
      set text(t: string) {
        current = t;
      },
      succeed: () => undefined,
      fail: () => undefined,
      stop: () => undefined,
    };
  }
  let ora: Ora | undefined;
  let done = false;
  void import('ora').then(
    ({ default: make }) => {
      if (!done) ora = make({ text: current, stream: process.stderr, discardStdin: false }).start();
    },
    () => undefined,
  );
  // Ended before ora was loaded (a quick operation): the final line is written plainly.
  const end = (mark: string, t: string | undefined, f: (o: Ora) => void): void => {
    done = true;
    if (ora) f(ora);
    else process.stderr.write(`${mark} ${t ?? current}\n`);
  };
  return {
    get text() {
      return current;
    },
    set text(t: string) {
      current = t;
      if (ora) ora.text = t;
    },
    succeed: (t?: string) => end('✔', t, (o) => void o.succeed(t)),
    fail: (t?: string) => end('✖', t, (o) => void o.fail(t)),
    stop: () => {
      done = true;
      ora?.stop();
    },
  };
}
