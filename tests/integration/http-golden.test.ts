/**
 * The golden fixtures over HTTP: for each fixture and prompt, POST /v1/completions with the
 * fixture's token ids, temperature 0, max_tokens 16, echo, logprobs 5 and
 * return_tokens_as_token_ids (ignore_eos: the fixtures treat EOS as an ordinary token). The
 * response's tokens are the prompt then the fixture's greedy ids, and at each prompt position p
 * the first five keys of the next token's top_logprobs are the fixture's top5_ids[p], in order.
 */
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FIXTURES, loadExpected, PROMPTS } from '../helpers/golden.js';
import { startTestServer, type TestServer } from './http-helpers.js';

const idOf = (token: string) => {
  expect(token).toMatch(/^token_id:\d+$/);
  return Number(token.slice('token_id:'.length));
};

for (const fixture of FIXTURES) {
  describe(`golden over HTTP: ${fixture}`, () => {
    const expected = loadExpected(fixture);
    let t: TestServer;
    beforeAll(async () => {
      t = await startTestServer({ fixture });
    });
    afterAll(async () => t?.close());

    for (const p of PROMPTS) {
      it(`${p}: greedy ids and per-position top-5 ids`, async () => {
        const e = expected.prompts[p];
        const params = { model: fixture, prompt: e.input_ids, temperature: 0, max_tokens: 16, echo: true, logprobs: 5, return_tokens_as_token_ids: true, ignore_eos: true };
        const r = await t.client.completions.create(params as OpenAI.CompletionCreateParamsNonStreaming);
        const lp = r.choices[0]!.logprobs!;
        const P = e.input_ids.length;
        expect(lp.tokens!.map(idOf)).toEqual([...e.input_ids, ...e.greedy_ids]);
        expect(lp.top_logprobs![0]).toBeNull();
        for (let pos = 0; pos < P; pos++) {
          const keys = Object.keys(lp.top_logprobs![pos + 1]!).slice(0, 5).map(idOf);
          expect(keys, `position ${pos}`).toEqual(e.top5_ids[pos]);
        }
        expect(r.choices[0]!.finish_reason).toBe('length');
        expect(r.usage).toEqual({ prompt_tokens: P, completion_tokens: 16, total_tokens: P + 16 });
      });
    }
  });
}
