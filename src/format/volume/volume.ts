// STUB — the engine is being written; signatures are the contract.
import { HyperError } from '../../errors.js';
import type { ObjectStore } from '../store/types.js';
import type {
  CheckpointInfo,
  CreateOptions,
  EngineStats,
  Extent,
  OpenOptions,
  VolumeInfo,
} from './types.js';

const todo = (): never => {
  throw new HyperError('internal', 'INTERNAL', 'not implemented yet');
};

export interface WriteOptions {
  /** Force Unit Access: durable (committed) before the promise resolves. */
  fua?: boolean;
}

export interface ZeroOptions extends WriteOptions {
  /** Keep storage allocated (NBD NO_HOLE): hyper stores zeros as holes anyway, so reads are identical. */
  noHole?: boolean;
}

export class Volume {
  get info(): VolumeInfo {
    return todo();
  }
  static create(_store: ObjectStore, _options: CreateOptions & { signal?: AbortSignal } = {}): Promise<VolumeInfo> {
    return todo();
  }
  static open(_store: ObjectStore, _options: OpenOptions = {}): Promise<Volume> {
    return todo();
  }
  read(_offset: number, _length: number): Promise<Buffer> {
    return todo();
  }
  write(_offset: number, _data: Buffer, _options: WriteOptions = {}): Promise<void> {
    return todo();
  }
  writeZeroes(_offset: number, _length: number, _options: ZeroOptions = {}): Promise<void> {
    return todo();
  }
  trim(_offset: number, _length: number): Promise<void> {
    return todo();
  }
  flush(): Promise<CheckpointInfo> {
    return todo();
  }
  resize(_size: number, _options: { allowShrink?: boolean } = {}): Promise<CheckpointInfo> {
    return todo();
  }
  extents(_offset: number, _length: number): Promise<Extent[]> {
    return todo();
  }
  stats(): EngineStats {
    return todo();
  }
  close(): Promise<void> {
    return todo();
  }
}
