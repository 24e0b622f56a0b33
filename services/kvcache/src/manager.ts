/**
 * The KV-cache manager of one model: a block table per sequence over one shared BlockPool, and the
 * data path that moves K/V rows between the attention path and the pool.
 *
 * Scheduler (gateway), per request:
 *   [tier on: RedisKvTier.prefetch(tokens) while the request waits: pool misses fetched from Redis
 *    and installed as cached-free blocks] ->
 *   admission: matchPrefix(tokens, n, salt) -> createSequenceWithPrefix(match, matched + chunk)
 *   (all-or-nothing; or createSequence + ensureCapacity without prefix caching) -> seqId, with
 *   numTokens(seqId) tokens already cached ->
 *   each step: ensureCapacity(seqId, tokens) (all-or-nothing) -> attention path, per layer:
 *   writeRows(new rows of the step) then gather(rows 0..len of every sequence of the step) ->
 *   after the step: advance(seqId, n), commitFullBlocks(seqId, tokens, salt) (hashes blocks that
 *   just filled; the tier is told of them) -> n samples: forkSequence after the prompt ->
 *   on finish, abort, preemption or client disconnect: freeSequence (blocks with a hash stay
 *   findable as cached-free blocks until the pool needs them).
 * Tokens and block ids live here; activations never do (only K/V rows, float32, layout.ts).
 *
 * Invariants:
 *   - a block table is append-only while its sequence lives: entries [0, numBlocks) never change,
 *     so a view from blockTable() stays correct for its length until freeSequence;
 *   - numTokens(seqId) <= capacity(seqId) = numBlocks(seqId) · blockSize;
 *   - every block in a live table holds one reference of that sequence;
 *   - copy-on-write: a sequence's first frozenBlocks blocks (matched from the cache, shared by a
 *     fork, or hashed by commitFullBlocks) are never written again — writeRows refuses rows below
 *     frozenBlocks · blockSize (one compare per call) and setNumTokens refuses to roll back into
 *     them. Every block at or past frozenBlocks was allocated for this sequence alone (ensureCapacity
 *     or fork's private copy of a partial block), so no write ever lands in a block with
 *     refCount > 1, and a block with a hash is immutable while it has it;
 *   - a cached block's token ids are kept (blockTokens) and a prefix hit must match them, so a hash
 *     collision between different blocks is a miss, never wrong rows (hash.ts).
 * Hot paths (ensureCapacity, advance, writeRows, gather) allocate no buffers (avoid GC): tables
 * grow by doubling (amortized), released sequence ids keep their tables for the next sequence, and
 * copies go through copyElements (copy.ts) once per physically contiguous run of blocks. The only
 * objects they create are copy.ts's views (one per run longer than LOOP_COPY_MAX_ELEMENTS taken
 * from part of an array, never per token) and blockTable's view after the table grew.
 * commitFullBlocks, called every step, returns after one compare unless a block filled; a block
 * that fills costs one hash over its tokens and one Map insert (once per blockSize tokens, not per
 * token). Per request, not per step: matchPrefix / createSequenceWithPrefix allocate the match
 * (hashes of the prompt: pass them back to skip rehashing on a retried admission).
 */
import { ServerError } from '../../common/src/errors.js';
import type { MoeModelConfig } from '../../model/src/config.js';
import { copyElements } from './copy.js';
import { copyHeads, copyRuns, type BlockRows } from './rows.js';
import { chainHashes, hashBlock, rootHash } from './hash.js';
import { kvLayoutFor, type KvLayout } from './layout.js';
import { BlockPool, NO_BLOCK } from './pool.js';
import type { KvBlockPayload, KvStats, KvTier, PrefixMatch } from './types.js';

export type { KvBlockPayload, KvStats, KvTier, KvTierStats, PrefixMatch } from './types.js';

/** Returned by createSequenceWithPrefix and forkSequence when the pool cannot supply the blocks. */
export const NO_SEQUENCE = -1;

export interface KvCacheManagerOptions {
  /** Sequence slots preallocated; grows by doubling. @defaultValue 64 */
  readonly initialSequences?: number;
  /** Block-table entries a new sequence slot starts with; grows by doubling. @defaultValue 8 */
  readonly initialBlocksPerSequence?: number;
}

/** How to size the pool of `KvCacheManager.forModel`: give numBlocks or budgetBytes, not both. */
export interface KvPoolSizing {
  /** Tokens per block. */
  readonly blockSize: number;
  readonly numBlocks?: number;
  /** Bytes of KV storage over all layers; numBlocks = floor(budget / (pageSizeBytes · numLayers)). */
  readonly budgetBytes?: number;
}

// Shared by every sequence that holds no block; length 0, so nothing can be written through it.
const EMPTY_TABLE = new Int32Array(0);
const NO_IDS = new Int32Array(0);

/**
 * Public surface: what the scheduler, the attention path and the Redis tier call, plus four
 * read-only inspection methods that no serving path uses and the tests assert with (exact block
 * ids, as vLLM's tests do): `numSequences`, `blockTable`, `readRows`, `numHashedBlocks`.
 */
