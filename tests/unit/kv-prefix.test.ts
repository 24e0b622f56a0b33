/**
 * Prefix caching and copy-on-write in KvCacheManager, on a pool of 10 blocks of 4 tokens, for the
 * GQA layout (mixtral-tiny) and the MLA layout (deepseek-v2-tiny): exact block ids, hit token
 * counts and eviction order through allocate / commit / free / match / evict sequences; salted
 * requests; forks that share full blocks and own a copy of the partial one; blocks installed from
 * a tier; the chain hash itself.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parseModelConfig } from '../../services/model/src/config.js';
import { chainHashes, hashBlock, PREFIX_ROOT_HASH, rootHash } from '../../services/kvcache/src/hash.js';
import { kvLayoutFor, type KvLayout } from '../../services/kvcache/src/layout.js';
import { KvCacheManager, NO_SEQUENCE, type KvBlockPayload } from '../../services/kvcache/src/manager.js';
import { BlockPool } from '../../services/kvcache/src/pool.js';
import { expectServerError } from '../helpers/errors.js';

const NUM_BLOCKS = 10;
const BS = 4;

function goldenLayout(name: string): KvLayout {
  const url = new URL(`../fixtures/golden/${name}/config.json`, import.meta.url);
  return kvLayoutFor(parseModelConfig(JSON.parse(readFileSync(url, 'utf8'))));
}

const LAYOUTS: readonly { name: string; layout: KvLayout }[] = [
  { name: 'gqa (mixtral-tiny)', layout: goldenLayout('mixtral-tiny') },
  { name: 'mla (deepseek-v2-tiny)', layout: goldenLayout('deepseek-v2-tiny') },
];

function makeManager(layout: KvLayout, numBlocks = NUM_BLOCKS): KvCacheManager {
  return new KvCacheManager(new BlockPool(layout, numBlocks, BS), { initialSequences: 2, initialBlocksPerSequence: 2 });
}

/** The row of token `pos` in `layer` of a sequence tagged `tag`: Float32Array [E], every value distinct. */
function rowOf(kv: KvCacheManager, tag: number, layer: number, pos: number): Float32Array {
  const E = kv.elementsPerToken;
  const row = new Float32Array(E);
  for (let e = 0; e < E; e++) row[e] = tag * 100_000 + layer * 10_000 + pos * 100 + e / 128;
  return row;
}

/** Computes rows [from, to) of every layer (as the attention path would), then advances. */
function compute(kv: KvCacheManager, seq: number, tag: number, from: number, to: number): void {
  expect(kv.ensureCapacity(seq, to)).toBe(true);
  for (let l = 0; l < kv.layout.numLayers; l++) {
    for (let p = from; p < to; p++) kv.writeRows(l, seq, p, rowOf(kv, tag, l, p), 0, 1);
  }
  kv.advance(seq, to - from);
}

/** Rows [0, n) of every layer: Float32Array [numLayers, n, E]. */
function readAll(kv: KvCacheManager, seq: number, n: number): Float32Array {
  const E = kv.elementsPerToken;
  const out = new Float32Array(kv.layout.numLayers * n * E);
  for (let l = 0; l < kv.layout.numLayers; l++) kv.readRows(l, seq, 0, n, out, l * n);
  return out;
}

const table = (kv: KvCacheManager, seq: number) => Array.from(kv.blockTable(seq));
const refs = (kv: KvCacheManager, ids: number[]) => ids.map((id) => kv.pool.refCount(id));
const range = (from: number, to: number) => Array.from({ length: to - from }, (_, i) => from + i);

// A: 12 tokens = 3 full blocks. B shares A's first 8 tokens (2 blocks), then differs.
const A = [11, 12, 13, 14, 21, 22, 23, 24, 31, 32, 33, 34];
const B = [11, 12, 13, 14, 21, 22, 23, 24, 91, 92, 93, 94, 95];

