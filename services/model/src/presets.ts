/**
 * Checkpoint presets for make-checkpoint: config.json contents (real Hugging Face field names
 * per architecture) and the tokenizer each preset ships with.
 *
 * preset (this file) + `--set` overrides -> config.json -> parseModelConfig -> weight manifest ->
 * generated checkpoint folder (make-checkpoint.ts).
 *
 * `bos_token_id` / `eos_token_id` are not written here: they point at the tokenizer's special
 * tokens, whose ids depend on the final vocab_size, so make-checkpoint fills them in after the
 * overrides (unless an override sets them). `torch_dtype` follows the dtype generated.
 *
 * perf presets are sized for benchmarks (hundreds of MB); tiny presets (hidden 64, vocab 512)
 * are for tests and generate in milliseconds.
 */

export const PRESET_NAMES = [
  'mixtral-perf',
  'dsv2-perf',
  'qwen3-demo',
  'tiny-mixtral',
  'tiny-qwen2-moe',
  'tiny-qwen3-moe',
  'tiny-dsv2',
  'tiny-dsv2-grouped',
  'tiny-dsv3',
] as const;
export type PresetName = (typeof PRESET_NAMES)[number];

/**
 * A byte-level BPE tokenizer built to exactly vocab_size tokens (256 bytes, then merges, then
 * `specials` at the last ids), or the real Qwen3 tokenizer copied as is.
 */
export type PresetTokenizer =
  | {
      readonly kind: 'byte-bpe';
      /** Special tokens, in id order, at the end of the vocabulary. */
      readonly specials: readonly string[];
      readonly bos: string | null;
      readonly eos: string;
      readonly chatTemplate: string;
    }
  | {
      readonly kind: 'qwen3';
      readonly bos: string | null;
      readonly eos: string;
      readonly pad: string;
      readonly chatTemplate: string;
    };

export interface Preset {
  readonly name: PresetName;
  readonly description: string;
  /** config.json without bos_token_id / eos_token_id / torch_dtype. */
  readonly config: Readonly<Record<string, unknown>>;
  readonly tokenizer: PresetTokenizer;
}

// ---------------------------------------------------------------- chat templates and specials

const MIXTRAL_TEMPLATE =
  "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}";
const CHATML_TEMPLATE =
  '{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}';
const DEEPSEEK_TEMPLATE =
  "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\n\n' }}{% elif message['role'] == 'assistant' %}{{ 'Assistant: ' + message['content'] + eos_token }}{% elif message['role'] == 'system' %}{{ message['content'] + '\n\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}";

const MIXTRAL_TOKENIZER: PresetTokenizer = { kind: 'byte-bpe', specials: ['<unk>', '<s>', '</s>'], bos: '<s>', eos: '</s>', chatTemplate: MIXTRAL_TEMPLATE };
const QWEN2_TOKENIZER: PresetTokenizer = {
  kind: 'byte-bpe',
  specials: ['<|endoftext|>', '<|im_start|>', '<|im_end|>'],
  bos: '<|endoftext|>',
  eos: '<|endoftext|>',
  chatTemplate: CHATML_TEMPLATE,
};
const QWEN3_TINY_TOKENIZER: PresetTokenizer = { ...QWEN2_TOKENIZER, eos: '<|im_end|>' };
const DEEPSEEK_TOKENIZER: PresetTokenizer = {
  kind: 'byte-bpe',
  specials: ['<｜begin▁of▁sentence｜>', '<｜end▁of▁sentence｜>', '<｜▁pad▁｜>'],
  bos: '<｜begin▁of▁sentence｜>',
  eos: '<｜end▁of▁sentence｜>',
  chatTemplate: DEEPSEEK_TEMPLATE,
};

// ---------------------------------------------------------------- config.json builders

type Json = Record<string, unknown>;

function mixtral(c: Json): Json {
  return {
    architectures: ['MixtralForCausalLM'],
    attention_dropout: 0.0,
    hidden_act: 'silu',
    initializer_range: 0.02,
    model_type: 'mixtral',
    output_router_logits: false,
    router_aux_loss_coef: 0.02,
    router_jitter_noise: 0.0,
    sliding_window: null,
    tie_word_embeddings: false,
    use_cache: true,
    ...c,
  };
}

function qwen2Moe(c: Json): Json {
  return {
    architectures: ['Qwen2MoeForCausalLM'],
    attention_dropout: 0.0,
    decoder_sparse_step: 1,
    hidden_act: 'silu',
    initializer_range: 0.02,
    mlp_only_layers: [],
    model_type: 'qwen2_moe',
    norm_topk_prob: false,
    output_router_logits: false,
    rms_norm_eps: 1e-6,
    rope_theta: 1000000.0,
    router_aux_loss_coef: 0.001,
    sliding_window: null,
    tie_word_embeddings: false,
    use_cache: true,
    use_sliding_window: false,
    ...c,
    max_window_layers: c.num_hidden_layers,
  };
}

