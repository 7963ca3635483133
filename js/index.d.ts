// Types of herd-cluster (herd.js): requests to and from herd's primary, readiness notices and the
// host-shared cache, over Node's IPC channel. Hand-written; herd.js is the reference.

/**
 * Node's Buffer when the program has Node's types (@types/node), else Uint8Array: these types
 * need no other package.
 */
export type HerdBuffer = typeof globalThis extends { Buffer: { alloc(size: number): infer B } } ? B : Uint8Array;

/** Values JSON can carry: what requests, replies and cache.json values are made of. */
export type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue };

/** The codes herd.js puts on its errors (`err.code`). */
export type HerdErrorCode =
  /** The primary's error reply (e.g. Redis down and the key never loaded). */
  | 'HERD_REMOTE'
  /** No reply within the timeout. */
  | 'HERD_TIMEOUT'
  /** The channel closed before the reply, or was closed. */
  | 'HERD_CLOSED'
  /** No IPC channel: the program was not started by a herd primary. */
  | 'HERD_NO_CHANNEL'
  /** cache.ready: the warm-up did not finish within the timeout. */
  | 'HERD_NOT_READY'
  /** cache.json: the value is not JSON. */
  | 'HERD_JSON';

/** An Error with one of herd.js's codes. */
export interface HerdError extends Error {
  code: HerdErrorCode;
}

export interface TimeoutOptions {
  /** Milliseconds to wait for the primary (a positive number; default 30000). */
  timeout?: number;
}

export interface GetOptions extends TimeoutOptions {
  /** Always a Buffer, even for UTF-8 text. */
  buffer?: boolean;
}

export interface SetOptions extends TimeoutOptions {
  /** Time to live in ms (a positive integer). */
  ttl?: number;
}

/** This process's counters (`local_*`) and the primary's hub's (`hub`). */
export interface CacheStats {
  local_hits: number;
  local_misses: number;
  local_entries: number;
  local_bytes: number;
  local_evictions: number;
  /** The local copies' bounds (json path: see herd.js; addon path: 100,000 entries, 256 MiB). */
  local_max_entries: number;
  local_max_bytes: number;
  /** Bytes this process mapped from the primary's shared memory (the addon path). */
  mapped_bytes?: number;
  /**
   * How this process reaches the cache: `'addon'`, herd's native addon over a channel of its
   * own (large values are Buffers over the primary's shared memory), or `'json'`, Node's IPC
   * channel (values copied), with the reason in `json_reason`.
   */
  path: 'addon' | 'json';
  /** Why the json path is used (no addon found, no cache channel, HERD_NODE_ADDON=off...). */
  json_reason?: string | null;
  /** The addon's file (the addon path). */
  addon?: string;
  /** Values the package keeps a Buffer of (the addon path). */
  held_buffers?: number;
  /**
   * The addon path: `waits` counts the waits begun for misses' replies in a microtask instead
   * of the event loop (one wait covers every `get` sent since the last, as in a `Promise.all`),
   * `answered` those that ended with every one of them answered, each reply within `budget_us`
   * of the last (`HERD_CACHE_SPIN_US`, default 100; 0 turns it off, and so does a machine with
   * one CPU) and all within the wait's bounds (see the package's README); `busy` the waits not
   * begun or cut short because the event loop had other I/O ready.
   */
  miss_wait?: { waits: number; answered: number; budget_us: number; busy: number };
  /** The primary hub's counters, as it reports them. */
  hub: { [counter: string]: unknown };
}

