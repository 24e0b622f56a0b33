/**
 * --quantization int8 against the golden fixtures' reference (fp32 transformers): the int8
 * path must stay close (it is lossy, so not exact), and fp32 stays exact (golden.test.ts).
 * Measured with bench:quant: top-1 agreement 0.92-0.95 per position on these tiny random models.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadModel, type LoadedModel } from '../../services/gateway/src/engine/load.js';
import { DEFAULT_RUNTIME } from '../../services/model/src/runtime/onnx.js';
import { FIXTURES, fixtureDir, loadExpected } from '../helpers/golden.js';

describe.each(FIXTURES)('%s with int8 weights', (fixture) => {
  let model: LoadedModel;
  beforeAll(async () => {
    model = await loadModel(fixtureDir(fixture), { runtime: { ...DEFAULT_RUNTIME, quantization: 'int8' }, mlaImpl: 'auto', blockSize: 4, kvCacheBytes: 4 << 20 });
  });
  afterAll(() => model?.checkpoint.close());

  it('the top-1 token is the reference top-1 at most prompt positions and in its top-5 at nearly all', async () => {
    const exp = loadExpected(fixture).prompts.len33;
    const V = model.cfg.vocabSize;
    const r = await model.runner.forward([{ tokens: exp.input_ids, pastLen: 0, kvSeqId: -1, logits: 'all' }], null, model.experts);
    let top1 = 0;
    let inTop5 = 0;
    for (let t = 0; t < exp.input_ids.length; t++) {
      let best = 0;
      for (let v = 1; v < V; v++) if (r.logits[t * V + v]! > r.logits[t * V + best]!) best = v;
      if (best === exp.top5_ids[t]![0]) top1++;
      if (exp.top5_ids[t]!.includes(best)) inTop5++;
    }
    const n = exp.input_ids.length;
    expect(top1 / n).toBeGreaterThanOrEqual(0.75); // measured 0.82-0.94
    expect(inTop5 / n).toBeGreaterThanOrEqual(0.95);
  });

  it('last-position logits stay within a few percent of the reference scale', async () => {
    const exp = loadExpected(fixture).prompts.len7;
    const V = model.cfg.vocabSize;
    const r = await model.runner.forward([{ tokens: exp.input_ids, pastLen: 0, kvSeqId: -1, logits: 'last' }], null, model.experts);
    let maxDiff = 0;
    let scale = 0;
    for (let v = 0; v < V; v++) {
      maxDiff = Math.max(maxDiff, Math.abs(r.logits[v]! - exp.last_logits[v]!));
      scale = Math.max(scale, Math.abs(exp.last_logits[v]!));
    }
    expect(maxDiff).toBeGreaterThan(0); // int8 really ran (fp32 matches to ~1e-5)
    expect(maxDiff / scale).toBeLessThan(0.1); // measured 0.03-0.05
  });
});
