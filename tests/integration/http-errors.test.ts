/**
 * Every error status of the API over real HTTP, with OpenAI's error shape
 * {"error": {"message", "type", "param", "code"}}, through the official `openai` client:
 * - 400: validation (naming the param), context length (naming both numbers), token ids outside
 *   the vocabulary; malformed bodies; a table of bad inputs, none of which gives a 500;
 * - 401: missing or wrong API key (/health and /metrics stay open);
 * - 404: unknown model, unknown route;
 * - 429: the waiting queue at its bound (max-num-seqs 1, max-waiting 1);
 * - 503: experts unavailable: two real `moeserve worker` processes, one killed.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_TOPOLOGY } from '../../router/index.js';
import { spawnWorker, stopProcess, type WorkerProcess } from '../../workers/src/spawn.js';
import { fixtureDir, loadExpected } from '../helpers/golden.js';
import { expectApiError, metric, parseMetric, post, startTestServer, waitFor, type TestServer } from './http-helpers.js';

const KEY = 'sk-test-key';
const LEN7 = loadExpected('mixtral-tiny').prompts.len7.input_ids;

describe('errors (server with an API key, max-num-seqs 1, max-waiting 1)', () => {
  let t: TestServer;
  let client: OpenAI;
  beforeAll(async () => {
    t = await startTestServer({ http: { apiKey: KEY, maxWaiting: 1 }, engine: { maxNumSeqs: 1 } });
    client = t.client;
  });
  afterAll(async () => t?.close());

  const ok = { model: 'mixtral-tiny', prompt: LEN7, max_tokens: 2, temperature: 0 };

  it('EXPECTED FAILURE - 400 validation errors name the param', async () => {
    const cases: [Record<string, unknown>, string][] = [
      [{ temperature: -1 }, 'temperature'],
      [{ top_p: 0 }, 'top_p'],
      [{ top_k: 1.5 }, 'top_k'],
      [{ max_tokens: 0 }, 'max_tokens'],
      [{ n: 0 }, 'n'],
      [{ logprobs: 21 }, 'logprobs'],
      [{ presence_penalty: 3 }, 'presence_penalty'],
      [{ seed: 'x' }, 'seed'],
      [{ stop: 5 }, 'stop'],
      [{ stream_options: { include_usage: true } }, 'stream_options'],
      [{ prompt: [] }, 'prompt'],
      [{ prompt: [[1, 2], 'x'] }, 'prompt'],
      [{ prompt: '' }, 'prompt'],
      [{ min_tokens: 5 }, 'min_tokens'],
      [{ suffix: 'x' }, 'suffix'],
      [{ echo: 'yes' }, 'echo'],
    ];
    for (const [patch, param] of cases) {
      await expectApiError(() => client.completions.create({ ...ok, ...patch } as OpenAI.CompletionCreateParamsNonStreaming), 400, { code: 'invalid_request', param, type: 'invalid_request_error' });
    }
    const chat = { model: 'mixtral-tiny', messages: [{ role: 'user' as const, content: 'hi' }], max_tokens: 2 };
    await expectApiError(() => client.chat.completions.create({ ...chat, messages: [] }), 400, { code: 'invalid_request', param: 'messages' });
    await expectApiError(() => client.chat.completions.create({ ...chat, top_logprobs: 2 }), 400, { code: 'invalid_request', param: 'top_logprobs' });
    await expectApiError(() => client.chat.completions.create({ ...chat, messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'http://x' } }] }] }), 400, { code: 'invalid_request', param: 'messages' });
    await expectApiError(() => client.chat.completions.create({ ...chat, response_format: { type: 'json_object' } }), 400, { code: 'invalid_request', param: 'response_format' });
  });

  it('EXPECTED FAILURE - 400 context length exceeded names the limit and the request', async () => {
    await expectApiError(() => client.completions.create({ ...ok, max_tokens: 5000 }), 400, {
      code: 'context_length_exceeded',
      param: 'max_tokens',
      message: new RegExp(`maximum context length is 4096 tokens.*you requested ${LEN7.length + 5000} tokens \\(${LEN7.length} in the prompt, 5000 in the completion\\)`),
    });
    const long = Array.from({ length: 4100 }, () => 65);
    await expectApiError(() => client.completions.create({ ...ok, prompt: long }), 400, { code: 'context_length_exceeded', param: 'prompt', message: /4096.*4102/ });
    await expectApiError(() => client.chat.completions.create({ model: 'mixtral-tiny', messages: [{ role: 'user', content: 'hi' }], max_completion_tokens: 9000 }), 400, {
      code: 'context_length_exceeded',
      param: 'max_completion_tokens',
    });
  });

  it('EXPECTED FAILURE - 400 token ids outside the vocabulary (prompt, logit_bias, stop_token_ids)', async () => {
    await expectApiError(() => client.completions.create({ ...ok, prompt: [1, 2, 512] }), 400, { code: 'invalid_token_id', param: 'prompt', message: /512.*\[0, 512\)/ });
    await expectApiError(() => client.completions.create({ ...ok, prompt: [[1], [-1]] }), 400, { code: 'invalid_token_id', param: 'prompt' });
    await expectApiError(() => client.completions.create({ ...ok, logit_bias: { '9999': 5 } }), 400, { code: 'invalid_token_id', param: 'logit_bias' });
    await expectApiError(() => client.completions.create({ ...ok, stop_token_ids: [600] } as OpenAI.CompletionCreateParamsNonStreaming), 400, { code: 'invalid_token_id', param: 'stop_token_ids' });
    const dt = await post(`${t.url}/detokenize`, { tokens: [1, 100000] }, { authorization: `Bearer ${KEY}` });
    expect(dt.status).toBe(400);
    expect(dt.body.error).toMatchObject({ code: 'invalid_token_id', param: 'tokens' });
  });

  it('EXPECTED FAILURE - bad input never gives a 500: malformed bodies and a table of wrong shapes are 4xx', async () => {
    const auth = { authorization: `Bearer ${KEY}` };
    const raw = async (body: string, headers: Record<string, string> = {}) => post(`${t.url}/v1/completions`, body, { ...auth, ...headers });
    const malformed = [await raw('{"prompt": [1,2'), await raw('[1,2,3]'), await raw('"text"'), await raw('null'), await raw(''), await raw('prompt=hi', { 'content-type': 'text/plain' }), await raw('{"__proto__": {"x": 1}}')];
    for (const r of malformed) {
      expect(r.status).toBe(400);
      expect(Object.keys(r.body.error).sort()).toEqual(['code', 'message', 'param', 'type']);
      expect(r.body.error.type).toBe('invalid_request_error');
    }
    const bodies: unknown[] = [
      { prompt: { a: 1 } },
      { prompt: [1.5] },
      { prompt: [[]] },
      { prompt: 'x', n: 1e9 },
      { prompt: 'x', max_tokens: '16' },
      { prompt: 'x', logit_bias: [1, 2] },
      { prompt: 'x', logit_bias: { abc: 1 } },
      { prompt: 'x', logit_bias: { 5: 1000 } },
      { prompt: 'x', stop: [1] },
      { prompt: 'x', stream: 'true' },
      { prompt: 'x', stream_options: 'yes', stream: true },
      { prompt: 'x', temperature: null, top_p: null, n: null },
      { prompt: 'x', best_of: 3 },
      { prompt: 'x', model: 42 },
    ];
    for (const body of bodies) {
      const r = await post(`${t.url}/v1/completions`, body, auth);
      expect(r.status, JSON.stringify(body)).toBeLessThan(500);
    }
    const chats: unknown[] = [{}, { messages: 'hi' }, { messages: [{}] }, { messages: [{ role: 'user', content: 5 }] }, { messages: [{ role: 'user', content: [{ type: 'text' }] }] }, { messages: [{ role: 'user', content: 'x' }], tool_choice: 'required' }];
    for (const body of chats) {
      const r = await post(`${t.url}/v1/chat/completions`, body, auth);
      expect(r.status, JSON.stringify(body)).toBe(400);
    }
    expect((await fetch(`${t.url}/health`)).status).toBe(200);
  });

  it('EXPECTED FAILURE - 401 without the key or with a wrong one; /health and /metrics stay open', async () => {
    const noKey = new OpenAI({ baseURL: `${t.url}/v1`, apiKey: 'wrong-key', maxRetries: 0 });
    await expectApiError(() => noKey.completions.create(ok), 401, { code: 'unauthorized', type: 'authentication_error', message: /Invalid API key/ });
    await expectApiError(() => noKey.models.list(), 401, { code: 'unauthorized' });
    const none = await post(`${t.url}/v1/completions`, ok);
    expect(none.status).toBe(401);
    expect(none.body.error).toEqual({ message: expect.stringMatching(/Missing API key/), type: 'authentication_error', param: null, code: 'unauthorized' });
    expect((await fetch(`${t.url}/health`)).status).toBe(200);
    expect((await fetch(`${t.url}/metrics`)).status).toBe(200);
    expect((await client.completions.create(ok)).choices).toHaveLength(1);
  });

  it('EXPECTED FAILURE - 404 for an unknown model and an unknown route', async () => {
    await expectApiError(() => client.completions.create({ ...ok, model: 'gpt-17' }), 404, { code: 'not_found', param: 'model', type: 'not_found_error', message: /gpt-17/ });
    await expectApiError(() => client.chat.completions.create({ model: 'gpt-17', messages: [{ role: 'user', content: 'x' }] }), 404, { code: 'not_found', param: 'model' });
    await expectApiError(() => client.models.retrieve('gpt-17'), 404, { code: 'not_found' });
    const r = await fetch(`${t.url}/v1/engines`, { headers: { authorization: `Bearer ${KEY}` } });
    expect(r.status).toBe(404);
    expect(((await r.json()) as { error: { code: string } }).error.code).toBe('not_found');
  });

  it('EXPECTED FAILURE - 429 when the waiting queue is full; the running and waiting requests are unaffected', async () => {
    const long = { model: 'mixtral-tiny', prompt: LEN7, max_tokens: 4000, temperature: 0, ignore_eos: true, stream: true as const };
    const a = new AbortController();
    const streamA = await client.completions.create(long, { signal: a.signal });
    const itA = streamA[Symbol.asyncIterator]();
    await itA.next(); // A holds the only seat
    const b = new AbortController();
    const pendingB = client.completions.create(long, { signal: b.signal }).catch((e: unknown) => e);
    await waitFor('B queued', async () => (await metric(t.url, 'moeserve:num_requests_waiting')) === 1);
    await expectApiError(() => client.completions.create(ok), 429, { code: 'queue_full', type: 'rate_limit_error', message: /waiting, limit 1/ });
    expect((await itA.next()).done).toBe(false); // A still streams
    a.abort();
    b.abort();
    await pendingB;
    await waitFor('KV blocks freed', async () => (await metric(t.url, 'moeserve:kv_cache_usage_perc')) === 0 && (await metric(t.url, 'moeserve:num_requests_waiting')) === 0);
    expect((await client.completions.create(ok)).choices).toHaveLength(1);
  });
});

describe('503: experts unavailable (two real worker processes, one killed)', () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'moeserve-http-'));
  const workers: WorkerProcess[] = [];
  let t: TestServer;
  let local: TestServer;

  beforeAll(async () => {
    const sockets = ['0-3', '4-7'].map((experts, i) => {
      const socket = path.join(tmp, `w${i}.sock`);
      workers.push(spawnWorker({ args: ['--model', fixtureDir('mixtral-tiny'), '--experts', experts, '--socket', socket, '--log-level', 'error', '--exit-with-stdin'], name: `w${i}`, startTimeoutMs: 60_000 }));
      return socket;
    });
    await Promise.all(workers.map((w) => w.ready));
    [t, local] = await Promise.all([
      startTestServer({
        engine: { experts: { ...DEFAULT_TOPOLOGY, workerAddrs: sockets.map((s) => `unix:${s}`), dispatch: { ...DEFAULT_TOPOLOGY.dispatch, deadlineMs: 2000, reconnectMinMs: 50, reconnectMaxMs: 200 } } },
      }),
      startTestServer({ http: { requestTimeoutMs: 1500 } }),
    ]);
  });
  afterAll(async () => {
    await Promise.all([t?.close(), local?.close()]);
    await Promise.all(workers.map((w) => stopProcess(w.child)));
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  it('with both workers up, the output equals the in-process output; /metrics shows rows per worker', async () => {
    const req = { model: 'mixtral-tiny', prompt: LEN7, max_tokens: 12, temperature: 0 };
    const [viaWorkers, inProcess] = await Promise.all([t.client.completions.create(req), local.client.completions.create(req)]);
    expect(viaWorkers.choices[0]!.text).toBe(inProcess.choices[0]!.text);
    const text = await (await fetch(`${t.url}/metrics`)).text();
    for (const layer of ['0', '1', '2']) {
      // Messages (token rows) per worker, and the load: (token, expert) rows, what balancedness is of.
      const m0 = parseMetric(text, 'moeserve:worker_rows_total', { layer, worker: 'w0' })!;
      const m1 = parseMetric(text, 'moeserve:worker_rows_total', { layer, worker: 'w1' })!;
      const w0 = parseMetric(text, 'moeserve:worker_expert_rows_total', { layer, worker: 'w0' })!;
      const w1 = parseMetric(text, 'moeserve:worker_expert_rows_total', { layer, worker: 'w1' })!;
      expect(m0 + m1).toBeGreaterThan(0);
      expect(w0 + w1).toBeGreaterThanOrEqual(m0 + m1);
      expect(parseMetric(text, 'moeserve:layer_balancedness', { layer })).toBeCloseTo((w0 + w1) / 2 / Math.max(w0, w1), 9);
    }
  });

  it('EXPECTED FAILURE - a request past --request-timeout: 503 deadline_exceeded (an error event once streaming); its KV freed', async () => {
    const long = { model: 'mixtral-tiny', prompt: LEN7, max_tokens: 4000, temperature: 0, ignore_eos: true };
    await expectApiError(() => local.client.completions.create(long as OpenAI.CompletionCreateParamsNonStreaming), 503, { code: 'deadline_exceeded', type: 'service_unavailable_error', message: /1500 ms deadline/ });
    const stream = await local.client.completions.create({ ...long, stream: true } as OpenAI.CompletionCreateParamsStreaming);
    let chunks = 0;
    await expect(
      (async () => {
        for await (const _ of stream) chunks++;
      })(),
    ).rejects.toThrow(/1500 ms deadline/);
    expect(chunks).toBeGreaterThan(0);
    await waitFor('KV freed', async () => (await metric(local.url, 'moeserve:kv_cache_usage_perc')) === 0);
    expect(await metric(local.url, 'moeserve:request_failure_total', { code: 'deadline_exceeded' })).toBe(2);
  });

  it('EXPECTED FAILURE - a worker killed: 503 experts_unavailable, streamed or not; the server stays up', async () => {
    const victim = workers[1]!.child;
    await new Promise<void>((resolve) => {
      victim.once('exit', () => resolve());
      victim.kill('SIGKILL');
    });
    const req = { model: 'mixtral-tiny', prompt: LEN7, max_tokens: 8, temperature: 0 };
    await expectApiError(() => t.client.completions.create(req), 503, { code: 'experts_unavailable', type: 'service_unavailable_error' });
    await expectApiError(() => t.client.completions.create({ ...req, stream: true }), 503, { code: 'experts_unavailable' });
    await expectApiError(() => t.client.chat.completions.create({ model: 'mixtral-tiny', messages: [{ role: 'user', content: 'x' }], max_tokens: 4 }), 503, { code: 'experts_unavailable' });
    // Health says so (it answered 200 here before): the experts of the killed worker are named.
    const health = await fetch(`${t.url}/health`);
    expect(health.status).toBe(503);
    expect(await health.json()).toMatchObject({ status: 'unavailable', error: { code: 'experts_unavailable' } });
    expect(await metric(t.url, 'moeserve:worker_up', { worker: 'w1' })).toBe(0);
    expect(await metric(t.url, 'moeserve:kv_cache_usage_perc')).toBe(0);
    expect(await metric(t.url, 'moeserve:request_failure_total', { code: 'experts_unavailable' })).toBe(3);
  });
});
