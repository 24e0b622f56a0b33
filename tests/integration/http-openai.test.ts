/**
 * The OpenAI API over real HTTP on loopback, driven by the official `openai` client, on the
 * mixtral-tiny golden fixture (real ONNX Runtime in the engine thread):
 * - completions with text and token-id prompts, a list of prompts, n, seeds, logprobs with echo,
 *   stop strings across token boundaries;
 * - chat completions through the checkpoint's chat template;
 * - streaming with and without include_usage: the stream's text equals the non-stream text;
 *   multi-byte characters split over tokens never stream as U+FFFD;
 * - /v1/models, /tokenize, /detokenize, /health, /metrics (MoE rows, balancedness);
 * - logs: a request id on every line of a request, never the prompt text.
 */
import type OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TextTokenizer } from '../../services/gateway/src/tokenizer/tokenizer.js';
import { fixtureDir, loadExpected } from '../helpers/golden.js';
import { metric, parseMetric, post, startTestServer, type TestServer } from './http-helpers.js';

const expected = loadExpected('mixtral-tiny');
const LEN7 = expected.prompts.len7.input_ids;
const LEN33 = expected.prompts.len33.input_ids;
const tok = TextTokenizer.fromDir(fixtureDir('mixtral-tiny'));
const TEXT = 'The expert router sends each token';

let t: TestServer;
let client: OpenAI;
beforeAll(async () => {
  t = await startTestServer({ captureLogs: true });
  client = t.client;
});
afterAll(async () => t?.close());

/** Completions params with vLLM's extension fields (the client sends any extra field as is). */
type Extra = Record<string, unknown>;
function completion(params: OpenAI.CompletionCreateParamsNonStreaming & Extra) {
  return client.completions.create(params);
}
async function streamText(params: OpenAI.CompletionCreateParamsStreaming & Extra): Promise<{ text: string; chunks: OpenAI.Completion[] }> {
  const chunks: OpenAI.Completion[] = [];
  for await (const c of await client.completions.create(params)) chunks.push(c);
  return { text: chunks.map((c) => c.choices[0]?.text ?? '').join(''), chunks };
}

