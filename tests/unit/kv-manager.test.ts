/**
 * KvCacheManager: block tables over an 11-block pool with exact block ids and reuse order,
 * all-or-nothing capacity, token counts, and the writeRows / gather / readRows round trip across
 * block boundaries in both layouts.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parseModelConfig, type MoeModelConfig } from '../../services/model/src/config.js';
import { kvLayoutFor, mlaLayout, type KvLayout } from '../../services/kvcache/src/layout.js';
import { KvCacheManager } from '../../services/kvcache/src/manager.js';
import { BlockPool } from '../../services/kvcache/src/pool.js';
import { expectServerError } from '../helpers/errors.js';

const BLOCK_SIZE = 4;

function goldenConfig(name: string): MoeModelConfig {
  const url = new URL(`../fixtures/golden/${name}/config.json`, import.meta.url);
  return parseModelConfig(JSON.parse(readFileSync(url, 'utf8')));
}

/** 2 layers, rows of 3 + 1 = 4 floats. */
function tinyLayout(): KvLayout {
  return mlaLayout({ numLayers: 2, kvLoraRank: 3, qkRopeHeadDim: 1 });
}

function makeManager(numBlocks = 11, layout: KvLayout = tinyLayout(), initialBlocksPerSequence = 2): KvCacheManager {
  return new KvCacheManager(new BlockPool(layout, numBlocks, BLOCK_SIZE), { initialSequences: 2, initialBlocksPerSequence });
}

const table = (kv: KvCacheManager, seq: number) => Array.from(kv.blockTable(seq));

describe('KvCacheManager sequences and block tables', () => {
  it('sequence ids count up and a released id is reused (last released first)', () => {
    const kv = makeManager();
    expect([kv.createSequence(), kv.createSequence(), kv.createSequence(), kv.createSequence()]).toEqual([0, 1, 2, 3]);
    kv.freeSequence(1);
    kv.freeSequence(3);
    expect([kv.createSequence(), kv.createSequence(), kv.createSequence()]).toEqual([3, 1, 4]);
    expect(kv.numSequences).toBe(5);
    expect(kv.numBlocks(1)).toBe(0);
    expectServerError(() => kv.numBlocks(5), 'internal', /sequence 5 is unknown or freed/);
  });

  it('ensureCapacity takes exactly the blocks a token count needs', () => {
    const kv = makeManager();
    const a = kv.createSequence();
    const b = kv.createSequence();
    expect(kv.ensureCapacity(a, 5)).toBe(true);
    expect(kv.ensureCapacity(b, 9)).toBe(true);
    expect([table(kv, a), table(kv, b)]).toEqual([[0, 1], [2, 3, 4]]);
    expect(kv.ensureCapacity(a, 8)).toBe(true); // still two blocks
    expect(table(kv, a)).toEqual([0, 1]);
    expect(kv.ensureCapacity(a, 9)).toBe(true); // the table grows past its initial 2 entries
    expect(table(kv, a)).toEqual([0, 1, 5]);
    expect([kv.numBlocks(a), kv.pool.numFree]).toEqual([3, 5]);
  });

  it('freed blocks are reused least recently freed first; a sequence frees its tail first', () => {
    const kv = makeManager();
    const [a, b, c] = [kv.createSequence(), kv.createSequence(), kv.createSequence()];
    kv.ensureCapacity(a, 9); // [0, 1, 2]
    kv.ensureCapacity(b, 8); // [3, 4]
    kv.ensureCapacity(c, 4); // [5]
    kv.freeSequence(a);
    kv.freeSequence(c);
    expect(kv.pool.freeBlockIds()).toEqual([6, 7, 8, 9, 10, 2, 1, 0, 5]);
    const d = kv.createSequence();
    expect(kv.ensureCapacity(d, 32)).toBe(true);
    expect(table(kv, d)).toEqual([6, 7, 8, 9, 10, 2, 1, 0]);
    expect(kv.pool.numFree).toBe(1);
  });

  it('ensureCapacity is all-or-nothing when the pool runs short', () => {
    const kv = makeManager();
    const a = kv.createSequence();
    kv.ensureCapacity(a, 40); // 10 of 11 blocks
    const e = kv.createSequence();
    expect(kv.ensureCapacity(e, 5)).toBe(false);
    expect([table(kv, e), kv.pool.numFree, kv.numBlocks(e)]).toEqual([[], 1, 0]);
    expect(kv.ensureCapacity(e, 4)).toBe(true);
    expect(table(kv, e)).toEqual([10]);
    expect(kv.pool.numFree).toBe(0);
    expect(kv.ensureCapacity(a, 41)).toBe(false);
    expect(kv.numBlocks(a)).toBe(10);
  });

  it('freeing every sequence returns every block', () => {
    const kv = makeManager();
    const seqs = [kv.createSequence(), kv.createSequence(), kv.createSequence()];
    kv.ensureCapacity(seqs[0]!, 13);
    kv.ensureCapacity(seqs[1]!, 1);
    kv.ensureCapacity(seqs[2]!, 7);
    kv.ensureCapacity(seqs[0]!, 21);
    kv.advance(seqs[0]!, 20);
    kv.advance(seqs[2]!, 7);
    expect(kv.stats()).toMatchObject({ blocksUsed: 9, blocksFree: 2, tokensStored: 27, sequences: 3 });
    for (const s of seqs) kv.freeSequence(s);
    expect([kv.pool.numFree, kv.pool.numUsed, kv.numSequences]).toEqual([11, 0, 0]);
    for (let id = 0; id < 11; id++) expect(kv.pool.refCount(id)).toBe(0);
    expect(kv.stats()).toMatchObject({ blocksUsed: 0, blocksFree: 11, tokensStored: 0, bytesUsed: 0, sequences: 0 });
  });

  it('blockTable is a view of the live table, the same object until the table changes', () => {
    const kv = makeManager();
    const a = kv.createSequence();
    expect(kv.blockTable(a).length).toBe(0);
    kv.ensureCapacity(a, 6);
    const t1 = kv.blockTable(a);
    expect(kv.blockTable(a)).toBe(t1);
    expect(t1).toBeInstanceOf(Int32Array);
    kv.ensureCapacity(a, 7); // no new block: same view
    expect(kv.blockTable(a)).toBe(t1);
    kv.ensureCapacity(a, 20);
    expect(Array.from(kv.blockTable(a))).toEqual([0, 1, 2, 3, 4]);
  });
});

