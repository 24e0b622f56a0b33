/**
 * One typed, frozen model config from a Hugging Face config.json.
 *
 * config.json (HF field names, per architecture) -> `MoeModelConfig` (this file; validated, frozen)
 * -> graph builders, gating, KV layouts, weight manifest. Everything downstream branches on the
 * named flags here (`attention.kind`, `moe.scoreFunc`, `rope.interleaved`, ...), never on model
 * names or magic dimensions.
 *
 * Semantics follow Hugging Face transformers' modeling code for each architecture; where a lab's
 * own code differs, transformers wins (e.g. DeepSeek-V2 routing always applies
 * routed_scaling_factor; DeepSeek-V2's softmax scale is not multiplied by mscale², V3's is).
 */
import { ServerError } from '../../common/src/errors.js';

export const SUPPORTED_ARCHITECTURES = [
  'MixtralForCausalLM',
  'Qwen2MoeForCausalLM',
  'Qwen3MoeForCausalLM',
  'DeepseekV2ForCausalLM',
  'DeepseekV3ForCausalLM',
] as const;
export type Architecture = (typeof SUPPORTED_ARCHITECTURES)[number];
export type ModelFamily = 'mixtral' | 'qwen2_moe' | 'qwen3_moe' | 'deepseek_v2' | 'deepseek_v3';

const FAMILY: Record<Architecture, ModelFamily> = {
  MixtralForCausalLM: 'mixtral',
  Qwen2MoeForCausalLM: 'qwen2_moe',
  Qwen3MoeForCausalLM: 'qwen3_moe',
  DeepseekV2ForCausalLM: 'deepseek_v2',
  DeepseekV3ForCausalLM: 'deepseek_v3',
};

export const SUPPORTED_ROPE_TYPES = ['default', 'linear', 'yarn'] as const;
export const SUPPORTED_ACTIVATIONS = ['silu'] as const;

/** Grouped-query attention (MHA when numKvHeads == numHeads, MQA when 1). */
export interface GqaAttentionConfig {
  readonly kind: 'gqa';
  readonly numHeads: number;
  readonly numKvHeads: number;
  /** Per-head dimension of q, k and v. */
  readonly headDim: number;
  /** q_proj/k_proj/v_proj carry a bias (Qwen2 always; Qwen3 when attention_bias). */
  readonly qkvBias: boolean;
  /** o_proj carries a bias. */
  readonly oBias: boolean;
  /** RMSNorm over head_dim on q and k before RoPE (Qwen3). */
  readonly qkNorm: boolean;
}

/** DeepSeek multi-head latent attention. */
export interface MlaAttentionConfig {
  readonly kind: 'mla';
  readonly numHeads: number;
  /** null: q_proj straight from hidden; else q_a_proj -> q_a_layernorm -> q_b_proj. */
  readonly qLoraRank: number | null;
  readonly kvLoraRank: number;
  readonly qkNopeHeadDim: number;
  readonly qkRopeHeadDim: number;
  readonly vHeadDim: number;
  /** q_a_proj, kv_a_proj_with_mqa and o_proj carry a bias. */
  readonly attentionBias: boolean;
}

export type AttentionConfig = GqaAttentionConfig | MlaAttentionConfig;

export interface RopeConfig {
  readonly theta: number;
  /** Rotated dimensions per head (head_dim × partial_rotary_factor, or qk_rope_head_dim). */
  readonly dim: number;
  /** true: rotate pairs (2i, 2i+1) (DeepSeek); false: rotate (i, i + dim/2) (rotate_half). */
  readonly interleaved: boolean;
  readonly type: (typeof SUPPORTED_ROPE_TYPES)[number];
  /** Scaling factor for linear / yarn. */
  readonly factor: number;
  /** yarn only. */
  readonly originalMaxPositionEmbeddings: number;
  readonly betaFast: number;
  readonly betaSlow: number;
  readonly truncate: boolean;
  /** Multiplier applied to cos and sin (yarn's attention_factor; 1 otherwise). */
  readonly attentionScaling: number;
}

export interface SharedExpertConfig {
  /** Intermediate size of the (concatenated) shared expert MLP. */
  readonly intermediateSize: number;
  /** Output multiplied by sigmoid(shared_expert_gate(x)) (Qwen2-MoE). */
  readonly sigmoidGate: boolean;
}

