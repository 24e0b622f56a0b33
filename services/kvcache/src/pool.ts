/**
 * The block pool: every KV block of one model, shared by all sequences and all layers.
 *
 * A block holds `blockSize` consecutive tokens of one sequence, in every layer at once: block b is
 * the same slot range in each layer's storage. Storage per layer is one Float32Array
 * [numBlocks, blockSize · elementsPerToken]: block b at element offset b · blockSize ·
 * elementsPerToken, its rows stored segment-major (layout.ts "Blocks": slot s of segment
 * {offset, length} at b · blockSize · elementsPerToken + blockSize · offset + s · length).
 *
 * Bookkeeping lives in preallocated typed arrays (avoid GC; no objects or Array.splice per block),
 * after vLLM's FreeKVCacheBlockQueue:
 *   - refCount[b] > 0: held by that many owners (sequences, later the prefix cache's sharers);
 *     refCount[b] = 0 <=> b is in the free list. Nothing else.
 *   - the free list is a doubly linked list in Int32Array prev/next with a sentinel node at index
 *     numBlocks, so a block is unlinked from the middle in O(1) (a prefix-cache hit on a free
 *     cached block). It is LRU: decRef to 0 appends at the tail, allocate takes the head, so the
 *     block freed first is reused (evicted) first.
 *   - blockHash[b]: the content hash of a full, immutable block, NaN when none; cachedByHash maps
 *     hash -> block. A free block keeps its hash (it stays findable) until allocate hands it out
 *     again: that is its eviction. Both are touched once per full block, never per token.
 */
import { ServerError } from '../../common/src/errors.js';
import { KV_FLOAT32_BYTES, type KvLayout } from './layout.js';

/** Returned by `allocate` and `lookupCached` when there is no block. */
export const NO_BLOCK = -1;

/** Block ids are Int32; one more node is the free list's sentinel. */
const MAX_BLOCKS = 0x7fff_fffe;

export class BlockPool {
  readonly layout: KvLayout;
  readonly numBlocks: number;
  /** Tokens per block. */
  readonly blockSize: number;
  /** Elements of one token's row in one layer (layout.elementsPerToken). */
  readonly elementsPerToken: number;
  /** Elements of one block in one layer: blockSize · elementsPerToken. */
  readonly blockElements: number;
  /** layers[l]: Float32Array [numBlocks, blockSize · elementsPerToken], each block segment-major. */
  readonly layers: readonly Float32Array[];

  // Free list: doubly linked through prev/next; node `sentinel` (= numBlocks) is head and tail.
  private readonly prev: Int32Array;
  private readonly next: Int32Array;
  private readonly sentinel: number;
  private readonly refCounts: Int32Array;
  private readonly hashes: Float64Array;
  private readonly cachedByHash = new Map<number, number>();
  private free: number;
  /** Free blocks that still hold a hash (findable, evicted by allocate). */
  private cachedFree = 0;
  private evicted = 0;

  /**
   * @param numBlocks blocks in the pool (all layers together)
   * @param blockSize tokens per block
   * @throws ServerError('invalid_request') for non-positive sizes or a non-float32 layout;
   *   ServerError('resource_exhausted') when the storage cannot be allocated.
   */
  constructor(layout: KvLayout, numBlocks: number, blockSize: number) {
    if (!Number.isSafeInteger(numBlocks) || numBlocks <= 0 || numBlocks > MAX_BLOCKS) {
      throw new ServerError('invalid_request', `BlockPool: numBlocks must be an integer in [1, ${MAX_BLOCKS}], got ${numBlocks}`);
    }
    if (!Number.isSafeInteger(blockSize) || blockSize <= 0) {
      throw new ServerError('invalid_request', `BlockPool: blockSize must be a positive integer, got ${blockSize}`);
    }
    // Storage is Float32Array; a layout that counts other element sizes would make every byte
    // figure (capacity, admission, /metrics) wrong.
    if (layout.dtypeBytes !== KV_FLOAT32_BYTES) {
      throw new ServerError('invalid_request', `BlockPool stores float32: layout.dtypeBytes must be ${KV_FLOAT32_BYTES}, got ${layout.dtypeBytes}`);
    }
    this.layout = layout;
    this.numBlocks = numBlocks;
    this.blockSize = blockSize;
    this.elementsPerToken = layout.elementsPerToken;
    this.blockElements = blockSize * layout.elementsPerToken;
    this.layers = Object.freeze(this.initStorage());
    this.sentinel = numBlocks;
    this.prev = new Int32Array(numBlocks + 1);
    this.next = new Int32Array(numBlocks + 1);
    this.refCounts = new Int32Array(numBlocks);
    this.hashes = new Float64Array(numBlocks);
    this.free = 0;
    this.reset();
  }

