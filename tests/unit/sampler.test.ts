/**
 * Sampler: params validation, greedy / top-k / top-p / min-p semantics, seeded reproducibility,
 * exact logit processing (bias, penalties, temperature), logprobs of the raw logits.
 * Logits are built from known probabilities (log p), so expected distributions are exact.
 */
import { describe, expect, it } from 'vitest';
import type { ErrorCode } from '../../services/common/src/errors.js';
import {
  DEFAULT_SAMPLING,
  SequenceSampler,
  Xoshiro128,
  argmax,
  createSamplerScratch,
  logSumExp,
  tokenLogprob,
  topLogprobs,
  validateSamplingParams,
  type SamplingParams,
  type SamplingParamsInput,
} from '../../services/gateway/src/sampling/index.js';
import { selectNucleus, selectTopK } from '../../services/gateway/src/sampling/select.js';
import { expectParamError } from '../helpers/errors.js';

// ---------- factories ----------

const params = (p: SamplingParamsInput, vocab = 1000): SamplingParams => validateSamplingParams(p, vocab);

/** Logits whose softmax is exactly `probs` (up to float32 rounding): log p, -Infinity for 0. */
function logitsFromProbs(probs: readonly number[]): Float32Array {
  return Float32Array.from(probs, (p) => (p > 0 ? Math.log(p) : -Infinity));
}

/** A deterministic stream of "model-like" logits: LCG-driven, independent of the sampler PRNG. */
function logitStream(vocab: number, steps: number, seed = 7): Float32Array[] {
  let s = seed >>> 0;
  const rnd = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
  return Array.from({ length: steps }, () => Float32Array.from({ length: vocab }, () => (rnd() + rnd() + rnd() - 1.5) * 3));
}

function histogram(sampler: SequenceSampler, logits: Float32Array, draws: number): Map<number, number> {
  const h = new Map<number, number>();
  for (let i = 0; i < draws; i++) {
    const id = sampler.sample(logits);
    h.set(id, (h.get(id) ?? 0) + 1);
  }
  return h;
}

/** Empirical frequencies within 5 standard errors of `expected` (id -> prob); no other id appears. */
function expectDistribution(h: Map<number, number>, draws: number, expected: ReadonlyMap<number, number>): void {
  for (const id of h.keys()) expect(expected.has(id), `token ${id} is outside the kept set`).toBe(true);
  for (const [id, p] of expected) {
    const freq = (h.get(id) ?? 0) / draws;
    const se = Math.sqrt((p * (1 - p)) / draws);
    expect(Math.abs(freq - p), `token ${id}: freq ${freq} vs p ${p}`).toBeLessThanOrEqual(5 * se + 1e-9);
  }
}

// ---------- validation ----------