describe.each(LAYOUTS)('prefix caching, $name', ({ layout }) => {
  it('commit -> free keeps blocks cached-free in LRU order; a shared prefix hits them; allocation evicts the LRU cached block first', () => {
    const kv = makeManager(layout);
    const a = kv.createSequence();
    compute(kv, a, 1, 0, 12);
    expect(table(kv, a)).toEqual([0, 1, 2]);
    expect(kv.commitFullBlocks(a, A, null)).toBe(3);
    expect(kv.commitFullBlocks(a, A, null)).toBe(0); // idempotent
    expect(kv.stats()).toMatchObject({ blocksCached: 3, blocksCachedFree: 0, blocksUsed: 3 });
    const rowsA = readAll(kv, a, 12);

    kv.freeSequence(a); // last block first: 2, 1, 0 join the tail
    expect(kv.pool.freeBlockIds()).toEqual([3, 4, 5, 6, 7, 8, 9, 2, 1, 0]);
    expect(kv.stats()).toMatchObject({ blocksCached: 3, blocksCachedFree: 3, blocksUsed: 0, blocksFree: 10 });

    // B hits A's first two blocks, not the third (its tokens differ)
    const m = kv.matchPrefix(B, B.length, null);
    expect([Array.from(m.blockIds), m.numBlocks, m.numTokens, m.queryTokens, m.hashes.length]).toEqual([[0, 1], 2, 8, 13, 3]);
    const b = kv.createSequenceWithPrefix(m, B.length);
    expect(table(kv, b)).toEqual([0, 1, 3, 4]);
    expect([kv.numTokens(b), kv.numHashedBlocks(b)]).toEqual([8, 2]);
    expect(refs(kv, [0, 1, 2, 3, 4])).toEqual([1, 1, 0, 1, 1]);
    expect(kv.pool.freeBlockIds()).toEqual([5, 6, 7, 8, 9, 2]);
    expect(kv.stats()).toMatchObject({ blocksCachedFree: 1, prefixPoolQueryTokens: 13, prefixPoolHitTokens: 8, evictions: 0 });
    expect(readAll(kv, b, 8)).toEqual(new Float32Array([...Array(layout.numLayers).keys()].flatMap((l) => Array.from(rowsA.subarray(l * 12 * kv.elementsPerToken, (l * 12 + 8) * kv.elementsPerToken)))));

    // the next allocations take the uncached blocks 5..9, then evict block 2 (A's third block)
    const c = kv.createSequence();
    expect(kv.ensureCapacity(c, 20)).toBe(true);
    expect(table(kv, c)).toEqual([5, 6, 7, 8, 9]);
    expect([kv.pool.evictions, kv.pool.lookupCached(kv.pool.blockHash(2))]).toEqual([0, 2]);
    expect(kv.ensureCapacity(c, 24)).toBe(true);
    expect(table(kv, c)).toEqual([5, 6, 7, 8, 9, 2]);
    expect(Number.isNaN(kv.pool.blockHash(2))).toBe(true);
    expect(kv.stats()).toMatchObject({ evictions: 1, blocksCached: 2, blocksCachedFree: 0, blocksFree: 0 });

    // A again: its first two blocks are still there (held by b), its third is gone
    const mA = kv.matchPrefix(A, A.length, null);
    expect(Array.from(mA.blockIds)).toEqual([0, 1]);
    for (const s of [b, c]) kv.freeSequence(s);
    expect([kv.pool.numFree, kv.numSequences]).toEqual([NUM_BLOCKS, 0]);
  });

  it('a match never covers the last token: a prompt of exactly 3 cached blocks matches 2', () => {
    const kv = makeManager(layout);
    const a = kv.createSequence();
    compute(kv, a, 1, 0, 12);
    kv.commitFullBlocks(a, A, null);
    kv.freeSequence(a);
    expect(kv.matchableBlocks(12)).toBe(2);
    const m = kv.matchPrefix(A, 12, null);
    expect([Array.from(m.blockIds), m.numTokens]).toEqual([[0, 1], 8]);
    expect(Array.from(kv.matchPrefix(A.concat([35]), 13, null).blockIds)).toEqual([0, 1, 2]);
    expect([kv.matchPrefix(A, 4, null).numBlocks, kv.matchPrefix(A, 5, null).numBlocks, kv.matchPrefix(A, 0, null).numBlocks]).toEqual([0, 1, 0]);
  });

  it('a salted request hits only blocks committed under the same salt', () => {
    const kv = makeManager(layout);
    const a = kv.createSequence();
    compute(kv, a, 1, 0, 12);
    kv.commitFullBlocks(a, A, 'tenant-a');
    kv.freeSequence(a);
    const probe = A.concat([35]);
    expect(kv.matchPrefix(probe, 13, null).numBlocks).toBe(0);
    expect(kv.matchPrefix(probe, 13, 'tenant-b').numBlocks).toBe(0);
    expect(kv.matchPrefix(probe, 13, '').numBlocks).toBe(0);
    expect(Array.from(kv.matchPrefix(probe, 13, 'tenant-a').blockIds)).toEqual([0, 1, 2]);
  });

  it('a preempted sequence is readmitted on its own cached blocks, generated tokens included', () => {
    const kv = makeManager(layout);
    const tokens = A.slice(0, 6); // a 6-token prompt
    const s = kv.createSequence();
    compute(kv, s, 1, 0, 6);
    expect(kv.commitFullBlocks(s, tokens, null)).toBe(1);
    for (const t of [41, 42, 43, 44]) {
      // decode: one token per step, committed after each step; the second block fills at 8 tokens
      tokens.push(t);
      compute(kv, s, 1, kv.numTokens(s), tokens.length - 1);
      kv.commitFullBlocks(s, tokens, null);
    }
    expect([kv.numTokens(s), kv.numHashedBlocks(s), kv.pool.numCached]).toEqual([9, 2, 2]);
    kv.freeSequence(s); // preempted: its partial block 2 goes first, then 1, 0
    expect(kv.pool.freeBlockIds()).toEqual([3, 4, 5, 6, 7, 8, 9, 2, 1, 0]);
    const m = kv.matchPrefix(tokens, tokens.length, null);
    expect([Array.from(m.blockIds), m.numTokens]).toEqual([[0, 1], 8]);
    const again = kv.createSequenceWithPrefix(m, tokens.length);
    expect([table(kv, again), kv.numTokens(again)]).toEqual([[0, 1, 3], 8]);
    expect(readAll(kv, again, 8)).toEqual(expectedRows(kv, 1, 8));
  });

  it('two cold sequences computing the same blocks: the first commit is the cached one', () => {
    const kv = makeManager(layout);
    const [x, y] = [kv.createSequence(), kv.createSequence()];
    compute(kv, x, 1, 0, 8);
    compute(kv, y, 1, 0, 8);
    expect([table(kv, x), table(kv, y)]).toEqual([[0, 1], [2, 3]]);
    expect(kv.commitFullBlocks(x, A, null)).toBe(2);
    expect(kv.commitFullBlocks(y, A, null)).toBe(0);
    expect([kv.numHashedBlocks(y), Number.isNaN(kv.pool.blockHash(2))]).toEqual([2, true]);
    kv.freeSequence(x);
    kv.freeSequence(y);
    expect(kv.pool.freeBlockIds()).toEqual([4, 5, 6, 7, 8, 9, 1, 0, 3, 2]);
    expect(Array.from(kv.matchPrefix(A, 12, null).blockIds)).toEqual([0, 1]);
    expect(kv.stats().blocksCachedFree).toBe(2);
  });

  it('admission with a prefix is all-or-nothing and counts the revived cached-free blocks', () => {
    const kv = makeManager(layout);
    const a = kv.createSequence();
    compute(kv, a, 1, 0, 12);
    kv.commitFullBlocks(a, A, null);
    kv.freeSequence(a);
    const z = kv.createSequence();
    kv.ensureCapacity(z, 28); // takes 3..9: the free list is now [2, 1, 0], all cached
    expect(kv.pool.freeBlockIds()).toEqual([2, 1, 0]);
    const m = kv.matchPrefix(B, B.length, null); // hits 0, 1 (both free)
    // 16 tokens need 2 more blocks, but reviving 0 and 1 leaves only block 2
    expect(kv.createSequenceWithPrefix(m, 16)).toBe(NO_SEQUENCE);
    expect([kv.pool.freeBlockIds(), kv.numSequences, kv.stats().prefixPoolQueryTokens]).toEqual([[2, 1, 0], 1, 0]);
    const b = kv.createSequenceWithPrefix(m, 12);
    expect([table(kv, b), kv.numTokens(b), kv.pool.numFree, kv.pool.evictions]).toEqual([[0, 1, 2], 8, 0, 1]);
  });

  it('a match gone stale (its block evicted before admission) ends where the block went', () => {
    const kv = makeManager(layout, 3);
    const a = kv.createSequence();
    compute(kv, a, 1, 0, 12);
    kv.commitFullBlocks(a, A, null);
    kv.freeSequence(a); // free list [2, 1, 0]
    const m = kv.matchPrefix(A.concat([35]), 13, null);
    expect(Array.from(m.blockIds)).toEqual([0, 1, 2]);
    const thief = kv.createSequence();
    kv.ensureCapacity(thief, 4); // evicts block 2, the third matched block
    const s = kv.createSequenceWithPrefix(m, 8);
    expect([table(kv, s), kv.numTokens(s)]).toEqual([[0, 1], 8]);
  });

  it('a hash collision with different tokens is a miss, not a hit', () => {
    const kv = makeManager(layout);
    const s = kv.createSequence();
    compute(kv, s, 1, 0, 4);
    // register block 0 under the hash of A's first block without A's tokens (a forged collision)
    expect(kv.pool.setBlockHash(0, chainHashes(A, 1, BS, null)[0]!)).toBe(true);
    expect(kv.matchPrefix(A, 12, null).numBlocks).toBe(0);
  });

  it('writes below a sequence\'s cached blocks are refused (copy-on-write), and so is a rollback into them', () => {
    const kv = makeManager(layout);
    const a = kv.createSequence();
    compute(kv, a, 1, 0, 12);
    kv.commitFullBlocks(a, A, null);
    kv.freeSequence(a);
    const b = kv.createSequenceWithPrefix(kv.matchPrefix(B, 13, null), 13);
    expectServerError(() => kv.writeRows(0, b, 7, rowOf(kv, 2, 0, 7), 0, 1), 'internal', /row 7 of sequence \d+ is in its first 2 blocks/);
    expectServerError(() => kv.setNumTokens(b, 7), 'internal', /cannot roll sequence \d+ back to 7 tokens/);
    kv.writeRows(0, b, 8, rowOf(kv, 2, 0, 8), 0, 1); // the first row of its own block is fine
  });
});

