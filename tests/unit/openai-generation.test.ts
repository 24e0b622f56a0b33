/**
 * ChoiceRun (services/gateway/src/http/generation.ts): engine events of one sequence -> the
 * text that is final, with the mixtral-tiny byte-level tokenizer. Stop strings across tokens,
 * stop tokens left out of the text, UTF-8 characters split over byte tokens held whole, and
 * offsets into the text.
 */
import { describe, expect, it } from 'vitest';
import type { FinishReason } from '../../services/gateway/src/engine/engine.js';
import { ChoiceRun, type RunOptions } from '../../services/gateway/src/http/generation.js';
import { DEFAULT_SAMPLING } from '../../services/gateway/src/sampling/params.js';
import { TextTokenizer } from '../../services/gateway/src/tokenizer/tokenizer.js';
import { fixtureDir } from '../helpers/golden.js';

const tok = TextTokenizer.fromDir(fixtureDir('mixtral-tiny'));
const EOS = 511;
const noObserver = { promptTokens() {}, firstToken() {}, interToken() {}, generationToken() {}, sequenceFinished() {}, requestFailed() {} };

function choice(opts: Partial<RunOptions> = {}): ChoiceRun {
  const request = { promptIds: tok.encode('Q:'), sampling: DEFAULT_SAMPLING, maxTokens: 100, stopTokenIds: [EOS], logprobs: null, promptLogprobs: null };
  return new ChoiceRun({ index: 0, promptIndex: 0, request }, tok, { stop: [], includeStopStr: false, skipSpecialTokens: true, timeoutMs: 0, startedAt: 0, observer: noObserver, ...opts });
}

/** Feeds ids (the last one with `finish`) until the choice finishes, as RequestRun does; each event's text. */
function feed(c: ChoiceRun, ids: number[], finish: FinishReason | null = 'length'): string[] {
  const out: string[] = [];
  for (let i = 0; i < ids.length && c.finishReason === null; i++) {
    out.push(c.accept({ tokenId: ids[i]!, logprobs: null, promptLogprobs: null, finishReason: i === ids.length - 1 ? finish : null }).text);
  }
  return out;
}

/** One id per byte of s (the fixture's 256 byte tokens). */
function byteIds(s: string): number[] {
  return [...Buffer.from(s)].map((b) => {
    for (let i = 0; i < tok.vocabSize; i++) {
      const bytes = tok.tokenBytes(i);
      if (bytes.length === 1 && bytes[0] === b) return i;
    }
    throw new Error(`no byte token ${b}`);
  });
}

describe('ChoiceRun', () => {
  it('a character split over three byte tokens comes out whole on the third', () => {
    const c = choice();
    expect(feed(c, byteIds('a世b'))).toEqual(['a', '', '', '世', 'b']);
    expect(c.text).toBe('a世b');
    expect(c.offsets).toEqual([0, 1, 1, 1, 2]); // held bytes share the completing token's offset
    expect(c.finishReason).toBe('length');
  });

  it('a stop string across tokens: the text ends before it, nothing of it is ever sent', () => {
    const c = choice({ stop: ['lo wo'] });
    const deltas = feed(c, byteIds('hello world'), null);
    expect(deltas.join('')).toBe('hel');
    expect(c.text).toBe('hel');
    expect(c.finishReason).toBe('stop');
    expect(c.stopReason).toBe('lo wo');
    expect(c.tokenIds).toHaveLength(8); // 'hello wo': the token completing the stop string is the last
  });

  it('include_stop_str_in_output keeps the stop string', () => {
    const c = choice({ stop: ['lo'], includeStopStr: true });
    expect(feed(c, byteIds('hello'), null).join('')).toBe('hello');
    expect(c.finishReason).toBe('stop');
  });

  it('text held as a possible stop-string prefix is released at a length finish', () => {
    const c = choice({ stop: ['xyz'] });
    expect(feed(c, byteIds('abxy'))).toEqual(['a', 'b', '', 'xy']);
    expect(c.text).toBe('abxy');
    expect(c.finishReason).toBe('length');
  });

  it('a stop token ends the choice and is not part of the text (stop_reason is its id)', () => {
    const c = choice();
    const ids = [...byteIds('ok'), EOS];
    expect(feed(c, ids, 'stop').join('')).toBe('ok');
    expect(c).toMatchObject({ finishReason: 'stop', stopReason: EOS, tokenIds: ids, offsets: [0, 1, 2] });
  });

  it('a non-special stop token id is left out of the text too', () => {
    const c = choice();
    expect(feed(c, byteIds('abc'), 'stop').join('')).toBe('ab');
    expect(c.stopReason).toBe(byteIds('c')[0]);
  });
});
