/**
 * OpenAI request bodies -> validated, typed parameters (vLLM's field set and ranges).
 *
 *   POST /v1/completions       body -> CompletionParams (prompt: texts or token ids)
 *   POST /v1/chat/completions  body -> ChatParams (messages for the chat template)
 *
 * Everything a client can get wrong is checked here, before any tokenization or engine work, and
 * fails as a 400 naming the field. Fields outside an endpoint's set are returned by
 * `unknownFields` (logged by name and ignored, as vLLM does).
 */
import { ServerError } from '../../../common/src/errors.js';
import { validateSamplingParams, type SamplingParams, type SamplingParamsInput } from '../sampling/params.js';
import type { ChatMessage } from '../tokenizer/chat-template.js';
import { checkIds, invalid, optBool, optInt, optObject, optString, optStrings, optTokenIds, type Body } from './fields.js';

/** Most top logprobs per position a client may ask for (vLLM's max_logprobs default). */
export const MAX_LOGPROBS = 20;
/** Most choices per prompt (OpenAI's limit). */
export const MAX_N = 128;

const SAMPLING_FIELDS = ['temperature', 'top_p', 'top_k', 'min_p', 'seed', 'presence_penalty', 'frequency_penalty', 'repetition_penalty', 'logit_bias'];
const COMMON_FIELDS = [
  'model', 'n', 'stream', 'stream_options', 'stop', 'user', 'max_tokens', ...SAMPLING_FIELDS,
  // vLLM extensions
  'stop_token_ids', 'ignore_eos', 'min_tokens', 'skip_special_tokens', 'include_stop_str_in_output', 'return_tokens_as_token_ids', 'add_special_tokens', 'cache_salt',
];
export const COMPLETION_FIELDS: ReadonlySet<string> = new Set([...COMMON_FIELDS, 'prompt', 'suffix', 'logprobs', 'echo', 'best_of']);
export const CHAT_FIELDS: ReadonlySet<string> = new Set([
  ...COMMON_FIELDS, 'messages', 'max_completion_tokens', 'logprobs', 'top_logprobs', 'tools', 'tool_choice', 'parallel_tool_calls', 'response_format',
  'add_generation_prompt', 'continue_final_message', 'chat_template_kwargs',
]);

/** What both endpoints share, validated. */
export interface GenerationParams {
  /** The requested model name; null = the served one. */
  readonly model: string | null;
  /** Choices per prompt. @defaultValue 1 */
  readonly n: number;
  /** New tokens at most; null = up to the context length (chat's default). */
  readonly maxTokens: number | null;
  /** The field maxTokens came from, for context-length errors. */
  readonly maxTokensParam: 'max_tokens' | 'max_completion_tokens';
  readonly minTokens: number;
  readonly sampling: SamplingParams;
  readonly stop: readonly string[];
  readonly stopTokenIds: readonly number[];
  readonly ignoreEos: boolean;
  /** Top-N logprobs per generated token; null = none. */
  readonly logprobs: number | null;
  readonly stream: boolean;
  readonly includeUsage: boolean;
  /** Logprob tokens as "token_id:N". */
  readonly returnTokensAsTokenIds: boolean;
  readonly skipSpecialTokens: boolean;
  readonly includeStopStrInOutput: boolean;
  /** Encode text with the tokenizer's special tokens (BOS). Completions: true; chat: false. */
  readonly addSpecialTokens: boolean;
  /** Prefix-cache salt (vLLM `cache_salt`): cached prefixes are shared only under the same salt. */
  readonly cacheSalt: string | null;
}

export type PromptInput = { readonly kind: 'text'; readonly texts: readonly string[] } | { readonly kind: 'ids'; readonly ids: readonly (readonly number[])[] };

export interface CompletionParams extends GenerationParams {
  readonly prompt: PromptInput;
  readonly echo: boolean;
}

export interface ChatParams extends GenerationParams {
  readonly messages: readonly ChatMessage[];
  readonly addGenerationPrompt: boolean;
  readonly continueFinalMessage: boolean;
  readonly templateKwargs: Readonly<Record<string, unknown>>;
}