describe.each(LAYOUTS)('copy-on-write fork, $name', ({ layout }) => {
  it('the child shares the full blocks, owns a copy of the partial one, and writes to one never reach the other', () => {
    const kv = makeManager(layout);
    const p = kv.createSequence();
    compute(kv, p, 1, 0, 10); // blocks 0, 1 full; block 2 holds 2 rows
    kv.commitFullBlocks(p, A, null);
    const c = kv.forkSequence(p);
    expect([table(kv, p), table(kv, c)]).toEqual([[0, 1, 2], [0, 1, 3]]);
    expect(refs(kv, [0, 1, 2, 3])).toEqual([2, 2, 1, 1]);
    expect([kv.numTokens(c), kv.numHashedBlocks(c)]).toEqual([10, 2]);
    expect(readAll(kv, c, 10)).toEqual(readAll(kv, p, 10));

    // each appends its own row 10 (slot 2 of its last block): the other's rows are unchanged
    const before = readAll(kv, p, 10);
    compute(kv, c, 7, 10, 11);
    compute(kv, p, 8, 10, 11);
    expect(readAll(kv, p, 10)).toEqual(before);
    expect(readAll(kv, c, 10)).toEqual(before);
    const E = kv.elementsPerToken;
    const row = new Float32Array(E);
    kv.readRows(1, c, 10, 1, row);
    expect(row).toEqual(rowOf(kv, 7, 1, 10));
    kv.readRows(1, p, 10, 1, row);
    expect(row).toEqual(rowOf(kv, 8, 1, 10));

    // neither may write into the shared blocks, even the parent (frozen by the fork)
    expectServerError(() => kv.writeRows(0, p, 4, rowOf(kv, 1, 0, 4), 0, 1), 'internal', /in its first 2 blocks/);
    expectServerError(() => kv.writeRows(0, c, 0, rowOf(kv, 1, 0, 0), 0, 1), 'internal', /in its first 2 blocks/);

    // both grow into blocks of their own
    compute(kv, c, 7, 11, 13);
    compute(kv, p, 8, 11, 13);
    expect([table(kv, p), table(kv, c)]).toEqual([[0, 1, 2, 5], [0, 1, 3, 4]]);

    kv.freeSequence(p);
    expect(refs(kv, [0, 1, 2, 3, 4, 5])).toEqual([1, 1, 0, 1, 1, 0]);
    expect(readAll(kv, c, 10)).toEqual(before);
    kv.freeSequence(c);
    expect([kv.pool.numFree, kv.pool.numUsed]).toEqual([NUM_BLOCKS, 0]);
    for (const id of range(0, NUM_BLOCKS)) expect(kv.pool.refCount(id)).toBe(0);
  });

  it('n samples: forks of a prompt ending on a block boundary share every block; a fork that needs a block the pool lacks fails cleanly', () => {
    const kv = makeManager(layout, 4);
    const p = kv.createSequence();
    compute(kv, p, 1, 0, 8);
    const kids = [kv.forkSequence(p), kv.forkSequence(p), kv.forkSequence(p)];
    for (const k of kids) expect(table(kv, k)).toEqual([0, 1]);
    expect(refs(kv, [0, 1])).toEqual([4, 4]);
    compute(kv, p, 1, 8, 9); // the parent's own third block: 2
    compute(kv, kids[0]!, 2, 8, 9); // 3
    expect(kv.pool.numFree).toBe(0);
    expect(kv.forkSequence(p)).toBe(NO_SEQUENCE); // a partial block to copy, no block for it
    expect(kv.numSequences).toBe(4);
    for (const s of [p, ...kids]) kv.freeSequence(s);
    expect(kv.pool.numFree).toBe(4);
  });
});