describe('KvCacheManager token counts and stats', () => {
  it('advance and setNumTokens stay within capacity', () => {
    const kv = makeManager();
    const a = kv.createSequence();
    kv.ensureCapacity(a, 6);
    kv.advance(a, 5);
    kv.advance(a, 1);
    expect(kv.numTokens(a)).toBe(6);
    kv.setNumTokens(a, 2); // rollback keeps the blocks
    expect([kv.numTokens(a), kv.numBlocks(a)]).toEqual([2, 2]);
    expectServerError(() => kv.advance(a, 7), 'internal', /9 tokens for sequence 0 with capacity 8/);
    expect(kv.numTokens(a)).toBe(2);
  });

  it('stats are in exact layout bytes', () => {
    // deepseek-v2-tiny: 3 layers x 160 bytes per token per layer
    const kv = KvCacheManager.forModel(goldenConfig('deepseek-v2-tiny'), { blockSize: 4, budgetBytes: 11 * 4 * 160 * 3 });
    const a = kv.createSequence();
    kv.ensureCapacity(a, 5);
    kv.advance(a, 5);
    expect(kv.stats()).toEqual({
      kind: 'mla',
      blockSize: 4,
      blocksTotal: 11,
      blocksUsed: 2,
      blocksFree: 9,
      blocksCached: 0,
      evictions: 0,
      bytesPerTokenPerLayer: 160,
      bytesPerToken: 480,
      bytesTotal: 11 * 4 * 480,
      bytesUsed: 2 * 4 * 480,
      tokensStored: 5,
      tokensCapacity: 44,
      sequences: 1,
      blocksCachedFree: 0,
      prefixPoolQueryTokens: 0,
      prefixPoolHitTokens: 0,
      prefixRedisQueryTokens: 0,
      prefixRedisHitTokens: 0,
      redis: null,
    });
  });

  it('reset drops every sequence', () => {
    const kv = makeManager();
    kv.ensureCapacity(kv.createSequence(), 10);
    kv.ensureCapacity(kv.createSequence(), 10);
    kv.reset();
    expect([kv.pool.numFree, kv.numSequences, kv.createSequence()]).toEqual([11, 0, 0]);
  });
});

