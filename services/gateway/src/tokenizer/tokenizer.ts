/**
 * The text side of a Hugging Face checkpoint: text <-> token ids, token surface strings for
 * logprobs, and the chat template.
 *
 * Request text / chat messages (HTTP) -> `applyChatTemplate` -> prompt text -> `encode` ->
 * prompt ids (engine) ... generated ids -> `IncrementalDetokenizer` (streaming text) / `decode`.
 *
 * Encoding is @huggingface/tokenizers 0.2 (a JS port of HF `tokenizers`; checked against the Rust
 * library on the golden fixtures, Qwen3 and DeepSeek-V3). Decoding of byte-level tokenizers uses
 * our own byte table (byte-level.ts: faster, and Rust's exact semantics); other decoders
 * (Metaspace / ByteFallback / WordPiece) go through the library.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { ServerError } from '../../../common/src/errors.js';
import { ByteLevelTable } from './byte-level.js';
import { ChatTemplate, pickChatTemplate, type ChatMessage, type ChatTemplateOptions } from './chat-template.js';

export type { ChatMessage, ChatTemplateOptions } from './chat-template.js';

export interface EncodeOptions {
  /**
   * Add the special tokens this checkpoint's HF tokenizer adds (`tokenizer(text)` in
   * transformers): e.g. DeepSeek-V3's BOS (tokenizer_config `add_bos_token: true`), nothing for
   * Qwen or the golden fixtures. Pass false for text that already carries them — a rendered chat
   * template does, and transformers / vLLM encode it with add_special_tokens=False.
   * @defaultValue true
   */
  readonly addSpecialTokens?: boolean;
}

export interface DecodeOptions {
  /** Drop special added tokens (EOS, <|im_end|>, ...). HF's `decode` default. @defaultValue false */
  readonly skipSpecialTokens?: boolean;
}

type Json = Record<string, unknown>;

/** Special-token fields of tokenizer_config.json: a string, or an AddedToken object with `content`. */
function tokenString(v: unknown): string | null {
  if (typeof v === 'string') return v;
  if (typeof v === 'object' && v !== null && typeof (v as Json)['content'] === 'string') return (v as Json)['content'] as string;
  return null;
}

/** Throws on bytes that are not valid UTF-8 (a token holding part of a character). */
const STRICT_UTF8 = new TextDecoder('utf-8', { fatal: true });

const SPECIAL_TOKEN_KEYS = ['bos_token', 'eos_token', 'unk_token', 'sep_token', 'pad_token', 'cls_token', 'mask_token'] as const;

/** HF `clean_up_tokenization` (applied by `decode` only when the config enables it). */
function cleanUpTokenization(text: string): string {
  return text
    .replaceAll(' .', '.')
    .replaceAll(' ?', '?')
    .replaceAll(' !', '!')
    .replaceAll(' ,', ',')
    .replaceAll(" ' ", "'")
    .replaceAll(" n't", "n't")
    .replaceAll(" 'm", "'m")
    .replaceAll(" 's", "'s")
    .replaceAll(" 've", "'ve")
    .replaceAll(" 're", "'re");
}

function readJson(path: string, required: boolean): Json | null {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if (!required && (err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new ServerError('checkpoint_invalid', `cannot read ${path}: ${(err as Error).message}`, { cause: err });
  }
  try {
    const v: unknown = JSON.parse(text);
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not a JSON object');
    return v as Json;
  } catch (err) {
    throw new ServerError('checkpoint_invalid', `${path} is not valid JSON: ${(err as Error).message}`, { cause: err });
  }
}

function readText(path: string): string | null {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new ServerError('checkpoint_invalid', `cannot read ${path}: ${(err as Error).message}`, { cause: err });
  }
}

/** Optional files of a checkpoint folder that refine the tokenizer's metadata. */
export interface TokenizerExtras {
  /** special_tokens_map.json: fallback for special-token strings missing from the config. */
  readonly specialTokensMap?: Json | null;
  /** generation_config.json: its `eos_token_id` (number or list) joins `eosTokenIds`. */
  readonly generationConfig?: Json | null;
  /** A chat_template.jinja file's text (newer checkpoints keep the template there). */
  readonly chatTemplate?: string | null;
}

export class TextTokenizer {
  /** Number of token ids the tokenizer knows: highest id + 1 (HF `len(tokenizer)`). */
  readonly vocabSize: number;
  /** The BOS token's id, or null if the checkpoint has none (Qwen). */
  readonly bosTokenId: number | null;
  /**
   * Ids that end generation: the tokenizer's EOS first, then generation_config's `eos_token_id`
   * entries (Qwen3 lists both <|im_end|> and <|endoftext|>), without duplicates.
   */
  readonly eosTokenIds: number[];