export class KvCacheManager {
  readonly pool: BlockPool;
  readonly layout: KvLayout;
  readonly blockSize: number;
  readonly elementsPerToken: number;
  /** = elementsPerToken; the name the attention path's KvStore interface uses. */
  readonly rowElements: number;

  private readonly initialBlocks: number;
  // The layout's block segments (layout.ts "Blocks"), flat for the copy loops (rows.ts).
  private readonly rows: BlockRows;
  // Per sequence slot, index = seqId. tables[id] has capacity >= blockCounts[id]; entries past
  // blockCounts[id] are stale. views[id] caches blockTable(id), null when it must be rebuilt.
  private readonly tables: Int32Array[] = [];
  private readonly views: (Int32Array | null)[] = [];
  private blockCounts: Int32Array;
  private tokenCounts: Int32Array;
  // Prefix caching, per sequence slot: blocks [0, hashedBlocks) have known chain hashes, the last
  // being lastHashes[id]; blocks [0, frozenBlocks) are never written again (see Invariants).
  private hashedBlocks: Int32Array;
  private frozenBlocks: Int32Array;
  private lastHashes: Float64Array;
  private live: Uint8Array;
  // Which incarnation of the id holds the slot: a new value on every create and rollback, so a
  // reader that copied rows [0, n) earlier can tell whether they are still the sequence's rows.
  private epochs: Float64Array;
  private nextEpoch = 1;
  // Released sequence ids, a stack: the last released id is reused first.
  private freeIds: Int32Array;
  private numFreeIds = 0;
  private nextFreshId = 0;
  private liveCount = 0;
  private tokensTotal = 0;
  // blockTokens: Int32Array [numBlocks, blockSize], the token ids of each block that holds a hash
  // (written when the hash is registered; stale otherwise).
  private readonly blockTokens: Int32Array;
  private tier: KvTier | null = null;
  private poolQueryTokens = 0;
  private poolHitTokens = 0;

  constructor(pool: BlockPool, options: KvCacheManagerOptions = {}) {
    const slots = options.initialSequences ?? 64;
    const blocks = options.initialBlocksPerSequence ?? 8;
    if (!Number.isSafeInteger(slots) || slots <= 0) throw new ServerError('invalid_request', `KvCacheManager: initialSequences must be a positive integer, got ${slots}`);
    if (!Number.isSafeInteger(blocks) || blocks <= 0) throw new ServerError('invalid_request', `KvCacheManager: initialBlocksPerSequence must be a positive integer, got ${blocks}`);
    this.pool = pool;
    this.layout = pool.layout;
    this.blockSize = pool.blockSize;
    this.elementsPerToken = pool.elementsPerToken;
    this.rowElements = pool.elementsPerToken;
    const segRow = Int32Array.from(this.layout.segments, (x) => x.offset);
    const segLen = Int32Array.from(this.layout.segments, (x) => x.length);
    this.rows = { blockSize: this.blockSize, elementsPerToken: this.elementsPerToken, blockElements: pool.blockElements, segRow, segLen, rowMajor: segRow.length === 1 };
    this.initialBlocks = blocks;
    this.blockCounts = new Int32Array(slots);
    this.tokenCounts = new Int32Array(slots);
    this.hashedBlocks = new Int32Array(slots);
    this.frozenBlocks = new Int32Array(slots);
    this.lastHashes = new Float64Array(slots);
    this.live = new Uint8Array(slots);
    this.epochs = new Float64Array(slots);
    this.blockTokens = new Int32Array(pool.numBlocks * pool.blockSize);
    this.freeIds = new Int32Array(slots);
  }

  /** A manager over a new pool in `kvLayoutFor(cfg)` (float32). */
  static forModel(cfg: MoeModelConfig, sizing: KvPoolSizing, options?: KvCacheManagerOptions): KvCacheManager {
    const layout = kvLayoutFor(cfg);
    const hasBlocks = sizing.numBlocks !== undefined;
    if (hasBlocks === (sizing.budgetBytes !== undefined)) throw new ServerError('invalid_request', 'KvCacheManager.forModel: give exactly one of numBlocks and budgetBytes');
    const pool = hasBlocks ? new BlockPool(layout, sizing.numBlocks!, sizing.blockSize) : BlockPool.fromBudgetBytes(layout, sizing.budgetBytes!, sizing.blockSize);
    return new KvCacheManager(pool, options);
  }

  // ---- sequences

  /** A new, empty sequence (no block, 0 tokens). Ids are small integers, reused after free. */
  createSequence(): number {
    let id: number;
    if (this.numFreeIds > 0) {
      id = this.freeIds[--this.numFreeIds];
    } else {
      id = this.nextFreshId++;
      if (id >= this.live.length) this.growSlots();
      if (this.tables[id] === undefined) {
        this.tables[id] = new Int32Array(this.initialBlocks);
        this.views[id] = null;
      }
    }
    this.live[id] = 1;
    this.epochs[id] = this.nextEpoch++;
    this.liveCount++;
    return id;
  }

