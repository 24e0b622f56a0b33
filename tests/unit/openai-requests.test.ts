/**
 * OpenAI request bodies -> validated params (services/gateway/src/http/requests.ts): defaults,
 * prompt shapes, and a table of bad fields, each failing as a ServerError naming the field.
 */
import { describe, expect, it } from 'vitest';
import { ServerError } from '../../services/common/src/errors.js';
import { asBody } from '../../services/gateway/src/http/fields.js';
import { checkContext, parseChat, parseCompletion } from '../../services/gateway/src/http/requests.js';

const V = 512;
const completion = (body: Record<string, unknown>) => parseCompletion(asBody(body), V);
const chat = (body: Record<string, unknown>) => parseChat(asBody({ messages: [{ role: 'user', content: 'hi' }], ...body }), V);

function expectError(fn: () => unknown, code: string, param: string | undefined): ServerError {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  expect(caught, 'EXPECTED FAILURE - no error').toBeInstanceOf(ServerError);
  const e = caught as ServerError;
  expect(e.code).toBe(code);
  expect(e.param).toBe(param);
  return e;
}

describe('completions defaults and prompt shapes', () => {
  it('fills vLLM / OpenAI defaults', () => {
    const p = completion({ prompt: 'hi' });
    expect(p).toMatchObject({ model: null, n: 1, maxTokens: 16, maxTokensParam: 'max_tokens', minTokens: 0, stop: [], stopTokenIds: [], ignoreEos: false, logprobs: null, echo: false, stream: false, includeUsage: false, returnTokensAsTokenIds: false, skipSpecialTokens: true, includeStopStrInOutput: false, addSpecialTokens: true });
    expect(p.sampling).toMatchObject({ temperature: 1, topP: 1, topK: 0, seed: null });
    expect(Object.isFrozen(p.sampling)).toBe(true);
  });

  it.each([
    ['a string', 'hi', { kind: 'text', texts: ['hi'] }],
    ['strings', ['a', 'b'], { kind: 'text', texts: ['a', 'b'] }],
    ['token ids', [1, 2, 3], { kind: 'ids', ids: [[1, 2, 3]] }],
    ['lists of token ids', [[1], [2, 3]], { kind: 'ids', ids: [[1], [2, 3]] }],
  ])('prompt as %s', (_name, prompt, expected) => {
    expect(completion({ prompt }).prompt).toEqual(expected);
  });

  it('nulls mean "not given"; stream_options.include_usage; a single stop string', () => {
    const p = completion({ prompt: 'x', temperature: null, max_tokens: null, n: null, stream: true, stream_options: { include_usage: true }, stop: 'END', logprobs: 0 });
    expect(p).toMatchObject({ maxTokens: 16, n: 1, stream: true, includeUsage: true, stop: ['END'], logprobs: 0 });
    expect(p.sampling.temperature).toBe(1);
  });
});

describe('chat params', () => {
  it('text parts are joined with newlines; other message fields pass through', () => {
    const p = parseChat(asBody({ messages: [{ role: 'user', content: [{ type: 'text', text: 'a' }, { type: 'text', text: 'b' }], name: 'u1' }, { role: 'assistant', content: null }] }), V);
    expect(p.messages).toEqual([
      { role: 'user', content: 'a\nb', name: 'u1' },
      { role: 'assistant', content: '' },
    ]);
    expect(p).toMatchObject({ maxTokens: null, addGenerationPrompt: true, continueFinalMessage: false, addSpecialTokens: false, logprobs: null });
  });

  it('max_completion_tokens wins over max_tokens; logprobs + top_logprobs', () => {
    expect(chat({ max_tokens: 5, max_completion_tokens: 7 })).toMatchObject({ maxTokens: 7, maxTokensParam: 'max_completion_tokens' });
    expect(chat({ max_tokens: 5 })).toMatchObject({ maxTokens: 5, maxTokensParam: 'max_tokens' });
    expect(chat({ logprobs: true }).logprobs).toBe(0);
    expect(chat({ logprobs: true, top_logprobs: 4 }).logprobs).toBe(4);
    expect(chat({ tools: [{ type: 'function' }], chat_template_kwargs: { enable_thinking: false } }).templateKwargs).toEqual({ enable_thinking: false, tools: [{ type: 'function' }] });
  });
});

