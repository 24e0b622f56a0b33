/**
 * Batch generation for the CLI and tests, in two forms behind one result type:
 * - `generateCached`: the engine (paged KV cache, incremental decode, continuous batching);
 * - `generateRecompute`: the reference — every step recomputes each whole sequence from scratch
 *   (no KV cache at all). It is the oracle the cached path is tested against.
 *
 * Results use the field names of a prompt entry in a golden fixture's expected.json.
 */
import type { ErrorCode } from '../../../common/src/errors.js';
import type { MoeModelConfig } from '../../../model/src/config.js';
import { topLogprobs } from '../sampling/logprobs.js';
import { createSamplerScratch, SequenceSampler, type SamplingParams } from '../sampling/sampler.js';
import type { RoutedExperts } from '../../../../router/src/types.js';
import type { DenseRunner, RoutingTrace } from './dense-runner.js';
import type { Engine, FinishReason } from './engine.js';

export interface GenerateParams {
  readonly maxTokens: number;
  readonly sampling: SamplingParams;
  /** Stop at these ids (empty: generate exactly maxTokens, as the golden fixtures do). */
  readonly stopTokenIds: readonly number[];
}

export interface GenerationResult {
  input_ids: number[];
  /** The generated ids (greedy when temperature is 0). */
  greedy_ids: number[];
  /** Top-5 next-token ids at every prompt position. */
  top5_ids: number[][];
  /** Full logits at the last prompt position. */
  last_logits: number[];
  finish_reason: FinishReason;
  /** Why it ended, when finish_reason is 'error' (the engine's event error; absent otherwise). */
  error?: { readonly code: ErrorCode; readonly message: string };
}

function top5(logits: Float32Array): number[] {
  const ids = new Int32Array(5);
  const lps = new Float32Array(5);
  const n = topLogprobs(logits, 5, ids, lps);
  return Array.from(ids.subarray(0, n));
}

/** The engine path: all prompts submitted at once, stepped to completion. */
export async function generateCached(engine: Engine, prompts: readonly number[][], p: GenerateParams): Promise<GenerationResult[]> {
  const results = new Map<number, GenerationResult>();
  const order: number[] = [];
  for (const ids of prompts) {
    const seqId = engine.add({
      promptIds: ids,
      sampling: p.sampling,
      maxTokens: p.maxTokens,
      stopTokenIds: p.stopTokenIds,
      logprobs: 5,
      promptLogprobs: 5,
      captureLastPromptLogits: true,
    });
    order.push(seqId);
    results.set(seqId, { input_ids: [...ids], greedy_ids: [], top5_ids: [], last_logits: [], finish_reason: 'length' });
  }
  const pending = new Set(order);
  while (pending.size > 0) {
    const events = await engine.step();
    for (const ev of events) {
      const r = results.get(ev.seqId)!;
      if (ev.promptLogprobs) for (const lp of ev.promptLogprobs) r.top5_ids.push(Array.from(lp.topIds));
      if (ev.tokenId >= 0) {
        if (r.greedy_ids.length === 0 && ev.logprobs) r.top5_ids.push(Array.from(ev.logprobs.topIds));
        if (ev.lastPromptLogits) r.last_logits = Array.from(ev.lastPromptLogits);
        r.greedy_ids.push(ev.tokenId);
      }
      if (ev.finishReason) {
        r.finish_reason = ev.finishReason;
        if (ev.error) r.error = ev.error;
        pending.delete(ev.seqId);
      }
    }
  }
  return order.map((id) => results.get(id)!);
}

/** The reference path: full recomputation of every sequence at every step, no KV cache. */
export async function generateRecompute(
  cfg: MoeModelConfig,
  runner: DenseRunner,
  experts: RoutedExperts,
  prompts: readonly number[][],
  p: GenerateParams,
): Promise<GenerationResult[]> {
  const V = cfg.vocabSize;
  const scratch = createSamplerScratch(V);
  const stop = new Set(p.stopTokenIds);
  const seqs = prompts.map((ids) => ({
    tokens: [...ids],
    sampler: new SequenceSampler(p.sampling, V, ids, scratch),
    result: { input_ids: [...ids], greedy_ids: [], top5_ids: [], last_logits: [], finish_reason: 'length' } as GenerationResult,
    done: false,
  }));
  for (let step = 0; step < p.maxTokens; step++) {
    const live = seqs.filter((s) => !s.done);
    if (live.length === 0) break;
    const first = step === 0;
    const res = await runner.forward(
      live.map((s) => ({ tokens: s.tokens, pastLen: 0, kvSeqId: -1, logits: first ? 'all' : 'last' })),
      null,
      experts,
    );
    live.forEach((s, i) => {
      const row0 = res.logitRow[i]!;
      const n = s.tokens.length;
      const lastRow = first ? row0 + n - 1 : row0;
      if (first) {
        for (let t = 0; t < n; t++) s.result.top5_ids.push(top5(res.logits.subarray((row0 + t) * V, (row0 + t + 1) * V)));
        s.result.last_logits = Array.from(res.logits.subarray(lastRow * V, (lastRow + 1) * V));
      }
      const tok = s.sampler.sample(res.logits.subarray(lastRow * V, (lastRow + 1) * V));
      s.sampler.accept(tok);
      s.tokens.push(tok);
      s.result.greedy_ids.push(tok);
      if (stop.has(tok)) {
        s.done = true;
        s.result.finish_reason = 'stop';
      }
    });
  }
  return seqs.map((s) => s.result);
}

/** expected.json's routing shape: per MoE layer, per position, ids and weights by weight descending. */
export function routingJson(trace: RoutingTrace, numTokens: number, A: number) {
  return {
    layers: trace.layers.map((l) => ({
      layer: l.layer,
      expert_ids: Array.from({ length: numTokens }, (_, t) => Array.from(l.ids.subarray(t * A, (t + 1) * A))),
      weights: Array.from({ length: numTokens }, (_, t) => Array.from(l.weights.subarray(t * A, (t + 1) * A))),
    })),
  };
}