describe.each(LAYOUTS)('installing blocks from a tier, $name', ({ layout }) => {
  it('installed blocks are cached-free, hit by matchPrefix with the exact rows; present ones are reused; a full pool stops the run', () => {
    const src = makeManager(layout);
    const a = src.createSequence();
    compute(src, a, 3, 0, 12);
    src.commitFullBlocks(a, A, null);
    const payloads: KvBlockPayload[] = Array.from(src.blockTable(a), (id) => {
      const tokens = new Int32Array(BS);
      const data = new Float32Array(layout.numLayers * src.pool.blockElements);
      src.readBlock(id, tokens, data);
      return { hash: src.pool.blockHash(id), tokens, data };
    });
    expect(Array.from(payloads[1]!.tokens)).toEqual([21, 22, 23, 24]);

    const dst = makeManager(layout);
    const other = dst.createSequence();
    dst.ensureCapacity(other, 8); // 0, 1 held
    expect(Array.from(dst.installBlocks(payloads.slice(0, 2)))).toEqual([2, 3]);
    // the run's first block is the most recently used, evicted last
    expect(dst.pool.freeBlockIds()).toEqual([4, 5, 6, 7, 8, 9, 3, 2]);
    expect(dst.stats()).toMatchObject({ blocksCached: 2, blocksCachedFree: 2, blocksUsed: 2 });
    // block 0 of the run is present already: reused (and touched), block 2 installed
    expect(Array.from(dst.installBlocks(payloads))).toEqual([2, 3, 4]);
    expect(dst.pool.freeBlockIds()).toEqual([5, 6, 7, 8, 9, 4, 3, 2]);

    const probe = A.concat([35]);
    const m = dst.matchPrefix(probe, 13, null);
    expect(Array.from(m.blockIds)).toEqual([2, 3, 4]);
    const s = dst.createSequenceWithPrefix(m, 13);
    expect([table(dst, s), dst.numTokens(s)]).toEqual([[2, 3, 4, 5], 12]);
    expect(readAll(dst, s, 12)).toEqual(readAll(src, a, 12));

    const tiny = makeManager(layout, 2);
    expect(Array.from(tiny.installBlocks(payloads))).toEqual([0, 1]);
    expect(tiny.pool.numCached).toBe(2);
    expectServerError(() => tiny.installBlocks([{ ...payloads[0]!, tokens: new Int32Array(3) }]), 'internal', /needs 4 tokens/);
  });
});