describe('validateSamplingParams', () => {
  it('fills the vLLM / OpenAI defaults and freezes the result', () => {
    const p = params({});
    expect(p).toEqual(DEFAULT_SAMPLING);
    expect(p).toEqual({
      temperature: 1, topP: 1, topK: 0, minP: 0, seed: null,
      presencePenalty: 0, frequencyPenalty: 0, repetitionPenalty: 1, logitBias: null,
    });
    expect(Object.isFrozen(p)).toBe(true);
  });

  const accepted: { name: string; input: SamplingParamsInput; check: Partial<SamplingParams> }[] = [
    { name: 'explicit nulls mean defaults', input: { temperature: null, topP: null, seed: null }, check: { temperature: 1, topP: 1, seed: null } },
    { name: 'temperature 0 (greedy)', input: { temperature: 0 }, check: { temperature: 0 } },
    { name: 'temperature above 2 is allowed', input: { temperature: 3.5 }, check: { temperature: 3.5 } },
    { name: 'top_p 1 is off', input: { topP: 1 }, check: { topP: 1 } },
    { name: 'top_k -1 normalizes to 0 (off)', input: { topK: -1 }, check: { topK: 0 } },
    { name: 'top_k larger than the vocab', input: { topK: 5000 }, check: { topK: 5000 } },
    { name: 'min_p 1', input: { minP: 1 }, check: { minP: 1 } },
    { name: 'penalty bounds', input: { presencePenalty: -2, frequencyPenalty: 2, repetitionPenalty: 0.01 }, check: { presencePenalty: -2, frequencyPenalty: 2, repetitionPenalty: 0.01 } },
    { name: 'int64-sized seed that JSON rounded to a double', input: { seed: 2 ** 62 }, check: { seed: 2 ** 62 } },
    { name: 'negative seed', input: { seed: -5 }, check: { seed: -5 } },
    { name: 'empty logit_bias becomes null', input: { logitBias: {} }, check: { logitBias: null } },
  ];
  for (const c of accepted) {
    it(`accepts: ${c.name}`, () => {
      expect(params(c.input)).toMatchObject(c.check);
    });
  }

  it('accepts logit_bias as OpenAI JSON (string keys) or as a Map', () => {
    expect([...params({ logitBias: { '0': -100, '999': 100, '42': 2.5 } }).logitBias!]).toEqual([[0, -100], [42, 2.5], [999, 100]]);
    expect([...params({ logitBias: new Map([[7, 1]]) }).logitBias!]).toEqual([[7, 1]]);
  });

  const rejected: { name: string; input: unknown; code: ErrorCode; param: string; message: RegExp }[] = [
    { name: 'BAD CALL - temperature = -0.1', input: { temperature: -0.1 }, code: 'invalid_request', param: 'temperature', message: /^temperature must be >= 0, got -0\.1$/ },
    { name: 'BAD CALL - temperature = NaN', input: { temperature: NaN }, code: 'invalid_request', param: 'temperature', message: /must be a finite number/ },
    { name: 'BAD CALL - temperature = "1"', input: { temperature: '1' }, code: 'invalid_request', param: 'temperature', message: /must be a finite number, got "1"/ },
    { name: 'BAD CALL - top_p = 0', input: { topP: 0 }, code: 'invalid_request', param: 'top_p', message: /^top_p must be in \(0, 1\], got 0$/ },
    { name: 'BAD CALL - top_p = 1.01', input: { topP: 1.01 }, code: 'invalid_request', param: 'top_p', message: /^top_p must be in \(0, 1\]/ },
    { name: 'BAD CALL - top_k = -2', input: { topK: -2 }, code: 'invalid_request', param: 'top_k', message: /^top_k must be -1, 0 \(off\) or a positive integer, got -2$/ },
    { name: 'BAD CALL - top_k = 2.5', input: { topK: 2.5 }, code: 'invalid_request', param: 'top_k', message: /^top_k must be/ },
    { name: 'BAD CALL - min_p = 1.5', input: { minP: 1.5 }, code: 'invalid_request', param: 'min_p', message: /^min_p must be in \[0, 1\], got 1\.5$/ },
    { name: 'BAD CALL - presence_penalty = 2.5', input: { presencePenalty: 2.5 }, code: 'invalid_request', param: 'presence_penalty', message: /^presence_penalty must be in \[-2, 2\]/ },
    { name: 'BAD CALL - frequency_penalty = -3', input: { frequencyPenalty: -3 }, code: 'invalid_request', param: 'frequency_penalty', message: /^frequency_penalty must be in \[-2, 2\]/ },
    { name: 'BAD CALL - repetition_penalty = 0', input: { repetitionPenalty: 0 }, code: 'invalid_request', param: 'repetition_penalty', message: /^repetition_penalty must be > 0, got 0$/ },
    { name: 'BAD CALL - seed = 1.5', input: { seed: 1.5 }, code: 'invalid_request', param: 'seed', message: /^seed must be an integer/ },
    { name: 'BAD CALL - logit_bias key "abc"', input: { logitBias: { abc: 1 } }, code: 'invalid_request', param: 'logit_bias', message: /keys must be token ids, got "abc"/ },
    { name: 'BAD CALL - logit_bias key "-1"', input: { logitBias: { '-1': 1 } }, code: 'invalid_request', param: 'logit_bias', message: /keys must be token ids/ },
    { name: 'BAD CALL - logit_bias id = vocab size', input: { logitBias: { '1000': 1 } }, code: 'invalid_token_id', param: 'logit_bias', message: /token id 1000 is outside the vocabulary \[0, 1000\)/ },
    { name: 'BAD CALL - logit_bias value 101', input: { logitBias: { '5': 101 } }, code: 'invalid_request', param: 'logit_bias', message: /values must be numbers in \[-100, 100\], got 101 for token 5/ },
    { name: 'BAD CALL - logit_bias is an array', input: { logitBias: [1, 2] }, code: 'invalid_request', param: 'logit_bias', message: /must be an object/ },
  ];
  for (const c of rejected) {
    it(c.name, () => {
      expectParamError(() => validateSamplingParams(c.input as SamplingParamsInput, 1000), c.code, c.param, c.message);
    });
  }
});

