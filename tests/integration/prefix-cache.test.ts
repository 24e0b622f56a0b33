/**
 * Prefix caching and preemption in the engine, for the GQA layout (mixtral-tiny) and the MLA
 * layout (deepseek-v2-tiny):
 * - a repeated prompt hits the pool (hit tokens counted) and gives the fixture's greedy ids;
 * - a prompt that extends a cached prefix gives what it gives cold (prefix caching off);
 * - a different cache salt does not hit;
 * - more concurrent long requests than the pool holds all finish with the outputs they give alone
 *   (the newest is preempted and recomputed), never a deadlock.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Engine, EngineRequest } from '../../services/gateway/src/engine/engine.js';
import { loadModel, type LoadedModel } from '../../services/gateway/src/engine/load.js';
import { DEFAULT_SAMPLING } from '../../services/gateway/src/sampling/params.js';
import { DEFAULT_RUNTIME } from '../../services/model/src/runtime/onnx.js';
import { fixtureDir, loadExpected, type FixtureName } from '../helpers/golden.js';

function request(promptIds: number[], maxTokens = 16, cacheSalt: string | null = null): EngineRequest {
  return { promptIds, sampling: { ...DEFAULT_SAMPLING, temperature: 0 }, maxTokens, stopTokenIds: [], logprobs: null, promptLogprobs: null, cacheSalt };
}

/** Runs requests concurrently to completion; returns each one's generated ids. */
async function run(engine: Engine, reqs: EngineRequest[]): Promise<number[][]> {
  const ids = reqs.map((r) => engine.add(r));
  const out = new Map<number, number[]>(ids.map((id) => [id, []]));
  const pending = new Set(ids);
  while (pending.size > 0) {
    for (const ev of await engine.step()) {
      if (ev.tokenId >= 0) out.get(ev.seqId)!.push(ev.tokenId);
      if (ev.finishReason) {
        expect(ev.finishReason).toBe('length');
        pending.delete(ev.seqId);
      }
    }
  }
  return ids.map((id) => out.get(id)!);
}

for (const fixture of ['mixtral-tiny', 'deepseek-v2-tiny'] as FixtureName[]) {
  describe(`prefix cache, ${fixture}`, () => {
    const exp = loadExpected(fixture);
    const p33 = exp.prompts.len33.input_ids;
    let model: LoadedModel;
    let cold: LoadedModel;
    beforeAll(async () => {
      model = await loadModel(fixtureDir(fixture), { runtime: DEFAULT_RUNTIME, mlaImpl: 'absorbed', blockSize: 4, kvCacheBytes: 4 << 20 });
      cold = await loadModel(fixtureDir(fixture), { runtime: DEFAULT_RUNTIME, mlaImpl: 'absorbed', blockSize: 4, kvCacheBytes: 4 << 20, prefixCaching: false });
    });
    afterAll(() => {
      model?.checkpoint.close();
      cold?.checkpoint.close();
    });

    it('a repeated prompt hits the pool and gives the fixture greedy ids', async () => {
      const [first] = await run(model.engine, [request(p33)]);
      expect(first).toEqual(exp.prompts.len33.greedy_ids);
      const before = model.kv.stats().prefixPoolHitTokens;
      const [second] = await run(model.engine, [request(p33)]);
      // 33 tokens, blocks of 4: the 8 full blocks before the last token are reused (32 tokens)
      expect(model.kv.stats().prefixPoolHitTokens - before).toBe(32);
      expect(second).toEqual(exp.prompts.len33.greedy_ids);
    });

    it('a prompt extending a cached prefix equals its cold output', async () => {
      const extended = [...p33, ...exp.prompts.len7.input_ids.slice(1)];
      const before = model.kv.stats().prefixPoolHitTokens;
      const [hit] = await run(model.engine, [request(extended)]);
      expect(model.kv.stats().prefixPoolHitTokens - before).toBeGreaterThanOrEqual(32);
      const [ref] = await run(cold.engine, [request(extended)]);
      expect(cold.kv.stats().prefixPoolHitTokens).toBe(0);
      expect(hit).toEqual(ref);
    });

    it('a different cache salt does not hit', async () => {
      const before = model.kv.stats().prefixPoolHitTokens;
      const [salted] = await run(model.engine, [request(p33, 16, 'tenant-b')]);
      expect(model.kv.stats().prefixPoolHitTokens - before).toBe(0);
      expect(salted).toEqual(exp.prompts.len33.greedy_ids);
    });

    it('freeing every sequence leaves no block in use', () => {
      expect(model.kv.stats().blocksUsed).toBe(0);
      expect(model.kv.stats().sequences).toBe(0);
    });
  });
}

