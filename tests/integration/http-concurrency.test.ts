/**
 * Continuous batching seen from the API (mixtral-tiny, real HTTP, the official client):
 * - 32 concurrent greedy streams, prompts of 1 to 150 tokens, prefilled in 64-token chunks
 *   while the others decode: each stream's text equals the same request run alone;
 * - a client that disconnects (AbortController, streamed or not) is cancelled and its KV
 *   blocks are freed at once: the KV usage metric returns to idle.
 */
import type OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadExpected } from '../helpers/golden.js';
import { expectApiError, metric, startTestServer, waitFor, type TestServer } from './http-helpers.js';

const expected = loadExpected('mixtral-tiny');

/** Seeded prompts: lengths 1..150, ids in [3, 509] (no special tokens). */
function prompts(count: number): number[][] {
  let s = 2024;
  const next = () => (s = (s * 1103515245 + 12345) >>> 0);
  return Array.from({ length: count }, (_, i) => {
    if (i === 0) return expected.prompts.len1.input_ids;
    if (i === 1) return expected.prompts.len33.input_ids;
    const len = i % 8 === 0 ? 100 + (next() % 51) : 1 + (next() % 40);
    return Array.from({ length: len }, () => 3 + (next() % 507));
  });
}

let t: TestServer;
let client: OpenAI;
beforeAll(async () => {
  t = await startTestServer({ engine: { maxBatchedTokens: 64, maxNumSeqs: 64 } });
  client = t.client;
});
afterAll(async () => t?.close());

describe('continuous batching over HTTP', () => {
  it('32 concurrent greedy streams: each equals its output alone', async () => {
    const ps = prompts(32);
    const req = (prompt: number[]) => ({ model: t.model, prompt, max_tokens: 24, temperature: 0, ignore_eos: true });
    const alone: string[] = [];
    for (const p of ps) alone.push((await client.completions.create(req(p))).choices[0]!.text);
    const together = await Promise.all(
      ps.map(async (p) => {
        let text = '';
        let finish: string | null = null;
        for await (const c of await client.completions.create({ ...req(p), stream: true })) {
          text += c.choices[0]?.text ?? '';
          finish = c.choices[0]?.finish_reason ?? finish;
        }
        return { text, finish };
      }),
    );
    for (let i = 0; i < ps.length; i++) {
      expect(together[i]!.text, `prompt ${i} (${ps[i]!.length} tokens)`).toBe(alone[i]);
      expect(together[i]!.finish).toBe('length');
    }
    expect(await metric(t.url, 'moeserve:kv_cache_usage_perc')).toBe(0);
  });

  it('a client abort mid-stream cancels the sequence: KV usage returns to idle', async () => {
    const ctl = new AbortController();
    const long: OpenAI.CompletionCreateParamsStreaming & { ignore_eos: boolean } = { model: t.model, prompt: expected.prompts.len33.input_ids, max_tokens: 4000, temperature: 0, ignore_eos: true, stream: true };
    const stream = await client.completions.create(long, { signal: ctl.signal });
    let chunks = 0;
    for await (const _ of stream) {
      if (++chunks < 5) continue;
      ctl.abort(); // the connection closes; the server must notice by itself
      break;
    }
    await waitFor('KV usage back to 0 and nothing running', async () => (await metric(t.url, 'moeserve:kv_cache_usage_perc')) === 0 && (await metric(t.url, 'moeserve:num_requests_running')) === 0);
    const generated = await metric(t.url, 'moeserve:generation_tokens_total');
    await new Promise((r) => setTimeout(r, 100));
    expect(await metric(t.url, 'moeserve:generation_tokens_total')).toBe(generated); // nothing generates for it any more
  });

  it('a client abort of a non-streaming request frees its KV blocks too', async () => {
    const ctl = new AbortController();
    const long: OpenAI.CompletionCreateParamsNonStreaming & { ignore_eos: boolean } = { model: t.model, prompt: expected.prompts.len7.input_ids, max_tokens: 4000, n: 3, temperature: 0, ignore_eos: true };
    const pending = client.completions.create(long, { signal: ctl.signal });
    await waitFor('the request running', async () => (await metric(t.url, 'moeserve:kv_cache_usage_perc'))! > 0);
    ctl.abort();
    await expect(pending).rejects.toThrow(/abort/i);
    await waitFor('KV usage back to 0', async () => (await metric(t.url, 'moeserve:kv_cache_usage_perc')) === 0 && (await metric(t.url, 'moeserve:num_requests_running')) === 0);
  });

  it('shutdown: new requests get 503, a stream still running after the grace ends with an error event, the engine stops', async () => {
    const s2 = await startTestServer(); // shutdownGraceMs 500
    const long: OpenAI.CompletionCreateParamsStreaming & { ignore_eos: boolean } = { model: s2.model, prompt: expected.prompts.len7.input_ids, max_tokens: 4000, temperature: 0, ignore_eos: true, stream: true };
    const it = (await s2.client.completions.create(long))[Symbol.asyncIterator]();
    expect((await it.next()).done).toBe(false);
    const closing = s2.close();
    await expectApiError(() => s2.client.completions.create({ model: s2.model, prompt: [1, 2], max_tokens: 2 }), 503, { code: 'resource_exhausted', message: /shutting down/ });
    await expect(
      (async () => {
        while (!(await it.next()).done);
      })(),
    ).rejects.toThrow(/shutting down/);
    await closing;
    expect(s2.server.engine.healthy).toBe(false);
  });
});