describe('KvCacheManager misuse', () => {
  it('EXPECTED FAILURE - a freed or unknown sequence id', () => {
    const kv = makeManager();
    const a = kv.createSequence();
    kv.freeSequence(a);
    expectServerError(() => kv.freeSequence(a), 'internal', /sequence 0 is unknown or freed/);
    expectServerError(() => kv.ensureCapacity(7, 1), 'internal', /sequence 7 is unknown or freed/);
    expectServerError(() => kv.blockTable(-1), 'internal', /unknown or freed/);
  });

  it('BAD CALL - writeRows past the ensured capacity, or past the end of src', () => {
    const kv = makeManager();
    const a = kv.createSequence();
    kv.ensureCapacity(a, 4);
    const src = new Float32Array(5 * 4);
    expectServerError(() => kv.writeRows(0, a, 2, src, 0, 3), 'internal', /rows 2\.\.5 of sequence 0 exceed its capacity 4/);
    expectServerError(() => kv.writeRows(0, a, 0, src, 3, 3), 'internal', /exceed src of 20/);
    expectServerError(() => kv.writeRows(2, a, 0, src, 0, 1), 'internal', /layer 2 is out of range \[0, 2\)/);
  });

  it('BAD CALL - gather lengths beyond maxLen or capacity, or an out buffer too small', () => {
    const kv = makeManager();
    const a = kv.createSequence();
    kv.ensureCapacity(a, 4);
    const out = new Float32Array(8 * 4).fill(-1);
    expectServerError(() => kv.gather(0, [a], 1, Int32Array.of(5), 8, out), 'internal', /length 5 of sequence 0/);
    expectServerError(() => kv.gather(0, [a], 1, Int32Array.of(3), 2, out), 'internal', /length 3 of sequence 0/);
    expectServerError(() => kv.gather(0, [a], 1, Int32Array.of(3), 9, out), 'internal', /smaller than \[1, 9, 4\]/);
    expect(out.every((v) => v === -1)).toBe(true);
  });
});

/**
 * Round trip. Block tables built by interleaved growth so they mix contiguous runs and jumps:
 *   A (33 tokens): [0, 2, 5, 6, 7, 8, 9, 10, 11]   B (7 tokens): [1, 3]   C (1 token): [4]
 * Row value = layer·1e6 + seq·1e4 + pos·100 + element: exact in float32.
 */
function rowValue(layer: number, seq: number, pos: number, e: number): number {
  return layer * 1e6 + seq * 1e4 + pos * 100 + e;
}

function roundTripScenario(layout: KvLayout) {
  const kv = new KvCacheManager(new BlockPool(layout, 16, BLOCK_SIZE), { initialSequences: 1, initialBlocksPerSequence: 1 });
  const [A, B, C] = [kv.createSequence(), kv.createSequence(), kv.createSequence()];
  const lengths = [33, 7, 1];
  for (const [seq, tokens] of [[A, 4], [B, 4], [A, 8], [B, 7], [C, 1], [A, 33]] as const) {
    expect(kv.ensureCapacity(seq, tokens)).toBe(true);
  }
  expect([table(kv, A), table(kv, B), table(kv, C)]).toEqual([[0, 2, 5, 6, 7, 8, 9, 10, 11], [1, 3], [4]]);

  // src: the rows of A, then B, then C, back to back: [41, E]
  const E = layout.elementsPerToken;
  const srcRowOf = [0, 33, 40];
  const src = new Float32Array(41 * E);
  for (let layer = 0; layer < layout.numLayers; layer++) {
    for (const seq of [A, B, C]) {
      for (let pos = 0; pos < lengths[seq]!; pos++) {
        for (let e = 0; e < E; e++) src[(srcRowOf[seq]! + pos) * E + e] = rowValue(layer, seq, pos, e);
      }
    }
    // chunks that start and end inside blocks
    kv.writeRows(layer, A, 0, src, 0, 3);
    kv.writeRows(layer, A, 3, src, 3, 7);
    kv.writeRows(layer, A, 10, src, 10, 23);
    kv.writeRows(layer, B, 0, src, 33, 2);
    kv.writeRows(layer, B, 2, src, 35, 5);
    kv.writeRows(layer, C, 0, src, 40, 1);
  }
  return { kv, A, B, C, lengths, E };
}