describe('completions', () => {
  it('a text prompt and its token ids give the same greedy text; usage counts both sides', async () => {
    const ids = tok.encode(TEXT);
    const byText = await completion({ model: t.model, prompt: TEXT, max_tokens: 12, temperature: 0 });
    const byIds = await completion({ model: t.model, prompt: ids, max_tokens: 12, temperature: 0 });
    expect(byText.object).toBe('text_completion');
    expect(byText.model).toBe(t.model);
    expect(byText.id).toMatch(/^cmpl-/);
    expect(byText.choices).toHaveLength(1);
    expect(byText.choices[0]!.index).toBe(0);
    expect(byText.choices[0]!.finish_reason).toBe('length');
    expect(byText.choices[0]!.text.length).toBeGreaterThan(0);
    expect(byIds.choices[0]!.text).toBe(byText.choices[0]!.text);
    expect(byText.usage).toEqual({ prompt_tokens: ids.length, completion_tokens: 12, total_tokens: ids.length + 12 });
  });

  it('max_tokens defaults to 16', async () => {
    const r = await completion({ model: t.model, prompt: LEN7, temperature: 0 });
    expect(r.usage!.completion_tokens).toBe(16);
  });

  it('a list of prompts: one choice per prompt, in order, each equal to the prompt alone', async () => {
    const prompts = [LEN7, LEN33, [510, 42]];
    const all = await completion({ model: t.model, prompt: prompts, max_tokens: 8, temperature: 0 });
    expect(all.choices.map((c) => c.index)).toEqual([0, 1, 2]);
    for (let i = 0; i < prompts.length; i++) {
      const alone = await completion({ model: t.model, prompt: prompts[i]!, max_tokens: 8, temperature: 0 });
      expect(all.choices[i]!.text).toBe(alone.choices[0]!.text);
    }
    expect(all.usage!.prompt_tokens).toBe(LEN7.length + LEN33.length + 2);
    const texts = await completion({ model: t.model, prompt: ['a b', 'c d'], max_tokens: 2, temperature: 0 });
    expect(texts.choices.map((c) => c.index)).toEqual([0, 1]);
  });

  it('n choices per prompt: indices prompt × n + i; greedy choices are identical', async () => {
    const r = await completion({ model: t.model, prompt: [LEN7, LEN33], n: 2, max_tokens: 6, temperature: 0 });
    expect(r.choices.map((c) => c.index)).toEqual([0, 1, 2, 3]);
    expect(r.choices[0]!.text).toBe(r.choices[1]!.text);
    expect(r.choices[2]!.text).toBe(r.choices[3]!.text);
    expect(r.usage!.completion_tokens).toBe(24);
  });

  it('seed: the same request twice gives the same samples; the n choices of one request differ', async () => {
    const params = { model: t.model, prompt: LEN7, n: 3, max_tokens: 12, temperature: 1, seed: 1234 };
    const a = await completion(params);
    const b = await completion(params);
    expect(b.choices.map((c) => c.text)).toEqual(a.choices.map((c) => c.text));
    expect(new Set(a.choices.map((c) => c.text)).size).toBeGreaterThan(1);
    const other = await completion({ ...params, seed: 99 });
    expect(other.choices.map((c) => c.text)).not.toEqual(a.choices.map((c) => c.text));
  });

  it('logprobs with echo: the prompt first (its first token without a logprob), then the output; offsets into the text', async () => {
    const r = await completion({ model: t.model, prompt: LEN7, max_tokens: 5, temperature: 0, echo: true, logprobs: 3 });
    const c = r.choices[0]!;
    const lp = c.logprobs!;
    const echoText = tok.decode(LEN7);
    expect(c.text.startsWith(echoText)).toBe(true);
    expect(lp.tokens).toHaveLength(LEN7.length + 5);
    // A token that is not valid UTF-8 alone is named "bytes:\xNN" (vLLM / OpenAI), not U+FFFD.
    expect(lp.tokens!.slice(0, LEN7.length)).toEqual(LEN7.map((id) => tok.logprobToken(id)));
    expect(lp.token_logprobs![0]).toBeNull();
    expect(lp.top_logprobs![0]).toBeNull();
    // by id (text keys of two ids that decode alike, e.g. two lone bytes as U+FFFD, would merge)
    const byId = (await completion({ model: t.model, prompt: LEN7, max_tokens: 5, temperature: 0, echo: true, logprobs: 3, return_tokens_as_token_ids: true })).choices[0]!.logprobs!;
    expect(byId.tokens!.slice(0, LEN7.length)).toEqual(LEN7.map((id) => `token_id:${id}`));
    expect(byId.token_logprobs).toEqual(lp.token_logprobs);
    for (let i = 1; i < byId.tokens!.length; i++) {
      const top = byId.top_logprobs![i]!;
      const keys = Object.keys(top);
      expect(keys.length === 3 || (keys.length === 4 && keys[3] === byId.tokens![i])).toBe(true); // top-3, then the chosen one if not among them
      expect(byId.token_logprobs![i]).toBeLessThanOrEqual(0);
      expect(top[byId.tokens![i]!]).toBe(byId.token_logprobs![i]);
      const values = Object.values(top).slice(0, 3);
      expect([...values].sort((a, b) => b - a)).toEqual(values); // ordered by logprob
    }
    // greedy: every generated token is its position's most likely one
    for (let i = LEN7.length; i < byId.tokens!.length; i++) expect(Object.keys(byId.top_logprobs![i]!)[0]).toBe(byId.tokens![i]);
    expect(lp.text_offset![0]).toBe(0);
    for (let i = 1; i < lp.text_offset!.length; i++) expect(lp.text_offset![i]).toBeGreaterThanOrEqual(lp.text_offset![i - 1]!);
    expect(lp.text_offset![LEN7.length]).toBe(echoText.length);
    // offsets add up: a whole-character token's text is at its offset, and the next starts after it
    // (a byte token's share of the text is the character it completes, or its own U+FFFD)
    for (let i = 0; i + 1 < lp.tokens!.length; i++) {
      const token = lp.tokens![i]!;
      if (token.startsWith('bytes:')) continue;
      expect(c.text.slice(lp.text_offset![i], lp.text_offset![i]! + token.length)).toBe(token);
      expect(lp.text_offset![i + 1]! - lp.text_offset![i]!).toBe(token.length);
    }
  });

  it('logprobs without echo cover the generated tokens only; return_tokens_as_token_ids names them token_id:N', async () => {
    const r = await completion({ model: t.model, prompt: LEN7, max_tokens: 4, temperature: 0, logprobs: 2, return_tokens_as_token_ids: true });
    const lp = r.choices[0]!.logprobs!;
    expect(lp.tokens).toHaveLength(4);
    for (const tkn of lp.tokens!) expect(tkn).toMatch(/^token_id:\d+$/);
    const ids = lp.tokens!.map((s) => Number(s.slice('token_id:'.length)));
    expect(r.choices[0]!.text).toBe(tok.decode(ids, { skipSpecialTokens: true }));
  });

  it('a stop string across a token boundary ends the text before it (finish stop, stop_reason), streamed or not', async () => {
    const full = await completion({ model: t.model, prompt: LEN33, max_tokens: 16, temperature: 0, logprobs: 0 });
    const { text, logprobs } = full.choices[0]!;
    const off = logprobs!.text_offset!;
    // a 2-character stop string: the last character of one token and the first of the next
    let at = -1;
    for (let i = 2; i < off.length; i++) {
      const k = off[i]!;
      if (k > 1 && k < text.length && !text.slice(k - 1, k + 1).includes('\uFFFD') && text.indexOf(text.slice(k - 1, k + 1)) === k - 1) {
        at = k - 1;
        break;
      }
    }
    expect(at, `no usable token boundary in ${JSON.stringify(text)}`).toBeGreaterThan(0);
    const stop = text.slice(at, at + 2);
    const r = await completion({ model: t.model, prompt: LEN33, max_tokens: 16, temperature: 0, stop: [stop, 'never-appears'] });
    expect(r.choices[0]!.text).toBe(text.slice(0, at));
    expect(r.choices[0]!.finish_reason).toBe('stop');
    expect((r.choices[0] as unknown as { stop_reason: string }).stop_reason).toBe(stop);
    const s = await streamText({ model: t.model, prompt: LEN33, max_tokens: 16, temperature: 0, stop, stream: true });
    expect(s.text).toBe(text.slice(0, at));
    expect(s.chunks.at(-1)!.choices[0]!.finish_reason).toBe('stop');
    // include_stop_str_in_output keeps it
    const inc = await completion({ model: t.model, prompt: LEN33, max_tokens: 16, temperature: 0, stop, include_stop_str_in_output: true });
    expect(inc.choices[0]!.text).toBe(text.slice(0, at + 2));
  });

  it('EOS ends a choice with finish_reason stop unless ignore_eos; stop_token_ids too', async () => {
    const free = await completion({ model: t.model, prompt: LEN7, max_tokens: 16, temperature: 0, logprobs: 0, return_tokens_as_token_ids: true });
    const ids = free.choices[0]!.logprobs!.tokens!.map((s) => Number(s.slice(9)));
    const stopId = ids[3]!;
    const r = await completion({ model: t.model, prompt: LEN7, max_tokens: 16, temperature: 0, stop_token_ids: [stopId], ignore_eos: true });
    expect(r.choices[0]!.finish_reason).toBe('stop');
    expect(r.usage!.completion_tokens).toBe(ids.indexOf(stopId) + 1);
    expect(r.choices[0]!.text).toBe(tok.decode(ids.slice(0, ids.indexOf(stopId)), { skipSpecialTokens: true }));
  });
});

