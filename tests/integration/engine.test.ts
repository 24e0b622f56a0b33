/**
 * The cached engine (paged KV cache, incremental decode, continuous batching) against its oracle,
 * the recomputing reference path, and against the golden fixtures:
 * - cached incremental decode equals the fixtures (ids exact, logits within tolerance);
 * - a batch of mixed lengths (1, 7 and 33 tokens together) gives what each gives alone, and so do
 *   equal-length prompts, which prefill as one attention group;
 * - MLA absorbed, and auto (the cheaper form for each attention group), equal MLA naive;
 * - keeping the decode group's past between steps equals gathering it every step, while
 *   sequences join, leave and reuse KV ids and the past outgrows its slots;
 * - the pool's bytes per token equal the layout formulas; freeing returns every block;
 * - the warm-up leaves the KV cache and the scheduler as they were.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateCached, type GenerationResult } from '../../services/gateway/src/engine/generate.js';
import { loadModel, type LoadedModel } from '../../services/gateway/src/engine/load.js';
import { DEFAULT_SAMPLING } from '../../services/gateway/src/sampling/params.js';
import { DEFAULT_RUNTIME } from '../../services/model/src/runtime/onnx.js';
import { FIXTURES, fixtureDir, loadExpected, maxAbsDiff, PROMPTS } from '../helpers/golden.js';

const GREEDY = { ...DEFAULT_SAMPLING, temperature: 0 };
const PARAMS = { maxTokens: 16, sampling: GREEDY, stopTokenIds: [] };

for (const fixture of FIXTURES) {
  describe(`engine ${fixture} (paged KV cache)`, () => {
    const expected = loadExpected(fixture);
    let model: LoadedModel;
    let batched: GenerationResult[];

    beforeAll(async () => {
      // A small pool with 4-token blocks: sequences span many blocks, including partial ones.
      model = await loadModel(fixtureDir(fixture), { runtime: DEFAULT_RUNTIME, mlaImpl: 'absorbed', blockSize: 4, kvCacheBytes: 4 << 20 });
      batched = await generateCached(model.engine, PROMPTS.map((p) => expected.prompts[p].input_ids), PARAMS);
    });
    afterAll(() => model?.checkpoint.close());

    PROMPTS.forEach((p, i) => {
      it(`${p}: cached decode (batched 1+7+33) gives the fixture's greedy ids, top-5 ids and last logits`, () => {
        const r = batched[i]!;
        expect(r.greedy_ids).toEqual(expected.prompts[p].greedy_ids);
        expect(r.top5_ids).toEqual(expected.prompts[p].top5_ids);
        expect(maxAbsDiff(r.last_logits, expected.prompts[p].last_logits)).toBeLessThanOrEqual(expected.tolerances.last_logits.atol);
      });
    });

    it('each prompt alone gives exactly what it gives in the mixed batch', async () => {
      for (let i = 0; i < PROMPTS.length; i++) {
        const [alone] = await generateCached(model.engine, [expected.prompts[PROMPTS[i]!].input_ids], PARAMS);
        expect(alone!.greedy_ids).toEqual(batched[i]!.greedy_ids);
        expect(alone!.top5_ids).toEqual(batched[i]!.top5_ids);
        expect(maxAbsDiff(alone!.last_logits, batched[i]!.last_logits)).toBeLessThanOrEqual(1e-5);
      }
    });

    it('equal-length prompts prefill as one attention group: each gives what it gives alone, the fixture prompt the fixture', async () => {
      // Three 7-token prompts (the fixture's, the long prompt's first 7 tokens, the fixture's reversed).
      const p7 = expected.prompts.len7.input_ids;
      const prompts = [p7, expected.prompts.len33.input_ids.slice(0, 7), [...p7].reverse()];
      const together = await generateCached(model.engine, prompts, PARAMS);
      expect(together[0]!.greedy_ids).toEqual(expected.prompts.len7.greedy_ids);
      expect(maxAbsDiff(together[0]!.last_logits, expected.prompts.len7.last_logits)).toBeLessThanOrEqual(expected.tolerances.last_logits.atol);
      for (let i = 0; i < prompts.length; i++) {
        const [alone] = await generateCached(model.engine, [prompts[i]!], PARAMS);
        expect(together[i]!.greedy_ids).toEqual(alone!.greedy_ids);
        expect(together[i]!.top5_ids).toEqual(alone!.top5_ids);
        expect(maxAbsDiff(together[i]!.last_logits, alone!.last_logits)).toBeLessThanOrEqual(1e-5);
      }
    });

    it('freeing returns every block to the pool', () => {
      const s = model.kv.stats();
      expect(s.sequences).toBe(0);
      expect(s.blocksUsed).toBe(0);
      expect(s.blocksFree).toBe(s.blocksTotal);
    });

    it('pool bytes per token equal the layout formula', () => {
      const a = model.cfg.attention;
      const perLayer = a.kind === 'mla' ? (a.kvLoraRank + a.qkRopeHeadDim) * 4 : 2 * a.numKvHeads * a.headDim * 4;
      expect(model.kv.stats().bytesPerTokenPerLayer).toBe(perLayer);
      expect(model.kv.stats().bytesPerToken).toBe(perLayer * model.cfg.numLayers);
    });
  });
}

describe('warm-up (every unit once, before the first request)', () => {
  for (const fixture of FIXTURES) {
    it(`${fixture}: stores, schedules and counts nothing; the fixture's output follows unchanged`, async () => {
      const expected = loadExpected(fixture);
      const m = await loadModel(fixtureDir(fixture), { runtime: DEFAULT_RUNTIME, mlaImpl: 'auto', blockSize: 4, kvCacheBytes: 4 << 20 });
      try {
        const before = m.kv.stats();
        expect(await m.engine.warmUp()).toBeGreaterThan(0);
        expect(m.kv.stats()).toEqual(before);
        expect(m.engine.hasWork()).toBe(false);
        const [r] = await generateCached(m.engine, [expected.prompts.len7.input_ids], PARAMS);
        expect(r!.greedy_ids).toEqual(expected.prompts.len7.greedy_ids);
        expect(maxAbsDiff(r!.last_logits, expected.prompts.len7.last_logits)).toBeLessThanOrEqual(expected.tolerances.last_logits.atol);
      } finally {
        m.checkpoint.close();
      }
    });
  }
});

describe('MLA absorbed and auto (naive prompts, absorbed decodes) equal MLA naive (deepseek-v2-tiny, cached decode)', () => {
  it('same ids, logits within 1e-4', async () => {
    const expected = loadExpected('deepseek-v2-tiny');
    const prompts = PROMPTS.map((p) => expected.prompts[p].input_ids);
    const out: GenerationResult[][] = [];
    for (const mlaImpl of ['naive', 'absorbed', 'auto'] as const) {
      const m = await loadModel(fixtureDir('deepseek-v2-tiny'), { runtime: DEFAULT_RUNTIME, mlaImpl, blockSize: 8, kvCacheBytes: 4 << 20 });
      out.push(await generateCached(m.engine, prompts, PARAMS));
      m.checkpoint.close();
    }
    for (const form of [1, 2]) {
      for (let i = 0; i < prompts.length; i++) {
        expect(out[form]![i]!.greedy_ids).toEqual(out[0]![i]!.greedy_ids);
        expect(out[form]![i]!.top5_ids).toEqual(out[0]![i]!.top5_ids);
        expect(maxAbsDiff(out[form]![i]!.last_logits, out[0]![i]!.last_logits)).toBeLessThanOrEqual(1e-4);
      }
    }
  });
});

describe('the decode group past kept between steps equals gathering it every step', () => {
  for (const fixture of FIXTURES) {
    it(`${fixture}: same ids and logprobs while sequences join, leave and the past outgrows its slots`, async () => {
      const expected = loadExpected(fixture);
      const prompts = PROMPTS.map((p) => expected.prompts[p].input_ids);
      // [prompt, maxTokens, step it arrives at]: one runs past 64 + 33 tokens (the slots' stride
      // grows), short ones leave early and later arrivals take their KV ids and group slots.
      const schedule = [[2, 80, 0], [0, 5, 0], [1, 12, 0], [0, 20, 4], [1, 9, 9], [2, 6, 15]] as const;
      const runs: { ids: number[][]; lps: number[][]; stagedMax: number }[] = [];
      for (const decodePastBytes of [undefined, 0]) {
        const m = await loadModel(fixtureDir(fixture), { runtime: DEFAULT_RUNTIME, mlaImpl: 'absorbed', blockSize: 4, kvCacheBytes: 4 << 20, decodePastBytes });
        const ids: number[][] = schedule.map(() => []);
        const lps: number[][] = schedule.map(() => []);
        const index = new Map<number, number>();
        let stagedMax = 0;
        let live = 0;
        for (let step = 0; step < 200 && (step <= 15 || live > 0); step++) {
          schedule.forEach(([p, maxTokens, at], i) => {
            if (at !== step) return;
            index.set(m.engine.add({ promptIds: prompts[p]!, sampling: GREEDY, maxTokens, stopTokenIds: [], logprobs: 1, promptLogprobs: null }), i);
            live++;
          });
          for (const ev of await m.engine.step()) {
            const i = index.get(ev.seqId)!;
            if (ev.tokenId >= 0) {
              ids[i]!.push(ev.tokenId);
              lps[i]!.push(ev.logprobs!.logprob);
            }
            if (ev.finishReason) live--;
          }
          stagedMax = Math.max(stagedMax, m.runner.stagedPastBytes);
        }
        m.checkpoint.close();
        runs.push({ ids, lps, stagedMax });
      }
      const [kept, gathered] = runs as [(typeof runs)[0], (typeof runs)[0]];
      expect(kept.stagedMax).toBeGreaterThan(0);
      expect(gathered.stagedMax).toBe(0);
      schedule.forEach(([, maxTokens], i) => {
        expect(kept.ids[i]!.length).toBe(maxTokens);
        expect(kept.ids[i]).toEqual(gathered.ids[i]);
        expect(maxAbsDiff(kept.lps[i]!, gathered.lps[i]!)).toBeLessThanOrEqual(1e-4);
      });
    });
  }
});
