/**
 * services/kvcache — the central KV-cache manager: the scheduler asks it for capacity, the attention
 * path moves K/V rows through it.
 * Owns: KV layouts and their exact byte sizes (GQA K/V, MLA latent; src/layout.ts), the shared
 * block pool with refcounts, block hashes and an LRU free list (src/pool.ts), per-sequence block
 * tables and the row write/gather data path (src/manager.ts). Later here: prefix cache, admission
 * and preemption, the Redis tier.
 */
export { KV_FLOAT32_BYTES, gqaLayout, kvLayoutFor, mhaEquivalentLayout, mlaLayout } from './src/layout.js';
export type { GqaLayout, GqaLayoutSpec, KvLayout, MlaLayout, MlaLayoutSpec } from './src/layout.js';
export { BlockPool, NO_BLOCK } from './src/pool.js';
export { KvCacheManager } from './src/manager.js';
export type { KvCacheManagerOptions, KvPoolSizing, KvStats } from './src/manager.js';
export { LOOP_COPY_MAX_ELEMENTS } from './src/copy.js';