// ---------- PRNG ----------

describe('Xoshiro128 (xoshiro128**)', () => {
  it('matches the reference implementation from state {1, 2, 3, 4}', () => {
    const g = Xoshiro128.fromState(1, 2, 3, 4);
    expect(Array.from({ length: 6 }, () => g.nextU32())).toEqual([11520, 0, 5927040, 70819200, 2031721883, 1637235492]);
  });

  it('is reproducible from a seed, distinct across seeds, and uniform in [0, 1)', () => {
    const a = new Xoshiro128(42);
    const b = new Xoshiro128(42);
    const c = new Xoshiro128(43);
    const xs = Array.from({ length: 1000 }, () => a.nextFloat());
    expect(Array.from({ length: 1000 }, () => b.nextFloat())).toEqual(xs);
    expect(Array.from({ length: 1000 }, () => c.nextFloat())).not.toEqual(xs);
    expect(Math.min(...xs)).toBeGreaterThanOrEqual(0);
    expect(Math.max(...xs)).toBeLessThan(1);
    expect(Math.abs(xs.reduce((s, x) => s + x, 0) / xs.length - 0.5)).toBeLessThan(0.05);
    // seed 0 and -0 are one seed; 0 does not produce the forbidden all-zero state
    const z = new Xoshiro128(0);
    expect(new Xoshiro128(-0).nextU32()).toBe(z.nextU32());
    expect(z.nextU32() | z.nextU32() | z.nextU32()).not.toBe(0);
  });
});

// ---------- greedy ----------

describe('greedy', () => {
  const cases: { name: string; logits: number[]; expected: number }[] = [
    { name: 'single max', logits: [0.1, 2, -1, 1.5], expected: 1 },
    { name: 'tie goes to the lowest id', logits: [1, 3, 3, 2], expected: 1 },
    { name: 'tie across the whole vector', logits: [5, 5, 5, 5], expected: 0 },
    { name: 'negative logits', logits: [-3, -1, -2, -1], expected: 1 },
    { name: 'NaN never wins', logits: [NaN, 0, 1, NaN], expected: 2 },
    { name: 'all -Infinity: id 0', logits: [-Infinity, -Infinity, -Infinity], expected: 0 },
  ];
  for (const c of cases) {
    it(`argmax: ${c.name}`, () => {
      const logits = Float32Array.from(c.logits);
      expect(argmax(logits)).toBe(c.expected);
      for (const temperature of [0, 1e-6]) {
        const s = new SequenceSampler(params({ temperature }, logits.length), logits.length, []);
        expect(s.sample(logits)).toBe(c.expected);
      }
    });
  }

  it('top_k = 1 equals greedy at any temperature', () => {
    const V = 500;
    for (const temperature of [0.1, 1, 5, 100]) {
      const s = new SequenceSampler(params({ temperature, topK: 1, seed: 3 }, V), V, []);
      for (const logits of logitStream(V, 50, temperature * 10)) expect(s.sample(logits)).toBe(argmax(logits));
    }
  });

  it('greedy sees the processed logits (bias can move the argmax)', () => {
    const logits = Float32Array.from([1, 4, 2]);
    const s = new SequenceSampler(params({ temperature: 0, logitBias: { '2': 2.5 } }, 3), 3, []);
    expect(s.sample(logits)).toBe(2);
    expect(logits).toEqual(Float32Array.from([1, 4, 2])); // input untouched
  });
});

