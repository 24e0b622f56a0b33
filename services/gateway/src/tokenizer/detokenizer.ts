/**
 * Streaming detokenization: generated token ids -> text deltas that are final.
 *
 * vLLM's prefix_offset / read_offset scheme (`detokenize_incrementally`): keep the ids, and for
 * each new id decode two small windows that start at `prefixOffset` —
 *   prefixText = decode(ids[prefixOffset, readOffset))   (already emitted)
 *   newText    = decode(ids[prefixOffset, end))
 * and emit newText minus prefixText. Starting both windows at the same id cancels decoder effects
 * that depend on context (SentencePiece's leading-space rule, a window starting in the middle of a
 * UTF-8 character). If newText ends with U+FFFD, the last token(s) hold an incomplete UTF-8
 * sequence (byte-level BPE splits "世" = E4 B8 96 across tokens): emit nothing and keep the
 * offsets, so the next token's decode covers the whole character.
 *
 * Work per token is O(window): the window is the last emitted token(s) plus the held ones. A hold
 * is capped at MAX_HELD_TOKENS — a UTF-8 character has at most 4 bytes, so a longer run that still
 * ends in U+FFFD is invalid output from the model, emitted as is (as `flush` would); skipped
 * special tokens never enter the window; runs of tokens that decode to nothing are capped too.
 *
 * Limits (shared with vLLM): for valid UTF-8 output the deltas concatenate to exactly
 * `decode(ids)`. After the model emits invalid bytes that are later followed by a character whose
 * first byte was already emitted as U+FFFD, the streamed text can differ from `decode(ids)`.
 *
 * Text offsets (OpenAI `logprobs.text_offset`): token i's offset is the length of the text that
 * was final before its bytes, so text.slice(offset[i], offset[i + 1]) is token i's share of the
 * text and the offsets advance by each token's text. A character split across tokens belongs to
 * the token that completes it (the tokens before it hold no text of their own: "世" = E4 B8 96 on
 * three tokens gives offsets L, L, L, then L + 1). An invalid byte the model emitted (shown as
 * U+FFFD) belongs to its own token: it is known to be final once the next token's bytes cannot
 * continue it, so that token's offset starts after it. Offsets are non-decreasing and the last
 * token's text ends at `text.length`.
 */
import type { TextTokenizer } from './tokenizer.js';

/** Prompt ids used as decode context for the first output tokens (vLLM: 5). */
const PROMPT_CONTEXT = 5;
/** Longest hold for an incomplete character, in tokens (4 bytes, at least 1 byte per token). */
const MAX_HELD_TOKENS = 4;
/** Longest run of tokens that decode to nothing kept in the window as context. */
const MAX_EMPTY_TOKENS = 8;
const REPLACEMENT = 0xfffd;

export interface DetokenizerOptions {
  /** Drop special tokens (EOS, <|im_end|>) from the text, as vLLM's default. @defaultValue true */
  readonly skipSpecialTokens?: boolean;
}

export class IncrementalDetokenizer {
  private readonly tok: TextTokenizer;
  private readonly skipSpecial: boolean;
  /** Context prompt ids, then every pushed id. */
  private readonly ids: number[];
  private prefixOffset: number;
  private readOffset: number;
  private emitted = '';
  /** Text of the held tokens as decoded so far ('' when none is held); ends with U+FFFD. */
  private heldText = '';
  /** [pushed tokens] character offset of each pushed token's text in `text`. */
  readonly textOffsets: number[] = [];

  constructor(tok: TextTokenizer, promptIds: ArrayLike<number> = [], opts: DetokenizerOptions = {}) {
    this.tok = tok;
    this.skipSpecial = opts.skipSpecialTokens ?? true;
    const from = Math.max(0, promptIds.length - PROMPT_CONTEXT);
    this.ids = [];
    for (let i = from; i < promptIds.length; i++) this.ids.push(promptIds[i]!);
    this.prefixOffset = 0;
    this.readOffset = this.ids.length;
  }

  /** All text emitted so far (by `push` and `flush`). */
  get text(): string {
    return this.emitted;
  }

  /** Number of ids still held back (their text is not final yet). */
  get heldTokens(): number {
    return this.ids.length - this.readOffset;
  }

  /** Adds one generated id; returns the text that became final ('' while a character is incomplete). */
  push(id: number): string {
    const heldLen = this.heldText.length;
    // A skipped special token never enters the window (vLLM drops it from its token list too), so
    // runs of them cost nothing and the previous real token stays as decode context.
    if (this.skipSpecial && this.tok.isSpecialToken(id)) {
      this.textOffsets.push(this.emitted.length + Math.max(0, heldLen - 1));
      return '';
    }
    this.ids.push(id);
    const prefixText = this.tok.decodeRange(this.ids, this.prefixOffset, this.readOffset, this.skipSpecial);
    const newText = this.tok.decodeRange(this.ids, this.prefixOffset, this.ids.length, this.skipSpecial);
    const pending = newText.length > prefixText.length ? newText.slice(prefixText.length) : '';
    // The held text's last U+FFFD was an incomplete character; it is final (an invalid byte) if
    // this token's bytes started something after it, else this token continues or completes it.
    let final = this.emitted.length;
    if (heldLen > 0) final += pending.length > heldLen && pending.charCodeAt(heldLen - 1) === REPLACEMENT ? heldLen : heldLen - 1;
    this.textOffsets.push(final);
    const held = this.ids.length - this.readOffset;
    if (pending.length === 0) {
      // No new text (an empty token). Keep the context, but never let the window grow unbounded.
      if (held > MAX_EMPTY_TOKENS) this.advance();
      return '';
    }
    if (pending.charCodeAt(pending.length - 1) === REPLACEMENT && held <= MAX_HELD_TOKENS) {
      this.heldText = pending; // incomplete character: hold
      return '';
    }
    this.advance();
    this.emitted += pending;
    return pending;
  }

  private advance(): void {
    this.prefixOffset = this.readOffset;
    this.readOffset = this.ids.length;
    this.heldText = '';
  }

  /** At the end of generation: emits whatever is held (an incomplete character shows as U+FFFD). */
  flush(): string {
    if (this.readOffset === this.ids.length) return '';
    const prefixText = this.tok.decodeRange(this.ids, this.prefixOffset, this.readOffset, this.skipSpecial);
    const newText = this.tok.decodeRange(this.ids, this.prefixOffset, this.ids.length, this.skipSpecial);
    const delta = newText.length > prefixText.length ? newText.slice(prefixText.length) : '';
    this.advance();
    this.emitted += delta;
    return delta;
  }
}