function common(body: Body, vocabSize: number, logprobs: number | null, maxTokens: number | null, maxTokensParam: GenerationParams['maxTokensParam'], addSpecialDefault: boolean): GenerationParams {
  const model = optString(body, 'model') ?? null;
  const n = optInt(body, 'n', 1, MAX_N) ?? 1;
  const minTokens = optInt(body, 'min_tokens', 0) ?? 0;
  if (maxTokens !== null && minTokens > maxTokens) throw invalid('min_tokens', `must be <= ${maxTokensParam} (${maxTokens}), got ${minTokens}`);
  const stream = optBool(body, 'stream') ?? false;
  const streamOptions = optObject(body, 'stream_options');
  if (streamOptions && !stream) throw invalid('stream_options', 'can only be set when stream is true');
  const includeUsage = streamOptions ? (optBool(streamOptions, 'include_usage') ?? false) : false;
  optString(body, 'user'); // accepted, never logged
  const sampling = validateSamplingParams(
    {
      temperature: body['temperature'],
      topP: body['top_p'],
      topK: body['top_k'],
      minP: body['min_p'],
      seed: body['seed'],
      presencePenalty: body['presence_penalty'],
      frequencyPenalty: body['frequency_penalty'],
      repetitionPenalty: body['repetition_penalty'],
      logitBias: body['logit_bias'],
    } as SamplingParamsInput,
    vocabSize,
  );
  return {
    model,
    n,
    maxTokens,
    maxTokensParam,
    minTokens,
    sampling,
    stop: (optStrings(body, 'stop') ?? []).filter((s) => s.length > 0),
    stopTokenIds: optTokenIds(body, 'stop_token_ids', vocabSize) ?? [],
    ignoreEos: optBool(body, 'ignore_eos') ?? false,
    logprobs,
    stream,
    includeUsage,
    returnTokensAsTokenIds: optBool(body, 'return_tokens_as_token_ids') ?? false,
    skipSpecialTokens: optBool(body, 'skip_special_tokens') ?? true,
    includeStopStrInOutput: optBool(body, 'include_stop_str_in_output') ?? false,
    addSpecialTokens: optBool(body, 'add_special_tokens') ?? addSpecialDefault,
    cacheSalt: optString(body, 'cache_salt') ?? null,
  };
}

const PROMPT_SHAPE = 'must be a string, an array of strings, an array of token ids or an array of token-id arrays';

function parsePrompt(v: unknown, vocabSize: number): PromptInput {
  if (v === undefined || v === null) throw invalid('prompt', 'is required');
  if (typeof v === 'string') return { kind: 'text', texts: [v] };
  if (!Array.isArray(v)) throw invalid('prompt', PROMPT_SHAPE);
  if (v.length === 0) throw invalid('prompt', 'must not be empty');
  if (v.every((x) => typeof x === 'string')) return { kind: 'text', texts: v as string[] };
  const isIds = (x: unknown): x is number[] => Array.isArray(x) && x.every((i) => typeof i === 'number' && Number.isInteger(i));
  const lists = isIds(v) ? [v] : v.every(isIds) ? (v as number[][]) : null;
  if (!lists) throw invalid('prompt', PROMPT_SHAPE);
  for (const ids of lists) {
    if (ids.length === 0) throw invalid('prompt', 'must not contain an empty token list');
    checkIds(ids, 'prompt', vocabSize);
  }
  return { kind: 'ids', ids: lists };
}

export function parseCompletion(body: Body, vocabSize: number): CompletionParams {
  const prompt = parsePrompt(body['prompt'], vocabSize);
  if (optString(body, 'suffix') !== undefined) throw invalid('suffix', 'is not supported');
  const n = optInt(body, 'n', 1, MAX_N) ?? 1;
  const bestOf = optInt(body, 'best_of', 1, MAX_N);
  if (bestOf !== undefined && bestOf !== n) throw invalid('best_of', `is not supported (only best_of = n), got ${bestOf}`);
  const logprobs = optInt(body, 'logprobs', 0, MAX_LOGPROBS) ?? null;
  const maxTokens = optInt(body, 'max_tokens', 1) ?? 16;
  return { ...common(body, vocabSize, logprobs, maxTokens, 'max_tokens', true), prompt, echo: optBool(body, 'echo') ?? false };
}

