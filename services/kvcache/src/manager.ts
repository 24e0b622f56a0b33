/**
 * The KV-cache manager of one model: a block table per sequence over one shared BlockPool, and the
 * data path that moves K/V rows between the attention path and the pool.
 *
 * Scheduler (gateway): createSequence -> seqId; ensureCapacity(seqId, tokens) before a step
 *   (all-or-nothing: block ids are taken from the pool or nothing is) -> attention path, per layer:
 *   writeRows(new rows of the step) then gather(rows 0..len of every sequence of the step) ->
 *   after the step: advance(seqId, n) -> on finish, abort or client disconnect: freeSequence.
 * Tokens and block ids live here; activations never do (only K/V rows, float32, layout.ts).
 *
 * Invariants:
 *   - a block table is append-only while its sequence lives: entries [0, numBlocks) never change,
 *     so a view from blockTable() stays correct for its length until freeSequence;
 *   - numTokens(seqId) <= capacity(seqId) = numBlocks(seqId) · blockSize;
 *   - every block in a live table holds one reference of that sequence.
 * Hot paths (ensureCapacity, advance, writeRows, gather) allocate no buffers (avoid GC): tables
 * grow by doubling (amortized), released sequence ids keep their tables for the next sequence, and
 * copies go through copyElements (copy.ts) once per physically contiguous run of blocks. The only
 * objects they create are copy.ts's views (one per run longer than LOOP_COPY_MAX_ELEMENTS taken
 * from part of an array, never per token) and blockTable's view after the table grew.
 */
import { ServerError } from '../../common/src/errors.js';
import type { MoeModelConfig } from '../../model/src/config.js';
import { copyElements } from './copy.js';
import { kvLayoutFor, type KvLayout } from './layout.js';
import { BlockPool } from './pool.js';

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
}

// Shared by every sequence that holds no block; length 0, so nothing can be written through it.
const EMPTY_TABLE = new Int32Array(0);

export class KvCacheManager {
  readonly pool: BlockPool;
  readonly layout: KvLayout;
  readonly blockSize: number;
  readonly elementsPerToken: number;
  /** = elementsPerToken; the name the attention path's KvStore interface uses. */
  readonly rowElements: number;

