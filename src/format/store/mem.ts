import { createHash } from 'node:crypto';
import { HyperError } from '../../errors.js';
import type {
  GetOptions,
  GetResult,
  ListOptions,
  ListPage,
  ObjectMeta,
  ObjectStore,
  PutBody,
  PutOptions,
} from './types.js';
import { notFound, objectExists, preconditionFailed, sliceRange } from './common.js';

interface Entry {
  body: Buffer;
  etag: string;
  lastModified: Date;
}

/** Shared key spaces by name, so that two stores opened on `mem://x/` see the same objects. */
const spaces = new Map<string, Map<string, Entry>>();

/**
 * In-memory store for unit tests: the same semantics as the real ones (create-only, CAS,
 * ranges, ordered paginated listing), no durability.
 */
export class MemStore implements ObjectStore {
  readonly url: string;
  private readonly map: Map<string, Entry>;
  private readonly root: string;
  /** Page size for list(); small values exercise pagination in tests. */
  pageSize = 1000;

  constructor(url = 'mem://default/', map?: Map<string, Entry>, root = '') {
    this.url = url.endsWith('/') ? url : `${url}/`;
    this.root = root;
    if (map) {
      this.map = map;
    } else {
      const name = this.url;
      let space = spaces.get(name);
      if (!space) {
        space = new Map();
        spaces.set(name, space);
      }
      this.map = space;
    }
  }

  /** A fresh, private key space (not shared by URL). */
  static isolated(name = 'mem://test/'): MemStore {
    return new MemStore(name, new Map());
  }

  get(key: string, options: GetOptions = {}): Promise<GetResult> {
    const e = this.map.get(this.root + key);
    if (!e) return Promise.reject(notFound(this.url, key));
    const body = sliceRange(e.body, options.range);
    return Promise.resolve({ body: Buffer.from(body), etag: e.etag, size: e.body.length });
  }

  head(key: string): Promise<ObjectMeta | undefined> {
    const e = this.map.get(this.root + key);
    if (!e) return Promise.resolve(undefined);
    return Promise.resolve({
      key,
      size: e.body.length,
      etag: e.etag,
      lastModified: e.lastModified,
    });
  }

  put(key: string, body: PutBody, options: PutOptions = {}): Promise<{ etag: string }> {
    const full = this.root + key;
    const cur = this.map.get(full);
    if (options.ifNoneMatch && cur) return Promise.reject(objectExists(this.url, key));
    if (options.ifMatch !== undefined && (!cur || cur.etag !== options.ifMatch)) {
      return Promise.reject(preconditionFailed(this.url, key));
    }
    // (A copy: the caller may reuse its buffers once the PUT has landed.)
    const copy = Buffer.isBuffer(body) ? Buffer.from(body) : Buffer.concat(body);
    const etag = createHash('md5').update(copy).digest('hex');
    this.map.set(full, { body: copy, etag, lastModified: new Date() });
    return Promise.resolve({ etag });
  }

  async *list(prefix: string, options: ListOptions = {}): AsyncIterable<ListPage> {
    const full = this.root + prefix;
    const keys = [...this.map.keys()]
      .filter((k) => k.startsWith(full))
      .map((k) => k.slice(this.root.length))
      .filter((k) => options.startAfter === undefined || k > options.startAfter)
      .sort();
    let objects: ObjectMeta[] = [];
    const prefixes = new Set<string>();
    for (const k of keys) {
      if (options.delimiter) {
        const rest = k.slice(prefix.length);
        const i = rest.indexOf(options.delimiter);
        if (i >= 0) {
          prefixes.add(prefix + rest.slice(0, i + options.delimiter.length));
          continue;
        }
      }
      const e = this.map.get(this.root + k);
      if (!e) continue;
      objects.push({ key: k, size: e.body.length, etag: e.etag, lastModified: e.lastModified });
      if (objects.length >= this.pageSize) {
        yield { objects, prefixes: [] };
        objects = [];
      }
    }
    yield { objects, prefixes: [...prefixes].sort() };
  }

  delete(keys: readonly string[]): Promise<void> {
    for (const k of keys) this.map.delete(this.root + k);
    return Promise.resolve();
  }

  sub(prefix: string): ObjectStore {
    if (!prefix.endsWith('/'))
      throw new HyperError('internal', 'INTERNAL', `sub prefix must end with /: ${prefix}`);
    const s = new MemStore(this.url + prefix, this.map, this.root + prefix);
    s.pageSize = this.pageSize;
    return s;
  }

  /** Test hook: overwrite an object's bytes in place (simulates corruption). */
  corrupt(key: string, mutate: (b: Buffer) => Buffer): void {
    const e = this.map.get(this.root + key);
    if (!e) throw notFound(this.url, key);
    e.body = mutate(Buffer.from(e.body));
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}