export interface MoeConfig {
  readonly nRoutedExperts: number;
  /** top-k: experts chosen per token. */
  readonly nActivatedExperts: number;
  /** Intermediate size of one routed expert. */
  readonly intermediateSize: number;
  readonly scoreFunc: 'softmax' | 'sigmoid';
  /** greedy: top-k over all; group_limited_greedy: by group max; noaux_tc: by group top-2 sum of biased scores. */
  readonly topkMethod: 'greedy' | 'group_limited_greedy' | 'noaux_tc';
  readonly nExpertGroups: number;
  readonly nLimitedGroups: number;
  /** Renormalise the top-k weights to sum to 1. */
  readonly normTopkProb: boolean;
  /** routed_scaling_factor, multiplied into the final weights. */
  readonly routeScale: number;
  /** e_score_correction_bias is used to choose experts (never to weigh them). */
  readonly useCorrectionBias: boolean;
  readonly shared: SharedExpertConfig | null;
  /** Tensor naming: 'mixtral' = block_sparse_moe.experts.N.w1/w3/w2; 'mlp' = mlp.experts.N.gate/up/down_proj. */
  readonly naming: 'mixtral' | 'mlp';
}

export interface LayerConfig {
  readonly index: number;
  readonly mlp: 'dense' | 'moe';
  /** Keys visible to a query at position q are those with q - k < slidingWindow; null = all. */
  readonly slidingWindow: number | null;
}

export interface MoeModelConfig {
  readonly architecture: Architecture;
  readonly family: ModelFamily;
  readonly vocabSize: number;
  readonly hiddenSize: number;
  readonly numLayers: number;
  readonly rmsNormEps: number;
  readonly maxPositionEmbeddings: number;
  readonly tieWordEmbeddings: boolean;
  readonly bosTokenId: number | null;
  readonly eosTokenIds: readonly number[];
  /** Intermediate size of dense (non-MoE) MLP layers. */
  readonly denseIntermediateSize: number;
  readonly attention: AttentionConfig;
  readonly rope: RopeConfig;
  /** Multiplier on q·k before softmax. */
  readonly softmaxScale: number;
  readonly layers: readonly LayerConfig[];
  readonly moe: MoeConfig;
}

type Json = Record<string, unknown>;

function bad(message: string): never {
  throw new ServerError('config_unsupported', message);
}

class Fields {
  constructor(private readonly raw: Json) {}
  has(key: string): boolean {
    return this.raw[key] !== undefined && this.raw[key] !== null;
  }
  int(key: string, fallback?: number): number {
    const v = this.raw[key];
    if (v === undefined || v === null) {
      if (fallback !== undefined) return fallback;
      bad(`config.json: required field "${key}" is missing`);
    }
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) bad(`config.json: "${key}" must be a non-negative integer, got ${JSON.stringify(v)}`);
    return v;
  }
  posInt(key: string, fallback?: number): number {
    const v = this.int(key, fallback);
    if (v <= 0) bad(`config.json: "${key}" must be positive, got ${v}`);
    return v;
  }
  intOrNull(key: string): number | null {
    return this.has(key) ? this.posInt(key) : null;
  }
  num(key: string, fallback?: number): number {
    const v = this.raw[key];
    if (v === undefined || v === null) {
      if (fallback !== undefined) return fallback;
      bad(`config.json: required field "${key}" is missing`);
    }
    if (typeof v !== 'number' || !Number.isFinite(v)) bad(`config.json: "${key}" must be a number, got ${JSON.stringify(v)}`);
    return v;
  }
  bool(key: string, fallback: boolean): boolean {
    const v = this.raw[key];
    if (v === undefined || v === null) return fallback;
    if (typeof v !== 'boolean') bad(`config.json: "${key}" must be a boolean, got ${JSON.stringify(v)}`);
    return v;
  }
  str(key: string, fallback: string): string {
    const v = this.raw[key];
    if (v === undefined || v === null) return fallback;
    if (typeof v !== 'string') bad(`config.json: "${key}" must be a string, got ${JSON.stringify(v)}`);
    return v;
  }
  obj(key: string): Json | null {
    const v = this.raw[key];
    if (v === undefined || v === null) return null;
    if (typeof v !== 'object' || Array.isArray(v)) bad(`config.json: "${key}" must be an object`);
    return v as Json;
  }
  intList(key: string): number[] {
    const v = this.raw[key];
    if (v === undefined || v === null) return [];
    if (!Array.isArray(v) || v.some((x) => typeof x !== 'number' || !Number.isInteger(x))) bad(`config.json: "${key}" must be a list of integers`);
    return v as number[];
  }
}

