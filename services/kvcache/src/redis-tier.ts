/**
 * The shared KV tier in Redis: full KV blocks by content hash, shared by every gateway process of
 * one model and surviving a restart. Off unless configured (`--kv-redis URL`); serving one model on
 * one machine needs no Redis. A Redis that is down or slow costs a recompute, never a failed
 * request or a wrong output: nothing here throws into the request path or is awaited by a step.
 *
 * Flow: KvCacheManager.commitFullBlocks registers a block that just filled -> blockCommitted (here,
 *   synchronous: copies the block into a write slot) -> write-behind on the next macrotask: one
 *   KVPUT script call per block, never awaited by a step; the slot is reused once Redis answers ->
 *   ... another process (or this one, after a restart) -> prefetch(prompt) while the request waits:
 *   hashes of the prompt's blocks, the first pool miss onward looked up (fetchPrefix: pipelined
 *   MGETs under one short deadline, the longest run of consecutive valid hits) ->
 *   KvCacheManager.installBlocks (cached-free pool blocks) -> admission's matchPrefix hits them.
 *
 * Redis keys ({p} = keyPrefix, default "moeserve:kv"; {fp} = fingerprint, 16 hex digits):
 *   {p}:{fp}:{hash}         STRING  one block; {hash} = its 53-bit chain hash (hash.ts) as 14
 *                                   lowercase hex digits. PX ttlMs; written once (SET only when
 *                                   absent, the TTL is not refreshed).
 *   {p}:{fp}:bytes:{w}      STRING  integer: value bytes written during window w =
 *                                   floor(unix ms / ttlMs); PX 2·ttlMs. The byte cap (below).
 *   fingerprint = the first 16 hex digits of sha256(JSON {format, modelId, layout (kind, numLayers,
 *   elementsPerToken, dims, dtypeBytes), blockSize, dtype "f32le"}): a block is only ever read back
 *   by the same model (caller-given identity, e.g. a hash of config.json and the weights' names),
 *   layout, block size and dtype.
 *
 * Value (all little-endian), header then rows; RedisKvTier.headerBytes = 24 + 4·blockSize:
 *   offset 0   u32 magic VALUE_MAGIC ("MKV1")
 *          4   u32 blockSize B          8  u32 numLayers L          12 u32 elementsPerToken E
 *          16  f64 the block's chain hash (must equal the key's)
 *          24  i32[B] the block's token ids (checked again by matchPrefix: a collision is a miss)
 *          24 + 4·B   f32[L][B·E] the block in every layer as the pool stores it: segment-major
 *                     (layout.ts "Blocks": GQA head by head, K heads then V heads, each [B, headDim];
 *                     MLA rows [c_kv | k_pe]).
 *   The header in front of the raw rows (88 bytes of a 160 KiB dsv2-perf block of 16 tokens) makes
 *   a value self-checking: a truncated, foreign or colliding value is a miss, never rows in the pool.
 *
 * Byte cap: every key expires ttlMs after it is written, so the keys alive at any moment were
 *   written during the current or the previous ttl-window; the KVPUT script refuses a write when
 *   the two windows' counters plus the value exceed maxBytes (writesOverCap). That bounds this
 *   fingerprint's resident bytes from above (each writer computes the window from its own clock;
 *   skew between gateways only shifts a window). Run Redis with maxmemory and an LRU policy as well:
 *   it evicts before memory runs out, and a key it evicts is just a miss.
 *
 * Down or slow: commands fail fast while disconnected (no offline queue; ioredis reconnects in the
 *   background); a lookup has a deadline that grows with the bytes asked for, and after a failed or
 *   late lookup the next lookupBackoffMs return no hit at once. Errors are counted, and logged once
 *   per episode.
 *
 * Write-behind trigger: commit (a block fills), not eviction from the pool: a second gateway or a
 *   restarted one must find a shared prefix in Redis while the first still holds it in its pool
 *   (or has crashed), and at commit the block is held and immutable, so the copy is safe. Blocks
 *   installed from Redis or matched in the pool are not written again. The queue is bounded by
 *   maxPendingBytes: a block that finds no free slot is dropped (writesDropped), as is every block
 *   while the connection is down.
 */
