/**
 * The daemon's config file (`--config`, JSON): the exports to map at start and to reconcile
 * on reload. Example:
 *
 *   { "exports": [
 *       { "url": "s3://vols/db/", "endpoint": "http://127.0.0.1:7480" },
 *       { "url": "file:///srv/vols/golden/", "name": "golden", "readOnly": true } ] }
 */
import { readFile } from 'node:fs/promises';
import { HyperError, toHyperError } from '../errors.js';
import { normalizeVolumeUrl } from '../cli/url.js';
import { configFile, parseOr, type ConfigFile } from './schema.js';

export async function loadConfig(path: string): Promise<ConfigFile> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    throw toHyperError(e);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new HyperError(
      'invalid',
      'INVALID_ARGUMENT',
      `The config file ${path} is not JSON: ${(e as Error).message}`,
      {
        suggestion: 'Fix the file (see README "Running hyper as a service" for its form).',
      },
    );
  }
  const config = parseOr(configFile, json, `config file ${path}`);
  for (const e of config.exports) {
    e.url = normalizeVolumeUrl(e.url, `volume URL in ${path}`);
    if (e.walUrl !== undefined) e.walUrl = normalizeVolumeUrl(e.walUrl, `WAL URL in ${path}`);
  }
  return config;
}