function qwen3Moe(c: Json): Json {
  return {
    architectures: ['Qwen3MoeForCausalLM'],
    attention_bias: false,
    attention_dropout: 0.0,
    decoder_sparse_step: 1,
    hidden_act: 'silu',
    initializer_range: 0.02,
    mlp_only_layers: [],
    model_type: 'qwen3_moe',
    norm_topk_prob: true,
    output_router_logits: false,
    rms_norm_eps: 1e-6,
    rope_scaling: null,
    rope_theta: 1000000.0,
    router_aux_loss_coef: 0.001,
    sliding_window: null,
    tie_word_embeddings: false,
    use_cache: true,
    use_sliding_window: false,
    ...c,
    max_window_layers: c.num_hidden_layers,
  };
}

function deepseek(v3: boolean, c: Json): Json {
  return {
    architectures: [v3 ? 'DeepseekV3ForCausalLM' : 'DeepseekV2ForCausalLM'],
    attention_bias: false,
    attention_dropout: 0.0,
    aux_loss_alpha: 0.001,
    ep_size: 1,
    hidden_act: 'silu',
    initializer_range: 0.02,
    model_type: v3 ? 'deepseek_v3' : 'deepseek_v2',
    moe_layer_freq: 1,
    pretraining_tp: 1,
    rope_scaling: null,
    seq_aux: true,
    tie_word_embeddings: false,
    use_cache: true,
    // no multi-token-prediction layer is generated (V3 only)
    ...(v3 ? { num_nextn_predict_layers: 0 } : {}),
    ...c,
  };
}

const tinyDsv2 = (c: Json): Json =>
  deepseek(false, {
    first_k_dense_replace: 1,
    hidden_size: 64,
    intermediate_size: 128,
    kv_lora_rank: 32,
    max_position_embeddings: 4096,
    moe_intermediate_size: 32,
    n_group: 1,
    n_routed_experts: 8,
    n_shared_experts: 2,
    norm_topk_prob: false,
    num_attention_heads: 4,
    num_experts_per_tok: 2,
    num_hidden_layers: 3,
    num_key_value_heads: 4,
    q_lora_rank: null,
    qk_nope_head_dim: 16,
    qk_rope_head_dim: 8,
    rms_norm_eps: 1e-6,
    rope_theta: 10000.0,
    routed_scaling_factor: 1.0,
    scoring_func: 'softmax',
    topk_group: 1,
    topk_method: 'greedy',
    v_head_dim: 12,
    vocab_size: 512,
    ...c,
  });

// ---------------------------------------------------------------- presets