import { createHash } from 'node:crypto';
import { endianness } from 'node:os';
import { Redis } from 'ioredis';
import { ServerError } from '../../common/src/errors.js';
import { hashHex } from './hash.js';
import type { KvBlockPayload, KvCacheManager, KvTier, KvTierStats } from './manager.js';
import { NO_BLOCK } from './pool.js';

/** "MKV1" read as a little-endian u32. */
export const VALUE_MAGIC = 0x31564b4d;
/** Bumped when the value layout or the hash function changes (it is part of the fingerprint). */
export const VALUE_FORMAT = 2;

/** What the tier logs through (a pino Logger fits). */
export interface KvTierLogger {
  warn(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
}

/** Options of the Redis tier; times in milliseconds, sizes in bytes. */
export interface RedisKvTierOptions {
  /** redis://[user:pass@]host:port[/db] */
  readonly url: string;
  /**
   * The model's identity in the key fingerprint: anything that changes the K/V rows must change it
   * (e.g. a hash of config.json bytes plus the checkpoint's file names and sizes, or a model id
   * with its revision).
   */
  readonly modelId: string;
  /** @defaultValue DEFAULT_KV_TIER.keyPrefix ('moeserve:kv') */
  readonly keyPrefix?: string;
  /** Lifetime of a block key, ms. @defaultValue DEFAULT_KV_TIER.ttlMs (1 h) */
  readonly ttlMs?: number;
  /** Upper bound of this fingerprint's resident value bytes (see "Byte cap"). @defaultValue DEFAULT_KV_TIER.maxBytes (1 GiB) */
  readonly maxBytes?: number;
  /**
   * Deadline of one prefix lookup: fetchTimeoutMs + fetchTimeoutMsPerMiB per MiB of values asked
   * for (a 1k-token dsv2-perf prefix is 10 MiB: 100 + 200 ms); on expiry the hits so far are used.
   * @defaultValue 100
   */
  readonly fetchTimeoutMs?: number;
  /** @defaultValue 20 (MiB/s is 50 at least before a lookup is cut short) */
  readonly fetchTimeoutMsPerMiB?: number;
  /**
   * After a lookup fails or times out, lookups return no hit at once for this long, so a slow
   * Redis costs one deadline per backoff, not one per request. @defaultValue 1000
   */
  readonly lookupBackoffMs?: number;
  /** Blocks looked up at most per prefix. @defaultValue 256 */
  readonly maxFetchBlocks?: number;
  /** Blocks per MGET of a lookup (all sent at once, pipelined). @defaultValue 16 */
  readonly fetchChunkBlocks?: number;
  /** Bytes of blocks waiting to be written (at least one block). @defaultValue 64 MiB */
  readonly maxPendingBytes?: number;
  /** A write (or any command) failing after this long. @defaultValue 2000 */
  readonly commandTimeoutMs?: number;
  /** @defaultValue 1000 */
  readonly connectTimeoutMs?: number;
  /** Longest wait between reconnect attempts (50 ms, 100 ms, ... up to this). @defaultValue 1000 */
  readonly reconnectMaxDelayMs?: number;
  /** @defaultValue none */
  readonly logger?: KvTierLogger;
}

/** The defaults the tier's options document, written once (the CLI's flags read them). */
export const DEFAULT_KV_TIER = Object.freeze({ keyPrefix: 'moeserve:kv', ttlMs: 3_600_000, maxBytes: 2 ** 30 });

/** The tier's fingerprint of (model, layout, block size, dtype): 16 hex digits. */
export function kvTierFingerprint(modelId: string, kv: Pick<KvCacheManager, 'layout' | 'blockSize'>): string {
  const identity = JSON.stringify({ format: VALUE_FORMAT, modelId, layout: kv.layout, blockSize: kv.blockSize, dtype: 'f32le' });
  return createHash('sha256').update(identity).digest('hex').slice(0, 16);
}

// KEYS[1] block key, KEYS[2] this window's byte counter, KEYS[3] the previous window's;
// ARGV[1] value, ARGV[2] ttl ms, ARGV[3] cap bytes. Returns 1 written, 0 already there, -1 over cap.
const KVPUT_LUA = `
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local size = string.len(ARGV[1])
local used = tonumber(redis.call('GET', KEYS[2]) or '0') + tonumber(redis.call('GET', KEYS[3]) or '0')
if used + size > tonumber(ARGV[3]) then return -1 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('INCRBY', KEYS[2], size)
redis.call('PEXPIRE', KEYS[2], 2 * tonumber(ARGV[2]))
return 1
`;

type RedisWithKvPut = Redis & {
  kvput(blockKey: string, windowKey: string, prevWindowKey: string, value: Buffer, ttlMs: number, capBytes: number): Promise<number>;
};

/** One block waiting to be written: its value buffer (own ArrayBuffer, offset 0) and views into it. */
interface WriteSlot {
  readonly buf: Buffer;
  /** i32 [blockSize] at offset 24 */
  readonly tokens: Int32Array;
  /** f32 [numLayers, blockSize, E] at VALUE_HEADER_BYTES */
  readonly data: Float32Array;
  hash: number;
}

const TIMEOUT = Symbol('timeout');
const FAILED = Symbol('failed');
const NO_PAYLOADS: readonly KvBlockPayload[] = Object.freeze([]);

export class RedisKvTier implements KvTier {
  readonly fingerprint: string;
  readonly keyPrefix: string;
  /** Bytes of one value: header + numLayers · blockSize · E · 4. */
  readonly valueBytes: number;
  /** Bytes of the header before the rows: 24 + 4 · blockSize. */
  readonly headerBytes: number;