describe('streaming', () => {
  it('completions: the stream equals the non-stream text; no usage chunk unless asked', async () => {
    const params = { model: t.model, prompt: LEN33, max_tokens: 20, temperature: 0 };
    const whole = await completion(params);
    const s = await streamText({ ...params, stream: true });
    expect(s.text).toBe(whole.choices[0]!.text);
    expect(s.chunks.every((c) => c.usage === undefined || c.usage === null)).toBe(true);
    expect(s.chunks.at(-1)!.choices[0]!.finish_reason).toBe('length');
    expect(s.chunks.slice(0, -1).every((c) => c.choices[0]!.finish_reason === null)).toBe(true);
    expect(new Set(s.chunks.map((c) => c.id)).size).toBe(1);
  });

  it('completions with include_usage: one last chunk with no choices and the usage', async () => {
    const params = { model: t.model, prompt: [LEN7, LEN33], n: 2, max_tokens: 10, temperature: 0 };
    const whole = await completion(params);
    const s = await streamText({ ...params, stream: true, stream_options: { include_usage: true } });
    const last = s.chunks.at(-1)!;
    expect(last.choices).toEqual([]);
    expect(last.usage).toEqual(whole.usage);
    expect(s.chunks.slice(0, -1).every((c) => !c.usage)).toBe(true);
    for (let i = 0; i < 4; i++) {
      const text = s.chunks.flatMap((c) => c.choices.filter((ch) => ch.index === i).map((ch) => ch.text)).join('');
      expect(text).toBe(whole.choices[i]!.text);
    }
  });

  it('echo and logprobs stream too: the same text and tokens as without streaming', async () => {
    const params = { model: t.model, prompt: LEN7, max_tokens: 8, temperature: 0, echo: true, logprobs: 2 };
    const whole = await completion(params);
    const s = await streamText({ ...params, stream: true });
    expect(s.text).toBe(whole.choices[0]!.text);
    const tokens = s.chunks.flatMap((c) => c.choices[0]?.logprobs?.tokens ?? []);
    const offsets = s.chunks.flatMap((c) => c.choices[0]?.logprobs?.text_offset ?? []);
    expect(tokens).toEqual(whole.choices[0]!.logprobs!.tokens);
    expect(offsets).toEqual(whole.choices[0]!.logprobs!.text_offset);
  });

  it('a character split over three byte tokens streams whole: never U+FFFD, the same text as without streaming', async () => {
    // '世' is E4 B8 96: three byte tokens of the fixture's byte-level BPE. logit_bias makes them the
    // only candidates; penalties make each used byte less likely, so greedy spells E4, B8, 96.
    const byteIds = [...Buffer.from('世')].map((b) => {
      for (let i = 0; i < tok.vocabSize; i++) {
        const bytes = tok.tokenBytes(i);
        if (bytes.length === 1 && bytes[0] === b) return i;
      }
      throw new Error(`no byte token for ${b}`);
    });
    const params = {
      model: t.model,
      prompt: [byteIds[1]!, byteIds[2]!, ...tok.encode(' The quick brown fox jumps')],
      max_tokens: 3,
      temperature: 0,
      logit_bias: Object.fromEntries(byteIds.map((id) => [String(id), 100])),
      repetition_penalty: 2,
      presence_penalty: 2,
      frequency_penalty: 2,
    };
    const whole = await completion(params);
    expect(whole.choices[0]!.text).toBe('世');
    const s = await streamText({ ...params, stream: true, logprobs: 0, return_tokens_as_token_ids: true });
    expect(s.chunks.flatMap((c) => c.choices[0]?.logprobs?.tokens ?? [])).toEqual(byteIds.map((id) => `token_id:${id}`));
    for (const c of s.chunks) expect(c.choices[0]?.text ?? '').not.toContain('\uFFFD');
    expect(s.text).toBe('世');
  });

  it('chat: a role delta first, then content; the stream equals the non-stream message', async () => {
    const messages = [{ role: 'user' as const, content: 'Tell me about experts.' }];
    const whole = await client.chat.completions.create({ model: t.model, messages, max_completion_tokens: 12, temperature: 0 });
    const chunks: OpenAI.ChatCompletionChunk[] = [];
    for await (const c of await client.chat.completions.create({ model: t.model, messages, max_completion_tokens: 12, temperature: 0, stream: true, stream_options: { include_usage: true } })) chunks.push(c);
    expect(chunks[0]!.choices[0]!.delta.role).toBe('assistant');
    expect(chunks.every((c) => c.object === 'chat.completion.chunk')).toBe(true);
    expect(chunks.map((c) => c.choices[0]?.delta.content ?? '').join('')).toBe(whole.choices[0]!.message.content);
    expect(chunks.at(-2)!.choices[0]!.finish_reason).toBe('length');
    expect(chunks.at(-1)!.usage).toEqual(whole.usage);
  });
});