  /**
   * The sequence's incarnation: changes whenever rows the id held before may differ (the id was
   * freed and created again, or rolled back with setNumTokens), never while rows are only
   * appended. Rows [0, n) copied out under one epoch are still the sequence's rows while
   * epoch(seqId) returns the same value.
   */
  epoch(seqId: number): number {
    this.checkLive(seqId);
    return this.epochs[seqId];
  }

  /**
   * Returns every block of the sequence (one decRef each, last block first, so that with prefix
   * caching a sequence's tail is evicted before its shared prefix) and releases the id.
   * @throws ServerError('internal') for an unknown or already freed id.
   */
  freeSequence(seqId: number): void {
    this.checkLive(seqId);
    const table = this.tables[seqId];
    for (let i = this.blockCounts[seqId] - 1; i >= 0; i--) this.pool.decRef(table[i]);
    this.blockCounts[seqId] = 0;
    this.hashedBlocks[seqId] = 0;
    this.frozenBlocks[seqId] = 0;
    this.tokensTotal -= this.tokenCounts[seqId];
    this.tokenCounts[seqId] = 0;
    this.views[seqId] = null;
    this.live[seqId] = 0;
    this.liveCount--;
    this.freeIds[this.numFreeIds++] = seqId;
  }

  get numSequences(): number {
    return this.liveCount;
  }

  // ---- capacity

  /** Blocks that hold numTokens tokens: ceil(numTokens / blockSize). */
  blocksForTokens(numTokens: number): number {
    return Math.ceil(numTokens / this.blockSize);
  }

  /**
   * Makes the sequence able to hold numTokens tokens in total (not additional ones), taking blocks
   * from the pool as needed. All-or-nothing: returns false, taking nothing, when the pool cannot
   * supply every block; the caller decides (wait, preempt, or fail with 'resource_exhausted').
   * Never shrinks.
   */
  ensureCapacity(seqId: number, numTokens: number): boolean {
    this.checkLive(seqId);
    if (!Number.isSafeInteger(numTokens) || numTokens < 0 || numTokens > 0x7fff_ffff) throw new ServerError('internal', `KvCacheManager.ensureCapacity: bad token count ${numTokens}`);
    const have = this.blockCounts[seqId];
    const need = this.blocksForTokens(numTokens);
    if (need <= have) return true;
    if (need - have > this.pool.numFree) return false;
    let table = this.tables[seqId];
    if (need > table.length) table = this.growTable(seqId, need);
    for (let i = have; i < need; i++) table[i] = this.pool.allocate();
    this.blockCounts[seqId] = need;
    this.views[seqId] = null;
    return true;
  }

  numBlocks(seqId: number): number {
    this.checkLive(seqId);
    return this.blockCounts[seqId];
  }

  /** Tokens whose rows are committed (every layer written). */
  numTokens(seqId: number): number {
    this.checkLive(seqId);
    return this.tokenCounts[seqId];
  }

  /**
   * Sets the committed token count, 0 <= n <= capacity(seqId). Lowering it (a rollback) keeps
   * the blocks; their rows are simply overwritten later.
   */
  setNumTokens(seqId: number, n: number): void {
    this.checkLive(seqId);
    if (!Number.isInteger(n) || n < 0 || n > this.blockCounts[seqId] * this.blockSize) {
      throw new ServerError('internal', `KvCacheManager.setNumTokens: ${n} tokens for sequence ${seqId} with capacity ${this.blockCounts[seqId] * this.blockSize}`);
    }
    if (n < this.frozenBlocks[seqId] * this.blockSize) {
      throw new ServerError('internal', `KvCacheManager.setNumTokens: cannot roll sequence ${seqId} back to ${n} tokens, into its ${this.frozenBlocks[seqId]} shared or cached blocks`);
    }
    if (n < this.tokenCounts[seqId]) this.epochs[seqId] = this.nextEpoch++; // rows from n on will be rewritten
    this.tokensTotal += n - this.tokenCounts[seqId];
    this.tokenCounts[seqId] = n;
  }

  /** After a step wrote n new rows in every layer: numTokens += n. */
  advance(seqId: number, n: number): void {
    this.checkLive(seqId);
    if (!Number.isInteger(n) || n < 0) throw new ServerError('internal', `KvCacheManager.advance: bad count ${n}`);
    this.setNumTokens(seqId, this.tokenCounts[seqId] + n);
  }

  /**
   * The sequence's block ids, in token order: Int32Array [numBlocks(seqId)], a view of the live
   * table (no copy; the same object until the table changes). Read-only by contract. Valid until
   * the next ensureCapacity that adds blocks (it then misses them) or freeSequence.
   */
  blockTable(seqId: number): Int32Array {
    this.checkLive(seqId);
    let view = this.views[seqId];
    if (view === null) {
      const n = this.blockCounts[seqId];
      view = n === 0 ? EMPTY_TABLE : this.tables[seqId].subarray(0, n);
      this.views[seqId] = view;
    }
    return view;
  }

  // ---- prefix caching and copy-on-write

  /**
   * Full blocks of a numTokens-token prompt that a prefix hit may cover:
   * floor((numTokens - 1) / blockSize) — never the block of the last token, which the engine must
   * compute to have logits to sample from (as vLLM does).
   */
  matchableBlocks(numTokens: number): number {
    return numTokens > 0 ? Math.floor((numTokens - 1) / this.blockSize) : 0;
  }