  private readonly kv: KvCacheManager;
  private readonly redis: RedisWithKvPut;
  private readonly log: KvTierLogger | null;
  private readonly ttlMs: number;
  private readonly maxBytes: number;
  private readonly fetchTimeoutMs: number;
  private readonly fetchTimeoutMsPerMiB: number;
  private readonly lookupBackoffMs: number;
  private skipLookupsUntil = 0;
  private readonly maxFetchBlocks: number;
  private readonly fetchChunkBlocks: number;
  private readonly blockSize: number;
  private readonly numLayers: number;
  private readonly dataElements: number;

  // Write-behind: slots are made on first need, up to maxSlots, and reused (avoid GC of large buffers).
  private readonly slots: WriteSlot[] = [];
  private readonly maxSlots: number;
  private readonly freeSlots: number[] = [];
  private readonly pending: number[] = [];
  private flushScheduled = false;
  private inflight = 0;
  private idleWaiters: (() => void)[] = [];
  private readonly flushBound = (): void => this.flushWrites();

  private degradedNow = true;
  private warned = false;
  private everReady = false;
  private closed = false;
  private counters = { queryTokens: 0, hitTokens: 0, blocksWritten: 0, bytesWritten: 0, bytesRead: 0, writesDropped: 0, writesOverCap: 0, errors: 0 };

  /**
   * Connects in the background (a lookup before the connection is ready is a miss) and attaches
   * itself to `kv` (KvCacheManager.attachTier).
   * @throws ServerError('invalid_request') for bad options; ServerError('config_unsupported') on a
   *   big-endian host (values are little-endian float32, copied without swapping).
   */
  constructor(kv: KvCacheManager, options: RedisKvTierOptions) {
    if (endianness() !== 'LE') throw new ServerError('config_unsupported', 'the KV Redis tier needs a little-endian host');
    this.kv = kv;
    this.log = options.logger ?? null;
    this.keyPrefix = options.keyPrefix ?? DEFAULT_KV_TIER.keyPrefix;
    this.ttlMs = positive('ttlMs', options.ttlMs ?? DEFAULT_KV_TIER.ttlMs);
    this.maxBytes = positive('maxBytes', options.maxBytes ?? DEFAULT_KV_TIER.maxBytes);
    this.fetchTimeoutMs = positive('fetchTimeoutMs', options.fetchTimeoutMs ?? 100);
    this.fetchTimeoutMsPerMiB = nonNegative('fetchTimeoutMsPerMiB', options.fetchTimeoutMsPerMiB ?? 20);
    this.lookupBackoffMs = positive('lookupBackoffMs', options.lookupBackoffMs ?? 1000);
    this.maxFetchBlocks = positive('maxFetchBlocks', options.maxFetchBlocks ?? 256);
    this.fetchChunkBlocks = positive('fetchChunkBlocks', options.fetchChunkBlocks ?? 16);
    const maxPendingBytes = positive('maxPendingBytes', options.maxPendingBytes ?? 64 * 2 ** 20);
    const commandTimeoutMs = positive('commandTimeoutMs', options.commandTimeoutMs ?? 2000);
    const connectTimeoutMs = positive('connectTimeoutMs', options.connectTimeoutMs ?? 1000);
    const reconnectMaxDelayMs = positive('reconnectMaxDelayMs', options.reconnectMaxDelayMs ?? 1000);
    this.blockSize = kv.blockSize;
    this.numLayers = kv.layout.numLayers;
    this.dataElements = this.numLayers * kv.pool.blockElements;
    this.headerBytes = 24 + 4 * this.blockSize;
    this.valueBytes = this.headerBytes + 4 * this.dataElements;
    this.maxSlots = Math.max(1, Math.floor(maxPendingBytes / this.valueBytes));
    this.fingerprint = kvTierFingerprint(options.modelId, kv);

    const redis = new Redis(options.url, {
      // Fail fast instead of queueing while disconnected: a lookup must not wait for a reconnect.
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      autoResendUnfulfilledCommands: false,
      commandTimeout: commandTimeoutMs,
      connectTimeout: connectTimeoutMs,
      retryStrategy: (times: number) => Math.min(50 * times, reconnectMaxDelayMs),
    });
    redis.defineCommand('kvput', { numberOfKeys: 3, lua: KVPUT_LUA });
    this.redis = redis as RedisWithKvPut;
    redis.on('ready', () => this.onReady());
    redis.on('error', (err: Error) => this.markDegraded('connection error', err));
    redis.on('close', () => this.markDegraded('connection closed', null));
    kv.attachTier(this);
  }