  /** The most blocks a byte budget holds, counting every layer with the exact layout formula. */
  static blocksForBudget(layout: KvLayout, budgetBytes: number, blockSize: number): number {
    const bytesPerBlock = layout.pageSizeBytes(blockSize) * layout.numLayers;
    return Math.floor(budgetBytes / bytesPerBlock);
  }

  /**
   * A pool with as many blocks as `budgetBytes` holds.
   * @throws ServerError('invalid_request') when the budget holds no block at all.
   */
  static fromBudgetBytes(layout: KvLayout, budgetBytes: number, blockSize: number): BlockPool {
    if (!Number.isFinite(budgetBytes) || budgetBytes < 0) throw new ServerError('invalid_request', `BlockPool: budget must be a non-negative number of bytes, got ${budgetBytes}`);
    const numBlocks = Math.min(BlockPool.blocksForBudget(layout, budgetBytes, blockSize), MAX_BLOCKS);
    if (numBlocks < 1) {
      const perBlock = layout.pageSizeBytes(blockSize) * layout.numLayers;
      throw new ServerError('invalid_request', `BlockPool: a budget of ${budgetBytes} bytes holds no block of ${blockSize} tokens (${perBlock} bytes over ${layout.numLayers} layers)`);
    }
    return new BlockPool(layout, numBlocks, blockSize);
  }

  private initStorage(): Float32Array[] {
    const perLayer = this.numBlocks * this.blockElements;
    const out: Float32Array[] = [];
    try {
      for (let l = 0; l < this.layout.numLayers; l++) out.push(new Float32Array(perLayer));
    } catch (err) {
      throw new ServerError('resource_exhausted', `BlockPool: cannot allocate ${this.layout.numLayers} x ${perLayer} float32 elements of KV storage`, { cause: err });
    }
    return out;
  }

  /** Blocks in the free list (including free blocks that still hold a cached hash). */
  get numFree(): number {
    return this.free;
  }

  get numUsed(): number {
    return this.numBlocks - this.free;
  }

  /** Tokens the whole pool holds: numBlocks · blockSize. */
  get capacityTokens(): number {
    return this.numBlocks * this.blockSize;
  }

  /** Bytes of KV storage, all layers: numBlocks · pageSizeBytes(blockSize) · numLayers. */
  get bytesTotal(): number {
    return this.numBlocks * this.blockElements * KV_FLOAT32_BYTES * this.layout.numLayers;
  }

  /** Full blocks registered under a hash (held or free). */
  get numCached(): number {
    return this.cachedByHash.size;
  }

  /** Free blocks that still hold a cached hash: reusable by a prefix hit until evicted. */
  get numCachedFree(): number {
    return this.cachedFree;
  }

  /** Cached blocks handed out again by allocate since construction or reset. */
  get evictions(): number {
    return this.evicted;
  }

  /**
   * Takes the least recently freed block; its refCount becomes 1 and any cached hash it held is
   * dropped (evicted). Returns NO_BLOCK (-1) when the pool is empty: no throw on the hot path —
   * callers that need several blocks check `numFree` first (KvCacheManager.ensureCapacity).
   */
  allocate(): number {
    const id = this.next[this.sentinel];
    if (id === this.sentinel) return NO_BLOCK;
    this.unlink(id);
    this.refCounts[id] = 1;
    if (this.hashes[id] === this.hashes[id]) {
      // not NaN: a free cached block is reused, so its content is no longer findable
      this.cachedByHash.delete(this.hashes[id]);
      this.hashes[id] = NaN;
      this.cachedFree--;
      this.evicted++;
    }
    return id;
  }

