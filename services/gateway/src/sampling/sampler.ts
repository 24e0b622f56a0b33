/**
 * The sampler of one sequence: logits of one position -> one token id.
 *
 * Legend: V vocab size (the width of the model's logits), P prompt length, m candidates.
 *   logits: Float32Array [V], raw LM-head output for this sequence at the sampled position;
 *           never written to (the engine may still need it for logprobs, see logprobs.ts).
 *   work:   Float32Array [V] scratch: processed logits, then softmax weights exp((l - max) / T).
 *   idx:    Int32Array   [V] scratch: candidate token ids for top-k / top-p.
 *
 * Order (vLLM): logit_bias -> repetition penalty (prompt + output ids) -> frequency and presence
 * penalties (output ids) -> temperature; temperature < 1e-5 or top_k == 1 is greedy (argmax, ties
 * to the lowest id); otherwise top_k -> top_p -> min_p -> one uniform draw from the sequence's
 * xoshiro128** stream (prng.ts). vLLM v0 used this order; v1 applies min_p before top-k/top-p.
 * min_p's kept set is the same either way; top_p's nucleus differs only when both are set.
 *
 * Cost per `sample` (STYLE §6, hot path, nothing allocated):
 *   - no penalty or bias set: no per-id work besides the softmax passes themselves;
 *   - penalties: O(distinct ids seen), via count arrays and distinct-id lists kept by `accept`;
 *   - top-k: O(V) index fill + expected O(V) quickselect; exp() only on the k candidates;
 *   - top-p: O(V) exp + expected O(V) weighted quickselect (select.ts), no sort.
 *   Measured (V = 151,936, Node 20, a shared 2-core EPYC VM where one Math.exp costs ~20 ns):
 *   a full comparator sort of the index scratch takes 68 ms and a packed-key Float64Array native
 *   sort 25 ms, per token; the whole top_p = 0.9 sample takes 5.5 ms, 3.4 ms of it the exp pass
 *   that any exact sampler pays (plain sampling: 4.8 ms; top_k = 50: 2.4 ms; greedy: 0.45 ms).
 *   The nucleus comes out unordered; the draw walks it in partition order, which is a
 *   deterministic function of the logits, so seeds still reproduce.
 */
import { ServerError } from '../../../common/src/errors.js';
import { GREEDY_EPS, type SamplingParams } from './params.js';
import { Xoshiro128 } from './prng.js';
import { selectNucleus, selectTopK } from './select.js';

// Re-exported so callers can import the sampler and its params type from one module.
export type { SamplingParams } from './params.js';

/**
 * The vocab-sized buffers `sample` works in. Each sampler allocates its own by default; an engine
 * that runs its batch's samplers one after another on one thread may pass one shared scratch to
 * all samplers of the same vocab size (nothing in it survives between calls), saving ~1.2 MB per
 * sequence at V = 152k.
 */
export interface SamplerScratch {
  readonly work: Float32Array; // [V]
  readonly idx: Int32Array; // [V]
}

export function createSamplerScratch(vocabSize: number): SamplerScratch {
  return { work: new Float32Array(vocabSize), idx: new Int32Array(vocabSize) };
}

/** Index of the largest value; ties go to the lowest index; NaN never wins; 0 if none is > -Infinity. */
export function argmax(x: Float32Array): number {
  let best = 0;
  let bestV = -Infinity;
  const n = x.length;
  for (let i = 0; i < n; i++) {
    const v = x[i]!;
    if (v > bestV) {
      bestV = v;
      best = i;
    }
  }
  return best;
}

/** A growable list of distinct token ids. Grows by doubling: O(log V) allocations per sequence, none per token in steady state. */
class IdList {
  ids: Int32Array;
  length = 0;
  constructor(capacity: number) {
    this.ids = new Int32Array(Math.max(16, capacity));
  }
  push(id: number): void {
    if (this.length === this.ids.length) {
      const grown = new Int32Array(this.ids.length * 2);
      grown.set(this.ids);
      this.ids = grown;
    }
    this.ids[this.length++] = id;
  }
}

export class SequenceSampler {
  readonly params: SamplingParams;
  readonly vocabSize: number;
  private readonly rng: Xoshiro128;
  private readonly work: Float32Array;
  private readonly idx: Int32Array;

  // Branches decided once, from the params (STYLE §6: precompute per-config branches).
  private readonly greedy: boolean;
  private readonly topK: number; // 0 = off; < V
  private readonly topP: number; // 1 = off
  private readonly minP: number; // 0 = off
  private readonly invTemperature: number;
  private readonly needsProcessing: boolean;

  // logit_bias as parallel arrays: iterating a Map per token would allocate an iterator.
  private readonly biasIds: Int32Array;
  private readonly biasValues: Float64Array;