  /** The key of the block with chain hash `hash`. */
  keyFor(hash: number): string {
    return `${this.keyPrefix}:${this.fingerprint}:${hashHex(hash)}`;
  }

  /** Resolves true once the connection is ready, false after timeoutMs (never rejects). */
  async whenReady(timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (this.redis.status !== 'ready') {
      if (this.closed || Date.now() >= deadline) return false;
      await sleep(10);
    }
    return true;
  }

  // ---- write-behind

  /** KvTier: a block just registered under `hash`; copied now, written on the next macrotask. */
  blockCommitted(blockId: number, hash: number): void {
    if (this.closed) return;
    if (this.redis.status !== 'ready') {
      this.counters.writesDropped++;
      return;
    }
    const idx = this.takeSlot();
    if (idx < 0) {
      this.counters.writesDropped++;
      return;
    }
    const slot = this.slots[idx]!;
    try {
      this.kv.readBlock(blockId, slot.tokens, slot.data);
    } catch (err) {
      this.freeSlots.push(idx);
      this.counters.errors++;
      this.log?.warn({ err, blockId }, 'KV Redis tier: cannot copy a committed block');
      return;
    }
    slot.hash = hash;
    slot.buf.writeDoubleLE(hash, 16);
    this.pending.push(idx);
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(this.flushBound);
    }
  }

  /** Resolves when every block committed so far has been written or dropped (tests, shutdown). */
  async flush(): Promise<void> {
    if (this.pending.length === 0 && this.inflight === 0) return;
    await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
  }

  private takeSlot(): number {
    const free = this.freeSlots.pop();
    if (free !== undefined) return free;
    if (this.slots.length >= this.maxSlots) return -1;
    // own ArrayBuffer at offset 0 (not the shared pool), so the typed views below are aligned;
    // not zero-filled: readBlock overwrites every byte past the header
    const buf = Buffer.allocUnsafeSlow(this.valueBytes);
    buf.writeUInt32LE(VALUE_MAGIC, 0);
    buf.writeUInt32LE(this.blockSize, 4);
    buf.writeUInt32LE(this.numLayers, 8);
    buf.writeUInt32LE(this.kv.elementsPerToken, 12);
    this.slots.push({
      buf,
      tokens: new Int32Array(buf.buffer, buf.byteOffset + 24, this.blockSize),
      data: new Float32Array(buf.buffer, buf.byteOffset + this.headerBytes, this.dataElements),
      hash: NaN,
    });
    return this.slots.length - 1;
  }