/**
 * config.json -> MoeModelConfig, frozen. Extra keys are ignored (checkpoints always carry some);
 * what moeserve does not implement is refused with ServerError('config_unsupported') naming the field. The steps below run in
 * this order (the first problem found is the one reported).
 */
export function parseModelConfig(raw: unknown): MoeModelConfig {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) bad('config.json must be a JSON object');
  const json = raw as Json;
  const f = new Fields(json);
  const { architecture, family } = parseArchitecture(json);
  const act = f.str('hidden_act', 'silu');
  if (!(SUPPORTED_ACTIVATIONS as readonly string[]).includes(act)) {
    bad(`unsupported hidden_act "${act}"; supported: ${SUPPORTED_ACTIVATIONS.join(', ')}`);
  }
  const hiddenSize = f.posInt('hidden_size');
  const numLayers = f.posInt('num_hidden_layers');
  const numHeads = f.posInt('num_attention_heads');
  const vocabSize = f.posInt('vocab_size');
  const maxPositionEmbeddings = f.posInt('max_position_embeddings', 4096);
  const { attention, ropeHeadDim } = parseAttention(f, family, hiddenSize, numHeads);
  const { rope, mscaleAllDim } = parseRope(f, family, ropeHeadDim, maxPositionEmbeddings);
  const softmaxScale = softmaxScaleOf(attention, family, rope, mscaleAllDim);
  const moe = parseMoe(f, family, hiddenSize);
  const layers = parseLayers(f, json, family, numLayers);
  const eos = json.eos_token_id;
  const eosTokenIds = typeof eos === 'number' ? [eos] : Array.isArray(eos) ? eos.filter((x): x is number => typeof x === 'number') : [];

  const cfg: MoeModelConfig = {
    architecture,
    family,
    vocabSize,
    hiddenSize,
    numLayers,
    rmsNormEps: f.num('rms_norm_eps', 1e-6),
    maxPositionEmbeddings,
    tieWordEmbeddings: f.bool('tie_word_embeddings', false),
    bosTokenId: f.has('bos_token_id') ? f.int('bos_token_id') : null,
    eosTokenIds: Object.freeze(eosTokenIds),
    denseIntermediateSize: f.int('intermediate_size', 0),
    attention: Object.freeze(attention),
    rope: Object.freeze(rope),
    softmaxScale,
    layers: Object.freeze(layers),
    moe,
  };
  if (layers.some((l) => l.mlp === 'dense') && cfg.denseIntermediateSize <= 0) bad('config has dense layers but no positive "intermediate_size"');
  return Object.freeze(cfg);
}

/** architectures[0] (one we implement) and model_type (must name the same family). */
function parseArchitecture(raw: Json): { architecture: Architecture; family: ModelFamily } {
  const archs = raw.architectures;
  const arch = Array.isArray(archs) && typeof archs[0] === 'string' ? (archs[0] as string) : undefined;
  if (!arch || !(SUPPORTED_ARCHITECTURES as readonly string[]).includes(arch)) {
    bad(`unsupported architecture ${JSON.stringify(arch ?? null)}; supported: ${SUPPORTED_ARCHITECTURES.join(', ')}`);
  }
  const architecture = arch as Architecture;
  const family = FAMILY[architecture];
  // transformers' AutoConfig builds the config (and AutoModel the model) from model_type, not from
  // architectures; without it, it only guesses from the folder's name, else raises "Unrecognized
  // model ... Should have a `model_type` key". So: required, and it must name this architecture.
  const modelType = raw.model_type;
  if (modelType === undefined || modelType === null) bad(`config.json has no "model_type" (transformers' AutoConfig refuses such a config too); for ${architecture} it is "${family}"`);
  if (modelType !== family) bad(`config.json "model_type" ${JSON.stringify(modelType)} does not match architectures ${JSON.stringify(architecture)} ("${family}"): transformers would build a different model from it`);
  return { architecture, family };
}

function isDeepseekFamily(family: ModelFamily): boolean {
  return family === 'deepseek_v2' || family === 'deepseek_v3';
}