describe('block chain hash', () => {
  it('is pinned (the Redis tier keys depend on it: change VALUE_FORMAT with it)', () => {
    expect(hashBlock(PREFIX_ROOT_HASH, [1, 2, 3, 4], 0, 4)).toBe(4329942349102620);
    expect(rootHash('tenant-a')).toBe(7386020579135317);
  });

  it('is a 53-bit integer that depends on the parent, every token, their order and the salt', () => {
    const h = hashBlock(PREFIX_ROOT_HASH, [1, 2, 3, 4], 0, 4);
    expect(Number.isSafeInteger(h) && h >= 0).toBe(true);
    const variants = [
      hashBlock(PREFIX_ROOT_HASH + 1, [1, 2, 3, 4], 0, 4),
      hashBlock(PREFIX_ROOT_HASH, [1, 2, 3, 5], 0, 4),
      hashBlock(PREFIX_ROOT_HASH, [2, 1, 3, 4], 0, 4),
      hashBlock(rootHash(''), [1, 2, 3, 4], 0, 4),
      hashBlock(PREFIX_ROOT_HASH, [9, 1, 2, 3, 4], 1, 4),
    ];
    expect(new Set([h, ...variants]).size).toBe(5); // the last equals h: same tokens at an offset
    expect(variants[4]).toBe(h);
    expect(new Set([rootHash(null), rootHash(''), rootHash('a'), rootHash('b')]).size).toBe(4);
  });

  it('chains: chainHashes reuses a known prefix and equals the step-by-step chain', () => {
    const toks = range(0, 40);
    const all = chainHashes(toks, 10, BS, 's');
    let parent = rootHash('s');
    for (let i = 0; i < 10; i++) {
      parent = hashBlock(parent, toks, i * BS, BS);
      expect(all[i]).toBe(parent);
    }
    expect(Array.from(chainHashes(toks, 10, BS, 's', all.subarray(0, 4)))).toEqual(Array.from(all));
  });
});

/** Rows [0, n) of every layer of a sequence computed with `tag` from position 0. */
function expectedRows(kv: KvCacheManager, tag: number, n: number): Float32Array {
  const E = kv.elementsPerToken;
  const out = new Float32Array(kv.layout.numLayers * n * E);
  for (let l = 0; l < kv.layout.numLayers; l++) for (let p = 0; p < n; p++) out.set(rowOf(kv, tag, l, p), (l * n + p) * E);
  return out;
}
