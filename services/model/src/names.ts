/**
 * Hugging Face tensor names, per architecture, derived from the normalized config.
 * The graph builders (what to load) and the weight manifest (what a checkpoint must hold,
 * what make-checkpoint writes) both read names from here, so they cannot drift apart.
 */
import type { MoeModelConfig } from './config.js';

export const EMBED = 'model.embed_tokens.weight';
export const FINAL_NORM = 'model.norm.weight';
export const LM_HEAD = 'lm_head.weight';

const layer = (l: number) => `model.layers.${l}`;

export const inputNorm = (l: number) => `${layer(l)}.input_layernorm.weight`;
export const postAttnNorm = (l: number) => `${layer(l)}.post_attention_layernorm.weight`;
/** self_attn.<proj>.weight (or .bias with suffix 'bias'). */
export const attn = (l: number, proj: string, suffix: 'weight' | 'bias' = 'weight') => `${layer(l)}.self_attn.${proj}.${suffix}`;

/** Dense MLP of a non-MoE layer: mlp.gate_proj / up_proj / down_proj. */
export const denseMlp = (l: number, proj: 'gate_proj' | 'up_proj' | 'down_proj') => `${layer(l)}.mlp.${proj}.weight`;

export type ExpertProj = 'gate' | 'up' | 'down';
const MIXTRAL_PROJ: Record<ExpertProj, string> = { gate: 'w1', up: 'w3', down: 'w2' };
const MLP_PROJ: Record<ExpertProj, string> = { gate: 'gate_proj', up: 'up_proj', down: 'down_proj' };

/** Router gate weight [nRoutedExperts, hidden]. */
export function routerGate(cfg: MoeModelConfig, l: number): string {
  return cfg.moe.naming === 'mixtral' ? `${layer(l)}.block_sparse_moe.gate.weight` : `${layer(l)}.mlp.gate.weight`;
}

/** DeepSeek-V3 e_score_correction_bias [nRoutedExperts]. */
export const correctionBias = (l: number) => `${layer(l)}.mlp.gate.e_score_correction_bias`;

/** Routed expert projection: gate/up are [intermediate, hidden], down is [hidden, intermediate]. */
export function expert(cfg: MoeModelConfig, l: number, e: number, proj: ExpertProj): string {
  return cfg.moe.naming === 'mixtral'
    ? `${layer(l)}.block_sparse_moe.experts.${e}.${MIXTRAL_PROJ[proj]}.weight`
    : `${layer(l)}.mlp.experts.${e}.${MLP_PROJ[proj]}.weight`;
}

/** Shared expert projection: Qwen2-MoE `mlp.shared_expert.*`, DeepSeek `mlp.shared_experts.*`. */
export function sharedExpert(cfg: MoeModelConfig, l: number, proj: ExpertProj): string {
  const folder = cfg.family === 'qwen2_moe' ? 'shared_expert' : 'shared_experts';
  return `${layer(l)}.mlp.${folder}.${MLP_PROJ[proj]}.weight`;
}

/** Qwen2-MoE shared expert gate [1, hidden]. */
export const sharedExpertGate = (l: number) => `${layer(l)}.mlp.shared_expert_gate.weight`;
