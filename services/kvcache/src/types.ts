/**
 * The types that cross the KV manager's boundary: what the scheduler and /metrics read (KvStats),
 * what admission passes around (PrefixMatch), and the contract with the shared tier (KvTier,
 * KvTierStats, KvBlockPayload).
 *
 * Prompt tokens (gateway) -> PrefixMatch (matchPrefix: chain hashes + pool block ids) ->
 * createSequenceWithPrefix (block ids into a block table) -> ... -> commitFullBlocks -> KvTier
 * (block id + hash; the tier copies the rows) -> Redis value -> KvBlockPayload (tier lookup) ->
 * installBlocks (pool block ids). Tokens, hashes and block ids; K/V rows only as float32 payloads.
 */
import type { KvLayout } from './layout.js';

/** A snapshot for /metrics and admission; bytes are exact layout bytes (all layers unless named). */
export interface KvStats {
  readonly kind: KvLayout['kind'];
  readonly blockSize: number;
  readonly blocksTotal: number;
  readonly blocksUsed: number;
  /** Free blocks, including free blocks that still hold a cached hash. */
  readonly blocksFree: number;
  /** Blocks registered under a content hash (held or free). */
  readonly blocksCached: number;
  /** Free blocks that still hold a hash: a prefix hit revives them, allocate evicts them (LRU). */
  readonly blocksCachedFree: number;
  readonly evictions: number;
  readonly bytesPerTokenPerLayer: number;
  readonly bytesPerToken: number;
  readonly bytesTotal: number;
  readonly bytesUsed: number;
  /** Sum of numTokens over live sequences. */
  readonly tokensStored: number;
  /** numBlocks · blockSize. */
  readonly tokensCapacity: number;
  readonly sequences: number;
  /** Prompt tokens of sequences admitted with createSequenceWithPrefix. */
  readonly prefixPoolQueryTokens: number;
  /** Of those, tokens matched in the pool (including blocks a tier prefetch had just installed). */
  readonly prefixPoolHitTokens: number;
  /** Tokens looked up in the shared tier (0 when no tier). */
  readonly prefixRedisQueryTokens: number;
  /** Tokens the shared tier returned (0 when no tier). */
  readonly prefixRedisHitTokens: number;
  /** The shared tier's counters; null when no tier is attached (the default). */
  readonly redis: KvTierStats | null;
}

/** Counters of a shared tier (RedisKvTier), for /metrics. */
export interface KvTierStats {
  /** Tokens looked up in the tier (blocks missing from the pool · blockSize). */
  readonly queryTokens: number;
  /** Tokens of the blocks the tier returned, valid and consecutive from the first looked up. */
  readonly hitTokens: number;
  /** Blocks stored (new keys; a key already there is left as it is and not counted). */
  readonly blocksWritten: number;
  /** Value bytes of blocksWritten. */
  readonly bytesWritten: number;
  /** Value bytes of the blocks returned by lookups. */
  readonly bytesRead: number;
  /** Writes not made: the write-behind queue was full, or the tier was down. */
  readonly writesDropped: number;
  /** Writes refused by the tier's byte cap. */
  readonly writesOverCap: number;
  /** Commands that failed or timed out, and lookups refused while the connection was down. */
  readonly errors: number;
  /** True while the tier is down or failing: lookups return no hit and requests recompute. */
  readonly degraded: boolean;
}

/**
 * The shared tier behind the pool, as the manager sees it (RedisKvTier implements it).
 * Attach with `KvCacheManager.attachTier`.
 */
export interface KvTier {
  /**
   * Called synchronously by commitFullBlocks for each block it registers under `hash` (a block that
   * just filled, not one matched or installed). The block is immutable only while it is held: an
   * implementation copies what it keeps (KvCacheManager.readBlock) before returning. Must not throw.
   */
  blockCommitted(blockId: number, hash: number): void;
  stats(): KvTierStats;
}

/**
 * The result of matchPrefix: the longest run of the prompt's full blocks found in the pool, from
 * block 0. Valid until the pool changes (any allocate may evict a matched free block): pass it to
 * createSequenceWithPrefix in the same synchronous turn.
 */
export interface PrefixMatch {
  /**
   * Chain hashes of the prompt's matchable full blocks: Float64Array [matchableBlocks(queryTokens)]
   * (every full block except one holding the last token). hashes[numBlocks..] are the pool misses
   * a tier may hold; pass the array back to matchPrefix to skip rehashing.
   */
  readonly hashes: Float64Array;
  /** Pool blocks holding blocks 0..numBlocks-1 of the prompt: Int32Array [numBlocks]. */
  readonly blockIds: Int32Array;
  readonly numBlocks: number;
  /** Tokens matched: numBlocks · blockSize, always < queryTokens (the last token is computed). */
  readonly numTokens: number;
  /** The numTokens argument of matchPrefix. */
  readonly queryTokens: number;
}

/**
 * One full block as the shared tier returns it, ready for installBlocks.
 * tokens: Int32Array [blockSize]; data: Float32Array [numLayers, blockSize · elementsPerToken],
 * each layer's block as the pool stores it (segment-major, layout.ts "Blocks").
 */
export interface KvBlockPayload {
  readonly hash: number;
  readonly tokens: Int32Array;
  readonly data: Float32Array;
}