/** MLA (DeepSeek) or GQA attention, and the rotary dimension it implies. */
function parseAttention(f: Fields, family: ModelFamily, hiddenSize: number, numHeads: number): { attention: AttentionConfig; ropeHeadDim: number } {
  if (isDeepseekFamily(family)) {
    const mla: MlaAttentionConfig = {
      kind: 'mla',
      numHeads,
      qLoraRank: f.intOrNull('q_lora_rank'),
      kvLoraRank: f.posInt('kv_lora_rank'),
      qkNopeHeadDim: f.int('qk_nope_head_dim'),
      qkRopeHeadDim: f.posInt('qk_rope_head_dim'),
      vHeadDim: f.posInt('v_head_dim'),
      attentionBias: f.bool('attention_bias', false),
    };
    if (mla.qkRopeHeadDim % 2 !== 0) bad(`qk_rope_head_dim must be even, got ${mla.qkRopeHeadDim}`);
    return { attention: mla, ropeHeadDim: mla.qkRopeHeadDim };
  }
  const numKvHeads = f.posInt('num_key_value_heads', numHeads);
  if (numHeads % numKvHeads !== 0) bad(`num_attention_heads (${numHeads}) must be a multiple of num_key_value_heads (${numKvHeads})`);
  const headDim = f.has('head_dim') ? f.posInt('head_dim') : hiddenSize / numHeads;
  if (!Number.isInteger(headDim)) bad(`hidden_size (${hiddenSize}) is not a multiple of num_attention_heads (${numHeads}) and no head_dim is given`);
  const attentionBias = f.bool('attention_bias', false);
  const attention: AttentionConfig = {
    kind: 'gqa',
    numHeads,
    numKvHeads,
    headDim,
    // transformers: Qwen2 always has q/k/v biases and no o bias; Qwen3 follows attention_bias;
    // Mixtral's projections never have biases, whatever the config says.
    qkvBias: family === 'qwen2_moe' ? f.bool('qkv_bias', true) : family === 'qwen3_moe' ? attentionBias : false,
    oBias: family === 'qwen3_moe' ? attentionBias : false,
    qkNorm: family === 'qwen3_moe',
  };
  return { attention, ropeHeadDim: Math.floor(headDim * f.num('partial_rotary_factor', 1)) };
}

/** YaRN's attention-magnitude correction for a context `scale` (transformers `get_mscale`). */
function yarnMscale(scale: number, m = 1): number {
  return scale <= 1 ? 1 : 0.1 * m * Math.log(scale) + 1;
}

/** Rotary embedding: config.rope_scaling, or transformers v5 config.rope_parameters. */
function parseRope(f: Fields, family: ModelFamily, ropeHeadDim: number, maxPositionEmbeddings: number): { rope: RopeConfig; mscaleAllDim: number } {
  const ropeParams = f.obj('rope_parameters');
  const ropeScaling = f.obj('rope_scaling') ?? ropeParams;
  const theta = f.has('rope_theta') ? f.num('rope_theta') : ropeParams && typeof ropeParams.rope_theta === 'number' ? ropeParams.rope_theta : 10000;
  const rs = new Fields(ropeScaling ?? {});
  const ropeType = rs.str('rope_type', rs.str('type', 'default'));
  if (!(SUPPORTED_ROPE_TYPES as readonly string[]).includes(ropeType)) {
    bad(`unsupported rope scaling type "${ropeType}"; supported: ${SUPPORTED_ROPE_TYPES.join(', ')}`);
  }
  if (ropeHeadDim % 2 !== 0) bad(`rotary dimension must be even, got ${ropeHeadDim}`);
  const origMax = rs.has('original_max_position_embeddings') ? rs.posInt('original_max_position_embeddings') : maxPositionEmbeddings;
  let factor = 1;
  if (ropeType !== 'default') {
    factor = rs.has('factor') ? rs.num('factor') : ropeType === 'yarn' && rs.has('original_max_position_embeddings') ? maxPositionEmbeddings / origMax : bad(`rope scaling "${ropeType}" needs "factor"`);
  }
  let attentionScaling = 1;
  if (ropeType === 'yarn') {
    if (rs.has('attention_factor')) attentionScaling = rs.num('attention_factor');
    else {
      const m = rs.has('mscale') ? rs.num('mscale') : 0;
      const mAll = rs.has('mscale_all_dim') ? rs.num('mscale_all_dim') : 0;
      attentionScaling = m && mAll ? yarnMscale(factor, m) / yarnMscale(factor, mAll) : yarnMscale(factor);
    }
  }
  const interleaved = family === 'deepseek_v2' ? true : family === 'deepseek_v3' ? f.bool('rope_interleave', true) : false;
  const rope: RopeConfig = {
    theta,
    dim: ropeHeadDim,
    interleaved,
    type: ropeType as RopeConfig['type'],
    factor,
    originalMaxPositionEmbeddings: origMax,
    betaFast: rs.has('beta_fast') ? rs.num('beta_fast') : 32,
    betaSlow: rs.has('beta_slow') ? rs.num('beta_slow') : 1,
    truncate: rs.bool('truncate', true),
    attentionScaling,
  };
  // DeepSeek-V3's softmax scale reads mscale_all_dim too (softmaxScaleOf); only there.
  const mscaleAllDim = family === 'deepseek_v3' && ropeType !== 'default' && rs.has('mscale_all_dim') ? rs.num('mscale_all_dim') : 0;
  return { rope, mscaleAllDim };
}

