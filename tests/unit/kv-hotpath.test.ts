/**
 * The decode hot path allocates nothing in steady state: sequence churn (ids and tables reused),
 * ensureCapacity (tables already grown), advance, and one-row writes, both from a row of a
 * multi-row source (the loop path, rows of at most LOOP_COPY_MAX_ELEMENTS floats) and from a whole
 * one-row source of any width (`set` of the whole array).
 *
 * Measured as V8 new-space growth over 200k row writes: any allocation of >= 16 bytes each would
 * either grow new space by megabytes or trigger a scavenge (a minor GC), which the observer sees.
 * Major GCs are driven by the pools' external memory, not by the loop; a window that has one is
 * measured again, since compaction moves new-space objects too.
 * Not covered, by design: runs over LOOP_COPY_MAX_ELEMENTS copied from a part of an array (one
 * view object per contiguous run, see copy.ts; a copy loop is 5-15x slower) and blockTable after
 * its table changed (one view object).
 */
import { constants, performance, PerformanceObserver, type NodeGCPerformanceDetail } from 'node:perf_hooks';
import v8 from 'node:v8';
import { describe, expect, it } from 'vitest';
import { mlaLayout, type KvLayout } from '../../services/kvcache/src/layout.js';
import { KvCacheManager } from '../../services/kvcache/src/manager.js';
import { BlockPool } from '../../services/kvcache/src/pool.js';

const NUM_SEQS = 4;
const MAX_TOKENS = 64;

function newSpaceUsed(): number {
  for (const s of v8.getHeapSpaceStatistics()) if (s.space_name === 'new_space') return s.space_used_size;
  throw new Error('no new_space in v8.getHeapSpaceStatistics()');
}

/**
 * One decode step for every sequence; a sequence that reaches MAX_TOKENS is freed and replaced.
 * rows: [NUM_SEQS, E] (sequence i writes row i) or [1, E] (every sequence writes row 0).
 */
function decodeSteps(kv: KvCacheManager, seqs: Int32Array, rows: Float32Array, steps: number): void {
  const E = kv.elementsPerToken;
  const numLayers = kv.layout.numLayers;
  for (let step = 0; step < steps; step++) {
    for (let i = 0; i < NUM_SEQS; i++) {
      let seq = seqs[i];
      const n = kv.numTokens(seq);
      if (n === MAX_TOKENS) {
        kv.freeSequence(seq);
        seq = kv.createSequence();
        seqs[i] = seq;
      }
      const pos = kv.numTokens(seq);
      if (!kv.ensureCapacity(seq, pos + 1)) throw new Error('pool exhausted');
      for (let layer = 0; layer < numLayers; layer++) kv.writeRows(layer, seq, pos, rows, rows.length === E ? 0 : i, 1);
      kv.advance(seq, 1);
    }
  }
}

interface Window {
  readonly newSpaceDelta: number;
  readonly minorGcs: number;
  readonly otherGcs: number;
}

async function measureWindow(kv: KvCacheManager, seqs: Int32Array, row: Float32Array): Promise<Window> {
  const entries: { startTime: number; kind: number | undefined }[] = [];
  const observer = new PerformanceObserver((list) => {
    // gc entries carry { detail: NodeGCPerformanceDetail }, which @types/node does not declare on PerformanceEntry
    for (const e of list.getEntries()) entries.push({ startTime: e.startTime, kind: (e as unknown as { detail?: NodeGCPerformanceDetail }).detail?.kind });
  });
  observer.observe({ entryTypes: ['gc'] });
  const t0 = performance.now();
  const before = newSpaceUsed();
  decodeSteps(kv, seqs, row, 50_000);
  const after = newSpaceUsed();
  const t1 = performance.now();
  await new Promise((resolve) => setTimeout(resolve, 20)); // gc entries are delivered asynchronously
  observer.disconnect();
  // only collections inside the measured loop count, not the test runner's while we wait
  const inWindow = entries.filter((e) => e.startTime >= t0 && e.startTime <= t1);
  const minorGcs = inWindow.filter((e) => e.kind === constants.NODE_PERFORMANCE_GC_MINOR).length;
  return { newSpaceDelta: after - before, minorGcs, otherGcs: inWindow.length - minorGcs };
}

async function expectNoAllocation(layout: KvLayout, srcRows: number): Promise<void> {
  const kv = new KvCacheManager(new BlockPool(layout, 32, 16));
  const seqs = new Int32Array(NUM_SEQS);
  for (let i = 0; i < NUM_SEQS; i++) seqs[i] = kv.createSequence();
  const row = new Float32Array(srcRows * layout.elementsPerToken).fill(0.5);
  decodeSteps(kv, seqs, row, 20_000); // warm up: JIT, tables grown to their final size
  for (let attempt = 0; attempt < 3; attempt++) {
    const w = await measureWindow(kv, seqs, row);
    expect(w.minorGcs).toBe(0);
    if (w.otherGcs === 0) {
      expect(Math.abs(w.newSpaceDelta)).toBeLessThan(32 * 1024);
      return;
    }
  }
  throw new Error('a major GC ran in every measurement window; nothing measured');
}

describe('KV hot path allocation', () => {
  it('decode steps writing 40-float MLA rows from a [4, 40] source (loop copies) allocate nothing', async () => {
    await expectNoAllocation(mlaLayout({ numLayers: 3, kvLoraRank: 32, qkRopeHeadDim: 8 }), NUM_SEQS);
  });

  it('decode steps writing 576-float MLA rows (DeepSeek-V3 latent) from a [1, 576] source allocate nothing', async () => {
    await expectNoAllocation(mlaLayout({ numLayers: 3, kvLoraRank: 512, qkRopeHeadDim: 64 }), 1);
  });
});