// ---------- seeded reproducibility ----------

describe('seeded sampling', () => {
  const V = 2000;
  const stream = logitStream(V, 200);
  const configs: { name: string; p: SamplingParamsInput }[] = [
    { name: 'plain', p: {} },
    { name: 'temperature 0.7 + top_p 0.9', p: { temperature: 0.7, topP: 0.9 } },
    { name: 'top_k 40 + top_p 0.95 + min_p 0.05', p: { topK: 40, topP: 0.95, minP: 0.05 } },
    { name: 'penalties', p: { repetitionPenalty: 1.3, frequencyPenalty: 0.4, presencePenalty: 0.2 } },
  ];
  function run(p: SamplingParamsInput, seed: number | null): number[] {
    const s = new SequenceSampler(params({ ...p, seed }, V), V, [1, 2, 3]);
    return stream.map((logits) => {
      const id = s.sample(logits);
      s.accept(id);
      return id;
    });
  }
  for (const c of configs) {
    it(`same seed -> identical 200-token sequence; other seed differs (${c.name})`, () => {
      const a = run(c.p, 1234);
      expect(run(c.p, 1234)).toEqual(a);
      expect(run(c.p, 1235)).not.toEqual(a);
      expect(new Set(a).size).toBeGreaterThan(20); // it really samples
    });
  }

  it('a shared scratch gives the same tokens as private scratch', () => {
    const scratch = createSamplerScratch(V);
    const a = new SequenceSampler(params({ seed: 9, topP: 0.8 }, V), V, [], scratch);
    const b = new SequenceSampler(params({ seed: 10, topK: 30 }, V), V, [], scratch);
    const a2 = new SequenceSampler(params({ seed: 9, topP: 0.8 }, V), V, []);
    const b2 = new SequenceSampler(params({ seed: 10, topK: 30 }, V), V, []);
    for (const logits of stream.slice(0, 50)) {
      expect(a.sample(logits)).toBe(a2.sample(logits));
      expect(b.sample(logits)).toBe(b2.sample(logits));
    }
  });

  it('unseeded samplers differ from each other', () => {
    expect(run({}, null)).not.toEqual(run({}, null));
  });
});

// ---------- distributions ----------

