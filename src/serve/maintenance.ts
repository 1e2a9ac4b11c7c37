/**
 * Maintenance asked for through a control socket by `hyper compact`, `hyper snapshot create`
 * and `hyper file set-len` (daemon/online.ts) of a volume this process holds: the request is
 * checked, then the server runs its own online compaction, flush or grow. The daemon answers
 * these for its mapped exports; `hyper serve --control-socket` for its own (serveMaintenance).
 */
import { exportNotFound, type MaintenanceHandler } from '../daemon/control.js';
import type { FlushAnswer, MaintainedExport, ResizeAnswer } from '../daemon/online.js';
import { compactRequest, flushRequest, parseOr, resizeRequest } from '../daemon/schema.js';
import type { CompactResult } from '../format/volume/compact.js';
import type { VolumeServer } from './server.js';

/** POST /v1/exports/NAME/compact: one online compaction of the export's volume, now. */
export function compactAsked(
  server: VolumeServer,
  name: string,
  request: unknown,
  signal?: AbortSignal,
): Promise<CompactResult> {
  const { dryRun, volumeUuid, ...policy } = parseOr(compactRequest, request, 'compact request');
  return server.compactNow(name, policy, {
    ...(signal === undefined ? {} : { signal }),
    ...(dryRun === undefined ? {} : { dryRun }),
    ...(volumeUuid === undefined ? {} : { volumeUuid }),
  });
}

/** POST /v1/exports/NAME/flush: commit what the export acknowledged, as a client's FLUSH does. */
export async function flushAsked(
  server: VolumeServer,
  name: string,
  request: unknown,
): Promise<FlushAnswer> {
  const { volumeUuid } = parseOr(flushRequest, request, 'flush request');
  const info = await server.flushNow(name, volumeUuid === undefined ? {} : { volumeUuid });
  return { checkpoint: info.checkpoint, time: info.time.toISOString() };
}

/** POST /v1/exports/NAME/resize: grow the export's volume, committed before the answer. */
export async function resizeAsked(
  server: VolumeServer,
  name: string,
  request: unknown,
): Promise<ResizeAnswer> {
  const { size, volumeUuid } = parseOr(resizeRequest, request, 'resize request');
  const r = await server.resizeNow(name, size, volumeUuid === undefined ? {} : { volumeUuid });
  return {
    previousSize: r.previousSize,
    size,
    checkpoint: r.info.checkpoint,
    time: r.info.time.toISOString(),
  };
}

/** The control socket of `hyper serve`: its open exports, their compaction, flush and grow. */
export function serveMaintenance(server: VolumeServer): MaintenanceHandler {
  const known = (name: string): void => {
    if (!server.exports.some((e) => e.name === name)) throw exportNotFound(name);
  };
  return {
    list: (): MaintainedExport[] => server.maintained(),
    compact: async (name, request, signal) => {
      known(name);
      return compactAsked(server, name, request, signal);
    },
    flush: async (name, request) => {
      known(name);
      return flushAsked(server, name, request);
    },
    resize: async (name, request) => {
      known(name);
      return resizeAsked(server, name, request);
    },
  };
}
