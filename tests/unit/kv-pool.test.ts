/**
 * BlockPool: a pool of 11 blocks, exact block ids, LRU reuse order, refcounts, cached-block
 * hits and evictions, byte-budget sizing.
 */
import { describe, expect, it } from 'vitest';
import { gqaLayout, mlaLayout, type KvLayout } from '../../services/kvcache/src/layout.js';
import { BlockPool, NO_BLOCK } from '../../services/kvcache/src/pool.js';
import { expectServerError } from '../helpers/errors.js';

const NUM_BLOCKS = 11;
const BLOCK_SIZE = 4;

/** 2 layers, rows of 3 + 1 = 4 floats. */
function tinyLayout(): KvLayout {
  return mlaLayout({ numLayers: 2, kvLoraRank: 3, qkRopeHeadDim: 1 });
}

function makePool(numBlocks = NUM_BLOCKS, blockSize = BLOCK_SIZE, layout: KvLayout = tinyLayout()): BlockPool {
  return new BlockPool(layout, numBlocks, blockSize);
}

function allocateN(pool: BlockPool, n: number): number[] {
  const ids: number[] = [];
  for (let i = 0; i < n; i++) ids.push(pool.allocate());
  return ids;
}

describe('BlockPool allocation', () => {
  it('a fresh pool hands out blocks in id order', () => {
    const pool = makePool();
    expect(pool.freeBlockIds()).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    expect(allocateN(pool, 3)).toEqual([0, 1, 2]);
    expect([pool.numFree, pool.numUsed]).toEqual([8, 3]);
    expect([pool.refCount(0), pool.refCount(2), pool.refCount(3)]).toEqual([1, 1, 0]);
    expect(pool.capacityTokens).toBe(44);
  });

  it('reuses blocks least recently freed first (LRU: freed to the tail, taken from the head)', () => {
    const pool = makePool();
    expect(allocateN(pool, 5)).toEqual([0, 1, 2, 3, 4]);
    pool.decRef(3);
    pool.decRef(1);
    pool.decRef(4);
    expect(pool.freeBlockIds()).toEqual([5, 6, 7, 8, 9, 10, 3, 1, 4]);
    expect(allocateN(pool, 6)).toEqual([5, 6, 7, 8, 9, 10]);
    pool.decRef(7);
    expect(allocateN(pool, 4)).toEqual([3, 1, 4, 7]);
    expect(pool.numFree).toBe(0);
  });

  it('an empty pool returns NO_BLOCK (-1) and changes nothing', () => {
    const pool = makePool();
    allocateN(pool, NUM_BLOCKS);
    expect(pool.allocate()).toBe(NO_BLOCK);
    expect(NO_BLOCK).toBe(-1);
    expect([pool.numFree, pool.numUsed]).toEqual([0, 11]);
    pool.decRef(6);
    expect(pool.allocate()).toBe(6);
  });

  it('a block shared by two owners is freed by the second decRef only', () => {
    const pool = makePool();
    allocateN(pool, 3);
    pool.incRef(1);
    expect(pool.refCount(1)).toBe(2);
    pool.decRef(1);
    expect([pool.refCount(1), pool.numFree]).toEqual([1, 8]);
    pool.decRef(1);
    expect([pool.refCount(1), pool.numFree]).toEqual([0, 9]);
    expect(pool.freeBlockIds()).toEqual([3, 4, 5, 6, 7, 8, 9, 10, 1]);
  });

  it('reset frees every block, in id order', () => {
    const pool = makePool();
    allocateN(pool, 7);
    pool.setBlockHash(2, 99);
    pool.decRef(0);
    pool.reset();
    expect(pool.freeBlockIds()).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    expect([pool.numFree, pool.numCached, pool.lookupCached(99)]).toEqual([11, 0, NO_BLOCK]);
    expect(Number.isNaN(pool.blockHash(2))).toBe(true);
  });
});