describe('chat completions', () => {
  it('messages go through the chat template: the same output as completions on the rendered prompt', async () => {
    const messages = [
      { role: 'user' as const, content: 'Hello' },
      { role: 'assistant' as const, content: 'Hi there' },
      { role: 'user' as const, content: [{ type: 'text' as const, text: 'How are' }, { type: 'text' as const, text: 'you?' }] },
    ];
    const r = await client.chat.completions.create({ model: t.model, messages, max_completion_tokens: 10, temperature: 0 });
    const rendered = tok.applyChatTemplate(
      [
        { role: 'user', content: 'Hello' },
        { role: 'assistant', content: 'Hi there' },
        { role: 'user', content: 'How are\nyou?' },
      ],
      { addGenerationPrompt: true },
    );
    expect(rendered.startsWith('<s>[INST] Hello [/INST]Hi there</s>')).toBe(true);
    const ids = tok.encode(rendered, { addSpecialTokens: false });
    const c = await completion({ model: t.model, prompt: ids, max_tokens: 10, temperature: 0 });
    expect(r.object).toBe('chat.completion');
    expect(r.id).toMatch(/^chatcmpl-/);
    expect(r.choices[0]!.message).toMatchObject({ role: 'assistant', content: c.choices[0]!.text });
    expect(r.choices[0]!.finish_reason).toBe('length');
    expect(r.usage).toEqual({ prompt_tokens: ids.length, completion_tokens: 10, total_tokens: ids.length + 10 });
    const tk = await post(`${t.url}/tokenize`, { messages: [{ role: 'user', content: 'Hello' }] });
    expect(tk.body.tokens).toEqual(tok.encode(tok.applyChatTemplate([{ role: 'user', content: 'Hello' }], { addGenerationPrompt: true }), { addSpecialTokens: false }));
  });

  it('legacy max_tokens, n, and logprobs with top_logprobs in the chat shape', async () => {
    const r = await client.chat.completions.create({ model: t.model, messages: [{ role: 'user', content: 'x' }], max_tokens: 4, n: 2, temperature: 0, logprobs: true, top_logprobs: 2 });
    expect(r.choices).toHaveLength(2);
    const content = r.choices[0]!.logprobs!.content!;
    expect(content).toHaveLength(4);
    for (const e of content) {
      expect(e.top_logprobs).toHaveLength(2);
      expect(e.top_logprobs[0]!.logprob).toBe(e.logprob); // greedy: the top one
      expect(e.bytes!.length).toBeGreaterThan(0);
    }
  });
});