const SENTINEL = -7;

function expectGathered(out: Float32Array, layer: number, seqs: number[], lengths: number[], maxLen: number, E: number): void {
  for (let b = 0; b < seqs.length; b++) {
    for (let pos = 0; pos < maxLen; pos++) {
      const base = (b * maxLen + pos) * E;
      const got = Array.from(out.subarray(base, base + E));
      const want = Array.from({ length: E }, (_, e) => (pos < lengths[b]! ? rowValue(layer, seqs[b]!, pos, e) : SENTINEL));
      expect(got, `layer ${layer} seq ${seqs[b]} pos ${pos}`).toEqual(want);
    }
  }
}

describe.each([
  ['GQA (mixtral-tiny, 64-float rows)', 'mixtral-tiny'],
  ['MLA (deepseek-v2-tiny, 40-float rows)', 'deepseek-v2-tiny'],
])('writeRows / gather round trip: %s', (_name, fixture) => {
  const layout = kvLayoutFor(goldenConfig(fixture));

  it('gathers sequences of 33, 7 and 1 tokens across block boundaries, rows past each length untouched', () => {
    const { kv, A, B, C, lengths, E } = roundTripScenario(layout);
    const maxLen = 33;
    for (let layer = 0; layer < layout.numLayers; layer++) {
      const out = new Float32Array(3 * maxLen * E).fill(SENTINEL);
      kv.gather(layer, Int32Array.of(A, B, C), 3, Int32Array.from(lengths), maxLen, out);
      expectGathered(out, layer, [A, B, C], lengths, maxLen, E);
    }
  });

  it('gathers a subset, reordered, with shorter lengths (numSeqs < seqIds.length)', () => {
    const { kv, A, C, E } = roundTripScenario(layout);
    const maxLen = 10;
    const out = new Float32Array(2 * maxLen * E).fill(SENTINEL);
    kv.gather(1, [C, A, 99], 2, Int32Array.of(1, 10), maxLen, out);
    expectGathered(out, 1, [C, A], [1, 10], maxLen, E);
  });

  it('readRows reads a window that starts and ends inside blocks', () => {
    const { kv, A, E } = roundTripScenario(layout);
    const out = new Float32Array(20 * E).fill(SENTINEL);
    kv.readRows(2, A, 6, 19, out, 1); // positions 6..24 into rows 1..19
    for (let r = 0; r < 20; r++) {
      const want = Array.from({ length: E }, (_, e) => (r === 0 ? SENTINEL : rowValue(2, A, 6 + r - 1, e)));
      expect(Array.from(out.subarray(r * E, (r + 1) * E))).toEqual(want);
    }
  });

  it('blocks store rows segment-major: element e of slot s of block b at b·blockSize·E + blockSize·offset + s·length + (e − offset)', () => {
    const { kv, A, B, E } = roundTripScenario(layout);
    const storage = kv.pool.layers[1]!;
    const at = (block: number, slot: number, e: number) => {
      const seg = layout.segments.find((x) => e >= x.offset && e < x.offset + x.length)!;
      return block * BLOCK_SIZE * E + BLOCK_SIZE * seg.offset + slot * seg.length + (e - seg.offset);
    };
    // A position 5 -> block table[1] = 2, slot 1; B position 6 -> table[1] = 3, slot 2
    for (let e = 0; e < E; e++) {
      expect(storage[at(2, 1, e)]).toBe(rowValue(1, A, 5, e));
      expect(storage[at(3, 2, e)]).toBe(rowValue(1, B, 6, e));
    }
    // MLA keeps one segment (plain rows); GQA has one per K head, then one per V head
    if (layout.kind === 'mla') expect(layout.segments).toEqual([{ offset: 0, length: E }]);
    else expect(layout.segments.length).toBe(2 * layout.numKvHeads);
  });

  it('gatherHeads hands GQA attention K and V head-major, equal to the gathered rows; MLA refuses it', () => {
    const { kv, A, B, C, lengths, E } = roundTripScenario(layout);
    const maxLen = 33;
    if (layout.kind !== 'gqa') {
      expectServerError(() => kv.gatherHeads(0, [A], 1, Int32Array.of(1), 1, new Float32Array(E), new Float32Array(E)), 'internal', /no KV heads/);
      return;
    }
    const { numKvHeads: g, headDim: D, vOffset } = layout;
    for (let layer = 0; layer < layout.numLayers; layer++) {
      const outK = new Float32Array(3 * g * maxLen * D).fill(SENTINEL);
      const outV = new Float32Array(3 * g * maxLen * D).fill(SENTINEL);
      kv.gatherHeads(layer, Int32Array.of(A, B, C), 3, Int32Array.from(lengths), maxLen, outK, outV);
      [A, B, C].forEach((seq, b) => {
        for (let h = 0; h < g; h++) {
          for (let pos = 0; pos < maxLen; pos++) {
            for (let d = 0; d < D; d++) {
              const i = ((b * g + h) * maxLen + pos) * D + d;
              const inRange = pos < lengths[b]!;
              expect(outK[i]).toBe(inRange ? rowValue(layer, seq, pos, h * D + d) : SENTINEL);
              expect(outV[i]).toBe(inRange ? rowValue(layer, seq, pos, vOffset + h * D + d) : SENTINEL);
            }
          }
        }
      });
    }
    expectServerError(() => kv.gatherHeads(0, [A], 1, Int32Array.of(33), 33, new Float32Array(10), new Float32Array(10)), 'internal', /smaller than/);
  });

  it('with `from`, gather and gatherHeads copy rows from[b]..lengths[b] only (starting inside a block), and refuse from > length', () => {
    const { kv, A, B, C, lengths, E } = roundTripScenario(layout);
    const maxLen = 33;
    const from = Int32Array.of(6, 0, 1); // A from inside its second block; B whole; C nothing
    const visible = (b: number, pos: number) => pos >= from[b]! && pos < lengths[b]!;
    const out = new Float32Array(3 * maxLen * E).fill(SENTINEL);
    kv.gather(1, Int32Array.of(A, B, C), 3, Int32Array.from(lengths), maxLen, out, from);
    [A, B, C].forEach((seq, b) => {
      for (let pos = 0; pos < maxLen; pos++) {
        for (let e = 0; e < E; e++) expect(out[(b * maxLen + pos) * E + e]).toBe(visible(b, pos) ? rowValue(1, seq, pos, e) : SENTINEL);
      }
    });
    expectServerError(() => kv.gather(1, [B], 1, Int32Array.of(7), 7, out, Int32Array.of(8)), 'internal', /from 8 of sequence/);
    if (layout.kind !== 'gqa') return;
    const { numKvHeads: g, headDim: D, vOffset } = layout;
    const outK = new Float32Array(3 * g * maxLen * D).fill(SENTINEL);
    const outV = new Float32Array(3 * g * maxLen * D).fill(SENTINEL);
    kv.gatherHeads(1, Int32Array.of(A, B, C), 3, Int32Array.from(lengths), maxLen, outK, outV, from);
    [A, B, C].forEach((seq, b) => {
      for (let h = 0; h < g; h++) {
        for (let pos = 0; pos < maxLen; pos++) {
          for (let d = 0; d < D; d++) {
            const i = ((b * g + h) * maxLen + pos) * D + d;
            expect(outK[i]).toBe(visible(b, pos) ? rowValue(1, seq, pos, h * D + d) : SENTINEL);
            expect(outV[i]).toBe(visible(b, pos) ? rowValue(1, seq, pos, vOffset + h * D + d) : SENTINEL);
          }
        }
      }
    });
  });
});

describe('KvCacheManager epochs', () => {
  it('an id gets a new epoch when created again or rolled back, never when rows are appended', () => {
    const kv = makeManager();
    const a = kv.createSequence();
    const e0 = kv.epoch(a);
    expect(kv.ensureCapacity(a, 8)).toBe(true);
    kv.advance(a, 5);
    kv.setNumTokens(a, 7);
    expect(kv.epoch(a)).toBe(e0);
    kv.setNumTokens(a, 6); // rollback: rows from 6 on will be rewritten
    const e1 = kv.epoch(a);
    expect(e1).not.toBe(e0);
    kv.freeSequence(a);
    expectServerError(() => kv.epoch(a), 'internal', /unknown or freed/);
    expect(kv.createSequence()).toBe(a); // the same id, reused
    expect([e0, e1]).not.toContain(kv.epoch(a));
    kv.reset();
    expect([e0, e1]).not.toContain(kv.epoch(kv.createSequence()));
  });
});
