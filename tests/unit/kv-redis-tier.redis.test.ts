/**
 * RedisKvTier against a real redis-server on a free port (tests/helpers/redis.ts): write-behind of
 * committed blocks, byte-identical values with a TTL, a second manager (another process's pool)
 * served from the tier with exact rows, the fingerprint, the byte cap, a Redis that is slow, killed
 * and brought back. Every test uses its own key prefix (kvtest-<uuid>) and deletes its keys after.
 */
import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { gqaLayout, mlaLayout, type KvLayout } from '../../services/kvcache/src/layout.js';
import { KvCacheManager } from '../../services/kvcache/src/manager.js';
import { BlockPool } from '../../services/kvcache/src/pool.js';
import { RedisKvTier, VALUE_MAGIC, type RedisKvTierOptions } from '../../services/kvcache/src/redis-tier.js';
import { startRedis, type RedisServer } from '../helpers/redis.js';

const BS = 4;
const MLA = mlaLayout({ numLayers: 3, kvLoraRank: 32, qkRopeHeadDim: 8 });
const GQA = gqaLayout({ numLayers: 2, numKvHeads: 2, headDim: 8 });
// 13 tokens: 3 matchable full blocks (the last token's block is always computed)
const PROMPT = [5, 6, 7, 8, 15, 16, 17, 18, 25, 26, 27, 28, 99];

let server: RedisServer;
let admin: Redis;
let keyPrefix: string;
const tiers: RedisKvTier[] = [];

beforeAll(async () => {
  server = await startRedis();
  admin = new Redis(server.url);
});

afterAll(async () => {
  await admin.quit();
  await server.stop();
});

afterEach(async () => {
  for (const t of tiers.splice(0)) await t.close();
  // delete this test's keys
  let cursor = '0';
  do {
    const [next, keys] = await admin.scan(cursor, 'MATCH', `${keyPrefix}:*`, 'COUNT', 1000);
    if (keys.length > 0) await admin.del(...keys);
    cursor = next;
  } while (cursor !== '0');
});

function newKeyPrefix(): string {
  keyPrefix = `kvtest-${randomUUID()}`;
  return keyPrefix;
}

function makeManager(layout: KvLayout, numBlocks = 10): KvCacheManager {
  return new KvCacheManager(new BlockPool(layout, numBlocks, BS));
}

async function makeTier(kv: KvCacheManager, opts: Partial<RedisKvTierOptions> = {}): Promise<RedisKvTier> {
  const tier = new RedisKvTier(kv, { url: server.url, modelId: 'test-model', keyPrefix, ...opts });
  tiers.push(tier);
  expect(await tier.whenReady(5000)).toBe(true);
  return tier;
}

/** Computes the prompt's rows (tag-specific values) in every layer and commits its full blocks. */
function prefill(kv: KvCacheManager, tokens: readonly number[], tag: number, salt: string | null = null): number {
  const s = kv.createSequence();
  const E = kv.elementsPerToken;
  expect(kv.ensureCapacity(s, tokens.length)).toBe(true);
  const rows = new Float32Array(tokens.length * E);
  for (let l = 0; l < kv.layout.numLayers; l++) {
    for (let i = 0; i < rows.length; i++) rows[i] = tag * 1e5 + l * 1e4 + i / 7;
    kv.writeRows(l, s, 0, rows, 0, tokens.length);
  }
  kv.advance(s, tokens.length);
  kv.commitFullBlocks(s, tokens, salt);
  return s;
}

function readAll(kv: KvCacheManager, seq: number, n: number): Float32Array {
  const out = new Float32Array(kv.layout.numLayers * n * kv.elementsPerToken);
  for (let l = 0; l < kv.layout.numLayers; l++) kv.readRows(l, seq, 0, n, out, l * n);
  return out;
}

