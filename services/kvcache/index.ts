/**
 * services/kvcache — the central KV-cache manager: the scheduler asks it for capacity and prefix
 * hits, the attention path moves K/V rows through it.
 * Owns: KV layouts and their exact byte sizes (GQA K/V, MLA latent; src/layout.ts), the shared
 * block pool with refcounts, block hashes and an LRU free list (src/pool.ts), chained block hashes
 * (src/hash.ts), per-sequence block tables, the row write/gather data path, prefix caching and
 * copy-on-write forks (src/manager.ts, its copy loops in src/rows.ts; boundary types in src/types.ts), and the optional shared
 * tier in Redis (src/redis-tier.ts). Admission and preemption policy live in the gateway's engine.
 */
export { KV_FLOAT32_BYTES, gqaLayout, kvLayoutFor, mhaEquivalentLayout, mlaLayout } from './src/layout.js';
export type { GqaLayout, GqaLayoutSpec, KvLayout, MlaLayout, MlaLayoutSpec } from './src/layout.js';
export { BlockPool, NO_BLOCK } from './src/pool.js';
export { chainHashes, hashBlock, hashHex, PREFIX_ROOT_HASH, rootHash } from './src/hash.js';
export { KvCacheManager, NO_SEQUENCE } from './src/manager.js';
export type { KvCacheManagerOptions, KvPoolSizing } from './src/manager.js';
export type { KvBlockPayload, KvStats, KvTier, KvTierStats, PrefixMatch } from './src/types.js';
export { kvTierFingerprint, RedisKvTier, VALUE_FORMAT, VALUE_MAGIC } from './src/redis-tier.js';
export type { KvTierLogger, RedisKvTierOptions } from './src/redis-tier.js';
export { LOOP_COPY_MAX_ELEMENTS } from './src/copy.js';