  /**
   * One more owner of block `id`. A free block may be taken back only when it is cached (a
   * prefix-cache hit): it leaves the free list wherever it is, in O(1).
   * @throws ServerError('internal') for a bad id or a free block with no hash (use after free).
   */
  incRef(id: number): void {
    this.checkId(id);
    if (this.refCounts[id] === 0) {
      if (this.hashes[id] !== this.hashes[id]) throw new ServerError('internal', `BlockPool.incRef: block ${id} is free and not cached`);
      this.unlink(id);
      this.cachedFree--;
    }
    this.refCounts[id]++;
  }

  /**
   * One owner less; at 0 the block goes to the tail of the free list (it keeps a cached hash).
   * @throws ServerError('internal') for a bad id or a block that is already free (double free).
   */
  decRef(id: number): void {
    this.checkId(id);
    const rc = this.refCounts[id];
    if (rc <= 0) throw new ServerError('internal', `BlockPool.decRef: block ${id} is already free`);
    this.refCounts[id] = rc - 1;
    if (rc === 1) {
      this.pushTail(id);
      if (this.hashes[id] === this.hashes[id]) this.cachedFree++;
    }
  }

  refCount(id: number): number {
    this.checkId(id);
    return this.refCounts[id];
  }

  /**
   * Registers held block `id` as the full block with content hash `hash` (e.g. a 53-bit chained
   * token hash). Returns false, registering nothing, when another block already holds that hash
   * (the caller keeps its own copy; it is just not findable).
   * @throws ServerError('internal') for a free block, a block that already has a hash (full
   *   blocks are immutable) or a hash that is not a finite number.
   */
  setBlockHash(id: number, hash: number): boolean {
    this.checkId(id);
    if (!Number.isFinite(hash)) throw new ServerError('internal', `BlockPool.setBlockHash: hash must be a finite number, got ${hash}`);
    if (this.refCounts[id] === 0) throw new ServerError('internal', `BlockPool.setBlockHash: block ${id} is free`);
    if (this.hashes[id] === this.hashes[id]) throw new ServerError('internal', `BlockPool.setBlockHash: block ${id} already has a hash`);
    if (this.cachedByHash.has(hash)) return false;
    this.hashes[id] = hash;
    this.cachedByHash.set(hash, id);
    return true;
  }

  /** The block's hash, or NaN when it has none. */
  blockHash(id: number): number {
    this.checkId(id);
    return this.hashes[id];
  }

  /** The block cached under `hash` (held or free), or NO_BLOCK. Take it with incRef. */
  lookupCached(hash: number): number {
    return this.cachedByHash.get(hash) ?? NO_BLOCK;
  }

  /** The free list, head (next to be allocated) to tail. Allocates: tests and debugging only. */
  freeBlockIds(): number[] {
    const ids: number[] = [];
    for (let id = this.next[this.sentinel]; id !== this.sentinel; id = this.next[id]) ids.push(id);
    return ids;
  }

  /**
   * Every block free, in id order (0 allocated first), no hashes, counters zero. Storage is not
   * cleared: a block is always written before it is read.
   */
  reset(): void {
    const n = this.numBlocks;
    for (let i = 0; i < n; i++) {
      this.prev[i] = i - 1;
      this.next[i] = i + 1;
    }
    this.prev[0] = this.sentinel; // n >= 1, checked in the constructor
    this.next[this.sentinel] = 0;
    this.prev[this.sentinel] = n - 1;
    this.refCounts.fill(0);
    this.hashes.fill(NaN);
    this.cachedByHash.clear();
    this.free = n;
    this.cachedFree = 0;
    this.evicted = 0;
  }

  private unlink(id: number): void {
    const p = this.prev[id];
    const nx = this.next[id];
    this.next[p] = nx;
    this.prev[nx] = p;
    this.free--;
  }

  private pushTail(id: number): void {
    const tail = this.prev[this.sentinel];
    this.next[tail] = id;
    this.prev[id] = tail;
    this.next[id] = this.sentinel;
    this.prev[this.sentinel] = id;
    this.free++;
  }

  private checkId(id: number): void {
    if (!(id >= 0 && id < this.numBlocks) || (id | 0) !== id) throw new ServerError('internal', `BlockPool: block id ${id} is out of range [0, ${this.numBlocks})`);
  }
}