describe('EXPECTED FAILURE - bad fields name the param', () => {
  it.each([
    [{ prompt: 'x', n: 0 }, 'invalid_request', 'n'],
    [{ prompt: 'x', n: 129 }, 'invalid_request', 'n'],
    [{ prompt: 'x', max_tokens: 0 }, 'invalid_request', 'max_tokens'],
    [{ prompt: 'x', max_tokens: 2.5 }, 'invalid_request', 'max_tokens'],
    [{ prompt: 'x', logprobs: 21 }, 'invalid_request', 'logprobs'],
    [{ prompt: 'x', temperature: 'hot' }, 'invalid_request', 'temperature'],
    [{ prompt: 'x', top_k: -2 }, 'invalid_request', 'top_k'],
    [{ prompt: 'x', min_p: 2 }, 'invalid_request', 'min_p'],
    [{ prompt: 'x', repetition_penalty: 0 }, 'invalid_request', 'repetition_penalty'],
    [{ prompt: 'x', frequency_penalty: -3 }, 'invalid_request', 'frequency_penalty'],
    [{ prompt: 'x', logit_bias: { '5': 101 } }, 'invalid_request', 'logit_bias'],
    [{ prompt: 'x', logit_bias: { '512': 1 } }, 'invalid_token_id', 'logit_bias'],
    [{ prompt: 'x', stop_token_ids: [512] }, 'invalid_token_id', 'stop_token_ids'],
    [{ prompt: 'x', stop_token_ids: 'x' }, 'invalid_request', 'stop_token_ids'],
    [{ prompt: 'x', stop: ['a', 3] }, 'invalid_request', 'stop'],
    [{ prompt: 'x', min_tokens: 17 }, 'invalid_request', 'min_tokens'],
    [{ prompt: 'x', stream_options: {} }, 'invalid_request', 'stream_options'],
    [{ prompt: 'x', echo: 1 }, 'invalid_request', 'echo'],
    [{ prompt: 'x', suffix: 'y' }, 'invalid_request', 'suffix'],
    [{ prompt: 'x', best_of: 2 }, 'invalid_request', 'best_of'],
    [{ prompt: 'x', model: 3 }, 'invalid_request', 'model'],
    [{}, 'invalid_request', 'prompt'],
    [{ prompt: [] }, 'invalid_request', 'prompt'],
    [{ prompt: [[]] }, 'invalid_request', 'prompt'],
    [{ prompt: [1, 'a'] }, 'invalid_request', 'prompt'],
    [{ prompt: [1, 512] }, 'invalid_token_id', 'prompt'],
    [{ prompt: [[1], [-1]] }, 'invalid_token_id', 'prompt'],
  ])('completions %j -> %s (%s)', (body, code, param) => {
    expectError(() => completion(body), code, param);
  });

  it.each([
    [{ messages: [] }, 'messages'],
    [{ messages: [{ content: 'x' }] }, 'messages'],
    [{ messages: [{ role: 'user', content: [{ type: 'image_url' }] }] }, 'messages'],
    [{ messages: [{ role: 'user', content: 5 }] }, 'messages'],
    [{ messages: [{ role: 'user', content: 'x' }], top_logprobs: 2 }, 'top_logprobs'],
    [{ messages: [{ role: 'user', content: 'x' }], logprobs: true, top_logprobs: 21 }, 'top_logprobs'],
    [{ messages: [{ role: 'user', content: 'x' }], response_format: { type: 'json_object' } }, 'response_format'],
    [{ messages: [{ role: 'user', content: 'x' }], tool_choice: 'required' }, 'tool_choice'],
    [{ messages: [{ role: 'user', content: 'x' }], continue_final_message: true }, 'continue_final_message'],
    [{ messages: [{ role: 'user', content: 'x' }], max_completion_tokens: 0 }, 'max_completion_tokens'],
  ])('chat %j -> invalid_request (%s)', (body, param) => {
    expectError(() => parseChat(asBody(body), V), 'invalid_request', param);
  });

  it('a body that is not an object', () => {
    for (const raw of [null, [], 'x', 3]) expectError(() => asBody(raw), 'invalid_request', undefined);
  });

  it('context length: both numbers in the message; the param is the prompt when it alone is too long', () => {
    expect(() => checkContext(10, 6, 16, 'max_tokens', 'prompt')).not.toThrow();
    const e = expectError(() => checkContext(10, 7, 16, 'max_tokens', 'prompt'), 'context_length_exceeded', 'max_tokens');
    expect(e.message).toMatch(/maximum context length is 16 tokens\. However, you requested 17 tokens \(10 in the prompt, 7 in the completion\)/);
    expectError(() => checkContext(16, 1, 16, 'max_completion_tokens', 'messages'), 'context_length_exceeded', 'messages');
  });
});