  // Penalty state; null when the penalty is off, so an unpenalized sequence carries no V-sized state.
  private readonly repetitionPenalty: number;
  private readonly frequencyPenalty: number;
  private readonly presencePenalty: number;
  private readonly seenMask: Uint8Array | null; // [V] 1 if the id is in prompt ∪ output (repetition)
  private readonly seenIds: IdList | null; // distinct ids of prompt ∪ output
  private readonly outputCounts: Int32Array | null; // [V] occurrences in the output (frequency/presence)
  private readonly outputIds: IdList | null; // distinct ids of the output
  private accepted = 0;

  /**
   * @param params validated params (`validateSamplingParams`).
   * @param vocabSize width of the logits the engine will pass (the model's vocab_size, which may
   *   exceed the tokenizer's: Qwen3 pads 151,669 tokens to 151,936 logits).
   * @param promptIds the prompt's token ids (repetition penalty counts them).
   * @param scratch optional shared scratch, see `SamplerScratch`.
   * @throws ServerError 'invalid_token_id' if a prompt id is outside [0, vocabSize).
   */
  constructor(params: SamplingParams, vocabSize: number, promptIds: ArrayLike<number>, scratch?: SamplerScratch) {
    if (!Number.isInteger(vocabSize) || vocabSize <= 0) throw new ServerError('internal', `vocabSize must be a positive integer, got ${vocabSize}`);
    if (scratch && (scratch.work.length !== vocabSize || scratch.idx.length !== vocabSize)) {
      throw new ServerError('internal', `sampler scratch is sized ${scratch.work.length}, vocab is ${vocabSize}`);
    }
    this.params = params;
    this.vocabSize = vocabSize;
    this.rng = new Xoshiro128(params.seed);
    const s = scratch ?? createSamplerScratch(vocabSize);
    this.work = s.work;
    this.idx = s.idx;

    this.greedy = params.temperature < GREEDY_EPS || params.topK === 1;
    this.topK = params.topK > 0 && params.topK < vocabSize ? params.topK : 0;
    this.topP = params.topP;
    this.minP = params.minP;
    this.invTemperature = this.greedy ? 1 : 1 / params.temperature;

    const bias = params.logitBias;
    this.biasIds = new Int32Array(bias?.size ?? 0);
    this.biasValues = new Float64Array(bias?.size ?? 0);
    if (bias) {
      let j = 0;
      for (const [id, value] of bias) {
        checkId(id, vocabSize, 'logit_bias');
        this.biasIds[j] = id;
        this.biasValues[j++] = value;
      }
    }

    this.repetitionPenalty = params.repetitionPenalty;
    this.frequencyPenalty = params.frequencyPenalty;
    this.presencePenalty = params.presencePenalty;
    const rep = params.repetitionPenalty !== 1;
    const outPen = params.frequencyPenalty !== 0 || params.presencePenalty !== 0;
    this.seenMask = rep ? new Uint8Array(vocabSize) : null;
    this.seenIds = rep ? new IdList(Math.min(vocabSize, promptIds.length + 64)) : null;
    this.outputCounts = outPen ? new Int32Array(vocabSize) : null;
    this.outputIds = outPen ? new IdList(64) : null;
    this.needsProcessing = rep || outPen || this.biasIds.length > 0;

    for (let i = 0; i < promptIds.length; i++) {
      const id = promptIds[i]!;
      checkId(id, vocabSize, 'prompt');
      if (this.seenMask !== null && this.seenMask[id] === 0) {
        this.seenMask[id] = 1;
        this.seenIds!.push(id);
      }
    }
  }

  /** Number of output tokens recorded by `accept`. */
  get outputLength(): number {
    return this.accepted;
  }

  /**
   * Records a generated token (the one the engine appended to the sequence, sampled here or not)
   * for the penalties. O(1); allocates only when a distinct-id list doubles.
   */
  accept(tokenId: number): void {
    checkId(tokenId, this.vocabSize, 'token');
    this.accepted++;
    const counts = this.outputCounts;
    if (counts !== null && counts[tokenId]++ === 0) this.outputIds!.push(tokenId);
    const mask = this.seenMask;
    if (mask !== null && mask[tokenId] === 0) {
      mask[tokenId] = 1;
      this.seenIds!.push(tokenId);
    }
  }

  /**
   * The logits after logit_bias, penalties and temperature (not for greedy, which ignores it):
   * what the softmax of `sample` sees. For tests and debugging; returns the scratch buffer,
   * valid until the next call on this sampler (or on any sampler sharing its scratch).
   */
  processLogits(logits: Float32Array): Float32Array {
    this.checkWidth(logits);
    this.work.set(logits);
    this.applyProcessors(this.work);
    if (!this.greedy && this.invTemperature !== 1) {
      const w = this.work;
      const t = this.params.temperature;
      for (let i = 0; i < w.length; i++) w[i] = w[i]! / t;
    }
    return this.work;
  }

