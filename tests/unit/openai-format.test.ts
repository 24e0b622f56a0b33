/**
 * Response formatting pieces: ordered JSON objects (top_logprobs dicts keep logprob order even
 * for integer-like keys), completions / chat logprobs shapes, and balancedness.
 */
import { describe, expect, it } from 'vitest';
import type { TokenLogprobs } from '../../services/gateway/src/engine/engine.js';
import { OrderedObject, toJson } from '../../services/gateway/src/http/json.js';
import { appendCompletionToken, appendPromptTokens, chatTokenLogprob, emptyCompletionLogprobs, TokenLabels } from '../../services/gateway/src/http/logprobs.js';
import { balance } from '../../services/gateway/src/http/metrics.js';
import { TextTokenizer } from '../../services/gateway/src/tokenizer/tokenizer.js';
import { fixtureDir } from '../helpers/golden.js';

const tok = TextTokenizer.fromDir(fixtureDir('mixtral-tiny'));
const lp = (logprob: number, ids: number[], lps: number[]): TokenLogprobs => ({ logprob, topIds: Int32Array.from(ids), topLogprobs: Float32Array.from(lps) });

describe('toJson', () => {
  it('equals JSON.stringify on plain values', () => {
    const v = { a: 1, b: [true, null, 'x"y'], c: { d: -0.5, e: undefined }, f: NaN, g: -Infinity };
    expect(toJson(v)).toBe(JSON.stringify(v));
  });

  it('OrderedObject keeps its order, integer-like keys included (a JS object would sort them first)', () => {
    const o = new OrderedObject([['b', 1], ['10', 2], ['2', 3]]);
    expect(toJson({ x: o })).toBe('{"x":{"b":1,"10":2,"2":3}}');
    expect(JSON.stringify({ b: 1, '10': 2, '2': 3 })).toBe('{"2":3,"10":2,"b":1}');
  });
});

describe('completions logprobs (vLLM format)', () => {
  it('top-N in order, then the chosen token when it is not among them; -inf floors at -9999', () => {
    const labels = new TokenLabels(tok, true);
    const out = emptyCompletionLogprobs();
    appendCompletionToken(out, labels, 7, lp(-3, [5, 6], [-0.5, -1]), 4);
    appendCompletionToken(out, labels, 5, lp(-0.5, [5, 6], [-0.5, -Infinity]), 6);
    expect(JSON.parse(toJson(out))).toEqual({
      tokens: ['token_id:7', 'token_id:5'],
      token_logprobs: [-3, -0.5],
      top_logprobs: [
        { 'token_id:5': -0.5, 'token_id:6': -1, 'token_id:7': -3 },
        { 'token_id:5': -0.5, 'token_id:6': -9999 },
      ],
      text_offset: [4, 6],
    });
    expect(Object.keys(JSON.parse(toJson(out)).top_logprobs[0])).toEqual(['token_id:5', 'token_id:6', 'token_id:7']);
  });

  it('an echoed prompt: the first token has no logprob; tokens are their text', () => {
    const labels = new TokenLabels(tok, false);
    const ids = tok.encode('hello world');
    const out = emptyCompletionLogprobs();
    const promptLps = ids.slice(1).map((id) => lp(-1, [id], [-1]));
    appendPromptTokens(out, labels, ids, promptLps, ids.map((_, i) => i));
    expect(out.tokens.join('')).toBe('hello world');
    expect(out.token_logprobs[0]).toBeNull();
    expect(out.top_logprobs[0]).toBeNull();
    expect(out.token_logprobs.slice(1).every((x) => x === -1)).toBe(true);
  });

  it('chat logprobs carry bytes', () => {
    const labels = new TokenLabels(tok, false);
    const id = tok.encode('a')[0]!;
    expect(chatTokenLogprob(labels, id, lp(-0.25, [id], [-0.25]))).toEqual({ token: 'a', logprob: -0.25, bytes: [97], top_logprobs: [{ token: 'a', logprob: -0.25, bytes: [97] }] });
  });
});

describe('balance (mean / max rows)', () => {
  it.each([
    [[], 1],
    [[0, 0], 1],
    [[5, 5], 1],
    [[1, 3], 2 / 3],
    [[0, 0, 0, 8], 0.25],
  ])('%j -> %d', (rows, b) => expect(balance(rows)).toBeCloseTo(b, 12));
});