  /**
   * Chain hashes of the prompt's matchable full blocks (hash.ts): Float64Array
   * [matchableBlocks(numTokens)]. `known`, an earlier result for a shorter prefix of the same tokens
   * and salt (e.g. the prompt's, for a preempted sequence that has generated since), is reused.
   * Computed once per request; pass the result to matchPrefix on every admission attempt.
   */
  prefixHashes(tokens: ArrayLike<number>, numTokens: number, salt: string | null, known?: Float64Array): Float64Array {
    this.checkTokens('prefixHashes', tokens, numTokens);
    return chainHashes(tokens, this.matchableBlocks(numTokens), this.blockSize, salt, known);
  }

  /**
   * The longest run of tokens[0, numTokens)'s full blocks cached in the pool (held or free), from
   * block 0, stopping at the first miss; a hit must match the block's token ids too. Leaves at least
   * the last token uncovered. Changes nothing and counts nothing (createSequenceWithPrefix counts),
   * so a scheduler may call it on every admission attempt; pass `hashes` (from prefixHashes or an
   * earlier match) to skip hashing. Allocates the result (once per admission attempt).
   */
  matchPrefix(tokens: ArrayLike<number>, numTokens: number, salt: string | null, hashes?: Float64Array): PrefixMatch {
    this.checkTokens('matchPrefix', tokens, numTokens);
    const maxBlocks = this.matchableBlocks(numTokens);
    const h = hashes !== undefined && hashes.length >= maxBlocks ? hashes.subarray(0, maxBlocks) : chainHashes(tokens, maxBlocks, this.blockSize, salt, hashes);
    const pool = this.pool;
    let n = 0;
    let ids = NO_IDS;
    for (; n < maxBlocks; n++) {
      const id = pool.lookupCached(h[n]!);
      if (id === NO_BLOCK || !this.blockHoldsTokens(id, tokens, n * this.blockSize)) break;
      if (ids === NO_IDS) ids = new Int32Array(maxBlocks);
      ids[n] = id;
    }
    return Object.freeze({ hashes: h, blockIds: ids.subarray(0, n), numBlocks: n, numTokens: n * this.blockSize, queryTokens: numTokens });
  }

  /**
   * Admits a sequence whose first match.numTokens tokens are already cached: its table starts with
   * the matched blocks (one reference each; a cached-free block is taken off the free list), and
   * numTokens(seqId) = the matched tokens; then capacity for totalTokens tokens in all is ensured.
   * All-or-nothing: NO_SEQUENCE (-1) and no change when the pool cannot supply the rest.
   * A matched block evicted since matchPrefix (the pool changed in between) ends the match there:
   * read numTokens(seqId) for the tokens to skip, it is authoritative.
   * Counts the prompt's tokens as prefix queries and the matched ones as pool hits (stats).
   */
  createSequenceWithPrefix(match: PrefixMatch, totalTokens: number = match.numTokens): number {
    if (!Number.isSafeInteger(totalTokens) || totalTokens < 0 || totalTokens > 0x7fff_ffff) throw new ServerError('internal', `KvCacheManager.createSequenceWithPrefix: bad token count ${totalTokens}`);
    const n = this.freshMatchedBlocks(match);
    const extra = this.extraBlocksFor(n, totalTokens);
    if (extra > this.pool.numFree - this.freeAmong(match.blockIds, n)) return NO_SEQUENCE;
    const seqId = this.createSequence();
    const need = n + extra;
    let table = this.tables[seqId];
    if (need > table.length) table = this.growTable(seqId, need);
    // matched blocks first: incRef revives a cached-free block before allocate could evict it
    for (let i = 0; i < n; i++) {
      const id = match.blockIds[i]!;
      this.pool.incRef(id);
      table[i] = id;
    }
    for (let i = n; i < need; i++) table[i] = this.pool.allocate();
    const matched = n * this.blockSize;
    this.blockCounts[seqId] = need;
    this.tokenCounts[seqId] = matched;
    this.tokensTotal += matched;
    this.hashedBlocks[seqId] = n;
    this.frozenBlocks[seqId] = n;
    this.lastHashes[seqId] = n > 0 ? match.hashes[n - 1]! : 0;
    this.views[seqId] = null;
    this.poolQueryTokens += match.queryTokens;
    this.poolHitTokens += matched;
    return seqId;
  }

