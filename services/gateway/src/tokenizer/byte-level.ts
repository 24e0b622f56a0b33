/**
 * Byte-level (GPT-2 style) decoding from a precomputed byte table: token ids -> raw bytes -> one
 * lossy UTF-8 decode. Used by TextTokenizer when tokenizer.json's decoder is `ByteLevel` (GPT-2,
 * Qwen2/3, DeepSeek-V2/V3, Mixtral-style byte-BPE fixtures), for speed and for exact Hugging Face
 * (Rust `tokenizers`) semantics:
 *
 *   - each token string maps char by char through the GPT-2 bytes<->unicode table; a token with a
 *     char outside the table (added tokens such as "<｜begin▁of▁sentence｜>") contributes its own
 *     UTF-8 bytes — Rust's `ByteLevel::decode_chain` does exactly this, for added tokens too;
 *   - the bytes of ALL tokens are concatenated and decoded once, invalid or incomplete sequences
 *     becoming U+FFFD per maximal subpart (Rust `String::from_utf8_lossy` and WHATWG TextDecoder
 *     follow the same Unicode "substitution of maximal subparts" practice).
 * (@huggingface/tokenizers 0.2 decodes the runs between added tokens separately; that differs
 * only for invalid UTF-8 next to an added token, and we follow Rust, checked against
 * tokenizers 0.23.)
 *
 * Layout: all token bytes in one Uint8Array, `offsets[id] .. offsets[id + 1]` per id — about
 * 1 MB for a 152k vocab instead of 152k small arrays, built once at load.
 */

/** GPT-2 `bytes_to_unicode`: printable Latin-1 bytes map to themselves, the other 68 to U+0100.. */
function byteToUnicode(): number[] {
  const bs: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) bs.push(b);
  for (let b = 0xa1; b <= 0xac; b++) bs.push(b);
  for (let b = 0xae; b <= 0xff; b++) bs.push(b);
  const cs = bs.slice();
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n++);
    }
  }
  const out = new Array<number>(256);
  for (let i = 0; i < 256; i++) out[bs[i]!] = cs[i]!;
  return out;
}

/** char code (< 324) -> byte, or -1 for chars outside the table. */
const CHAR_TO_BYTE: Int16Array = (() => {
  const t = new Int16Array(324).fill(-1);
  byteToUnicode().forEach((code, byte) => (t[code] = byte));
  return t;
})();

const utf8 = new TextEncoder();

export class ByteLevelTable {
  /** All token bytes, concatenated in id order. */
  readonly bytes: Uint8Array;
  /** [V + 1]: token id's bytes are bytes[offsets[id], offsets[id + 1]). */
  readonly offsets: Int32Array;
  // Growable output scratch for decode: reused across calls (the streaming detokenizer decodes a
  // small window per token), so steady-state decoding allocates only the result string.
  private out = new Uint8Array(256);
  // ignoreBOM: a leading EF BB BF is text (U+FEFF), not a marker to strip — Rust keeps it too.
  private readonly decoder = new TextDecoder('utf-8', { fatal: false, ignoreBOM: true });

  /** @param tokens id -> token string (holes: undefined), as the tokenizer's vocab array. */
  constructor(tokens: ArrayLike<string | undefined>) {
    const V = tokens.length;
    this.offsets = new Int32Array(V + 1);
    const raw: (Uint8Array | null)[] = new Array<Uint8Array | null>(V).fill(null); // tokens outside the table
    let total = 0;
    for (let id = 0; id < V; id++) {
      this.offsets[id] = total;
      const s = tokens[id];
      if (s === undefined) continue;
      let mappable = true;
      for (let j = 0; j < s.length; j++) {
        const c = s.charCodeAt(j);
        if (c >= 324 || CHAR_TO_BYTE[c]! < 0) {
          mappable = false;
          break;
        }
      }
      if (mappable) total += s.length;
      else {
        const b = utf8.encode(s);
        raw[id] = b;
        total += b.length;
      }
    }
    this.offsets[V] = total;
    this.bytes = new Uint8Array(total);
    for (let id = 0; id < V; id++) {
      const at = this.offsets[id]!;
      const r = raw[id];
      if (r) {
        this.bytes.set(r, at);
        continue;
      }
      const s = tokens[id];
      if (s === undefined) continue;
      for (let j = 0; j < s.length; j++) this.bytes[at + j] = CHAR_TO_BYTE[s.charCodeAt(j)]!;
    }
  }

  /** The raw bytes of one token (a view into the table: do not write). */
  tokenBytes(id: number): Uint8Array {
    return this.bytes.subarray(this.offsets[id]!, this.offsets[id + 1]!);
  }

  /**
   * Decodes ids[start, end). Ids for which `skip(id)` is true, and ids outside the table, add no
   * bytes (HF skips ids it has no token for).
   */
  decode(ids: ArrayLike<number>, start: number, end: number, skip: Uint8Array | null): string {
    const V = this.offsets.length - 1;
    let n = 0;
    for (let i = start; i < end; i++) {
      const id = ids[i]!;
      if (id >= V || (skip !== null && skip[id] === 1)) continue;
      const a = this.offsets[id]!;
      const len = this.offsets[id + 1]! - a;
      if (n + len > this.out.length) {
        const grown = new Uint8Array(Math.max(this.out.length * 2, n + len));
        grown.set(this.out.subarray(0, n));
        this.out = grown;
      }
      const out = this.out;
      const bytes = this.bytes;
      for (let j = 0; j < len; j++) out[n + j] = bytes[a + j]!; // tokens are a few bytes: a loop beats a subarray view
      n += len;
    }
    return this.decoder.decode(this.out.subarray(0, n));
  }
}