  private flushWrites(): void {
    this.flushScheduled = false;
    const window = Math.floor(Date.now() / this.ttlMs);
    const windowKey = `${this.keyPrefix}:${this.fingerprint}:bytes:${window}`;
    const prevWindowKey = `${this.keyPrefix}:${this.fingerprint}:bytes:${window - 1}`;
    for (const idx of this.pending) {
      const slot = this.slots[idx]!;
      this.inflight++;
      this.redis.kvput(this.keyFor(slot.hash), windowKey, prevWindowKey, slot.buf, this.ttlMs, this.maxBytes).then(
        (r) => {
          if (r === 1) {
            this.counters.blocksWritten++;
            this.counters.bytesWritten += this.valueBytes;
          } else if (r === -1) {
            this.counters.writesOverCap++;
          }
          this.markHealthy();
          this.releaseSlot(idx);
        },
        (err: unknown) => {
          this.counters.errors++;
          this.markDegraded('write failed', err);
          this.releaseSlot(idx);
        },
      );
    }
    this.pending.length = 0;
  }

  private releaseSlot(idx: number): void {
    this.freeSlots.push(idx);
    this.inflight--;
    if (this.inflight === 0 && this.pending.length === 0 && this.idleWaiters.length > 0) {
      const waiters = this.idleWaiters;
      this.idleWaiters = [];
      for (const w of waiters) w();
    }
  }

  // ---- lookup

  /**
   * Looks up blocks hashes[startIndex..] (at most maxFetchBlocks) and returns the longest run of
   * consecutive valid hits from startIndex, in order. With `tokens` (the prompt), a value whose
   * token ids differ from tokens[i·B, (i+1)·B) ends the run too. Never rejects: an error or the
   * deadline returns the run found so far (possibly none), marks the tier degraded and makes the
   * lookups of the next lookupBackoffMs return nothing at once; so does a connection that is down.
   */
  async fetchPrefix(hashes: ArrayLike<number>, startIndex: number, tokens?: ArrayLike<number>): Promise<readonly KvBlockPayload[]> {
    const end = Math.min(hashes.length, startIndex + this.maxFetchBlocks);
    if (this.closed || !(startIndex >= 0) || end <= startIndex) return NO_PAYLOADS;
    this.counters.queryTokens += (end - startIndex) * this.blockSize;
    if (this.redis.status !== 'ready' || Date.now() < this.skipLookupsUntil) {
      this.counters.errors++;
      return NO_PAYLOADS;
    }
    // every chunk is sent now (pipelined on the one connection), then consumed in order
    const chunks: Promise<(Buffer | null)[] | typeof FAILED>[] = [];
    for (let i = startIndex; i < end; i += this.fetchChunkBlocks) {
      const keys: string[] = [];
      for (let j = i; j < Math.min(end, i + this.fetchChunkBlocks); j++) keys.push(this.keyFor(hashes[j]!));
      chunks.push(
        this.redis.mgetBuffer(keys).then(
          (r) => r,
          (err: unknown) => {
            this.markDegraded('lookup failed', err);
            return FAILED;
          },
        ),
      );
    }
    const timeoutMs = Math.ceil(this.fetchTimeoutMs + (this.fetchTimeoutMsPerMiB * (end - startIndex) * this.valueBytes) / 2 ** 20);
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<typeof TIMEOUT>((resolve) => {
      timer = setTimeout(resolve, timeoutMs, TIMEOUT);
    });
    const out: KvBlockPayload[] = [];
    let failed = false;
    try {
      let i = startIndex;
      outer: for (const chunk of chunks) {
        const r = await Promise.race([chunk, deadline]);
        if (r === TIMEOUT) {
          this.markDegraded(`lookup timed out after ${timeoutMs} ms`, null);
          failed = true;
          break;
        }
        if (r === FAILED) {
          failed = true;
          break;
        }
        for (const buf of r) {
          const p = buf === null ? null : this.decode(buf, hashes[i]!, tokens, i);
          if (p === null) break outer;
          out.push(p);
          this.counters.bytesRead += buf!.length;
          i++;
        }
      }
    } finally {
      clearTimeout(timer);
    }
    if (failed) {
      this.counters.errors++;
      this.skipLookupsUntil = Date.now() + this.lookupBackoffMs;
    } else {
      this.markHealthy();
    }
    this.counters.hitTokens += out.length * this.blockSize;
    return out;
  }