/** 1/sqrt(query-key dim); DeepSeek-V3 with scaled rope also multiplies by mscale(factor, mscale_all_dim)². */
function softmaxScaleOf(attention: AttentionConfig, family: ModelFamily, rope: RopeConfig, mscaleAllDim: number): number {
  if (attention.kind !== 'mla') return attention.headDim ** -0.5;
  let scale = (attention.qkNopeHeadDim + attention.qkRopeHeadDim) ** -0.5;
  if (family === 'deepseek_v3' && rope.type !== 'default' && mscaleAllDim) {
    const m = yarnMscale(rope.factor, mscaleAllDim);
    scale *= m * m;
  }
  return scale;
}

/** Per layer: dense or MoE MLP, and its sliding window (null = full attention). */
function parseLayers(f: Fields, raw: Json, family: ModelFamily, numLayers: number): LayerConfig[] {
  const layerTypes = raw.layer_types;
  const mlpOnly = new Set(f.intList('mlp_only_layers'));
  const layers: LayerConfig[] = [];
  for (let i = 0; i < numLayers; i++) {
    let isMoe: boolean;
    if (isDeepseekFamily(family)) {
      isMoe = i >= f.int('first_k_dense_replace', 0) && i % f.posInt('moe_layer_freq', 1) === 0;
    } else if (family === 'mixtral') {
      isMoe = true;
    } else {
      isMoe = !mlpOnly.has(i) && (i + 1) % f.posInt('decoder_sparse_step', 1) === 0;
    }
    let slidingWindow: number | null = null;
    if (Array.isArray(layerTypes) && layerTypes[i] !== undefined) {
      if (layerTypes[i] === 'sliding_attention') slidingWindow = f.posInt('sliding_window');
      else if (layerTypes[i] !== 'full_attention') bad(`unsupported layer_types[${i}] "${String(layerTypes[i])}"; supported: full_attention, sliding_attention`);
    } else if (family === 'mixtral') {
      slidingWindow = f.intOrNull('sliding_window');
    } else if (family === 'qwen2_moe' || family === 'qwen3_moe') {
      if (f.bool('use_sliding_window', false) && i >= f.int('max_window_layers', 0)) slidingWindow = f.intOrNull('sliding_window');
    }
    layers.push(Object.freeze({ index: i, mlp: isMoe ? 'moe' : 'dense', slidingWindow }));
  }
  if (!layers.some((l) => l.mlp === 'moe')) bad('config has no MoE layer: moeserve serves Mixture-of-Experts models');
  return layers;
}

