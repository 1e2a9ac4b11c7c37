import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { lineLogger } from '../../../src/serve/logger.js';

describe('lineLogger', () => {
  const at = new Date('2026-01-31T12:00:00.000Z');

  it('writes one timestamped line per call, fields as JSON when there are any', () => {
    const lines: string[] = [];
    const log = lineLogger({ write: (l) => lines.push(l), now: () => at });
    log.info('serving 1 export read-write', { uris: ['nbd://127.0.0.1:10809/v'] });
    log.warn('no fields');
    log.error('empty fields', {});
    assert.deepEqual(lines, [
      '2026-01-31T12:00:00.000Z info serving 1 export read-write {"uris":["nbd://127.0.0.1:10809/v"]}\n',
      '2026-01-31T12:00:00.000Z warn no fields\n',
      '2026-01-31T12:00:00.000Z error empty fields\n',
    ]);
  });

  it('drops lines below its level (info by default)', () => {
    const seen = (level?: 'debug' | 'info' | 'warn' | 'error'): string[] => {
      const lines: string[] = [];
      const log = lineLogger({ write: (l) => lines.push(l.split(' ')[1]!), now: () => at, level });
      log.debug('d');
      log.info('i');
      log.warn('w');
      log.error('e');
      return lines;
    };
    assert.deepEqual(seen(), ['info', 'warn', 'error']);
    assert.deepEqual(seen('debug'), ['debug', 'info', 'warn', 'error']);
    assert.deepEqual(seen('error'), ['error']);
  });
});
