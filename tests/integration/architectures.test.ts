/**
 * Architectures and settings beyond the three golden fixtures, on seeded tiny checkpoints written
 * by make-checkpoint: Qwen3-MoE (q/k norms, explicit head_dim, a dense layer), DeepSeek-V2 with
 * group-limited routing, DeepSeek-V3 (q_lora, sigmoid noaux_tc with correction bias, yarn RoPE),
 * and a BF16 checkpoint. No reference outputs exist for these, so each is checked against the
 * model's own oracle: cached incremental decode == full recomputation, MLA absorbed == naive.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import { generateCached, generateRecompute } from '../../services/gateway/src/engine/generate.js';
import { loadModel } from '../../services/gateway/src/engine/load.js';
import { DEFAULT_SAMPLING } from '../../services/gateway/src/sampling/params.js';
import { makeCheckpoint } from '../../services/model/src/make-checkpoint.js';
import { DEFAULT_RUNTIME } from '../../services/model/src/runtime/onnx.js';
import { maxAbsDiff } from '../helpers/golden.js';

const root = path.join(os.tmpdir(), `moeserve-arch-${randomUUID()}`);
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

const PARAMS = { maxTokens: 8, sampling: { ...DEFAULT_SAMPLING, temperature: 0 }, stopTokenIds: [] };
const PROMPTS = [[5], [17, 300, 42, 9, 128, 77, 3], Array.from({ length: 33 }, (_, i) => (i * 37 + 11) % 500)];

const CASES: { preset: string; dtype?: 'F32' | 'BF16' | 'F16'; mla?: boolean; set?: Record<string, unknown> }[] = [
  { preset: 'tiny-qwen3-moe' },
  { preset: 'tiny-dsv2-grouped', mla: true },
  { preset: 'tiny-dsv3', mla: true },
  { preset: 'tiny-mixtral', dtype: 'BF16' },
  { preset: 'tiny-qwen2-moe', dtype: 'F16' },
  // Mixtral's sliding window: every query sees only the last 8 positions (decode masks as prefill does)
  { preset: 'tiny-mixtral', set: { sliding_window: 8 } },
];

for (const c of CASES) {
  const tag = c.set ? ` ${JSON.stringify(c.set)}` : '';
  describe(`${c.preset}${c.dtype ? ` (${c.dtype} checkpoint)` : ''}${tag}`, () => {
    const dir = path.join(root, `${c.preset}-${c.dtype ?? 'F32'}${c.set ? '-set' : ''}`);
    it('cached incremental decode equals full recomputation (batch of 1, 7 and 33 tokens)', async () => {
      makeCheckpoint({ preset: c.preset, outDir: dir, seed: 7, dtype: c.dtype ?? 'F32', set: c.set });
      const m = await loadModel(dir, { runtime: DEFAULT_RUNTIME, mlaImpl: 'absorbed', blockSize: 4, kvCacheBytes: 4 << 20 });
      const cached = await generateCached(m.engine, PROMPTS, PARAMS);
      const ref = await generateRecompute(m.cfg, m.runner, m.experts, PROMPTS, PARAMS);
      for (let i = 0; i < PROMPTS.length; i++) {
        expect(cached[i]!.greedy_ids).toEqual(ref[i]!.greedy_ids);
        expect(cached[i]!.top5_ids).toEqual(ref[i]!.top5_ids);
        expect(maxAbsDiff(cached[i]!.last_logits, ref[i]!.last_logits)).toBeLessThanOrEqual(1e-4);
      }
      m.checkpoint.close();
    });
    if (c.mla) {
      it('MLA absorbed equals MLA naive', async () => {
        const out = [];
        for (const mlaImpl of ['naive', 'absorbed'] as const) {
          const m = await loadModel(dir, { runtime: DEFAULT_RUNTIME, mlaImpl, blockSize: 4, kvCacheBytes: 4 << 20 });
          out.push(await generateCached(m.engine, PROMPTS, PARAMS));
          m.checkpoint.close();
        }
        for (let i = 0; i < PROMPTS.length; i++) {
          expect(out[1]![i]!.greedy_ids).toEqual(out[0]![i]!.greedy_ids);
          expect(maxAbsDiff(out[1]![i]!.last_logits, out[0]![i]!.last_logits)).toBeLessThanOrEqual(1e-4);
        }
      });
    }
  });
}

describe('sliding window', () => {
  it('changes the output of a 33-token prompt (the window is applied, not ignored)', async () => {
    const full = path.join(root, 'sw-full');
    const windowed = path.join(root, 'sw-8');
    makeCheckpoint({ preset: 'tiny-mixtral', outDir: full, seed: 7 });
    makeCheckpoint({ preset: 'tiny-mixtral', outDir: windowed, seed: 7, set: { sliding_window: 8 } });
    const out = [];
    for (const dir of [full, windowed]) {
      const m = await loadModel(dir, { runtime: DEFAULT_RUNTIME, mlaImpl: 'absorbed', blockSize: 4, kvCacheBytes: 4 << 20 });
      out.push((await generateRecompute(m.cfg, m.runner, m.experts, [PROMPTS[2]!], PARAMS))[0]!);
      m.checkpoint.close();
    }
    // the first 8 positions see the same keys with or without the window
    expect(out[1]!.top5_ids.slice(0, 8)).toEqual(out[0]!.top5_ids.slice(0, 8));
    expect(maxAbsDiff(out[1]!.last_logits, out[0]!.last_logits)).toBeGreaterThan(1e-3);
  });
});