describe('BlockPool cached blocks (hooks for the prefix cache)', () => {
  it('a free cached block stays findable, is taken back from the middle of the free list, and keeps LRU order', () => {
    const pool = makePool();
    allocateN(pool, 4); // 0..3
    expect(pool.setBlockHash(1, 0xabcdef)).toBe(true);
    expect(pool.lookupCached(0xabcdef)).toBe(1);
    pool.decRef(0);
    pool.decRef(1);
    pool.decRef(2);
    expect(pool.freeBlockIds()).toEqual([4, 5, 6, 7, 8, 9, 10, 0, 1, 2]);
    expect([pool.lookupCached(0xabcdef), pool.numCached]).toEqual([1, 1]);
    // prefix-cache hit: unlinked from the middle in O(1)
    pool.incRef(1);
    expect(pool.refCount(1)).toBe(1);
    expect(pool.freeBlockIds()).toEqual([4, 5, 6, 7, 8, 9, 10, 0, 2]);
    expect(pool.numFree).toBe(9);
    pool.decRef(1);
    expect(pool.freeBlockIds()).toEqual([4, 5, 6, 7, 8, 9, 10, 0, 2, 1]);
  });

  it('allocating a free cached block evicts its hash', () => {
    const pool = makePool();
    allocateN(pool, NUM_BLOCKS);
    pool.setBlockHash(5, 42);
    pool.setBlockHash(6, 43);
    pool.decRef(5);
    pool.decRef(6);
    expect(pool.evictions).toBe(0);
    expect(pool.allocate()).toBe(5);
    expect([pool.lookupCached(42), pool.lookupCached(43), pool.numCached, pool.evictions]).toEqual([NO_BLOCK, 6, 1, 1]);
    expect(Number.isNaN(pool.blockHash(5))).toBe(true);
    expect(pool.blockHash(6)).toBe(43);
  });

  it('a hash already held by another block is not registered twice', () => {
    const pool = makePool();
    allocateN(pool, 2);
    expect(pool.setBlockHash(0, 7)).toBe(true);
    expect(pool.setBlockHash(1, 7)).toBe(false);
    expect([pool.lookupCached(7), pool.numCached]).toEqual([0, 1]);
    expect(Number.isNaN(pool.blockHash(1))).toBe(true);
  });
});

describe('BlockPool misuse', () => {
  it('EXPECTED FAILURE - decRef of a free block (double free)', () => {
    const pool = makePool();
    allocateN(pool, 1);
    pool.decRef(0);
    expectServerError(() => pool.decRef(0), 'internal', /block 0 is already free/);
    expect(pool.numFree).toBe(11);
  });

  it('EXPECTED FAILURE - incRef of a free block that is not cached (use after free)', () => {
    const pool = makePool();
    expectServerError(() => pool.incRef(3), 'internal', /block 3 is free and not cached/);
    expect(pool.numFree).toBe(11);
  });

  it('BAD CALL - block ids out of range', () => {
    const pool = makePool();
    expectServerError(() => pool.decRef(11), 'internal', /block id 11 is out of range \[0, 11\)/);
    expectServerError(() => pool.incRef(-1), 'internal', /out of range/);
    expectServerError(() => pool.refCount(1.5), 'internal', /out of range/);
  });

  it('BAD CALL - hashes on free blocks, twice on one block, or not finite', () => {
    const pool = makePool();
    expectServerError(() => pool.setBlockHash(0, 1), 'internal', /block 0 is free/);
    pool.allocate();
    pool.setBlockHash(0, 1);
    expectServerError(() => pool.setBlockHash(0, 2), 'internal', /already has a hash/);
    pool.allocate();
    expectServerError(() => pool.setBlockHash(1, NaN), 'internal', /finite/);
  });

  it('BAD CALL - a layout that is not float32 storage', () => {
    const fp16 = mlaLayout({ numLayers: 1, kvLoraRank: 4, qkRopeHeadDim: 2, dtypeBytes: 2 });
    expectServerError(() => new BlockPool(fp16, 4, 4), 'invalid_request', /dtypeBytes must be 4, got 2/);
    expectServerError(() => new BlockPool(tinyLayout(), 0, 4), 'invalid_request', /numBlocks/);
    expectServerError(() => new BlockPool(tinyLayout(), 4, 0), 'invalid_request', /blockSize/);
  });
});

describe('BlockPool sizing', () => {
  // mixtral-tiny's layout: 3 layers, 2 kv heads x 16 -> 256 bytes per token per layer
  const mixtralTiny = gqaLayout({ numLayers: 3, numKvHeads: 2, headDim: 16 });
  const bytesPerBlock = 4 * 256 * 3; // blockSize · bytesPerTokenPerLayer · numLayers = 3072

  it('storage is one float32 array per layer of numBlocks · blockSize · elementsPerToken', () => {
    const pool = makePool(NUM_BLOCKS, BLOCK_SIZE, mixtralTiny);
    expect(pool.layers.length).toBe(3);
    expect(pool.layers.map((a) => a.length)).toEqual([11 * 4 * 64, 11 * 4 * 64, 11 * 4 * 64]);
    expect(pool.blockElements).toBe(256);
    expect(pool.bytesTotal).toBe(11 * bytesPerBlock);
  });

  it('fromBudgetBytes takes the most whole blocks the budget holds', () => {
    expect(BlockPool.blocksForBudget(mixtralTiny, 11 * bytesPerBlock + bytesPerBlock - 1, 4)).toBe(11);
    const pool = BlockPool.fromBudgetBytes(mixtralTiny, 11 * bytesPerBlock + bytesPerBlock - 1, 4);
    expect([pool.numBlocks, pool.blockSize, pool.capacityTokens, pool.bytesTotal]).toEqual([11, 4, 44, 33792]);
  });

  it('BAD CALL - a budget below one block', () => {
    expectServerError(() => BlockPool.fromBudgetBytes(mixtralTiny, bytesPerBlock - 1, 4), 'invalid_request', /holds no block of 4 tokens \(3072 bytes over 3 layers\)/);
  });
});