describe('preemption when the pool runs dry', () => {
  for (const fixture of ['mixtral-tiny', 'deepseek-v2-tiny'] as FixtureName[]) {
    it(`${fixture}: 6 concurrent 33+40-token requests in a pool of ~2.5 of them all finish as alone`, async () => {
      const exp = loadExpected(fixture);
      const base = exp.prompts.len33.input_ids;
      // distinct prompts (so prefix hits do not shrink the demand), each 33 tokens, 40 new tokens
      const prompts = Array.from({ length: 6 }, (_, i) => [base[0]!, ...base.slice(1).map((t) => (t + 17 * i) % 500)]);
      const alone = await loadModel(fixtureDir(fixture), { runtime: DEFAULT_RUNTIME, mlaImpl: 'absorbed', blockSize: 4, kvCacheBytes: 4 << 20 });
      const solo: number[][] = [];
      for (const p of prompts) solo.push((await run(alone.engine, [request(p, 40)]))[0]!);
      alone.checkpoint.close();

      const bytesPerToken = alone.kv.stats().bytesPerToken;
      const tight = await loadModel(fixtureDir(fixture), { runtime: DEFAULT_RUNTIME, mlaImpl: 'absorbed', blockSize: 4, kvCacheBytes: Math.floor(bytesPerToken * 73 * 2.5) });
      const together = await run(tight.engine, prompts.map((p) => request(p, 40)));
      expect(tight.engine.preemptions).toBeGreaterThan(0);
      expect(together).toEqual(solo);
      expect(tight.kv.stats().blocksUsed).toBe(0);
      tight.checkpoint.close();
    });
  }
});

describe('copy-on-write: the n samples of one request share the prompt', () => {
  for (const fixture of ['mixtral-tiny', 'deepseek-v2-tiny'] as FixtureName[]) {
    it(`${fixture}: 4 seeded samples share the prompt's full blocks and equal independent runs`, async () => {
      const p33 = loadExpected(fixture).prompts.len33.input_ids;
      const sample = (i: number, shareKey: string | null): EngineRequest => ({
        ...request(p33, 8),
        sampling: { ...DEFAULT_SAMPLING, temperature: 0.9, seed: 40 + i },
        shareKey,
      });
      // prefix caching off: any sharing seen here is the fork's
      const m = await loadModel(fixtureDir(fixture), { runtime: DEFAULT_RUNTIME, mlaImpl: 'absorbed', blockSize: 4, kvCacheBytes: 4 << 20, prefixCaching: false });
      const ids = [0, 1, 2, 3].map((i) => m.engine.add(sample(i, 'req-1:0')));
      const out = new Map<number, number[]>(ids.map((id) => [id, []]));
      let events = await m.engine.step(); // the leader's prefill; every sample gets its first token
      expect(events.filter((e) => e.tokenId >= 0).map((e) => e.seqId).sort()).toEqual([...ids].sort());
      // 33 tokens in blocks of 4: the leader's 9 blocks, and one private copy of the partial block each
      expect(m.kv.stats().blocksUsed).toBe(9 + 3);
      const pending = new Set(ids);
      for (;;) {
        for (const ev of events) {
          if (ev.tokenId >= 0) out.get(ev.seqId)!.push(ev.tokenId);
          if (ev.finishReason) pending.delete(ev.seqId);
        }
        if (pending.size === 0) break;
        events = await m.engine.step();
      }
      expect(m.kv.stats().blocksUsed).toBe(0);
      const independent = await run(m.engine, [0, 1, 2, 3].map((i) => sample(i, null)));
      expect(ids.map((id) => out.get(id)!)).toEqual(independent);
      expect(new Set(independent.map((o) => o.join(','))).size).toBeGreaterThan(1); // seeds differ
      m.checkpoint.close();
    });
  }
});