  /**
   * Registers the chain hashes of the sequence's full blocks that have none yet, so that later
   * requests (and this one, after a preemption) hit them; call after advance, every step (it
   * returns at once unless a block filled). tokens: the sequence's tokens, at least numTokens(seqId)
   * of them (prompt ++ generated); salt: the request's cache salt, the same on every call (it is
   * read only for block 0). Each block is hashed once. A hash another block already holds leaves
   * this block unregistered (the first stays the cached one). The attached tier is told of each
   * block registered. Returns the blocks registered.
   */
  commitFullBlocks(seqId: number, tokens: ArrayLike<number>, salt: string | null): number {
    this.checkLive(seqId);
    const bs = this.blockSize;
    const full = (this.tokenCounts[seqId] / bs) | 0;
    let i = this.hashedBlocks[seqId];
    if (i >= full) return 0;
    if (tokens.length < full * bs) throw new ServerError('internal', `KvCacheManager.commitFullBlocks: ${tokens.length} tokens for sequence ${seqId} of ${this.tokenCounts[seqId]}`);
    const pool = this.pool;
    const table = this.tables[seqId];
    let parent = i > 0 ? this.lastHashes[seqId] : rootHash(salt);
    let registered = 0;
    for (; i < full; i++) {
      const h = hashBlock(parent, tokens, i * bs, bs);
      const id = table[i];
      // a block with a hash already (matched, or shared by a fork and hashed by the other) keeps it
      if (pool.blockHash(id) !== pool.blockHash(id) && pool.setBlockHash(id, h)) {
        const off = id * bs;
        for (let t = 0; t < bs; t++) this.blockTokens[off + t] = tokens[i * bs + t]! | 0;
        registered++;
        if (this.tier !== null) this.tier.blockCommitted(id, h);
      }
      parent = h;
    }
    this.hashedBlocks[seqId] = full;
    this.lastHashes[seqId] = parent;
    if (this.frozenBlocks[seqId] < full) this.frozenBlocks[seqId] = full;
    return registered;
  }

  /**
   * Copy-on-write fork (the n samples of one request): a new sequence with the parent's tokens that
   * shares every FULL block of the parent (one more reference each) and owns a copy of a partially
   * filled last block (its rows in every layer). Both then append into blocks of their own; the
   * shared ones are frozen in both (see Invariants). Capacity the parent holds past its tokens is
   * not shared. NO_SEQUENCE (-1), and no change, when a partial block needs a block the pool lacks.
   */
  forkSequence(parentSeqId: number): number {
    this.checkLive(parentSeqId);
    const bs = this.blockSize;
    const numTokens = this.tokenCounts[parentSeqId];
    const full = (numTokens / bs) | 0;
    const partialRows = numTokens - full * bs;
    if (partialRows > 0 && this.pool.numFree < 1) return NO_SEQUENCE;
    const child = this.createSequence();
    const need = full + (partialRows > 0 ? 1 : 0);
    let table = this.tables[child];
    if (need > table.length) table = this.growTable(child, need);
    const parentTable = this.tables[parentSeqId];
    for (let i = 0; i < full; i++) {
      this.pool.incRef(parentTable[i]);
      table[i] = parentTable[i];
    }
    if (partialRows > 0) {
      const id = this.pool.allocate();
      const src = parentTable[full] * this.pool.blockElements;
      const dst = id * this.pool.blockElements;
      const { blockSize: bs, segRow, segLen } = this.rows;
      for (const storage of this.pool.layers) {
        // the first partialRows rows of every segment
        for (let sg = 0; sg < segRow.length; sg++) {
          const at = bs * segRow[sg];
          copyElements(storage, dst + at, storage, src + at, partialRows * segLen[sg]);
        }
      }
      table[full] = id;
    }
    this.blockCounts[child] = need;
    this.tokenCounts[child] = numTokens;
    this.tokensTotal += numTokens;
    this.hashedBlocks[child] = this.hashedBlocks[parentSeqId];
    this.lastHashes[child] = this.lastHashes[parentSeqId];
    if (this.frozenBlocks[parentSeqId] < full) this.frozenBlocks[parentSeqId] = full;
    this.frozenBlocks[child] = full;
    this.views[child] = null;
    return child;
  }

  /**
   * Installs full blocks fetched from the shared tier, in prompt order, as cached blocks of the pool
   * (refCount 0, findable by hash, at the most recently used end of the free list, the first block
   * last so it is evicted last): a matchPrefix right after hits them like any pool block. A block
   * whose hash the pool already holds is not copied. Stops at the first block the pool has no room
   * for (later ones could not extend a prefix match). Returns the pool block holding each block of
   * the run installed or already present: Int32Array [<= payloads.length].
   * @throws ServerError('internal') for a payload of the wrong shape (the tier validates first).
   */
  installBlocks(payloads: readonly KvBlockPayload[]): Int32Array {
    const pool = this.pool;
    const bs = this.blockSize;
    const blockElements = pool.blockElements;
    const numLayers = this.layout.numLayers;
    for (const p of payloads) {
      if (p.tokens.length !== bs || p.data.length !== numLayers * blockElements || !Number.isSafeInteger(p.hash) || p.hash < 0) {
        throw new ServerError('internal', `KvCacheManager.installBlocks: a block needs ${bs} tokens, ${numLayers} x ${blockElements} floats and a 53-bit hash; got ${p.tokens.length}, ${p.data.length}, ${p.hash}`);
      }
    }
    const ids = new Int32Array(payloads.length);
    let n = 0;
    // Every block of the run is held until the end, so installing one cannot evict another.
    for (; n < payloads.length; n++) {
      const p = payloads[n]!;
      let id = pool.lookupCached(p.hash);
      if (id !== NO_BLOCK) {
        pool.incRef(id);
      } else {
        id = pool.allocate();
        if (id === NO_BLOCK) break;
        for (let l = 0; l < numLayers; l++) copyElements(pool.layers[l]!, id * blockElements, p.data, l * blockElements, blockElements);
        pool.setBlockHash(id, p.hash);
        this.blockTokens.set(p.tokens, id * bs);
      }
      ids[n] = id;
    }
    for (let i = n - 1; i >= 0; i--) pool.decRef(ids[i]!);
    return ids.subarray(0, n);
  }