  private readonly initialBlocks: number;
  // Per sequence slot, index = seqId. tables[id] has capacity >= blockCounts[id]; entries past
  // blockCounts[id] are stale. views[id] caches blockTable(id), null when it must be rebuilt.
  private readonly tables: Int32Array[] = [];
  private readonly views: (Int32Array | null)[] = [];
  private blockCounts: Int32Array;
  private tokenCounts: Int32Array;
  private live: Uint8Array;
  // Released sequence ids, a stack: the last released id is reused first.
  private freeIds: Int32Array;
  private numFreeIds = 0;
  private nextFreshId = 0;
  private liveCount = 0;
  private tokensTotal = 0;

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
    this.initialBlocks = blocks;
    this.blockCounts = new Int32Array(slots);
    this.tokenCounts = new Int32Array(slots);
    this.live = new Uint8Array(slots);
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
    this.liveCount++;
    return id;
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
    this.tokensTotal -= this.tokenCounts[seqId];
    this.tokenCounts[seqId] = 0;
    this.views[seqId] = null;
    this.live[seqId] = 0;
    this.liveCount--;
    this.freeIds[this.numFreeIds++] = seqId;
  }

  isLive(seqId: number): boolean {
    return seqId >= 0 && seqId < this.nextFreshId && this.live[seqId] === 1;
  }

  get numSequences(): number {
    return this.liveCount;
  }

  // ---- capacity

  /** Blocks that hold numTokens tokens: ceil(numTokens / blockSize). */
  blocksForTokens(numTokens: number): number {
    return Math.ceil(numTokens / this.blockSize);
  }

  /** Whether the pool can supply the blocks of a new sequence of numTokens tokens right now. */
  canAllocate(numTokens: number): boolean {
    return this.blocksForTokens(numTokens) <= this.pool.numFree;
  }

  /** Blocks ensureCapacity(seqId, numTokens) would take from the pool (0 when it has room). */
  blocksNeeded(seqId: number, numTokens: number): number {
    this.checkLive(seqId);
    const extra = this.blocksForTokens(numTokens) - this.blockCounts[seqId];
    return extra > 0 ? extra : 0;
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

  /** Tokens the sequence's blocks hold: numBlocks · blockSize. */
  capacity(seqId: number): number {
    this.checkLive(seqId);
    return this.blockCounts[seqId] * this.blockSize;
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
    const ept = this.elementsPerToken;
    if (!Number.isInteger(srcRowOffset) || srcRowOffset < 0 || (srcRowOffset + numRows) * ept > src.length) {
      throw new ServerError('internal', `KvCacheManager.writeRows: rows ${srcRowOffset}..${srcRowOffset + numRows} of ${ept} elements exceed src of ${src.length}`);
    }
    const storage = this.pool.layers[layer];
    const table = this.tables[seqId];
    const bs = this.blockSize;
    let pos = startPos;
    let srcOff = srcRowOffset * ept;
    let remaining = numRows;
    while (remaining > 0) {
      let bi = (pos / bs) | 0;
      const slot = pos - bi * bs;
      const first = table[bi];
      let rows = bs - slot;
      // extend over physically consecutive blocks: one copy per contiguous run
      while (rows < remaining && table[bi + 1] === table[bi] + 1) {
        bi++;
        rows += bs;
      }
      if (rows > remaining) rows = remaining;
      const len = rows * ept;
      copyElements(storage, (first * bs + slot) * ept, src, srcOff, len);
      pos += rows;
      srcOff += len;
      remaining -= rows;
    }
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
    this.copyOut(this.pool.layers[layer], this.tables[seqId], startPos, numRows, out, outRowOffset * ept);
  }

  /**
   * Batches one layer's cache for attention: for each b < numSeqs, rows 0..lengths[b] of sequence
   * seqIds[b] go to out[b, 0..lengths[b], :].
   * out: Float32Array [numSeqs, maxLen, elementsPerToken], row-major. Rows at or past lengths[b]
   * are left as they are: the attention mask hides them, so the caller keeps them finite (an
   * additive -inf mask does not hide NaN).
   */
  gather(layer: number, seqIds: Int32Array | readonly number[], numSeqs: number, lengths: Int32Array, maxLen: number, out: Float32Array): void {
    this.checkLayer(layer);
    const ept = this.elementsPerToken;
    if (!Number.isInteger(numSeqs) || numSeqs < 0 || numSeqs > seqIds.length || numSeqs > lengths.length) {
      throw new ServerError('internal', `KvCacheManager.gather: numSeqs ${numSeqs} exceeds seqIds (${seqIds.length}) or lengths (${lengths.length})`);
    }
    if (!Number.isInteger(maxLen) || maxLen < 0 || numSeqs * maxLen * ept > out.length) {
      throw new ServerError('internal', `KvCacheManager.gather: out of ${out.length} elements is smaller than [${numSeqs}, ${maxLen}, ${ept}]`);
    }
    // Validate every sequence before writing anything.
    for (let b = 0; b < numSeqs; b++) {
      const seqId = seqIds[b];
      this.checkLive(seqId);
      const len = lengths[b];
      if (len < 0 || len > maxLen || len > this.blockCounts[seqId] * this.blockSize) {
        throw new ServerError('internal', `KvCacheManager.gather: length ${len} of sequence ${seqId} is outside [0, min(maxLen ${maxLen}, capacity ${this.blockCounts[seqId] * this.blockSize})]`);
      }
    }
    const storage = this.pool.layers[layer];
    const seqStride = maxLen * ept;
    for (let b = 0; b < numSeqs; b++) {
      const seqId = seqIds[b];
      this.copyOut(storage, this.tables[seqId], 0, lengths[b], out, b * seqStride);
    }
  }

  // ---- stats and reset

  stats(): KvStats {
    const pool = this.pool;
    const bytesPerBlock = pool.layout.pageSizeBytes(this.blockSize) * pool.layout.numLayers;
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
    });
  }

  /** Drops every sequence and resets the pool (ids restart at 0; tables are kept for reuse). */
  reset(): void {
    this.pool.reset();
    this.blockCounts.fill(0);
    this.tokenCounts.fill(0);
    this.live.fill(0);
    this.views.fill(null);
    this.numFreeIds = 0;
    this.nextFreshId = 0;
    this.liveCount = 0;
    this.tokensTotal = 0;
  }

  // ---- internals

  private copyOut(storage: Float32Array, table: Int32Array, startPos: number, numRows: number, out: Float32Array, outOff: number): void {
    const bs = this.blockSize;
    const ept = this.elementsPerToken;
    let pos = startPos;
    let remaining = numRows;
    while (remaining > 0) {
      let bi = (pos / bs) | 0;
      const slot = pos - bi * bs;
      const first = table[bi];
      let rows = bs - slot;
      // extend over physically consecutive blocks: one copy per contiguous run
      while (rows < remaining && table[bi + 1] === table[bi] + 1) {
        bi++;
        rows += bs;
      }
      if (rows > remaining) rows = remaining;
      const len = rows * ept;
      copyElements(out, outOff, storage, (first * bs + slot) * ept, len);
      pos += rows;
      outOff += len;
      remaining -= rows;
    }
  }

  private growSlots(): void {
    const n = this.live.length * 2;
    const grow = <T extends Int32Array | Uint8Array>(a: T, make: (n: number) => T): T => {
      const b = make(n);
      b.set(a);
      return b;
    };
    this.blockCounts = grow(this.blockCounts, (k) => new Int32Array(k));
    this.tokenCounts = grow(this.tokenCounts, (k) => new Int32Array(k));
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

  private checkRange(op: string, seqId: number, startPos: number, numRows: number): void {
    this.checkLive(seqId);
    const cap = this.blockCounts[seqId] * this.blockSize;
    if (!Number.isInteger(startPos) || !Number.isInteger(numRows) || startPos < 0 || numRows < 0 || startPos + numRows > cap) {
      throw new ServerError('internal', `KvCacheManager.${op}: rows ${startPos}..${startPos + numRows} of sequence ${seqId} exceed its capacity ${cap}`);
    }
  }
}