describe('distributions (20k draws, 5 standard errors)', () => {
  const DRAWS = 20_000;
  // V = 50: four heavy tokens at scattered ids, the other 46 share 5% of the mass.
  const heavy = new Map([[17, 0.4], [3, 0.3], [42, 0.15], [8, 0.1]]);
  const probs = Array.from({ length: 50 }, (_, id) => heavy.get(id) ?? 0.05 / 46);
  const logits = logitsFromProbs(probs);

  it('temperature 1, no filter: the softmax itself', () => {
    const s = new SequenceSampler(params({ seed: 1 }, 50), 50, []);
    const h = histogram(s, logits, DRAWS);
    expectDistribution(h, DRAWS, new Map(probs.map((p, id) => [id, p])));
  });

  it('top_p 0.8 keeps the smallest set with mass >= 0.8: {17, 3, 42} (0.85), renormalized', () => {
    const s = new SequenceSampler(params({ seed: 2, topP: 0.8 }, 50), 50, []);
    expectDistribution(histogram(s, logits, DRAWS), DRAWS, new Map([[17, 0.4 / 0.85], [3, 0.3 / 0.85], [42, 0.15 / 0.85]]));
  });

  it('top_p 0.69 keeps exactly {17, 3}: 0.4 + 0.3 = 0.7 already reaches it', () => {
    const s = new SequenceSampler(params({ seed: 3, topP: 0.69 }, 50), 50, []);
    expectDistribution(histogram(s, logits, DRAWS), DRAWS, new Map([[17, 0.4 / 0.7], [3, 0.3 / 0.7]]));
  });

  it('top_p with ties at the boundary takes only as many tied tokens as needed', () => {
    // [0.5, 0.25, 0.25]: top_p 0.6 needs 0.5 + one 0.25 -> exactly two tokens are ever drawn.
    const s = new SequenceSampler(params({ seed: 4, topP: 0.6 }, 3), 3, []);
    const h = histogram(s, logitsFromProbs([0.25, 0.5, 0.25]), DRAWS);
    expect(h.size).toBe(2);
    expect(h.has(1)).toBe(true);
    expect(Math.abs(h.get(1)! / DRAWS - 2 / 3)).toBeLessThan(0.02);
  });

  it('top_k 2 keeps the two highest: {17, 3}', () => {
    const s = new SequenceSampler(params({ seed: 5, topK: 2 }, 50), 50, []);
    expectDistribution(histogram(s, logits, DRAWS), DRAWS, new Map([[17, 0.4 / 0.7], [3, 0.3 / 0.7]]));
  });

  it('top_k keeps every token tied with the k-th logit', () => {
    // logits [5, 3, 3, 1], k = 2 -> {0, 1, 2}
    const l = Float32Array.from([5, 3, 3, 1]);
    const s = new SequenceSampler(params({ seed: 6, topK: 2 }, 4), 4, []);
    const z = Math.exp(5) + 2 * Math.exp(3);
    expectDistribution(histogram(s, l, DRAWS), DRAWS, new Map([[0, Math.exp(5) / z], [1, Math.exp(3) / z], [2, Math.exp(3) / z]]));
  });

  it('min_p 0.2 drops tokens below 0.2 * p_max = 0.08: keeps {17, 3, 42, 8}', () => {
    const s = new SequenceSampler(params({ seed: 7, minP: 0.2 }, 50), 50, []);
    expectDistribution(histogram(s, logits, DRAWS), DRAWS, new Map([[17, 0.4 / 0.95], [3, 0.3 / 0.95], [42, 0.15 / 0.95], [8, 0.1 / 0.95]]));
  });

  it('min_p 0.5 with top_k 3: keeps {17, 3} (0.15 < 0.5 * 0.4)', () => {
    const s = new SequenceSampler(params({ seed: 8, minP: 0.5, topK: 3 }, 50), 50, []);
    expectDistribution(histogram(s, logits, DRAWS), DRAWS, new Map([[17, 0.4 / 0.7], [3, 0.3 / 0.7]]));
  });

  it('temperature 2 flattens: p ∝ p_raw^(1/2)', () => {
    const p3 = [0.64, 0.32, 0.04];
    const s = new SequenceSampler(params({ seed: 9, temperature: 2 }, 3), 3, []);
    const r = p3.map(Math.sqrt);
    const z = r.reduce((a, b) => a + b, 0);
    expectDistribution(histogram(s, logitsFromProbs(p3), DRAWS), DRAWS, new Map(r.map((x, id) => [id, x / z])));
  });

  it('-Infinity logits are never drawn', () => {
    const s = new SequenceSampler(params({ seed: 10 }, 4), 4, []);
    const h = histogram(s, Float32Array.from([-Infinity, 0, -Infinity, 0]), 2000);
    expect([...h.keys()].sort()).toEqual([1, 3]);
  });
});

// ---------- exact logit processing ----------

