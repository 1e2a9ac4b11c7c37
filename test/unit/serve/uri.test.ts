import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { nbdUri } from '../../../src/serve/uri.js';

describe('nbdUri', () => {
  it('names TCP, IPv6, unix-socket and TLS-only exports, escaping the name', () => {
    assert.equal(nbdUri({ host: '127.0.0.1', port: 10809 }, 'vm1'), 'nbd://127.0.0.1:10809/vm1');
    assert.equal(nbdUri({ host: '::1', port: 7 }, 'team/b'), 'nbd://[::1]:7/team%2Fb');
    assert.equal(
      nbdUri({ path: '/run/hyper.sock' }, 'a b'),
      'nbd+unix:///a%20b?socket=/run/hyper.sock',
    );
    assert.equal(
      nbdUri({ host: '0.0.0.0', port: 1 }, 'v', { tlsRequired: true }),
      'nbds://0.0.0.0:1/v',
    );
    assert.equal(nbdUri({ path: '/s' }, 'v', { tlsRequired: true }), 'nbds+unix:///v?socket=/s');
  });
});
