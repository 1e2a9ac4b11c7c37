/** Flags the `hyper replica …` commands share. */
import { Flags } from '@oclif/core';

export const primaryFile = Flags.string({
  summary: 'The primary: a block device or a regular file (its first 1 MiB holds the metadata).',
  helpValue: '<path>',
  required: true,
});

export const primaryUuid = Flags.string({
  summary: 'The uuid "replica format" printed; a primary with another uuid is refused.',
  helpValue: '<uuid>',
});

export const replicaControlSocket = Flags.string({
  summary: 'Control socket of a running "hyper replica serve".',
  helpValue: '<path>',
});

/** status and resync: ask a running replicator (--control-socket) or read the header (--file). */
export const liveOrFile = {
  'control-socket': Flags.string({
    summary: 'Control socket of a running "hyper replica serve".',
    helpValue: '<path>',
    exactlyOne: ['control-socket', 'file'],
  }),
  file: Flags.string({
    summary: "Use this primary's header instead (not being served).",
    helpValue: '<path>',
  }),
};
