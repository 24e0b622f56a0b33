/**
 * Sampling parameters of one request: the validated, frozen form the sampler reads.
 *
 * OpenAI request body (snake_case, HTTP layer) -> `SamplingParamsInput` (camelCase, values as sent)
 * -> `validateSamplingParams` -> `SamplingParams` (frozen, defaults filled) -> `SequenceSampler`
 * (one per sequence). Ranges follow vLLM / OpenAI; errors are `ServerError('invalid_request')`
 * whose `param` is the API's snake_case name, so the HTTP edge can fill OpenAI's `error.param`.
 */
import { ServerError } from '../../../common/src/errors.js';

/**
 * What the sampler does for one sequence. Processing order (vLLM): logit_bias, then
 * repetition / frequency / presence penalties, then temperature; temperature < 1e-5 is greedy;
 * otherwise top_k, top_p, min_p, then one draw from the sequence's PRNG.
 */
export interface SamplingParams {
  /** Softmax temperature, >= 0; below `GREEDY_EPS` (1e-5) the sampler takes the argmax. @defaultValue 1 */
  temperature: number;
  /** Nucleus mass in (0, 1]; 1 = off. @defaultValue 1 */
  topP: number;
  /** Keep the k highest logits (ties at the k-th value kept); 0 = off (-1 is normalized to 0). @defaultValue 0 */
  topK: number;
  /** Drop tokens with p < minP * p_max, in [0, 1]; 0 = off. @defaultValue 0 */
  minP: number;
  /** PRNG seed (any integer); null = seeded from crypto randomness. @defaultValue null */
  seed: number | null;
  /** OpenAI presence penalty in [-2, 2], over output tokens only. @defaultValue 0 */
  presencePenalty: number;
  /** OpenAI frequency penalty in [-2, 2], over output tokens only. @defaultValue 0 */
  frequencyPenalty: number;
  /** HF / vLLM repetition penalty > 0, over prompt and output tokens; 1 = off. @defaultValue 1 */
  repetitionPenalty: number;
  /** Token id -> additive bias in [-100, 100]; null when empty. @defaultValue null */
  logitBias: ReadonlyMap<number, number> | null;
}

/** Below this temperature the sampler is greedy (vLLM `_SAMPLING_EPS`). */
export const GREEDY_EPS = 1e-5;

export const DEFAULT_SAMPLING: SamplingParams = Object.freeze({
  temperature: 1,
  topP: 1,
  topK: 0,
  minP: 0,
  seed: null,
  presencePenalty: 0,
  frequencyPenalty: 0,
  repetitionPenalty: 1,
  logitBias: null,
});

/**
 * Request values before validation. `undefined` and `null` both mean "not given" (OpenAI clients
 * send explicit nulls). `logitBias` may be a Map or the JSON object OpenAI sends
 * (`{"50256": -100}`, keys are decimal token ids). Values are typed loosely on purpose: they come
 * from JSON, and validation is where a string in a number field becomes a 400.
 */
export type SamplingParamsInput = {
  [K in Exclude<keyof SamplingParams, 'logitBias'>]?: SamplingParams[K] | null;
} & {
  logitBias?: ReadonlyMap<number, number> | Readonly<Record<string, number>> | null;
};

/** snake_case API names, used as `ServerError.param`. */
const API_NAME: Readonly<Record<keyof SamplingParams, string>> = Object.freeze({
  temperature: 'temperature',
  topP: 'top_p',
  topK: 'top_k',
  minP: 'min_p',
  seed: 'seed',
  presencePenalty: 'presence_penalty',
  frequencyPenalty: 'frequency_penalty',
  repetitionPenalty: 'repetition_penalty',
  logitBias: 'logit_bias',
});

function bad(key: keyof SamplingParams, message: string): ServerError {
  return new ServerError('invalid_request', `${API_NAME[key]} ${message}`, { param: API_NAME[key] });
}

function num(p: SamplingParamsInput, key: Exclude<keyof SamplingParams, 'logitBias' | 'seed'>): number {
  const v: unknown = p[key];
  if (v === undefined || v === null) return DEFAULT_SAMPLING[key];
  if (typeof v !== 'number' || !Number.isFinite(v)) throw bad(key, `must be a finite number, got ${JSON.stringify(v)}`);
  return v;
}