describe('logit processing (exact values via processLogits)', () => {
  // All inputs are small dyadic rationals, so every intermediate is exact in float32 and the
  // expected values are plain numbers.
  //   prompt ids: [1, 2, 2]         output ids (accepted): [2, 3, 3, 5]
  //   logit_bias {4: +1.5, 1: -2}; repetition 2; frequency 0.5; presence 0.25; temperature 0.5
  const raw = [0.5, 2, -1, 3, -4, 1, 6];
  const table: { id: number; raw: number; expected: number; why: string }[] = [
    { id: 0, raw: 0.5, expected: 1, why: 'untouched: 0.5 / T' },
    { id: 1, raw: 2, expected: 0, why: 'bias -2 -> 0; prompt id: 0 is not > 0 so * 2 -> 0; / T' },
    { id: 2, raw: -1, expected: -5.5, why: 'prompt+output, count 1: -1 * 2 = -2; - (0.5*1 + 0.25) = -2.75; / T = -5.5' },
    { id: 3, raw: 3, expected: 0.5, why: 'output count 2: 3 / 2 = 1.5; - (0.5*2 + 0.25) = 0.25; / T = 0.5' },
    { id: 4, raw: -4, expected: -5, why: 'bias +1.5 -> -2.5; not seen; / T = -5' },
    { id: 5, raw: 1, expected: -0.5, why: 'output count 1: 1 / 2 = 0.5; - 0.75 = -0.25; / T = -0.5' },
    { id: 6, raw: 6, expected: 12, why: 'untouched: 6 / T' },
  ];

  function sampler(p: SamplingParamsInput): SequenceSampler {
    const s = new SequenceSampler(params(p, raw.length), raw.length, [1, 2, 2]);
    for (const id of [2, 3, 3, 5]) s.accept(id);
    return s;
  }

  it('bias -> repetition -> frequency/presence -> temperature', () => {
    const s = sampler({ logitBias: { '4': 1.5, '1': -2 }, repetitionPenalty: 2, frequencyPenalty: 0.5, presencePenalty: 0.25, temperature: 0.5 });
    const out = s.processLogits(Float32Array.from(raw));
    for (const row of table) expect(out[row.id], `${row.id}: ${row.why}`).toBe(row.expected);
    expect(s.outputLength).toBe(4);
  });

  const single: { name: string; p: SamplingParamsInput; expected: number[] }[] = [
    { name: 'nothing set: identity', p: {}, expected: raw },
    { name: 'repetition 2 only: prompt ∪ output ids {1,2,3,5}', p: { repetitionPenalty: 2 }, expected: [0.5, 1, -2, 1.5, -4, 0.5, 6] },
    { name: 'repetition 0.5 (< 1 encourages)', p: { repetitionPenalty: 0.5 }, expected: [0.5, 4, -0.5, 6, -4, 2, 6] },
    { name: 'frequency 0.5 only: output counts {2:1, 3:2, 5:1}, prompt ignored', p: { frequencyPenalty: 0.5 }, expected: [0.5, 2, -1.5, 2, -4, 0.5, 6] },
    { name: 'presence 0.25 only: output ids, once each', p: { presencePenalty: 0.25 }, expected: [0.5, 2, -1.25, 2.75, -4, 0.75, 6] },
    { name: 'negative presence -1 rewards', p: { presencePenalty: -1 }, expected: [0.5, 2, 0, 4, -4, 2, 6] },
    { name: 'logit_bias -100 / +100', p: { logitBias: { '0': -100, '6': 100 } }, expected: [-99.5, 2, -1, 3, -4, 1, 106] },
    { name: 'temperature 2', p: { temperature: 2 }, expected: [0.25, 1, -0.5, 1.5, -2, 0.5, 3] },
    { name: 'greedy ignores temperature', p: { temperature: 0, presencePenalty: 0.25 }, expected: [0.5, 2, -1.25, 2.75, -4, 0.75, 6] },
  ];
  for (const c of single) {
    it(c.name, () => {
      expect(Array.from(sampler(c.p).processLogits(Float32Array.from(raw)))).toEqual(c.expected);
    });
  }

  it('penalties steer sampling: a repeated token loses to a fresh one', () => {
    // token 0 leads by 1; after 3 repeats, frequency 0.5 costs it 1.5 -> greedy picks token 1
    const logits = Float32Array.from([2, 1, -5]);
    const s = new SequenceSampler(params({ temperature: 0, frequencyPenalty: 0.5 }, 3), 3, []);
    expect(s.sample(logits)).toBe(0);
    s.accept(0);
    s.accept(0);
    expect(s.sample(logits)).toBe(0); // 2 - 1 = 1, tie with token 1 -> lowest id
    s.accept(0);
    expect(s.sample(logits)).toBe(1);
  });

  it('BAD CALL - ids outside the vocab and mis-sized logits', () => {
    expectParamError(() => new SequenceSampler(DEFAULT_SAMPLING, 10, [3, 10]), 'invalid_token_id', undefined, /prompt token id 10 is outside the vocabulary \[0, 10\)/);
    const s = new SequenceSampler(DEFAULT_SAMPLING, 10, []);
    expectParamError(() => s.accept(-1), 'invalid_token_id', undefined, /token id -1/);
    expectParamError(() => s.accept(2.5), 'invalid_token_id', undefined, /token id 2\.5/);
    expectParamError(() => s.sample(new Float32Array(11)), 'internal', undefined, /logits have 11 entries, the sampler was built for 10/);
  });
});