  /**
   * Copies a cached block out: its token ids to outTokens [blockSize] and every layer's block, as
   * the pool stores it, to outData [numLayers, blockSize · elementsPerToken] (the KvBlockPayload
   * format). For the tier's
   * write-behind; allocates nothing.
   * @throws ServerError('internal') for a block with no hash or outputs of the wrong size.
   */
  readBlock(blockId: number, outTokens: Int32Array, outData: Float32Array): void {
    const pool = this.pool;
    if (pool.blockHash(blockId) !== pool.blockHash(blockId)) throw new ServerError('internal', `KvCacheManager.readBlock: block ${blockId} holds no hash`);
    const bs = this.blockSize;
    const blockElements = pool.blockElements;
    const numLayers = this.layout.numLayers;
    if (outTokens.length !== bs || outData.length !== numLayers * blockElements) {
      throw new ServerError('internal', `KvCacheManager.readBlock: outputs of ${outTokens.length} tokens and ${outData.length} floats, need ${bs} and ${numLayers * blockElements}`);
    }
    const off = blockId * bs;
    for (let t = 0; t < bs; t++) outTokens[t] = this.blockTokens[off + t];
    for (let l = 0; l < numLayers; l++) copyElements(outData, l * blockElements, pool.layers[l]!, blockId * blockElements, blockElements);
  }

  /** Connects the shared tier (null disconnects): commitFullBlocks tells it of new blocks, stats() reads its counters. */
  attachTier(tier: KvTier | null): void {
    this.tier = tier;
  }

  /** Blocks with a hash at the start of the sequence's table (matched, inherited, or committed). */
  numHashedBlocks(seqId: number): number {
    this.checkLive(seqId);
    return this.hashedBlocks[seqId];
  }

  // ---- data path

  /**
   * Writes numRows rows into the sequence's slots startPos.. of one layer.
   * src: Float32Array [.., elementsPerToken], row-major; rows srcRowOffset..srcRowOffset+numRows.
   * Capacity must already be ensured (startPos + numRows <= capacity(seqId)); numTokens is not
   * changed (call advance once every layer is written).
   */
  writeRows(layer: number, seqId: number, startPos: number, src: Float32Array, srcRowOffset: number, numRows: number): void {
    this.checkLayer(layer);
    this.checkRange('writeRows', seqId, startPos, numRows);
    if (startPos < this.frozenBlocks[seqId] * this.blockSize) {
      // copy-on-write: the block may be shared or cached (see Invariants)
      throw new ServerError('internal', `KvCacheManager.writeRows: row ${startPos} of sequence ${seqId} is in its first ${this.frozenBlocks[seqId]} blocks, shared or cached, never written again`);
    }
    const ept = this.elementsPerToken;
    if (!Number.isInteger(srcRowOffset) || srcRowOffset < 0 || (srcRowOffset + numRows) * ept > src.length) {
      throw new ServerError('internal', `KvCacheManager.writeRows: rows ${srcRowOffset}..${srcRowOffset + numRows} of ${ept} elements exceed src of ${src.length}`);
    }
    copyRuns(this.rows, this.pool.layers[layer], this.tables[seqId], startPos, numRows, src, srcRowOffset * ept, true);
  }

  /**
   * Copies rows startPos..startPos+numRows of one layer of the sequence to out, starting at row
   * outRowOffset. Reads anything within capacity (rows written but not yet advanced too).
   */
  readRows(layer: number, seqId: number, startPos: number, numRows: number, out: Float32Array, outRowOffset = 0): void {
    this.checkLayer(layer);
    this.checkRange('readRows', seqId, startPos, numRows);
    const ept = this.elementsPerToken;
    if (!Number.isInteger(outRowOffset) || outRowOffset < 0 || (outRowOffset + numRows) * ept > out.length) {
      throw new ServerError('internal', `KvCacheManager.readRows: rows ${outRowOffset}..${outRowOffset + numRows} of ${ept} elements exceed out of ${out.length}`);
    }
    copyRuns(this.rows, this.pool.layers[layer], this.tables[seqId], startPos, numRows, out, outRowOffset * ept, false);
  }

