/**
 * Validation of the volume and prefix URLs given on the command line, so that a typo is
 * reported as a usage error (exit code 2) naming the accepted forms, before any store is
 * contacted. The store factory (src/format/store) decides what the URL means.
 */
import { HyperError } from '../errors.js';

export const URL_FORMS =
  'file:///absolute/dir/, file://./relative/dir/ or s3://bucket/prefix/ (S3-compatible stores via --endpoint)';

const S3_BUCKET = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;

/**
 * Check `input` against the accepted URL forms and return it with a trailing slash (a
 * volume is a prefix). `what` names the argument in messages, e.g. `URL`.
 */
export function normalizeVolumeUrl(input: string, what = 'URL'): string {
  const text = input.trim();
  const fail = (why: string, suggestion?: string): never => {
    throw new HyperError(
      'invalid',
      'INVALID_URL',
      `Invalid ${what} ${JSON.stringify(input)}: ${why}`,
      {
        suggestion: suggestion ?? `Use ${URL_FORMS}.`,
      },
    );
  };
  const scheme = /^([a-z][a-z0-9+.-]*):\/\//i.exec(text)?.[1]?.toLowerCase();
  if (scheme === undefined) {
    if (text.startsWith('/') || text.startsWith('.') || /^[\w.-]+(\/|$)/.test(text)) {
      const path = text.startsWith('/') || text.startsWith('.') ? text : `./${text}`;
      return fail(
        'a URL is expected, not a path',
        `Use file://${withSlash(path)} (accepted forms: ${URL_FORMS}).`,
      );
    }
    return fail('not a URL');
  }
  const rest = text.slice(scheme.length + 3);
  if (scheme === 'file') {
    if (!(
      rest.startsWith('/') ||
      rest.startsWith('./') ||
      rest.startsWith('../') ||
      rest === '.' ||
      rest === '..'
    )) {
      return fail(
        'a file URL needs an absolute path (file:///dir/) or one starting with ./ or ../ (file://./dir/)',
        `Use ${URL_FORMS}.`,
      );
    }
    if (rest.includes('?') || rest.includes('#'))
      return fail('query strings and fragments are not supported');
    return `file://${withSlash(rest)}`;
  }
  if (scheme === 's3') {
    const slash = rest.indexOf('/');
    const bucket = slash === -1 ? rest : rest.slice(0, slash);
    const prefix = slash === -1 ? '' : rest.slice(slash + 1);
    if (!S3_BUCKET.test(bucket))
      return fail(`${JSON.stringify(bucket)} is not a valid bucket name`);
    if (prefix.includes('//')) return fail('the prefix contains an empty path segment (//)');
    if (rest.includes('?') || rest.includes('#'))
      return fail('query strings and fragments are not supported');
    return `s3://${bucket}/${prefix === '' ? '' : withSlash(prefix)}`;
  }
  return fail(`the ${scheme}:// scheme is not supported`);
}

const withSlash = (s: string): string => (s.endsWith('/') ? s : `${s}/`);