  private readonly lib: Tokenizer;
  /** [V] 1 for special added tokens (what skipSpecialTokens drops). */
  private readonly specialMask: Uint8Array;
  private readonly byteTable: ByteLevelTable | null;
  private readonly cleanUpSpaces: boolean;
  /** tokenizer_config add_bos_token / add_eos_token when set explicitly, else null (see `encode`). */
  private readonly addBos: boolean | null;
  private readonly addEos: boolean | null;
  private readonly eosTokenId: number | null;
  private readonly templateSource: string | null;
  private readonly templateVars: Readonly<Record<string, unknown>>;
  private template: ChatTemplate | null = null;
  private maxTokenBytesCache = 0;
  /** Lazily filled: logprobs ask for the same few thousand ids over and over. */
  private readonly tokenTextCache: (string | undefined)[];
  private readonly logprobTokenCache: (string | undefined)[];

  /**
   * Loads tokenizer.json, tokenizer_config.json and, when present, special_tokens_map.json,
   * generation_config.json and chat_template.jinja from a Hugging Face checkpoint folder.
   * @throws ServerError 'checkpoint_invalid' when tokenizer.json is missing or malformed.
   */
  static fromDir(dir: string): TextTokenizer {
    const tokenizerJson = readJson(join(dir, 'tokenizer.json'), true)!;
    const config = readJson(join(dir, 'tokenizer_config.json'), false);
    return new TextTokenizer(tokenizerJson, config, {
      specialTokensMap: readJson(join(dir, 'special_tokens_map.json'), false),
      generationConfig: readJson(join(dir, 'generation_config.json'), false),
      chatTemplate: readText(join(dir, 'chat_template.jinja')),
    });
  }

  /** From a tokenizer.json path and an already parsed tokenizer_config.json (or null). */
  static fromFiles(tokenizerJsonPath: string, tokenizerConfig: object | null, extras: TokenizerExtras = {}): TextTokenizer {
    return new TextTokenizer(readJson(tokenizerJsonPath, true)!, tokenizerConfig as Json | null, extras);
  }

  constructor(tokenizerJson: Json, tokenizerConfig: Json | null, extras: TokenizerExtras = {}) {
    const config: Json = tokenizerConfig ?? {};
    try {
      this.lib = new Tokenizer(tokenizerJson, config);
    } catch (err) {
      throw new ServerError('checkpoint_invalid', `tokenizer.json is not a tokenizer this server can load: ${(err as Error).message}`, { cause: err });
    }
    const vocab = this.lib.model!.vocab; // id -> token string, added tokens included
    this.vocabSize = vocab.length;
    this.tokenTextCache = new Array<string | undefined>(this.vocabSize);
    this.logprobTokenCache = new Array<string | undefined>(this.vocabSize);

    this.specialMask = new Uint8Array(this.vocabSize);
    for (const [id, t] of this.lib.get_added_tokens_decoder()) if (t.special) this.specialMask[id] = 1;

    const decoder = (tokenizerJson['decoder'] ?? null) as Json | null;
    this.byteTable = decoder !== null && decoder['type'] === 'ByteLevel' ? new ByteLevelTable(vocab) : null;

    // transformers >= 4.45 defaults clean_up_tokenization_spaces to false (the JS library: true).
    this.cleanUpSpaces = config['clean_up_tokenization_spaces'] === true;

    const map = extras.specialTokensMap ?? {};
    const special = (key: string): string | null => tokenString(config[key]) ?? tokenString(map[key]);
    const idOf = (s: string | null): number | null => (s === null ? null : (this.lib.token_to_id(s) ?? null));
    this.bosTokenId = idOf(special('bos_token'));
    this.eosTokenId = idOf(special('eos_token'));
    const eos: number[] = this.eosTokenId === null ? [] : [this.eosTokenId];
    const genEos = extras.generationConfig?.['eos_token_id'];
    for (const id of Array.isArray(genEos) ? genEos : [genEos]) {
      if (typeof id === 'number' && Number.isInteger(id) && id >= 0 && !eos.includes(id)) eos.push(id);
    }
    this.eosTokenIds = eos;

    this.addBos = typeof config['add_bos_token'] === 'boolean' ? config['add_bos_token'] : null;
    this.addEos = typeof config['add_eos_token'] === 'boolean' ? config['add_eos_token'] : null;

    this.templateSource = extras.chatTemplate ?? pickChatTemplate(config['chat_template']);
    const vars: Record<string, unknown> = {};
    for (const key of SPECIAL_TOKEN_KEYS) {
      const s = special(key);
      if (s !== null) vars[key] = s;
    }
    const extra = config['additional_special_tokens'] ?? map['additional_special_tokens'];
    if (Array.isArray(extra)) vars['additional_special_tokens'] = extra.map(tokenString).filter((s) => s !== null);
    this.templateVars = Object.freeze(vars);
  }