  /**
   * For a waiting request: hashes its prompt (or takes `hashes` from KvCacheManager.prefixHashes),
   * finds the first block missing from the pool, fetches the run from there out of Redis and
   * installs it into the pool (KvCacheManager.installBlocks), so admission's matchPrefix hits it.
   * Returns the tokens installed or already present from that block on. Never rejects; with the
   * tier down it returns 0 at once.
   */
  async prefetch(tokens: ArrayLike<number>, numTokens: number, salt: string | null, hashes?: Float64Array): Promise<number> {
    try {
      const h = hashes ?? this.kv.prefixHashes(tokens, numTokens, salt);
      const maxBlocks = Math.min(h.length, this.kv.matchableBlocks(numTokens));
      let start = 0;
      while (start < maxBlocks && this.kv.pool.lookupCached(h[start]!) !== NO_BLOCK) start++;
      if (start >= maxBlocks) return 0;
      const blocks = await this.fetchPrefix(h.subarray(0, maxBlocks), start, tokens);
      if (blocks.length === 0) return 0;
      return this.kv.installBlocks(blocks).length * this.blockSize;
    } catch (err) {
      this.counters.errors++;
      this.log?.warn({ err }, 'KV Redis tier: prefetch failed; the prefix is recomputed');
      return 0;
    }
  }

  /** A value -> a payload viewing it, or null when it is not this block's (counted as an error). */
  private decode(buf: Buffer, hash: number, tokens: ArrayLike<number> | undefined, blockIndex: number): KvBlockPayload | null {
    if (
      buf.length !== this.valueBytes ||
      buf.readUInt32LE(0) !== VALUE_MAGIC ||
      buf.readUInt32LE(4) !== this.blockSize ||
      buf.readUInt32LE(8) !== this.numLayers ||
      buf.readUInt32LE(12) !== this.kv.elementsPerToken ||
      buf.readDoubleLE(16) !== hash
    ) {
      this.counters.errors++;
      this.log?.warn({ key: this.keyFor(hash), bytes: buf.length }, 'KV Redis tier: a value that is not this block; treated as a miss');
      return null;
    }
    // typed views need 4-byte alignment; a reply may be a slice at any offset
    const bytes = (buf.byteOffset & 3) === 0 ? buf : new Uint8Array(buf);
    const blockTokens = new Int32Array(bytes.buffer, bytes.byteOffset + 24, this.blockSize);
    if (tokens !== undefined) {
      const base = blockIndex * this.blockSize;
      if (tokens.length < base + this.blockSize) return null;
      for (let t = 0; t < this.blockSize; t++) if (blockTokens[t] !== (tokens[base + t]! | 0)) return null;
    }
    return { hash, tokens: blockTokens, data: new Float32Array(bytes.buffer, bytes.byteOffset + this.headerBytes, this.dataElements) };
  }

  // ---- health and stats

  /** KvTier: the counters for /metrics. */
  stats(): KvTierStats {
    return { ...this.counters, degraded: this.degradedNow };
  }

  /** Writes what is queued (bounded wait), then closes the connection and detaches from the manager. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.kv.attachTier(null);
    await Promise.race([this.flush(), sleep(1000)]);
    this.closed = true;
    try {
      if (this.redis.status === 'ready') await this.redis.quit();
      else this.redis.disconnect();
    } catch {
      this.redis.disconnect();
    }
  }

  private onReady(): void {
    if (this.warned || this.everReady) this.log?.info({ fingerprint: this.fingerprint }, 'KV Redis tier connected');
    this.everReady = true;
    this.markHealthy();
  }

  private markHealthy(): void {
    this.degradedNow = false;
    this.warned = false;
  }

  /** Logs once per episode (an episode ends at the next success), so a dead Redis is one line. */
  private markDegraded(reason: string, err: unknown): void {
    this.degradedNow = true;
    if (this.closed || this.warned) return;
    this.warned = true;
    this.log?.warn({ err, fingerprint: this.fingerprint }, `KV Redis tier degraded (${reason}): prefixes are recomputed until it is back`);
  }
}

function positive(name: string, v: number): number {
  if (!Number.isFinite(v) || v <= 0) throw new ServerError('invalid_request', `RedisKvTier: ${name} must be a positive number, got ${v}`);
  return v;
}

function nonNegative(name: string, v: number): number {
  if (!Number.isFinite(v) || v < 0) throw new ServerError('invalid_request', `RedisKvTier: ${name} must be a non-negative number, got ${v}`);
  return v;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