/** The host-shared cache, served by the primary; each process keeps a bounded local copy. */
export interface HerdCache {
  /**
   * The value: a string when it is UTF-8 text, a Buffer otherwise (or always, with
   * `buffer: true`); undefined if the key does not exist. From the local copy when held.
   * A Buffer is the one this process holds for the value, given again by later calls: do not
   * write to it. On the addon path a large value's Buffer maps the primary's shared memory (no
   * copy; copy-on-write, so a write changes only this process's view of it); its text is this
   * process's own copy.
   */
  get(key: string, options: GetOptions & { buffer: true }): Promise<HerdBuffer | undefined>;
  get(key: string, options?: GetOptions): Promise<string | HerdBuffer | undefined>;
  /**
   * The value parsed as JSON (undefined if the key does not exist), parsed once per process per
   * version: calls return the same object while the local copy is held; an invalidation,
   * replacement or eviction drops it. Shared: do not mutate it. Bad JSON rejects with
   * `HERD_JSON`. The type parameter is an unchecked assertion of the value's shape.
   */
  json<T = unknown>(key: string, options?: TimeoutOptions): Promise<T | undefined>;
  /** The local copy only, synchronously: the value, null if known absent, undefined if not held. */
  peek(key: string): string | HerdBuffer | null | undefined;
  /** Writes through the primary and invalidates the key in every worker. */
  set(key: string, value: string | Uint8Array, options?: SetOptions): Promise<true>;
  /** Deletes the key everywhere; whether it existed. */
  delete(key: string, options?: TimeoutOptions): Promise<boolean>;
  /** Resolves true once the primary's warm-up is done; rejects with `HERD_NOT_READY` otherwise. */
  ready(options?: TimeoutOptions): Promise<true>;
  stats(options?: TimeoutOptions): Promise<CacheStats>;
}

/** Answers one request of the primary: the answer (JSON), or a Promise of it. */
export type RequestHandler = (value: any) => unknown;

/** What `connect` talks over: `process` in a worker, or a ChildProcess forked with JSON serialization. */
export interface HerdChannel {
  send(message: any, callback?: (error: Error | null) => void): boolean;
  on(event: string, listener: (...args: any[]) => void): unknown;
  removeListener(event: string, listener: (...args: any[]) => void): unknown;
  readonly connected?: boolean;
}

/** A listening address: a string, or what `server.address()` returns. */
export type ListenAddress = string | { address: string; port: number; family?: string | number };

/** herd.js's API over one channel. */
export interface Herd {
  /** Asks the primary (its Event::Request); the answer. Rejects with HERD_REMOTE, HERD_TIMEOUT or HERD_CLOSED. */
  request<T = any>(value: unknown, options?: TimeoutOptions): Promise<T>;
  /** Answers the primary's requests; requests that came before wait for it. */
  onRequest(handler: RequestHandler): Herd;
  /** Tells the primary this worker is ready: true once written, false if the channel is closed. */
  ready(): Promise<boolean>;
  /** Tells the primary where this worker listens: true once written, false if closed. */
  listening(address: ListenAddress): Promise<boolean>;
  /** The host-shared cache. */
  readonly cache: HerdCache;
}

/** See {@link Herd.request}. Throws HERD_NO_CHANNEL outside herd. */
export declare function request<T = any>(value: unknown, options?: TimeoutOptions): Promise<T>;
/** See {@link Herd.onRequest}. Throws HERD_NO_CHANNEL outside herd. */
export declare function onRequest(handler: RequestHandler): Herd;
/** See {@link Herd.ready}. Throws HERD_NO_CHANNEL outside herd. */
export declare function ready(): Promise<boolean>;
/** See {@link Herd.listening}. Throws HERD_NO_CHANNEL outside herd. */
export declare function listening(address: ListenAddress): Promise<boolean>;
/** The host-shared cache of this process's herd primary. Using it outside herd throws HERD_NO_CHANNEL. */
export declare const cache: HerdCache;
/** The same API over another channel (throws HERD_NO_CHANNEL if `target` is none). */
export declare function connect(target: HerdChannel): Herd;

/**
 * The whole API as one object: `import herd from 'herd-cluster'`, with or without
 * `esModuleInterop` (herd.js carries itself as `default`).
 */
declare const herd: Herd & { connect: typeof connect };
export default herd;
