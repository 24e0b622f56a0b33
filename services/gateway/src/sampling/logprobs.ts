/**
 * Log-probabilities for the OpenAI `logprobs` / `top_logprobs` fields.
 *
 * Semantics: computed on the RAW model logits of the step — before logit_bias, penalties,
 * temperature and top-k/top-p/min-p — i.e. log_softmax(logits). This is vLLM's default
 * (`logprobs_mode = "raw_logprobs"`): the numbers describe the model, not the sampler, so they do
 * not change with sampling settings, and a token the sampler could never pick (filtered by top-k)
 * still has its model logprob. Callers pass the same logits they hand to `SequenceSampler.sample`
 * (the sampler never writes into its input).
 *
 * Numerics: log-sum-exp is max-subtracted and accumulated in float64, so large logits (fp16 /
 * bf16 models reach |logit| ~ 1e4) neither overflow nor lose the small terms.
 *
 * Legend: V vocab size, N the number of top logprobs.
 *   logits: Float32Array [V], one sequence's logits at one position.
 */

/** log(sum_i exp(logits[i])), stable. -Infinity when every logit is -Infinity. */
export function logSumExp(logits: Float32Array): number {
  const n = logits.length;
  let max = -Infinity;
  for (let i = 0; i < n; i++) {
    const v = logits[i]!;
    if (v > max) max = v;
  }
  if (max === -Infinity || max === Infinity || max !== max) return max;
  let sum = 0;
  for (let i = 0; i < n; i++) sum += Math.exp(logits[i]! - max);
  return max + Math.log(sum);
}

/**
 * log p(id) under softmax(logits). Pass `lse` (from `logSumExp(logits)`) when several ids of the
 * same step are needed, to pay the O(V) pass once.
 */
export function tokenLogprob(logits: Float32Array, id: number, lse: number = logSumExp(logits)): number {
  return logits[id]! - lse;
}

/**
 * The `n` most likely ids of softmax(logits) with their logprobs, written to outIds[0, count) and
 * outLogprobs[0, count) in descending order; returns count = min(n, V, capacity of the outputs).
 * Ties are ordered by ascending id (a lower id wins a place at the cut).
 *
 * One pass with a small insertion-sorted buffer: O(V) compares plus O(N) per accepted entry; most
 * logits fail the first compare against the current N-th best. Allocates nothing.
 */
export function topLogprobs(
  logits: Float32Array,
  n: number,
  outIds: Int32Array,
  outLogprobs: Float32Array,
  lse: number = logSumExp(logits),
): number {
  const V = logits.length;
  const cap = Math.min(n, V, outIds.length, outLogprobs.length);
  if (cap <= 0) return 0;
  // Phase 1: the buffer holds raw logits in outLogprobs, descending, ties in id order.
  let count = 0;
  for (let id = 0; id < V; id++) {
    const v = logits[id]!;
    if (count === cap) {
      // Strict >: an equal logit with a higher id does not displace the current entry.
      if (!(v > outLogprobs[cap - 1]!)) continue;
      count--; // drop the last entry
    } else if (v !== v) {
      continue; // NaN never enters
    }
    // Insert after every entry >= v (ids arrive ascending, so equal logits stay in id order).
    let j = count;
    while (j > 0 && outLogprobs[j - 1]! < v) {
      outLogprobs[j] = outLogprobs[j - 1]!;
      outIds[j] = outIds[j - 1]!;
      j--;
    }
    outLogprobs[j] = v;
    outIds[j] = id;
    count++;
  }
  // Phase 2: logits -> logprobs (float64 subtraction, one rounding to float32).
  for (let j = 0; j < count; j++) outLogprobs[j] = outLogprobs[j]! - lse;
  return count;
}
