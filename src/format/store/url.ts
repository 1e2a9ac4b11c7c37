/**
 * Store URLs: the one place they are parsed. Accepted forms:
 *
 *   file:///abs/dir/        a directory (absolute path)
 *   file://./rel/dir/       a directory relative to the current working directory
 *   s3://bucket/prefix/     an S3 bucket and optional key prefix
 *   mem://name/             an in-memory key space (tests)
 */
import { resolve } from 'node:path';
import { HyperError } from '../../errors.js';

export type StoreUrl =
  | {
      scheme: 'file';
      /** Absolute directory path, no trailing slash (except `/`). */ dir: string;
      url: string;
    }
  | { scheme: 's3'; bucket: string; /** '' or ends with '/'. */ prefix: string; url: string }
  | { scheme: 'mem'; name: string; url: string };

export const ACCEPTED_URL_FORMS =
  'file:///abs/dir/, file://./rel/dir/, s3://bucket/prefix/ or mem://name/';

const badUrl = (url: string, why: string): HyperError =>
  new HyperError('invalid', 'INVALID_URL', `Invalid store URL "${url}": ${why}`, {
    suggestion: `Use one of ${ACCEPTED_URL_FORMS}.`,
  });

const withSlash = (s: string): string => (s === '' || s.endsWith('/') ? s : `${s}/`);

const BUCKET = /^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$/;

/** Parse and normalise a store URL (the result's `url` always ends with `/`). */
export function parseStoreUrl(url: string): StoreUrl {
  const m = /^([a-zA-Z][a-zA-Z0-9+.-]*):\/\/(.*)$/s.exec(url);
  if (!m) throw badUrl(url, 'no scheme');
  const scheme = (m[1] ?? '').toLowerCase();
  const rest = m[2] ?? '';
  if (rest.includes('\0')) throw badUrl(url, 'NUL byte');
  switch (scheme) {
    case 'file': {
      let dir: string;
      if (rest.startsWith('/')) dir = rest;
      else if (rest === '.' || rest === '..' || rest.startsWith('./') || rest.startsWith('../')) {
        dir = resolve(process.cwd(), rest);
      } else if (rest.startsWith('localhost/')) dir = rest.slice('localhost'.length);
      else
        throw badUrl(url, 'a file URL needs an absolute path (file:///dir/) or ./ (file://./dir/)');
      dir = resolve(dir);
      return { scheme: 'file', dir, url: `file://${withSlash(dir)}` };
    }
    case 's3': {
      const i = rest.indexOf('/');
      const bucket = i < 0 ? rest : rest.slice(0, i);
      let prefix = i < 0 ? '' : rest.slice(i + 1);
      if (!BUCKET.test(bucket)) throw badUrl(url, `"${bucket}" is not a valid bucket name`);
      if (prefix.startsWith('/') || prefix.includes('//')) {
        throw badUrl(url, 'the prefix must not contain empty path segments');
      }
      prefix = withSlash(prefix);
      return { scheme: 's3', bucket, prefix, url: `s3://${bucket}/${prefix}` };
    }
    case 'mem': {
      const name = rest.replace(/\/+$/, '');
      if (name === '') throw badUrl(url, 'a mem URL needs a name (mem://name/)');
      return { scheme: 'mem', name, url: `mem://${name}/` };
    }
    default:
      throw new HyperError(
        'invalid',
        'UNSUPPORTED_STORE',
        `Unsupported store scheme "${scheme}://" in "${url}"`,
        {
          suggestion: `Use one of ${ACCEPTED_URL_FORMS}.`,
        },
      );
  }
}

/**
 * Whether a store URL names a store on this machine (`file://`, `mem://`): no latency to hide,
 * so read-ahead, read-around and the index warm-up only cost CPU there.
 */
export function isLocalStoreUrl(url: string): boolean {
  return /^(file|mem):/i.test(url);
}