describe.each([
  { name: 'mla', layout: MLA },
  { name: 'gqa', layout: GQA },
])('RedisKvTier ($name)', ({ layout }) => {
  it('writes committed blocks behind the step, byte-identical, with a TTL; a second pool is served from them with the exact rows', async () => {
    newKeyPrefix();
    const kvA = makeManager(layout);
    const tierA = await makeTier(kvA, { ttlMs: 60_000 });
    const a = prefill(kvA, PROMPT, 1);
    // nothing is sent during the step: the copies wait for the next macrotask
    expect(tierA.stats().blocksWritten).toBe(0);
    await tierA.flush();
    expect(tierA.stats()).toMatchObject({ blocksWritten: 3, bytesWritten: 3 * tierA.valueBytes, writesDropped: 0, errors: 0, degraded: false });

    // the value: header, token ids, then every layer's rows of the block
    const blockId = kvA.blockTable(a)[1]!;
    const hash = kvA.pool.blockHash(blockId);
    const value = (await admin.getBuffer(tierA.keyFor(hash)))!;
    expect(tierA.keyFor(hash)).toMatch(new RegExp(`^${keyPrefix}:[0-9a-f]{16}:[0-9a-f]{14}$`));
    expect(value.length).toBe(24 + 4 * BS + 4 * layout.numLayers * BS * layout.elementsPerToken);
    const expected = Buffer.alloc(value.length);
    expected.writeUInt32LE(VALUE_MAGIC, 0);
    expected.writeUInt32LE(BS, 4);
    expected.writeUInt32LE(layout.numLayers, 8);
    expected.writeUInt32LE(layout.elementsPerToken, 12);
    expected.writeDoubleLE(hash, 16);
    const toks = new Int32Array(expected.buffer, expected.byteOffset + 24, BS);
    const data = new Float32Array(expected.buffer, expected.byteOffset + tierA.headerBytes, layout.numLayers * BS * layout.elementsPerToken);
    kvA.readBlock(blockId, toks, data);
    expect(Array.from(toks)).toEqual([15, 16, 17, 18]);
    expect(value.equals(expected)).toBe(true);
    const pttl = await admin.pttl(tierA.keyFor(hash));
    expect(pttl).toBeGreaterThan(50_000);
    expect(pttl).toBeLessThanOrEqual(60_000);

    // another process: an empty pool, the same model -> all three blocks from Redis
    const kvB = makeManager(layout);
    const tierB = await makeTier(kvB);
    expect(tierB.fingerprint).toBe(tierA.fingerprint);
    expect(await tierB.prefetch(PROMPT, PROMPT.length, null)).toBe(12);
    expect(kvB.stats()).toMatchObject({ blocksCached: 3, blocksCachedFree: 3, prefixRedisQueryTokens: 12, prefixRedisHitTokens: 12 });
    const m = kvB.matchPrefix(PROMPT, PROMPT.length, null);
    expect(Array.from(m.blockIds)).toEqual([0, 1, 2]);
    const b = kvB.createSequenceWithPrefix(m, PROMPT.length);
    expect(kvB.numTokens(b)).toBe(12);
    expect(readAll(kvB, b, 12)).toEqual(readAll(kvA, a, 12));
    expect(tierB.stats()).toMatchObject({ bytesRead: 3 * tierB.valueBytes, errors: 0 });

    // B computes the last token and commits nothing new; a cold recompute of the same blocks in
    // B would find the keys there and write nothing
    const kvC = makeManager(layout);
    const tierC = await makeTier(kvC);
    prefill(kvC, PROMPT, 1);
    await tierC.flush();
    expect(tierC.stats()).toMatchObject({ blocksWritten: 0, bytesWritten: 0, errors: 0 });
  });

  it('looks up from the first pool miss; a prefix that is only partly in Redis installs the run up to the first Redis miss', async () => {
    newKeyPrefix();
    const kvA = makeManager(layout);
    const tierA = await makeTier(kvA);
    prefill(kvA, PROMPT.slice(0, 9), 1); // blocks 0, 1 only
    await tierA.flush();
    const kvB = makeManager(layout);
    const tierB = await makeTier(kvB);
    prefill(kvB, PROMPT.slice(0, 5), 1); // B holds block 0 itself
    await tierB.flush();
    expect(await tierB.prefetch(PROMPT, PROMPT.length, null)).toBe(4); // block 1 from Redis; block 2 is nowhere
    expect(tierB.stats()).toMatchObject({ queryTokens: 8, hitTokens: 4 });
    expect(kvB.matchPrefix(PROMPT, PROMPT.length, null).numBlocks).toBe(2);
  });

  it('a block of another model (fingerprint) or another salt is not found', async () => {
    newKeyPrefix();
    const kvA = makeManager(layout);
    const tierA = await makeTier(kvA);
    prefill(kvA, PROMPT, 1, 'tenant-a');
    await tierA.flush();
    const kvB = makeManager(layout);
    const tierB = await makeTier(kvB, { modelId: 'another-model' });
    expect(tierB.fingerprint).not.toBe(tierA.fingerprint);
    expect(await tierB.prefetch(PROMPT, PROMPT.length, 'tenant-a')).toBe(0);
    const kvC = makeManager(layout);
    const tierC = await makeTier(kvC);
    expect(await tierC.prefetch(PROMPT, PROMPT.length, null)).toBe(0);
    expect(await tierC.prefetch(PROMPT, PROMPT.length, 'tenant-b')).toBe(0);
    expect(await tierC.prefetch(PROMPT, PROMPT.length, 'tenant-a')).toBe(12);
  });

  it('the byte cap refuses writes past maxBytes', async () => {
    newKeyPrefix();
    const kv = makeManager(layout);
    const valueBytes = 24 + 4 * BS + 4 * layout.numLayers * BS * layout.elementsPerToken;
    const tier = await makeTier(kv, { maxBytes: Math.floor(2.5 * valueBytes) });
    prefill(kv, PROMPT, 1);
    await tier.flush();
    expect(tier.stats()).toMatchObject({ blocksWritten: 2, writesOverCap: 1, bytesWritten: 2 * valueBytes });
  });

  it('the write-behind queue is bounded: blocks past it are dropped, never awaited', async () => {
    newKeyPrefix();
    const kv = makeManager(layout);
    const tier = await makeTier(kv, { maxPendingBytes: 1 }); // room for one block
    prefill(kv, PROMPT, 1);
    await tier.flush();
    expect(tier.stats()).toMatchObject({ blocksWritten: 1, writesDropped: 2 });
  });
});

