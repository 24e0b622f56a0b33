/**
 * Logprobs of byte tokens (issue 13, item 8), on a real server with mixtral-tiny (a byte-level BPE
 * with all 256 byte tokens: a random model samples lone bytes >= 0x80 often). Tokens that are not
 * valid UTF-8 on their own are named "bytes:\xNN" (vLLM's and OpenAI's convention), so:
 * - every top_logprobs dict has distinct keys, as many as asked (+1 when the sampled token is not
 *   among them), and the sampled token is a key holding its own logprob;
 * - text_offset advances by each token's text: a token with text starts at its offset.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { post, startTestServer, type TestServer } from './http-helpers.js';

describe('logprobs of byte tokens', () => {
  let t: TestServer;
  beforeAll(async () => {
    t = await startTestServer();
  });
  afterAll(async () => t?.close());

  it('completions: distinct top keys, the sampled token among them, offsets advancing by each token', async () => {
    let byteKeys = 0;
    for (const seed of [1, 2, 3, 4]) {
      const r = await post(`${t.url}/v1/completions`, { model: t.model, prompt: 'hello', max_tokens: 16, logprobs: 5, temperature: 1, seed });
      expect(r.status).toBe(200);
      const { text, logprobs: lp } = r.body.choices[0];
      const n = lp.tokens.length;
      expect(lp.top_logprobs).toHaveLength(n);
      for (let i = 0; i < n; i++) {
        const top = lp.top_logprobs[i] as Record<string, number>;
        const keys = Object.keys(top);
        const token = lp.tokens[i] as string;
        // JSON objects cannot hold duplicate keys: a collision shows as fewer than 5 keys.
        expect([5, 6], `position ${i}: ${JSON.stringify(top)}`).toContain(keys.length);
        expect(keys).toContain(token);
        expect(top[token], `position ${i}: sampled ${JSON.stringify(token)} in ${JSON.stringify(top)}`).toBe(lp.token_logprobs[i]);
        byteKeys += keys.filter((k) => /^bytes:(\\x[0-9a-f]{2})+$/.test(k)).length;
        expect(keys.some((k) => k === '\uFFFD')).toBe(false);
        if (i > 0) expect(lp.text_offset[i]).toBeGreaterThanOrEqual(lp.text_offset[i - 1]);
        // A token with text of its own starts at its offset (the old offsets pointed at the U+FFFD
        // of an invalid byte before it).
        if (!token.startsWith('bytes:')) expect(text.startsWith(token, lp.text_offset[i]), `${JSON.stringify(text)} at ${lp.text_offset[i]}: ${JSON.stringify(token)}`).toBe(true);
      }
    }
    expect(byteKeys, 'the seeds were chosen so that byte tokens appear').toBeGreaterThan(0);
  });

  it('chat: top_logprobs entries are distinct, with exact bytes', async () => {
    const r = await post(`${t.url}/v1/chat/completions`, { model: t.model, messages: [{ role: 'user', content: 'hi' }], max_tokens: 16, logprobs: true, top_logprobs: 5, temperature: 1, seed: 2 });
    expect(r.status).toBe(200);
    let byteTokens = 0;
    for (const e of r.body.choices[0].logprobs.content) {
      const names = e.top_logprobs.map((x: { token: string }) => x.token);
      expect(new Set(names).size, JSON.stringify(names)).toBe(5);
      for (const x of e.top_logprobs as { token: string; bytes: number[] }[]) {
        if (!x.token.startsWith('bytes:')) continue;
        byteTokens++;
        expect(x.token).toBe(`bytes:${x.bytes.map((b) => `\\x${b.toString(16).padStart(2, '0')}`).join('')}`);
      }
    }
    expect(byteTokens).toBeGreaterThan(0);
  });
});