// ---------- selection helpers (brute force oracle) ----------

describe('selectTopK / selectNucleus against a sort', () => {
  let seed = 99;
  const rnd = () => ((seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) / 2 ** 32);
  const sortedDesc = (keys: Float32Array) => Array.from(keys.keys()).sort((a, b) => keys[b]! - keys[a]! || a - b);

  it('top-k: the kept set is every id >= the k-th largest key (ties kept)', () => {
    for (let trial = 0; trial < 300; trial++) {
      const V = 1 + Math.floor(rnd() * 300);
      const levels = 1 + Math.floor(rnd() * 20); // few distinct values -> many ties
      const keys = Float32Array.from({ length: V }, () => Math.floor(rnd() * levels));
      const k = 1 + Math.floor(rnd() * (V - 1 || 1));
      if (k >= V) continue;
      const idx = Int32Array.from(keys.keys());
      const m = selectTopK(keys, idx, V, k);
      const kth = keys[sortedDesc(keys)[k - 1]!]!;
      const want = Array.from(keys.keys()).filter((id) => keys[id]! >= kth);
      expect(Array.from(idx.subarray(0, m)).sort((a, b) => a - b)).toEqual(want);
    }
  });

  it('top-p: the kept set is the smallest prefix of the sorted weights reaching the target', () => {
    for (let trial = 0; trial < 300; trial++) {
      const V = 1 + Math.floor(rnd() * 300);
      const levels = 1 + Math.floor(rnd() * 30);
      // dyadic weights: sums are exact, so the brute force and the selection agree bit for bit
      const keys = Float32Array.from({ length: V }, () => Math.floor(rnd() * levels) / 8);
      const total = keys.reduce((a, b) => a + b, 0);
      const target = Math.floor(rnd() * 64) / 64 * total;
      const idx = Int32Array.from(keys.keys());
      const m = selectNucleus(keys, idx, V, target);
      const kept = Array.from(idx.subarray(0, m));
      // size: the smallest count whose top weights reach the target (at least 1)
      const sorted = sortedDesc(keys);
      let want = 0;
      for (let acc = 0; want < V && (acc < target || want === 0); want++) acc += keys[sorted[want]!]!;
      expect(m, `trial ${trial}`).toBe(want);
      // content: every kept weight >= every dropped weight
      const minKept = Math.min(...kept.map((id) => keys[id]!));
      const dropped = Array.from(idx.subarray(m));
      for (const id of dropped) expect(keys[id]!).toBeLessThanOrEqual(minKept);
    }
  });

  it('top-p: a prefix whose mass equals the target exactly stops there (every input order)', () => {
    const weights = [4, 2, 1, 1, 0.5, 0.5];
    const table: { target: number; count: number }[] = [
      { target: 4, count: 1 },
      { target: 6, count: 2 },
      { target: 7, count: 3 },
      { target: 8, count: 4 },
      { target: 8.5, count: 5 },
      { target: 9, count: 6 },
      { target: 6.5, count: 3 },
    ];
    const permutations = (xs: number[]): number[][] =>
      xs.length <= 1 ? [xs] : xs.flatMap((x, i) => permutations([...xs.slice(0, i), ...xs.slice(i + 1)]).map((p) => [x, ...p]));
    for (const order of permutations([0, 1, 2, 3, 4, 5])) {
      const keys = Float32Array.from(order, (j) => weights[j]!);
      for (const { target, count } of table) {
        const idx = Int32Array.from(keys.keys());
        expect(selectNucleus(keys, idx, keys.length, target), `order ${order} target ${target}`).toBe(count);
      }
    }
  });
});