const PRESET_LIST: readonly Preset[] = [
  {
    name: 'mixtral-perf',
    description: 'Mixtral, hidden 1024, 8 layers, 8 experts top-2 (benchmarks)',
    config: mixtral({
      hidden_size: 1024,
      intermediate_size: 2048,
      max_position_embeddings: 4096,
      num_attention_heads: 16,
      num_experts_per_tok: 2,
      num_hidden_layers: 8,
      num_key_value_heads: 4,
      num_local_experts: 8,
      rms_norm_eps: 1e-5,
      rope_theta: 1000000.0,
      tie_word_embeddings: false,
      vocab_size: 32000,
    }),
    tokenizer: MIXTRAL_TOKENIZER,
  },
  {
    name: 'dsv2-perf',
    description: 'DeepSeek-V2 (MLA), hidden 1024, 8 layers, 16 experts top-4 + 2 shared (benchmarks)',
    config: deepseek(false, {
      first_k_dense_replace: 1,
      hidden_size: 1024,
      intermediate_size: 2048,
      kv_lora_rank: 256,
      max_position_embeddings: 4096,
      moe_intermediate_size: 512,
      moe_layer_freq: 1,
      n_group: 1,
      n_routed_experts: 16,
      n_shared_experts: 2,
      norm_topk_prob: false,
      num_attention_heads: 16,
      num_experts_per_tok: 4,
      num_hidden_layers: 8,
      num_key_value_heads: 16,
      q_lora_rank: null,
      qk_nope_head_dim: 64,
      qk_rope_head_dim: 32,
      rms_norm_eps: 1e-6,
      rope_theta: 10000.0,
      routed_scaling_factor: 1.0,
      scoring_func: 'softmax',
      topk_group: 1,
      topk_method: 'greedy',
      v_head_dim: 64,
      vocab_size: 32000,
    }),
    tokenizer: DEEPSEEK_TOKENIZER,
  },
  {
    name: 'qwen3-demo',
    description: 'Qwen3-MoE, hidden 256, 4 layers, 8 experts top-2, with the real Qwen3 tokenizer (demo server)',
    config: qwen3Moe({
      decoder_sparse_step: 1,
      head_dim: 32,
      hidden_size: 256,
      intermediate_size: 512,
      max_position_embeddings: 4096,
      mlp_only_layers: [],
      moe_intermediate_size: 256,
      norm_topk_prob: true,
      num_attention_heads: 8,
      num_experts: 8,
      num_experts_per_tok: 2,
      num_hidden_layers: 4,
      num_key_value_heads: 2,
      rope_theta: 1000000.0,
      tie_word_embeddings: true,
      vocab_size: 151936,
    }),
    tokenizer: { kind: 'qwen3', bos: null, eos: '<|im_end|>', pad: '<|endoftext|>', chatTemplate: CHATML_TEMPLATE },
  },
  {
    name: 'tiny-mixtral',
    description: 'Mixtral, hidden 64, 2 layers, 4/2 heads, 8 experts top-2 (tests)',
    config: mixtral({
      hidden_size: 64,
      intermediate_size: 96,
      max_position_embeddings: 4096,
      num_attention_heads: 4,
      num_experts_per_tok: 2,
      num_hidden_layers: 2,
      num_key_value_heads: 2,
      num_local_experts: 8,
      rms_norm_eps: 1e-5,
      rope_theta: 1000000.0,
      vocab_size: 512,
    }),
    tokenizer: MIXTRAL_TOKENIZER,
  },
  {
    name: 'tiny-qwen2-moe',
    description: 'Qwen2-MoE, hidden 64, 2 layers, 8 experts top-2, sigmoid-gated shared expert, q/k/v bias (tests)',
    config: qwen2Moe({
      hidden_size: 64,
      intermediate_size: 128,
      max_position_embeddings: 4096,
      moe_intermediate_size: 32,
      num_attention_heads: 4,
      num_experts: 8,
      num_experts_per_tok: 2,
      num_hidden_layers: 2,
      num_key_value_heads: 2,
      shared_expert_intermediate_size: 64,
      vocab_size: 512,
    }),
    tokenizer: QWEN2_TOKENIZER,
  },
  {
    name: 'tiny-qwen3-moe',
    description: 'Qwen3-MoE, hidden 64, 3 layers (layer 1 dense), 8 heads × head_dim 16, q/k norm, 8 experts top-2 (tests)',
    config: qwen3Moe({
      head_dim: 16,
      hidden_size: 64,
      intermediate_size: 128,
      max_position_embeddings: 4096,
      mlp_only_layers: [1],
      moe_intermediate_size: 32,
      norm_topk_prob: true,
      num_attention_heads: 8,
      num_experts: 8,
      num_experts_per_tok: 2,
      num_hidden_layers: 3,
      num_key_value_heads: 2,
      vocab_size: 512,
    }),
    tokenizer: QWEN3_TINY_TOKENIZER,
  },
  {
    name: 'tiny-dsv2',
    description: 'DeepSeek-V2 (MLA, q_lora null), hidden 64, 3 layers (layer 0 dense), 8 experts top-2 greedy + 2 shared (tests)',
    config: tinyDsv2({}),
    tokenizer: DEEPSEEK_TOKENIZER,
  },
  {
    name: 'tiny-dsv2-grouped',
    description: 'DeepSeek-V2, 16 experts top-4, group_limited_greedy over 4 groups choosing 2 (tests)',
    config: tinyDsv2({ n_group: 4, n_routed_experts: 16, num_experts_per_tok: 4, topk_group: 2, topk_method: 'group_limited_greedy' }),
    tokenizer: DEEPSEEK_TOKENIZER,
  },
  {
    name: 'tiny-dsv3',
    description: 'DeepSeek-V3 (MLA, q_lora 48), sigmoid noaux_tc with correction bias, 4 groups choose 2, yarn ×4 (tests)',
    config: deepseek(true, {
      first_k_dense_replace: 1,
      hidden_size: 64,
      intermediate_size: 128,
      kv_lora_rank: 32,
      max_position_embeddings: 2048,
      moe_intermediate_size: 32,
      n_group: 4,
      n_routed_experts: 16,
      n_shared_experts: 1,
      norm_topk_prob: true,
      num_attention_heads: 4,
      num_experts_per_tok: 4,
      num_hidden_layers: 3,
      num_key_value_heads: 4,
      q_lora_rank: 48,
      qk_nope_head_dim: 16,
      qk_rope_head_dim: 8,
      rms_norm_eps: 1e-6,
      rope_scaling: { type: 'yarn', factor: 4, original_max_position_embeddings: 512, mscale: 1.0, mscale_all_dim: 1.0, beta_fast: 32, beta_slow: 1 },
      rope_theta: 10000.0,
      routed_scaling_factor: 2.5,
      scoring_func: 'sigmoid',
      topk_group: 2,
      topk_method: 'noaux_tc',
      v_head_dim: 16,
      vocab_size: 512,
    }),
    tokenizer: DEEPSEEK_TOKENIZER,
  },
];

export const PRESETS: Readonly<Record<PresetName, Preset>> = Object.freeze(
  Object.fromEntries(PRESET_LIST.map((p) => [p.name, Object.freeze(p)])) as Record<PresetName, Preset>,
);

export function isPresetName(s: string): s is PresetName {
  return (PRESET_NAMES as readonly string[]).includes(s);
}
