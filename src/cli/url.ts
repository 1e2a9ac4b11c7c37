/**
 * Checking the volume and prefix URLs given on the command line, so that a typo is reported
 * as a usage error (exit code 2) naming the accepted forms before any store is contacted.
 * Parsing itself is the store layer's (parseStoreUrl); this adds what only the CLI knows:
 * a bare path gets a `file://` suggestion, and `mem://` (one process only) is refused.
 */
import { HyperError, isHyperError } from '../errors.js';
import { parseStoreUrl } from '../format/store/url.js';

export const URL_FORMS =
  'file:///absolute/dir/, file://./relative/dir/ or s3://bucket/prefix/ (S3-compatible stores via --endpoint)';

/**
 * Check `input` against the accepted URL forms and return the store's normalised form (a
 * trailing slash; file URLs made absolute). `what` names the argument in messages.
 */
export function normalizeVolumeUrl(input: string, what = 'URL'): string {
  const text = input.trim();
  const fail = (
    code: 'INVALID_URL' | 'UNSUPPORTED_STORE',
    why: string,
    suggestion?: string,
  ): never => {
    throw new HyperError('invalid', code, `Invalid ${what} ${JSON.stringify(input)}: ${why}`, {
      suggestion: suggestion ?? `Use ${URL_FORMS}.`,
    });
  };
  if (!/^[a-z][a-z0-9+.-]*:\/\//i.test(text)) {
    if (/^(\/|\.\.?(\/|$)|[\w.-]+(\/|$))/.test(text)) {
      const path = /^(\/|\.)/.test(text) ? text : `./${text}`;
      const url = `file://${path.endsWith('/') ? path : `${path}/`}`;
      return fail(
        'INVALID_URL',
        'a URL is expected, not a path',
        `Use ${url} (accepted forms: ${URL_FORMS}).`,
      );
    }
    return fail('INVALID_URL', 'not a URL');
  }
  let parsed;
  try {
    parsed = parseStoreUrl(text);
  } catch (e) {
    if (!isHyperError(e)) throw e;
    const why = e.message
      .replace(/^Invalid store URL "[^"]*": /, '')
      .replace(/^Unsupported store scheme /, 'unsupported scheme ');
    return fail(e.code === 'UNSUPPORTED_STORE' ? 'UNSUPPORTED_STORE' : 'INVALID_URL', why);
  }
  if (parsed.scheme === 'mem') {
    return fail('UNSUPPORTED_STORE', 'mem:// stores exist only inside one process');
  }
  return parsed.url;
}