function parseMessages(v: unknown): ChatMessage[] {
  if (!Array.isArray(v) || v.length === 0) throw invalid('messages', 'must be a non-empty array of messages');
  return v.map((m, i) => {
    if (typeof m !== 'object' || m === null || Array.isArray(m)) throw invalid('messages', `[${i}] must be an object`);
    const msg = m as Body;
    if (typeof msg['role'] !== 'string' || msg['role'].length === 0) throw invalid('messages', `[${i}].role must be a non-empty string`);
    const c = msg['content'];
    let content: string;
    if (c === undefined || c === null) content = '';
    else if (typeof c === 'string') content = c;
    else if (Array.isArray(c)) {
      // Text parts joined with newlines, as vLLM does for string-content templates.
      content = c
        .map((part, j) => {
          const p = part as Body | null;
          if (typeof p !== 'object' || p === null || p['type'] !== 'text' || typeof p['text'] !== 'string') {
            throw invalid('messages', `[${i}].content[${j}] must be a text part {"type": "text", "text": "..."} (this model takes text only)`);
          }
          return p['text'];
        })
        .join('\n');
    } else throw invalid('messages', `[${i}].content must be a string or an array of text parts`);
    return { ...msg, role: msg['role'], content };
  });
}

export function parseChat(body: Body, vocabSize: number): ChatParams {
  const messages = parseMessages(body['messages']);
  const logprobsOn = optBool(body, 'logprobs') ?? false;
  const top = optInt(body, 'top_logprobs', 0, MAX_LOGPROBS);
  if (top !== undefined && !logprobsOn) throw invalid('top_logprobs', 'requires logprobs to be true');
  const mct = optInt(body, 'max_completion_tokens', 1);
  const mt = optInt(body, 'max_tokens', 1);
  const responseFormat = optObject(body, 'response_format');
  if (responseFormat && responseFormat['type'] !== 'text') throw invalid('response_format', `type ${JSON.stringify(responseFormat['type'])} is not supported (text only)`);
  const toolChoice = body['tool_choice'];
  if (toolChoice !== undefined && toolChoice !== null && toolChoice !== 'none' && toolChoice !== 'auto') throw invalid('tool_choice', 'only "none" and "auto" are supported (no tool-call parsing)');
  const addGenerationPrompt = optBool(body, 'add_generation_prompt') ?? true;
  const continueFinalMessage = optBool(body, 'continue_final_message') ?? false;
  if (addGenerationPrompt && continueFinalMessage) throw invalid('continue_final_message', 'cannot be true together with add_generation_prompt (set add_generation_prompt to false)');
  const kwargs: Record<string, unknown> = { ...(optObject(body, 'chat_template_kwargs') ?? {}) };
  const tools = body['tools'];
  if (tools !== undefined && tools !== null) {
    if (!Array.isArray(tools)) throw invalid('tools', 'must be an array');
    kwargs['tools'] = tools;
  }
  const params = common(body, vocabSize, logprobsOn ? (top ?? 0) : null, mct ?? mt ?? null, mct !== undefined ? 'max_completion_tokens' : 'max_tokens', false);
  return { ...params, messages, addGenerationPrompt, continueFinalMessage, templateKwargs: Object.freeze(kwargs) };
}

/** The context-length check vLLM makes, naming both numbers. */
export function checkContext(promptLen: number, maxTokens: number, maxModelLen: number, maxTokensParam: string, promptParam: string): void {
  if (promptLen + maxTokens <= maxModelLen) return;
  throw new ServerError(
    'context_length_exceeded',
    `This model's maximum context length is ${maxModelLen} tokens. However, you requested ${promptLen + maxTokens} tokens (${promptLen} in the prompt, ${maxTokens} in the completion). Please reduce the length of the prompt or completion.`,
    { param: promptLen >= maxModelLen ? promptParam : maxTokensParam },
  );
}