  /** Picks the next token. Does not record it: call `accept` with the token the sequence keeps. */
  sample(logits: Float32Array): number {
    this.checkWidth(logits);
    if (this.greedy) {
      if (!this.needsProcessing) return argmax(logits);
      this.work.set(logits);
      this.applyProcessors(this.work);
      return argmax(this.work);
    }
    const w = this.work;
    w.set(logits);
    if (this.needsProcessing) this.applyProcessors(w);
    return this.draw(w);
  }

  /** logit_bias, then repetition, frequency and presence penalties, in place. O(|bias| + distinct seen). */
  private applyProcessors(w: Float32Array): void {
    const biasIds = this.biasIds;
    for (let j = 0; j < biasIds.length; j++) {
      const id = biasIds[j]!;
      w[id] = w[id]! + this.biasValues[j]!;
    }
    if (this.seenIds !== null) {
      // HF / vLLM: divide positive logits, multiply the others, so the penalty always lowers
      // the token's probability for penalty > 1.
      const rep = this.repetitionPenalty;
      const ids = this.seenIds.ids;
      for (let j = 0, n = this.seenIds.length; j < n; j++) {
        const id = ids[j]!;
        const v = w[id]!;
        w[id] = v > 0 ? v / rep : v * rep;
      }
    }
    if (this.outputIds !== null) {
      // OpenAI: logit -= frequency_penalty * count + presence_penalty * (count > 0).
      const counts = this.outputCounts!;
      const freq = this.frequencyPenalty;
      const pres = this.presencePenalty;
      const ids = this.outputIds.ids;
      for (let j = 0, n = this.outputIds.length; j < n; j++) {
        const id = ids[j]!;
        w[id] = w[id]! - (freq * counts[id]! + pres);
      }
    }
  }

  /** Softmax with temperature, top-k, top-p, min-p and one draw, all in `w` and `idx`. */
  private draw(w: Float32Array): number {
    const V = this.vocabSize;
    let max = -Infinity;
    let maxId = 0; // the greedy choice, kept for the degenerate cases below
    for (let i = 0; i < V; i++) {
      const v = w[i]!;
      if (v > max) {
        max = v;
        maxId = i;
      }
    }
    // All -Infinity (everything masked) or a +Infinity logit: there is no distribution to draw from.
    if (!(max > -Infinity) || max === Infinity) return maxId;

    const invT = this.invTemperature;
    const minP = this.minP;
    const idx = this.idx;

    if (this.topK === 0 && this.topP >= 1) {
      // Plain (or min-p) sampling over the whole vocab: no index scratch. The top token has weight
      // exp(0) = 1, so min_p's "p < min_p * p_max" is "weight < min_p".
      let z = 0;
      for (let i = 0; i < V; i++) {
        let e = Math.exp((w[i]! - max) * invT);
        if (!(e >= minP)) e = 0; // also maps NaN to 0
        w[i] = e;
        z += e;
      }
      const u = this.rng.nextFloat() * z;
      let cum = 0;
      let last = 0;
      for (let i = 0; i < V; i++) {
        const e = w[i]!;
        if (e === 0) continue;
        cum += e;
        last = i;
        if (u < cum) return i;
      }
      return z > 0 ? last : maxId; // last: u landed on the rounding slack at the very end
    }

    let m = V;
    for (let i = 0; i < V; i++) idx[i] = i;
    if (this.topK !== 0) m = selectTopK(w, idx, V, this.topK); // on logits: order is temperature-invariant

    let z = 0;
    for (let j = 0; j < m; j++) {
      const id = idx[j]!;
      const e = Math.exp((w[id]! - max) * invT);
      const safe = e === e ? e : 0;
      w[id] = safe;
      z += safe;
    }

    if (this.topP < 1) m = selectNucleus(w, idx, m, this.topP * z);

    // min-p, then the normalizer over what is left.
    z = 0;
    let kept = 0;
    for (let j = 0; j < m; j++) {
      const id = idx[j]!;
      const e = w[id]!;
      if (e >= minP && e > 0) {
        idx[kept++] = id;
        z += e;
      }
    }
    if (kept === 0 || !(z > 0)) return maxId;

    const u = this.rng.nextFloat() * z;
    let cum = 0;
    for (let j = 0; j < kept; j++) {
      const id = idx[j]!;
      cum += w[id]!;
      if (u < cum) return id;
    }
    return idx[kept - 1]!;
  }

  private checkWidth(logits: Float32Array): void {
    if (logits.length !== this.vocabSize) {
      throw new ServerError('internal', `logits have ${logits.length} entries, the sampler was built for ${this.vocabSize}`);
    }
  }
}

function checkId(id: number, vocabSize: number, what: string): void {
  if (!(Number.isInteger(id) && id >= 0 && id < vocabSize)) {
    throw new ServerError('invalid_token_id', `${what} token id ${id} is outside the vocabulary [0, ${vocabSize})`);
  }
}