// ---------- logprobs ----------

describe('logprobs of the raw logits', () => {
  function bruteLogprobs(logits: Float32Array): number[] {
    const max = Math.max(...logits);
    const lse = max + Math.log(Array.from(logits).reduce((s, v) => s + Math.exp(v - max), 0));
    return Array.from(logits, (v) => v - lse);
  }

  it('tokenLogprob is log_softmax; probabilities sum to 1', () => {
    const logits = Float32Array.from([1, 2, 3, 0.5, -1]);
    const want = bruteLogprobs(logits);
    const lse = logSumExp(logits);
    let sum = 0;
    for (let id = 0; id < logits.length; id++) {
      expect(tokenLogprob(logits, id)).toBeCloseTo(want[id]!, 12);
      expect(tokenLogprob(logits, id, lse)).toBe(tokenLogprob(logits, id));
      sum += Math.exp(tokenLogprob(logits, id, lse));
    }
    expect(sum).toBeCloseTo(1, 12);
  });

  it('is stable for large logits (fp16-scale values, a naive exp would overflow)', () => {
    const base = Float32Array.from([1, 2, 3, 0.5]);
    const shifted = Float32Array.from(base, (v) => v + 20000);
    for (let id = 0; id < 4; id++) expect(tokenLogprob(shifted, id)).toBeCloseTo(tokenLogprob(base, id), 3);
    expect(logSumExp(Float32Array.from([-Infinity, -Infinity]))).toBe(-Infinity);
  });

  it('topLogprobs: descending, ties by ascending id, values exact', () => {
    const logits = Float32Array.from([0, 5, 3, 5, -2, 3, 4]);
    const ids = new Int32Array(4);
    const lps = new Float32Array(4);
    const n = topLogprobs(logits, 4, ids, lps);
    expect(n).toBe(4);
    expect(Array.from(ids)).toEqual([1, 3, 6, 2]);
    const want = bruteLogprobs(logits);
    for (let j = 0; j < 4; j++) expect(lps[j]).toBeCloseTo(want[ids[j]!]!, 5);
  });

  it('topLogprobs: n larger than the vocab, n = 0, NaN skipped', () => {
    const logits = Float32Array.from([1, NaN, 2]);
    const ids = new Int32Array(5);
    const lps = new Float32Array(5);
    expect(topLogprobs(logits, 5, ids, lps)).toBe(2);
    expect(Array.from(ids.subarray(0, 2))).toEqual([2, 0]);
    expect(topLogprobs(logits, 0, ids, lps)).toBe(0);
  });

  it('topLogprobs agrees with a full sort on a large vocab', () => {
    const [logits] = logitStream(5000, 1, 11);
    const ids = new Int32Array(20);
    const lps = new Float32Array(20);
    topLogprobs(logits!, 20, ids, lps);
    const sorted = Array.from(logits!.keys()).sort((a, b) => logits![b]! - logits![a]! || a - b).slice(0, 20);
    expect(Array.from(ids)).toEqual(sorted);
  });

  it('the sampler does not change the logits it samples from (logprobs stay raw)', () => {
    const [logits] = logitStream(300, 1, 5);
    const copy = logits!.slice();
    const s = new SequenceSampler(params({ seed: 1, topP: 0.5, repetitionPenalty: 1.5, logitBias: { '3': 10 } }, 300), 300, [3, 4]);
    s.sample(logits!);
    expect(logits).toEqual(copy);
  });
});