function parseMoe(f: Fields, family: ModelFamily, hiddenSize: number): MoeConfig {
  let m: Omit<MoeConfig, 'shared'> & { shared: SharedExpertConfig | null };
  switch (family) {
    case 'mixtral':
      m = {
        nRoutedExperts: f.posInt('num_local_experts'),
        nActivatedExperts: f.posInt('num_experts_per_tok'),
        intermediateSize: f.posInt('intermediate_size'),
        scoreFunc: 'softmax',
        topkMethod: 'greedy',
        nExpertGroups: 1,
        nLimitedGroups: 1,
        normTopkProb: true,
        routeScale: 1,
        useCorrectionBias: false,
        shared: null,
        naming: 'mixtral',
      };
      break;
    case 'qwen2_moe':
    case 'qwen3_moe': {
      const sharedSize = family === 'qwen2_moe' ? f.int('shared_expert_intermediate_size', 0) : 0;
      m = {
        nRoutedExperts: f.posInt('num_experts'),
        nActivatedExperts: f.posInt('num_experts_per_tok'),
        intermediateSize: f.posInt('moe_intermediate_size'),
        scoreFunc: 'softmax',
        topkMethod: 'greedy',
        nExpertGroups: 1,
        nLimitedGroups: 1,
        normTopkProb: f.bool('norm_topk_prob', family === 'qwen3_moe'),
        routeScale: 1,
        useCorrectionBias: false,
        shared: sharedSize > 0 ? { intermediateSize: sharedSize, sigmoidGate: true } : null,
        naming: 'mlp',
      };
      break;
    }
    case 'deepseek_v2':
    case 'deepseek_v3': {
      const v3 = family === 'deepseek_v3';
      const scoring = f.str('scoring_func', v3 ? 'sigmoid' : 'softmax');
      if (scoring !== 'softmax' && scoring !== 'sigmoid') bad(`unsupported scoring_func "${scoring}"; supported: softmax, sigmoid`);
      const method = f.str('topk_method', v3 ? 'noaux_tc' : 'greedy');
      if (method !== 'greedy' && method !== 'group_limited_greedy' && method !== 'noaux_tc') {
        bad(`unsupported topk_method "${method}"; supported: greedy, group_limited_greedy, noaux_tc`);
      }
      const nShared = f.int('n_shared_experts', 0);
      const inter = f.posInt('moe_intermediate_size');
      const nGroups = f.posInt('n_group', 1);
      m = {
        nRoutedExperts: f.posInt('n_routed_experts'),
        nActivatedExperts: f.posInt('num_experts_per_tok'),
        intermediateSize: inter,
        // transformers: V2 routing is always softmax; V3 always sigmoid with noaux_tc.
        scoreFunc: v3 ? 'sigmoid' : 'softmax',
        topkMethod: v3 ? 'noaux_tc' : method,
        nExpertGroups: nGroups,
        nLimitedGroups: f.posInt('topk_group', nGroups),
        // transformers' DeepSeek-V2 never renormalises (norm_topk_prob is kept only for old configs); V3 does when set.
        normTopkProb: v3 ? f.bool('norm_topk_prob', true) : false,
        routeScale: f.num('routed_scaling_factor', 1),
        useCorrectionBias: v3,
        shared: nShared > 0 ? { intermediateSize: inter * nShared, sigmoidGate: false } : null,
        naming: 'mlp',
      };
      if (v3 && scoring !== 'sigmoid') bad(`DeepseekV3 routing uses sigmoid scoring; got scoring_func "${scoring}"`);
      break;
    }
  }
  if (m.nActivatedExperts > m.nRoutedExperts) bad(`num_experts_per_tok (${m.nActivatedExperts}) exceeds the number of routed experts (${m.nRoutedExperts})`);
  if (m.nRoutedExperts % m.nExpertGroups !== 0) bad(`routed experts (${m.nRoutedExperts}) must divide into n_group (${m.nExpertGroups}) groups`);
  if (m.nLimitedGroups > m.nExpertGroups) bad(`topk_group (${m.nLimitedGroups}) exceeds n_group (${m.nExpertGroups})`);
  if (m.topkMethod === 'noaux_tc' && m.nRoutedExperts / m.nExpertGroups < 2) bad('noaux_tc routing needs at least 2 experts per group');
  void hiddenSize;
  return Object.freeze({ ...m, shared: m.shared ? Object.freeze(m.shared) : null });
}

// ---------------------------------------------------------------- derived facts (one owner each)

/** MoE layer indices of the model, ascending. */
export function moeLayers(cfg: MoeModelConfig): number[] {
  return cfg.layers.filter((l) => l.mlp === 'moe').map((l) => l.index);
}

/** Every routed expert of every MoE layer: layer -> [0, X) (what an in-process shard holds). */
export function allExperts(cfg: MoeModelConfig): Map<number, number[]> {
  return new Map(moeLayers(cfg).map((l) => [l, Array.from({ length: cfg.moe.nRoutedExperts }, (_, e) => e)]));
}