describe('RedisKvTier when Redis is slow, killed, and back', () => {
  it('a paused Redis: the lookup returns no hit at its deadline, no throw', async () => {
    newKeyPrefix();
    const kvA = makeManager(MLA);
    const tierA = await makeTier(kvA);
    prefill(kvA, PROMPT, 1);
    await tierA.flush();
    const kvB = makeManager(MLA);
    const tierB = await makeTier(kvB, { fetchTimeoutMs: 50, fetchTimeoutMsPerMiB: 0, lookupBackoffMs: 300 });
    await admin.call('CLIENT', 'PAUSE', '400', 'ALL');
    const t0 = performance.now();
    expect(await tierB.prefetch(PROMPT, PROMPT.length, null)).toBe(0);
    expect(performance.now() - t0).toBeLessThan(300);
    expect(tierB.stats()).toMatchObject({ errors: 1, degraded: true, hitTokens: 0 });
    // within the backoff: no hit at once, without waiting for the deadline again
    const t1 = performance.now();
    expect(await tierB.prefetch(PROMPT, PROMPT.length, null)).toBe(0);
    expect(performance.now() - t1).toBeLessThan(40);
    expect(tierB.stats().errors).toBe(2);
    await new Promise((r) => setTimeout(r, 450));
    // the pause is over: the next lookup succeeds and clears the degraded state
    expect(await tierB.prefetch(PROMPT, PROMPT.length, null)).toBe(12);
    expect(tierB.stats().degraded).toBe(false);
  });

  it('Redis killed mid-run: lookups return quickly with no hit, writes are dropped, errors count; Redis back: it works again', async () => {
    newKeyPrefix();
    const own = await startRedis();
    const warnings: string[] = [];
    const logger = { warn: (_o: object, msg: string) => warnings.push(msg), info: () => {} };
    try {
      const kvA = makeManager(MLA);
      const tierA = new RedisKvTier(kvA, { url: own.url, modelId: 'm', keyPrefix, logger, reconnectMaxDelayMs: 100, lookupBackoffMs: 50 });
      tiers.push(tierA);
      expect(await tierA.whenReady(5000)).toBe(true);
      prefill(kvA, PROMPT, 1);
      await tierA.flush();
      expect(tierA.stats().blocksWritten).toBe(3);

      await own.kill();
      const kvB = makeManager(MLA);
      const tierB = new RedisKvTier(kvB, { url: own.url, modelId: 'm', keyPrefix, logger, reconnectMaxDelayMs: 100 });
      tiers.push(tierB);
      // A looks up a prefix it lacks, right after the kill (its connection may not know yet)
      const other = [1, 2, 3, 4, 5, 6, 7, 8, 9];
      const t0 = performance.now();
      expect(await tierA.prefetch(other, other.length, null)).toBe(0);
      expect(await tierB.prefetch(PROMPT, PROMPT.length, null)).toBe(0);
      expect(performance.now() - t0).toBeLessThan(500);
      await new Promise((r) => setTimeout(r, 100));
      expect(await tierA.prefetch(other, other.length, null)).toBe(0);
      expect(tierA.stats()).toMatchObject({ degraded: true, hitTokens: 0 });
      expect(tierA.stats().errors).toBeGreaterThanOrEqual(1);
      expect(tierB.stats().errors).toBeGreaterThanOrEqual(1);
      // a sequence committed while Redis is down: its blocks are dropped, the step is unaffected
      prefill(kvA, other, 2);
      expect(tierA.stats().writesDropped).toBe(2);
      // one warning per tier per episode, not one per attempt
      expect(warnings.length).toBeLessThanOrEqual(2);

      await own.restart(); // empty: no persistence
      expect(await tierA.whenReady(5000)).toBe(true);
      expect(await tierB.whenReady(5000)).toBe(true);
      expect(tierA.stats().degraded).toBe(false);
      const kvC = makeManager(MLA);
      const third = [31, 32, 33, 34, 35];
      prefill(kvA, third, 3);
      await tierA.flush();
      expect(tierA.stats().blocksWritten).toBe(4);
      const tierC = new RedisKvTier(kvC, { url: own.url, modelId: 'm', keyPrefix });
      tiers.push(tierC);
      expect(await tierC.whenReady(5000)).toBe(true);
      expect(await tierC.prefetch(third, third.length, null)).toBe(4);
    } finally {
      for (const t of tiers.splice(0)) await t.close();
      await own.stop();
    }
  });
});