/**
 * Fills defaults, checks ranges and returns a frozen `SamplingParams`.
 * `vocabSize` is the width of the model's logits (logit_bias ids must be below it).
 * @throws ServerError 'invalid_request' (param = the API name) for a value out of range, or
 *   'invalid_token_id' (param 'logit_bias') for a bias on an id outside [0, vocabSize).
 */
export function validateSamplingParams(p: SamplingParamsInput, vocabSize: number): SamplingParams {
  const temperature = num(p, 'temperature');
  if (temperature < 0) throw bad('temperature', `must be >= 0, got ${temperature}`);

  const topP = num(p, 'topP');
  if (!(topP > 0 && topP <= 1)) throw bad('topP', `must be in (0, 1], got ${topP}`);

  let topK = num(p, 'topK');
  if (!Number.isInteger(topK) || topK < -1) throw bad('topK', `must be -1, 0 (off) or a positive integer, got ${topK}`);
  if (topK === -1) topK = 0;

  const minP = num(p, 'minP');
  if (!(minP >= 0 && minP <= 1)) throw bad('minP', `must be in [0, 1], got ${minP}`);

  const presencePenalty = num(p, 'presencePenalty');
  if (!(presencePenalty >= -2 && presencePenalty <= 2)) throw bad('presencePenalty', `must be in [-2, 2], got ${presencePenalty}`);
  const frequencyPenalty = num(p, 'frequencyPenalty');
  if (!(frequencyPenalty >= -2 && frequencyPenalty <= 2)) throw bad('frequencyPenalty', `must be in [-2, 2], got ${frequencyPenalty}`);
  const repetitionPenalty = num(p, 'repetitionPenalty');
  if (!(repetitionPenalty > 0)) throw bad('repetitionPenalty', `must be > 0, got ${repetitionPenalty}`);

  const seedIn: unknown = p.seed;
  let seed: number | null = null;
  if (seedIn !== undefined && seedIn !== null) {
    // Any integer-valued number: OpenAI seeds are int64, which JSON.parse may round to a double
    // above 2^53; the PRNG hashes the double's bits, so such seeds still reproduce.
    if (typeof seedIn !== 'number' || !Number.isInteger(seedIn)) throw bad('seed', `must be an integer, got ${JSON.stringify(seedIn)}`);
    seed = seedIn;
  }

  const logitBias = validateLogitBias(p.logitBias, vocabSize);

  return Object.freeze({ temperature, topP, topK, minP, seed, presencePenalty, frequencyPenalty, repetitionPenalty, logitBias });
}

const DECIMAL_ID = /^(0|[1-9][0-9]*)$/;

function validateLogitBias(
  input: SamplingParamsInput['logitBias'],
  vocabSize: number,
): ReadonlyMap<number, number> | null {
  if (input === undefined || input === null) return null;
  let entries: Iterable<[unknown, unknown]>;
  if (input instanceof Map) entries = input.entries();
  else if (typeof input === 'object' && !Array.isArray(input)) entries = Object.entries(input);
  else throw bad('logitBias', 'must be an object mapping token ids to biases');
  const out = new Map<number, number>();
  for (const [key, value] of entries) {
    const id = typeof key === 'number' ? key : typeof key === 'string' && DECIMAL_ID.test(key) ? Number(key) : NaN;
    if (!Number.isInteger(id)) throw bad('logitBias', `keys must be token ids, got ${JSON.stringify(key)}`);
    if (id < 0 || id >= vocabSize) {
      throw new ServerError('invalid_token_id', `logit_bias token id ${id} is outside the vocabulary [0, ${vocabSize})`, {
        param: 'logit_bias',
      });
    }
    if (typeof value !== 'number' || !(value >= -100 && value <= 100)) {
      throw bad('logitBias', `values must be numbers in [-100, 100], got ${JSON.stringify(value)} for token ${id}`);
    }
    out.set(id, value);
  }
  return out.size === 0 ? null : out;
}
