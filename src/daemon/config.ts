/**
 * The daemon's config file (`--config`, JSON): the exports to map at start and to reconcile
 * on reload. Example:
 *
 *   { "exports": [
 *       { "url": "s3://vols/db/", "endpoint": "http://127.0.0.1:7480" },
 *       { "url": "file:///srv/vols/golden/", "name": "golden", "readOnly": true } ] }
 */
import { HyperError } from '../errors.js';
import { normalizeVolumeUrl } from '../cli/url.js';
import { readJsonFile } from '../json-file.js';
import { configFile, type ConfigFile } from './schema.js';

export async function loadConfig(path: string): Promise<ConfigFile> {
  const config = (await readJsonFile(
    path,
    configFile,
    (problem) =>
      new HyperError('invalid', 'INVALID_ARGUMENT', `Invalid config file ${path}: ${problem}`, {
        suggestion: 'Fix the file (see README "Running hyper as a service" for its form).',
      }),
  )) as ConfigFile;
  for (const e of config.exports) {
    e.url = normalizeVolumeUrl(e.url, `volume URL in ${path}`);
    if (e.walUrl !== undefined) e.walUrl = normalizeVolumeUrl(e.walUrl, `WAL URL in ${path}`);
  }
  return config;
}