describe('service routes', () => {
  it('GET /v1/models lists the served model; /health is 200', async () => {
    const models = await client.models.list();
    expect(models.data.map((m) => m.id)).toEqual([t.model]);
    expect((await client.models.retrieve(t.model)).id).toBe(t.model);
    expect((await fetch(`${t.url}/health`)).status).toBe(200);
  });

  it('/tokenize and /detokenize round-trip', async () => {
    const tk = await post(`${t.url}/tokenize`, { prompt: TEXT });
    expect(tk.status).toBe(200);
    expect(tk.body).toMatchObject({ tokens: tok.encode(TEXT), count: tok.encode(TEXT).length, max_model_len: 4096 });
    const dt = await post(`${t.url}/detokenize`, { tokens: tk.body.tokens });
    expect(dt.body).toEqual({ prompt: TEXT });
  });

  it('/metrics: vLLM-style request metrics, KV usage, and rows per expert and per worker for each MoE layer', async () => {
    await completion({ model: t.model, prompt: LEN7, max_tokens: 3, temperature: 0 });
    const text = await (await fetch(`${t.url}/metrics`)).text();
    for (const name of ['num_requests_running', 'num_requests_waiting', 'kv_cache_usage_perc', 'kv_cache_bytes_per_token', 'prompt_tokens_total', 'generation_tokens_total']) {
      expect(parseMetric(text, `moeserve:${name}`), name).toBeDefined();
    }
    expect(parseMetric(text, 'moeserve:time_to_first_token_seconds_count')).toBeGreaterThan(0);
    expect(parseMetric(text, 'moeserve:inter_token_latency_seconds_count')).toBeGreaterThan(0);
    expect(parseMetric(text, 'moeserve:e2e_request_latency_seconds_count')).toBeGreaterThan(0);
    expect(parseMetric(text, 'moeserve:kv_cache_bytes_per_token')).toBe(768); // 3 layers × 2 (K,V) × 2 KV heads × 16 × 4 bytes
    // the decoding sequences' past kept between steps: slots × rows (a multiple of 64) × those 768 bytes
    const past = parseMetric(text, 'moeserve:decode_past_bytes')!;
    expect(past).toBeGreaterThan(0);
    expect(past % (64 * 768)).toBe(0);
    expect(text).toContain(`model_name="${t.model}"`);
    for (const layer of ['0', '1', '2']) {
      const experts = Array.from({ length: 8 }, (_, e) => parseMetric(text, 'moeserve:expert_rows_total', { layer, expert: String(e) })!);
      const rows = parseMetric(text, 'moeserve:worker_rows_total', { layer, worker: 'local' })!;
      expect(rows).toBeGreaterThan(0);
      expect(experts.reduce((a, b) => a + b, 0)).toBe(2 * rows); // top-2: two (token, expert) rows per token row
      expect(parseMetric(text, 'moeserve:layer_balancedness', { layer })).toBe(1); // one worker
      const eb = parseMetric(text, 'moeserve:layer_expert_balancedness', { layer })!;
      expect(eb).toBeCloseTo(experts.reduce((a, b) => a + b, 0) / 8 / Math.max(...experts), 9);
    }
    expect(await metric(t.url, 'moeserve:request_success_total', { finished_reason: 'length' })).toBeGreaterThan(0);
  });

  it('/metrics: a repeated prompt hits the prefix cache (its full 16-token blocks)', async () => {
    const prompt = [7, 8, 9, ...LEN33]; // 36 tokens, a first block no other test sends
    const hits0 = (await metric(t.url, 'moeserve:prefix_cache_hits_total'))!;
    const first = await completion({ model: t.model, prompt, max_tokens: 4, temperature: 0 });
    const second = await completion({ model: t.model, prompt, max_tokens: 4, temperature: 0 });
    expect(second.choices[0]!.text).toBe(first.choices[0]!.text);
    expect((await metric(t.url, 'moeserve:prefix_cache_hits_total'))! - hits0).toBe(32);
    expect(await metric(t.url, 'moeserve:prefix_cache_queries_total')).toBeGreaterThan(0);
  });
});

describe('logs', () => {
  it('every line of a request carries its request id (X-Request-Id honoured); prompt text is never logged', async () => {
    const secret = 'zebra quartz nebula';
    const r = await post(`${t.url}/v1/completions`, { model: t.model, prompt: secret, max_tokens: 2, temperature: 0, not_a_field: 1 }, { 'x-request-id': 'test-req-42' });
    expect(r.status).toBe(200);
    expect(r.body.id).toBe('cmpl-test-req-42');
    expect(r.headers.get('x-request-id')).toBe('test-req-42');
    const lines = t.logs.map((l) => JSON.parse(l) as Record<string, unknown>);
    const mine = lines.filter((l) => l['reqId'] === 'test-req-42');
    expect(mine.map((l) => l['msg'])).toEqual(expect.arrayContaining(['incoming request', 'generation finished', 'request completed']));
    expect(mine.find((l) => Array.isArray(l['ignoredFields']))?.['ignoredFields']).toEqual(['not_a_field']);
    expect(t.logs.join('\n')).not.toContain('zebra');
    // lines about requests always carry a reqId
    for (const l of lines) if ('req' in l || 'res' in l || l['msg'] === 'generation finished') expect(typeof l['reqId']).toBe('string');
  });
});
