/**
 * sampling/ owns the step from one sequence's logits to its next token id: request sampling
 * params (validated, frozen), the per-sequence sampler (logit_bias, penalties, temperature,
 * top-k / top-p / min-p, seeded draw), and logprobs of the raw logits for the OpenAI fields.
 * Pure functions and classes over typed arrays; no I/O, no model code.
 */
export { DEFAULT_SAMPLING, GREEDY_EPS, validateSamplingParams } from './params.js';
export type { SamplingParams, SamplingParamsInput } from './params.js';
export { SequenceSampler, argmax, createSamplerScratch } from './sampler.js';
export type { SamplerScratch } from './sampler.js';
export { logSumExp, tokenLogprob, topLogprobs } from './logprobs.js';
export { Xoshiro128 } from './prng.js';