  /**
   * Batches one layer's cache for attention: for each b < numSeqs, rows 0..lengths[b] of sequence
   * seqIds[b] go to out[b, 0..lengths[b], :] (rows from[b]..lengths[b] when `from` is given: the
   * caller holds the others already).
   * out: Float32Array [numSeqs, maxLen, elementsPerToken], row-major. Rows at or past lengths[b]
   * are left as they are: the attention mask hides them, so the caller keeps them finite (an
   * additive -inf mask does not hide NaN).
   */
  gather(layer: number, seqIds: Int32Array | readonly number[], numSeqs: number, lengths: Int32Array, maxLen: number, out: Float32Array, from: Int32Array | null = null): void {
    this.checkLayer(layer);
    const ept = this.elementsPerToken;
    this.checkGather('gather', seqIds, numSeqs, lengths, maxLen, from);
    if (numSeqs * maxLen * ept > out.length) {
      throw new ServerError('internal', `KvCacheManager.gather: out of ${out.length} elements is smaller than [${numSeqs}, ${maxLen}, ${ept}]`);
    }
    const storage = this.pool.layers[layer];
    const seqStride = maxLen * ept;
    for (let b = 0; b < numSeqs; b++) {
      const start = from === null ? 0 : from[b];
      copyRuns(this.rows, storage, this.tables[seqIds[b]], start, lengths[b] - start, out, b * seqStride + start * ept, false);
    }
  }

  /**
   * Batches one layer's cache head-major, for GQA attention: for each b < numSeqs and KV head h,
   * K of rows 0..lengths[b] of sequence seqIds[b] goes to outK[b, h, 0..lengths[b], :] and V to
   * outV[b, h, 0..lengths[b], :]; outK [numSeqs, numKvHeads, maxLen, headDim], outV
   * [numSeqs, numKvHeads, maxLen, vHeadDim]. Blocks store heads contiguously (layout.ts
   * "Blocks"), so each (sequence, block, head) is one copy. Slots at or past lengths[b] are left
   * as they are (the caller keeps them finite, as for gather); with `from`, so are slots before
   * from[b].
   */
  gatherHeads(layer: number, seqIds: Int32Array | readonly number[], numSeqs: number, lengths: Int32Array, maxLen: number, outK: Float32Array, outV: Float32Array, from: Int32Array | null = null): void {
    this.checkLayer(layer);
    const layout = this.layout;
    if (layout.kind !== 'gqa') throw new ServerError('internal', `KvCacheManager.gatherHeads: a ${layout.kind} cache has no KV heads`);
    const g = layout.numKvHeads;
    this.checkGather('gatherHeads', seqIds, numSeqs, lengths, maxLen, from);
    if (numSeqs * g * maxLen * layout.headDim > outK.length || numSeqs * g * maxLen * layout.vHeadDim > outV.length) {
      throw new ServerError('internal', `KvCacheManager.gatherHeads: outputs of ${outK.length} and ${outV.length} elements are smaller than [${numSeqs}, ${g}, ${maxLen}, ${layout.headDim} | ${layout.vHeadDim}]`);
    }
    const storage = this.pool.layers[layer];
    for (let b = 0; b < numSeqs; b++) copyHeads(this.rows, storage, this.tables[seqIds[b]], b, g, from === null ? 0 : from[b], lengths[b], maxLen, outK, outV);
  }

  // ---- stats and reset

  stats(): KvStats {
    const pool = this.pool;
    const bytesPerBlock = pool.layout.pageSizeBytes(this.blockSize) * pool.layout.numLayers;
    const tier = this.tier !== null ? this.tier.stats() : null;
    return Object.freeze({
      kind: this.layout.kind,
      blockSize: this.blockSize,
      blocksTotal: pool.numBlocks,
      blocksUsed: pool.numUsed,
      blocksFree: pool.numFree,
      blocksCached: pool.numCached,
      evictions: pool.evictions,
      bytesPerTokenPerLayer: this.layout.bytesPerTokenPerLayer,
      bytesPerToken: this.layout.bytesPerToken,
      bytesTotal: pool.bytesTotal,
      bytesUsed: pool.numUsed * bytesPerBlock,
      tokensStored: this.tokensTotal,
      tokensCapacity: pool.capacityTokens,
      sequences: this.liveCount,
      blocksCachedFree: pool.numCachedFree,
      prefixPoolQueryTokens: this.poolQueryTokens,
      prefixPoolHitTokens: this.poolHitTokens,
      prefixRedisQueryTokens: tier !== null ? tier.queryTokens : 0,
      prefixRedisHitTokens: tier !== null ? tier.hitTokens : 0,
      redis: tier,
    });
  }

  /**
   * Drops every sequence and resets the pool, cached blocks and prefix counters included (ids
   * restart at 0; tables are kept for reuse; an attached tier stays attached).
   */
  reset(): void {
    this.pool.reset();
    this.blockCounts.fill(0);
    this.tokenCounts.fill(0);
    this.hashedBlocks.fill(0);
    this.frozenBlocks.fill(0);
    this.poolQueryTokens = 0;
    this.poolHitTokens = 0;
    this.live.fill(0);
    this.views.fill(null);
    this.numFreeIds = 0;
    this.nextFreshId = 0;
    this.liveCount = 0;
    this.tokensTotal = 0;
  }

  // ---- internals

  /** Matched blocks still holding the matched hashes (all of them unless the pool changed). */
  private freshMatchedBlocks(match: PrefixMatch): number {
    const pool = this.pool;
    for (let i = 0; i < match.numBlocks; i++) {
      if (pool.blockHash(match.blockIds[i]!) !== match.hashes[i]) return i;
    }
    return match.numBlocks;
  }

