/**
 * The model core against the golden fixtures (Hugging Face transformers semantics, fp32):
 * the reference path (full recomputation, no KV cache) must reproduce every prompt's top-5 ids at
 * every position, the 16 greedy ids, the last logits within the fixture tolerance, and the routing
 * of the 7-token prompt. One named test per fixture and check.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateRecompute, routingJson, type GenerationResult } from '../../services/gateway/src/engine/generate.js';
import { loadModel, type LoadedModel } from '../../services/gateway/src/engine/load.js';
import { DEFAULT_SAMPLING } from '../../services/gateway/src/sampling/params.js';
import { DEFAULT_RUNTIME } from '../../services/model/src/runtime/onnx.js';
import { expectRouting, FIXTURES, fixtureDir, loadExpected, maxAbsDiff, PROMPTS } from '../helpers/golden.js';

const GREEDY = { ...DEFAULT_SAMPLING, temperature: 0 };

for (const fixture of FIXTURES) {
  describe(`golden ${fixture} (reference path: full recomputation)`, () => {
    const expected = loadExpected(fixture);
    let model: LoadedModel;
    const results = new Map<string, GenerationResult>();

    beforeAll(async () => {
      model = await loadModel(fixtureDir(fixture), { runtime: DEFAULT_RUNTIME, mlaImpl: 'naive', kvCacheBytes: 1 << 20 });
      const prompts = PROMPTS.map((p) => expected.prompts[p].input_ids);
      // All three prompts in one batch: the reference forward takes a batch of prompts.
      const out = await generateRecompute(model.cfg, model.runner, model.experts, prompts, { maxTokens: 16, sampling: GREEDY, stopTokenIds: [] });
      PROMPTS.forEach((p, i) => results.set(p, out[i]!));
    });
    afterAll(() => model?.checkpoint.close());

    for (const p of PROMPTS) {
      it(`${p}: top5_ids identical at every position`, () => {
        expect(results.get(p)!.top5_ids).toEqual(expected.prompts[p].top5_ids);
      });
      it(`${p}: greedy_ids identical`, () => {
        expect(results.get(p)!.greedy_ids).toEqual(expected.prompts[p].greedy_ids);
      });
      it(`${p}: last_logits within ${expected.tolerances.last_logits.atol}`, () => {
        expect(maxAbsDiff(results.get(p)!.last_logits, expected.prompts[p].last_logits)).toBeLessThanOrEqual(expected.tolerances.last_logits.atol);
      });
    }

    it(`routing of ${expected.routing.prompt}: expert ids as a set per position, weights within ${expected.tolerances['routing.weights'].atol}`, async () => {
      const ids = expected.prompts[expected.routing.prompt as 'len7'].input_ids;
      const fwd = await model.runner.forward([{ tokens: ids, pastLen: 0, kvSeqId: -1, logits: 'none' }], null, model.experts, true);
      const actual = routingJson(fwd.routing!, ids.length, model.cfg.moe.nActivatedExperts).layers;
      expectRouting(actual, expected.routing.layers, expected.tolerances['routing.weights'].atol);
    });
  });
}