  /**
   * Text -> ids. Special-token strings in the text (e.g. "<|im_start|>") become their ids, as HF
   * does by default (split_special_tokens=False).
   *
   * Special tokens: when tokenizer_config.json sets `add_bos_token` / `add_eos_token` explicitly
   * (Llama-style tokenizers: DeepSeek-V3 sets add_bos_token true, Qwen3 false), they decide, as
   * transformers' LlamaTokenizerFast rebuilds its post-processor from them; otherwise
   * tokenizer.json's post-processor decides (the golden fixtures: ByteLevel, which adds nothing).
   */
  encode(text: string, opts: EncodeOptions = {}): number[] {
    const add = opts.addSpecialTokens ?? true;
    if (this.addBos === null && this.addEos === null) return this.lib.encode(text, { add_special_tokens: add }).ids;
    const ids = this.lib.encode(text, { add_special_tokens: false }).ids;
    if (add && this.addBos === true && this.bosTokenId !== null) ids.unshift(this.bosTokenId);
    if (add && this.addEos === true && this.eosTokenId !== null) ids.push(this.eosTokenId);
    return ids;
  }

  /**
   * Ids -> text, as HF `tokenizer.decode(ids)`. Ids the tokenizer has no token for (a model's
   * padded vocab rows, e.g. Qwen3's 151,669..151,935) decode to nothing, as in HF and vLLM.
   * @throws ServerError 'invalid_token_id' for an id that is not a non-negative integer.
   */
  decode(ids: ArrayLike<number>, opts: DecodeOptions = {}): string {
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i]!;
      if (!Number.isInteger(id) || id < 0) throw new ServerError('invalid_token_id', `token id ${id} is not a valid token id`);
    }
    const text = this.decodeRange(ids, 0, ids.length, opts.skipSpecialTokens ?? false);
    return this.cleanUpSpaces ? cleanUpTokenization(text) : text;
  }

  /**
   * Decodes ids[start, end) without clean-up (what vLLM's incremental detokenizer uses: HF fast
   * tokenizers' `convert_tokens_to_string`). Ids are trusted to be non-negative integers.
   * For the byte-level path this allocates only the result string.
   */
  decodeRange(ids: ArrayLike<number>, start: number, end: number, skipSpecialTokens: boolean): string {
    if (end <= start) return '';
    if (this.byteTable !== null) return this.byteTable.decode(ids, start, end, skipSpecialTokens ? this.specialMask : null);
    const kept: number[] = [];
    for (let i = start; i < end; i++) {
      const id = ids[i]!;
      if (id >= this.vocabSize || this.lib.id_to_token(id) === undefined) continue;
      if (skipSpecialTokens && this.specialMask[id] === 1) continue;
      kept.push(id);
    }
    return kept.length === 0 ? '' : this.lib.decode(kept, { skip_special_tokens: false, clean_up_tokenization_spaces: false });
  }

  /**
   * The token's surface string for logprobs `token` fields: `decode([id])`, special tokens kept.
   * A token holding only part of a UTF-8 character (byte-level BPE splits CJK and emoji) shows
   * U+FFFD for each incomplete or invalid byte run, exactly as HF `decode([id])` and vLLM's
   * logprobs do: Qwen3's 'ĠðŁ' (bytes 20 F0 9F) is " \uFFFD". Use `tokenBytes` for the exact bytes
   * (OpenAI chat logprobs' `bytes`). Ids without a token give ''.
   */
  tokenText(id: number): string {
    if (!Number.isInteger(id) || id < 0) throw new ServerError('invalid_token_id', `token id ${id} is not a valid token id`);
    if (id >= this.vocabSize) return '';
    let s = this.tokenTextCache[id];
    if (s === undefined) {
      s = this.decode([id]);
      this.tokenTextCache[id] = s;
    }
    return s;
  }

  /**
   * The token as logprobs name it (vLLM's and OpenAI's convention): its text when its bytes are
   * valid UTF-8 on their own, else `bytes:` and each byte as `\xNN` (Qwen3's 'ĠðŁ', bytes 20 F0
   * 9F, is "bytes:\x20\xf0\x9f"). Distinct byte sequences get distinct names, where `tokenText`
   * would give both U+FFFD; ids without a token are "token_id:N".
   */
  logprobToken(id: number): string {
    if (!Number.isInteger(id) || id < 0) throw new ServerError('invalid_token_id', `token id ${id} is not a valid token id`);
    if (id >= this.vocabSize) return `token_id:${id}`;
    let s = this.logprobTokenCache[id];
    if (s === undefined) {
      const bytes = this.tokenBytes(id);
      if (bytes.length === 0) s = `token_id:${id}`;
      else {
        try {
          s = STRICT_UTF8.decode(bytes);
          // Special tokens and non-byte-level decoders: the decoded text (what tokenText shows).
          if (this.byteTable === null || this.specialMask[id] === 1) s = this.tokenText(id);
        } catch {
          s = 'bytes:';
          for (const b of bytes) s += `\\x${b.toString(16).padStart(2, '0')}`;
        }
      }
      this.logprobTokenCache[id] = s;
    }
    return s;
  }

  /**
   * The token's raw bytes: exact for byte-level tokenizers and for byte-fallback tokens
   * ("<0xE4>"); otherwise the UTF-8 of `tokenText`. Do not write to the result.
   */
  tokenBytes(id: number): Uint8Array {
    if (!Number.isInteger(id) || id < 0) throw new ServerError('invalid_token_id', `token id ${id} is not a valid token id`);
    if (id >= this.vocabSize) return new Uint8Array(0);
    if (this.byteTable !== null) return this.byteTable.tokenBytes(id);
    const m = /^<0x([0-9A-Fa-f]{2})>$/.exec(this.lib.id_to_token(id) ?? '');
    if (m) return Uint8Array.of(parseInt(m[1]!, 16));
    return new TextEncoder().encode(this.tokenText(id));
  }

  /** Whether the id is a special added token (EOS, <|im_start|>, ...): what skipSpecialTokens drops. */
  isSpecialToken(id: number): boolean {
    return id >= 0 && id < this.vocabSize && this.specialMask[id] === 1;
  }

  /** The token string as stored in the vocab ('Ġthe', '<|im_end|>'), or undefined. */
  idToToken(id: number): string | undefined {
    return this.lib.id_to_token(id);
  }

  /** The id of a vocab token string, or undefined. */
  tokenToId(token: string): number | undefined {
    return this.lib.token_to_id(token);
  }

  /**
   * Throws unless every id is an integer in [0, vocabSize): for token ids a client sends
   * (prompt as ids, logit_bias is checked against the model's vocab by the sampler params).
   * @throws ServerError 'invalid_token_id' with `param`.
   */
  validateIds(ids: ArrayLike<number>, param = 'prompt'): void {
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i]!;
      if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
        throw new ServerError('invalid_token_id', `token id ${id} is outside the vocabulary [0, ${this.vocabSize})`, { param });
      }
    }
  }

  get hasChatTemplate(): boolean {
    return this.templateSource !== null;
  }

  /**
   * Renders the checkpoint's chat template (see chat-template.ts for the variables). The result
   * already holds the template's special tokens (BOS, <|im_start|>...): encode it with
   * `{ addSpecialTokens: false }`.
   * @throws ServerError 'invalid_request' (param 'messages') if the checkpoint has no template or
   *   the template rejects the conversation.
   */
  applyChatTemplate(messages: readonly ChatMessage[], opts: ChatTemplateOptions): string {
    if (this.templateSource === null) {
      throw new ServerError(
        'invalid_request',
        'this model has no chat template (tokenizer_config.json has no chat_template); use /v1/completions with a prompt instead',
        { param: 'messages' },
      );
    }
    this.template ??= new ChatTemplate(this.templateSource, this.templateVars);
    let text = this.template.render(messages, opts);
    if (opts.continueFinalMessage) {
      const last = messages[messages.length - 1]?.content ?? '';
      const at = last.length > 0 ? text.lastIndexOf(last) : -1;
      if (at >= 0) text = text.slice(0, at + last.length);
    }
    return text;
  }

  /**
   * The most UTF-8 bytes of text one token can stand for, bounded from above by the longest
   * vocabulary entry as stored (byte-level BPE stores byte b as one character of at most 2 UTF-8
   * bytes, SentencePiece "▁" is 3 bytes for one space, "<0xE4>" 6 for one byte: all over-counts,
   * which only loosen the bound). So a text of B bytes encodes to at least B / maxTokenBytes
   * tokens, provided the normalizer does not shrink text (none of the supported families does).
   */
  get maxTokenBytes(): number {
    if (this.maxTokenBytesCache === 0) {
      let max = 1;
      for (const t of this.lib.model!.vocab) if (typeof t === 'string') max = Math.max(max, Buffer.byteLength(t, 'utf8'));
      this.maxTokenBytesCache = max;
    }
    return this.maxTokenBytesCache;
  }
}
