/**
 * Gating: router logits -> top-k experts and their combine weights. Pure functions over typed
 * arrays; placement, dispatch and gRPC live elsewhere (router/src/dispatch.ts) and call this.
 *
 * Letters: T tokens, X routed experts, A activated experts per token (top-k), Q expert groups.
 *
 * Variants (transformers semantics):
 * - softmax -> top-k -> renormalise            (Mixtral; Qwen-MoE / DeepSeek-V3 with norm_topk_prob)
 * - softmax -> top-k                            (Qwen2-MoE norm_topk_prob false; DeepSeek-V2 greedy)
 * - softmax -> group max -> top groups -> top-k (DeepSeek-V2 group_limited_greedy)
 * - sigmoid (+ e_score_correction_bias to choose only) -> group top-2 sum -> top groups -> top-k
 *   -> weights from the unbiased scores -> renormalise if norm_topk_prob   (DeepSeek-V3 noaux_tc)
 * then × routed_scaling_factor. Masked-out groups score 0.0 (masked_fill(…, 0.0)), as transformers.
 */
import type { MoeConfig } from '../../services/model/src/config.js';

export type GatingSpec = Pick<MoeConfig, 'nRoutedExperts' | 'nActivatedExperts' | 'scoreFunc' | 'topkMethod' | 'nExpertGroups' | 'nLimitedGroups' | 'normTopkProb' | 'routeScale' | 'useCorrectionBias'>;

/** Per-call scratch, allocated once per gate (hot path: no allocation per token). */
export class GateScratch {
  readonly scores: Float64Array; // [X] unbiased scores
  readonly choice: Float64Array; // [X] scores used to choose (biased, group-masked)
  readonly groupScore: Float64Array; // [Q]
  readonly groupKeep: Uint8Array; // [Q]
  readonly picked: Int32Array; // [A]
  constructor(spec: GatingSpec) {
    this.scores = new Float64Array(spec.nRoutedExperts);
    this.choice = new Float64Array(spec.nRoutedExperts);
    this.groupScore = new Float64Array(spec.nExpertGroups);
    this.groupKeep = new Uint8Array(spec.nExpertGroups);
    this.picked = new Int32Array(spec.nActivatedExperts);
  }
}

/**
 * Routes T tokens.
 *   logits      Float32Array [T, X] row-major (router gate output, fp32)
 *   bias        Float32Array [X] e_score_correction_bias, or null
 *   outIds      Int32Array   [T, A] chosen experts per token, by weight descending
 *   outWeights  Float32Array [T, A] their combine weights (after renormalisation and scaling)
 */
export function route(
  spec: GatingSpec,
  logits: Float32Array,
  numTokens: number,
  bias: Float32Array | null,
  outIds: Int32Array,
  outWeights: Float32Array,
  s: GateScratch,
): void {
  const X = spec.nRoutedExperts;
  const A = spec.nActivatedExperts;
  const Q = spec.nExpertGroups;
  const perGroup = X / Q;
  const { scores, choice, groupScore, groupKeep, picked } = s;
  for (let t = 0; t < numTokens; t++) {
    const row = t * X;
    // 1. scores (fp32 results, as transformers computes softmax/sigmoid in float32)
    if (spec.scoreFunc === 'softmax') {
      let max = -Infinity;
      for (let e = 0; e < X; e++) max = Math.max(max, logits[row + e]!);
      let sum = 0;
      for (let e = 0; e < X; e++) {
        const v = Math.exp(logits[row + e]! - max);
        scores[e] = v;
        sum += v;
      }
      for (let e = 0; e < X; e++) scores[e] = Math.fround(scores[e]! / sum);
    } else {
      for (let e = 0; e < X; e++) scores[e] = Math.fround(1 / (1 + Math.exp(-logits[row + e]!)));
    }
    for (let e = 0; e < X; e++) choice[e] = spec.useCorrectionBias && bias ? Math.fround(scores[e]! + bias[e]!) : scores[e]!;

    // 2. group-limited selection
    if (spec.topkMethod !== 'greedy' && Q > 1) {
      for (let q = 0; q < Q; q++) {
        const base = q * perGroup;
        if (spec.topkMethod === 'group_limited_greedy') {
          let m = -Infinity;
          for (let i = 0; i < perGroup; i++) m = Math.max(m, choice[base + i]!);
          groupScore[q] = m;
        } else {
          // noaux_tc: sum of the group's two best biased scores
          let b1 = -Infinity;
          let b2 = -Infinity;
          for (let i = 0; i < perGroup; i++) {
            const v = choice[base + i]!;
            if (v > b1) {
              b2 = b1;
              b1 = v;
            } else if (v > b2) b2 = v;
          }
          groupScore[q] = b1 + b2;
        }
        groupKeep[q] = 0;
      }
      for (let k = 0; k < spec.nLimitedGroups; k++) {
        let best = -1;
        for (let q = 0; q < Q; q++) if (!groupKeep[q] && (best < 0 || groupScore[q]! > groupScore[best]!)) best = q;
        groupKeep[best] = 1;
      }
      for (let q = 0; q < Q; q++) {
        if (groupKeep[q]) continue;
        for (let i = 0; i < perGroup; i++) choice[q * perGroup + i] = 0;
      }
    }

    // 3. top-A over the choice scores (ties to the lower id); selection sort: A is small
    for (let k = 0; k < A; k++) {
      let best = -1;
      for (let e = 0; e < X; e++) {
        let taken = false;
        for (let j = 0; j < k; j++) if (picked[j] === e) taken = true;
        if (!taken && (best < 0 || choice[e]! > choice[best]!)) best = e;
      }
      picked[k] = best;
    }

    // 4. weights from the unbiased scores, renormalised, scaled
    let sum = 0;
    for (let k = 0; k < A; k++) sum += scores[picked[k]!]!;
    const denom = spec.normTopkProb ? Math.fround(sum) + 1e-20 : 1;
    const out = t * A;
    for (let k = 0; k < A; k++) {
      outIds[out + k] = picked[k]!;
      outWeights[out + k] = Math.fround(Math.fround(scores[picked[k]!]! / denom) * spec.routeScale);
    }
    // sort this token's A entries by weight descending (insertion sort; A is small)
    for (let i = out + 1; i < out + A; i++) {
      const w = outWeights[i]!;
      const id = outIds[i]!;
      let j = i - 1;
      while (j >= out && outWeights[j]! < w) {
        outWeights[j + 1] = outWeights[j]!;
        outIds[j + 1] = outIds[j]!;
        j--;
      }
      outWeights[j + 1] = w;
      outIds[j + 1] = id;
    }
  }
}