  /** Blocks to allocate past n matched ones for totalTokens tokens in all. */
  private extraBlocksFor(n: number, totalTokens: number): number {
    const extra = this.blocksForTokens(totalTokens) - n;
    return extra > 0 ? extra : 0;
  }

  /** Of ids[0, n), the blocks in the free list (cached-free). */
  private freeAmong(ids: Int32Array, n: number): number {
    let free = 0;
    for (let i = 0; i < n; i++) if (this.pool.refCount(ids[i]!) === 0) free++;
    return free;
  }

  /** Whether block id's recorded tokens equal tokens[start, start + blockSize). */
  private blockHoldsTokens(id: number, tokens: ArrayLike<number>, start: number): boolean {
    const off = id * this.blockSize;
    for (let t = 0; t < this.blockSize; t++) if (this.blockTokens[off + t] !== (tokens[start + t]! | 0)) return false;
    return true;
  }

  private checkTokens(op: string, tokens: ArrayLike<number>, numTokens: number): void {
    if (!Number.isSafeInteger(numTokens) || numTokens < 0 || numTokens > tokens.length) {
      throw new ServerError('internal', `KvCacheManager.${op}: ${numTokens} tokens of ${tokens.length}`);
    }
  }

  private growSlots(): void {
    const n = this.live.length * 2;
    const grow = <T extends Int32Array | Uint8Array | Float64Array>(a: T, make: (n: number) => T): T => {
      const b = make(n);
      b.set(a);
      return b;
    };
    this.blockCounts = grow(this.blockCounts, (k) => new Int32Array(k));
    this.tokenCounts = grow(this.tokenCounts, (k) => new Int32Array(k));
    this.hashedBlocks = grow(this.hashedBlocks, (k) => new Int32Array(k));
    this.frozenBlocks = grow(this.frozenBlocks, (k) => new Int32Array(k));
    this.epochs = grow(this.epochs, (k) => new Float64Array(k));
    this.lastHashes = grow(this.lastHashes, (k) => new Float64Array(k));
    this.live = grow(this.live, (k) => new Uint8Array(k));
    this.freeIds = grow(this.freeIds, (k) => new Int32Array(k));
  }

  private growTable(seqId: number, need: number): Int32Array {
    const old = this.tables[seqId];
    let cap = old.length * 2;
    while (cap < need) cap *= 2;
    const table = new Int32Array(cap);
    table.set(old.subarray(0, this.blockCounts[seqId]));
    this.tables[seqId] = table;
    return table;
  }

  private checkLive(seqId: number): void {
    if (!(seqId >= 0 && seqId < this.nextFreshId) || this.live[seqId] !== 1) throw new ServerError('internal', `KvCacheManager: sequence ${seqId} is unknown or freed`);
  }

  private checkLayer(layer: number): void {
    if (!(layer >= 0 && layer < this.layout.numLayers) || (layer | 0) !== layer) throw new ServerError('internal', `KvCacheManager: layer ${layer} is out of range [0, ${this.layout.numLayers})`);
  }

  /** Validates every sequence of a gather before anything is written. */
  private checkGather(op: string, seqIds: Int32Array | readonly number[], numSeqs: number, lengths: Int32Array, maxLen: number, from: Int32Array | null): void {
    if (!Number.isInteger(numSeqs) || numSeqs < 0 || numSeqs > seqIds.length || numSeqs > lengths.length || (from !== null && numSeqs > from.length)) {
      throw new ServerError('internal', `KvCacheManager.${op}: numSeqs ${numSeqs} exceeds seqIds (${seqIds.length}), lengths (${lengths.length}) or from (${from?.length})`);
    }
    if (!Number.isInteger(maxLen) || maxLen < 0) throw new ServerError('internal', `KvCacheManager.${op}: maxLen ${maxLen}`);
    for (let b = 0; b < numSeqs; b++) {
      const seqId = seqIds[b];
      this.checkLive(seqId);
      const len = lengths[b];
      if (len < 0 || len > maxLen || len > this.blockCounts[seqId] * this.blockSize) {
        throw new ServerError('internal', `KvCacheManager.${op}: length ${len} of sequence ${seqId} is outside [0, min(maxLen ${maxLen}, capacity ${this.blockCounts[seqId] * this.blockSize})]`);
      }
      if (from !== null && (from[b] < 0 || from[b] > len)) throw new ServerError('internal', `KvCacheManager.${op}: from ${from[b]} of sequence ${seqId} is outside [0, length ${len}]`);
    }
  }

  private checkRange(op: string, seqId: number, startPos: number, numRows: number): void {
    this.checkLive(seqId);
    const cap = this.blockCounts[seqId] * this.blockSize;
    if (!Number.isInteger(startPos) || !Number.isInteger(numRows) || startPos < 0 || numRows < 0 || startPos + numRows > cap) {
      throw new ServerError('internal', `KvCacheManager.${op}: rows ${startPos}..${startPos + numRows} of sequence ${seqId} exceed its capacity ${cap}`);
    }
  }
}
