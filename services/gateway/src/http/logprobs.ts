/**
 * Logprobs in the two OpenAI shapes, from the engine's TokenLogprobs (raw-logit logprobs, top-N
 * ids in descending order, ties by id).
 *
 * Completions (vLLM's legacy format): parallel lists `tokens`, `token_logprobs`, `top_logprobs`
 * (dicts token -> logprob) and `text_offset`. Each dict holds the top-N in order, then the chosen
 * token if it is not among them (OpenAI's "up to logprobs + 1"); with echo the first prompt token
 * has null entries, as in vLLM. `text_offset` is each token's character offset in the returned
 * text. Tokens are their decoded text, or "token_id:N" with return_tokens_as_token_ids. A token
 * whose bytes are not valid UTF-8 on its own (byte-level BPE splits CJK and emoji) is named
 * "bytes:\xNN..." as vLLM and OpenAI do (its text alone would be U+FFFD, and every such token
 * would overwrite the others in a top dict). Keys of a top dict are distinct: should two ids still
 * share a name, the later is written "token_id:N".
 *
 * Chat: `{content: [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}`.
 *
 * -inf (a token with zero probability) is written as -9999.0, as OpenAI and vLLM do.
 */
import type { TokenLogprobs } from '../engine/engine.js';
import type { TextTokenizer } from '../tokenizer/tokenizer.js';
import { OrderedObject, type JsonValue } from './json.js';

const FLOOR = -9999;
/**
 * Rounded to float32 (the engine's top-N are float32): a token's logprob and its entry in the
 * top dict are then the same number. -inf and NaN map to the floor.
 */
const clamp = (lp: number) => (lp > FLOOR ? Math.fround(lp) : FLOOR);

export class TokenLabels {
  constructor(
    private readonly tok: TextTokenizer,
    private readonly asIds: boolean,
  ) {}
  label(id: number): string {
    return this.asIds ? `token_id:${id}` : this.tok.logprobToken(id);
  }
  bytes(id: number): number[] {
    return Array.from(this.tok.tokenBytes(id));
  }
}

export type CompletionLogprobs = {
  tokens: string[];
  token_logprobs: (number | null)[];
  top_logprobs: (OrderedObject | null)[];
  text_offset: number[];
};

export function emptyCompletionLogprobs(): CompletionLogprobs {
  return { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] };
}

function topDict(labels: TokenLabels, id: number, lp: TokenLogprobs): OrderedObject {
  const entries: [string, JsonValue][] = [];
  const keys = new Set<string>();
  const add = (t: number, v: number) => {
    let k = labels.label(t);
    if (keys.has(k)) k = `token_id:${t}`;
    keys.add(k);
    entries.push([k, clamp(v)]);
  };
  let hasChosen = false;
  for (let i = 0; i < lp.topIds.length; i++) {
    const t = lp.topIds[i]!;
    if (t === id) hasChosen = true;
    add(t, lp.topLogprobs[i]!);
  }
  if (!hasChosen) add(id, lp.logprob);
  return new OrderedObject(entries);
}

/** Appends one token: `lp` null = no logprob (the first prompt token). */
export function appendCompletionToken(out: CompletionLogprobs, labels: TokenLabels, id: number, lp: TokenLogprobs | null, offset: number): void {
  out.tokens.push(labels.label(id));
  out.token_logprobs.push(lp ? clamp(lp.logprob) : null);
  out.top_logprobs.push(lp ? topDict(labels, id, lp) : null);
  out.text_offset.push(offset);
}

/**
 * The echoed prompt's entries: ids [P], promptLogprobs for positions 1..P-1, offsets [P] in the
 * echoed text.
 */
export function appendPromptTokens(out: CompletionLogprobs, labels: TokenLabels, ids: readonly number[], promptLogprobs: readonly TokenLogprobs[] | null, offsets: readonly number[]): void {
  for (let i = 0; i < ids.length; i++) appendCompletionToken(out, labels, ids[i]!, i === 0 ? null : (promptLogprobs?.[i - 1] ?? null), offsets[i]!);
}

export type ChatTokenLogprob = {
  token: string;
  logprob: number;
  bytes: number[];
  top_logprobs: { token: string; logprob: number; bytes: number[] }[];
};

export function chatTokenLogprob(labels: TokenLabels, id: number, lp: TokenLogprobs): ChatTokenLogprob {
  const top: ChatTokenLogprob['top_logprobs'] = [];
  for (let i = 0; i < lp.topIds.length; i++) {
    const t = lp.topIds[i]!;
    top.push({ token: labels.label(t), logprob: clamp(lp.topLogprobs[i]!), bytes: labels.bytes(t) });
  }
  return { token: labels.label(id), logprob: clamp(lp.logprob), bytes: labels.bytes(id), top_logprobs: top };
}
