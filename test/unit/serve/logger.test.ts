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

  it('writes one JSON object per line with --log-format json: time, level, msg, then the fields', () => {
    const lines: string[] = [];
    const log = lineLogger({ write: (l) => lines.push(l), now: () => at, format: 'json' });
    log.info('serving 1 export read-write', { uris: ['nbd://127.0.0.1:10809/v'] });
    log.warn('nbd request failed', { conn: 'ab12cd-3', errno: 'EIO', size: 10n });
    log.debug('dropped'); // below the default level
    log.error('clash', { msg: 'a field named msg', level: 1, _level: 2, time: 'x' });
    assert.equal(lines.length, 3);
    assert.ok(lines.every((l) => l.endsWith('}\n') && !l.slice(0, -1).includes('\n')));
    const parsed = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.deepEqual(parsed[0], {
      time: '2026-01-31T12:00:00.000Z',
      level: 'info',
      msg: 'serving 1 export read-write',
      uris: ['nbd://127.0.0.1:10809/v'],
    });
    assert.deepEqual(parsed[1], {
      time: '2026-01-31T12:00:00.000Z',
      level: 'warn',
      msg: 'nbd request failed',
      conn: 'ab12cd-3',
      errno: 'EIO',
      size: '10',
    });
    // Fields never overwrite time, level or msg.
    assert.deepEqual(parsed[2], {
      time: '2026-01-31T12:00:00.000Z',
      level: 'error',
      msg: 'clash',
      _msg: 'a field named msg',
      __level: 1,
      _level: 2,
      _time: 'x',
    });
    assert.deepEqual(Object.keys(parsed[0]!).slice(0, 3), ['time', 'level', 'msg']);
  });
});
