/**
 * The weight manifest: every tensor a checkpoint of a given config holds, with its HF shape.
 *
 * MoeModelConfig (config.ts) + tensor names (names.ts) -> `expectedTensors` (this file) ->
 * `validateCheckpoint` at load (gateway and workers refuse a checkpoint that does not match its
 * config before building any graph) and make-checkpoint (what to generate, in this order).
 *
 * Shapes follow transformers' modules: nn.Linear(in, out) stores weight [out, in] and bias [out];
 * RMSNorm stores weight [dim]. The list is in transformers' parameter registration order
 * (embed, then per layer self_attn, mlp, input_layernorm, post_attention_layernorm, then norm,
 * lm_head; the MoE block as router gate, routed experts, shared expert), which is the order
 * Hugging Face fills shards in (the deepseek-v2-tiny fixture's shard split reproduces exactly).
 *
 * Letters: H hidden size, E routed experts, I expert intermediate size, nH heads, nKv KV heads,
 * hd head dim, V vocab.
 */
import { ServerError } from '../../common/src/errors.js';
import type { MoeModelConfig } from './config.js';
import * as N from './names.js';

/** What a tensor is, so a generator can pick its initialisation. */
export type TensorKind = 'embedding' | 'linear' | 'bias' | 'norm' | 'correction_bias';

export interface ExpectedTensor {
  readonly name: string;
  readonly shape: number[];
  readonly kind: TensorKind;
}

/** Anything with named, shaped tensors (a `Checkpoint`). */
export interface TensorSource {
  readonly dir: string;
  has(name: string): boolean;
  info(name: string): { readonly shape: readonly number[] };
}

/** Every tensor a checkpoint of `cfg` holds, in transformers' parameter order. */
export function expectedTensors(cfg: MoeModelConfig): ExpectedTensor[] {
  const H = cfg.hiddenSize;
  const out: ExpectedTensor[] = [];
  const linear = (name: string, outDim: number, inDim: number) => out.push({ name, shape: [outDim, inDim], kind: 'linear' });
  const bias = (name: string, dim: number) => out.push({ name, shape: [dim], kind: 'bias' });
  const norm = (name: string, dim: number) => out.push({ name, shape: [dim], kind: 'norm' });
  // gate/up: [inter, H]; down: [H, inter]
  const mlp = (gate: string, up: string, down: string, inter: number) => {
    linear(gate, inter, H);
    linear(up, inter, H);
    linear(down, H, inter);
  };

  out.push({ name: N.EMBED, shape: [cfg.vocabSize, H], kind: 'embedding' });
  for (const layer of cfg.layers) {
    const l = layer.index;
    const a = cfg.attention;
    if (a.kind === 'gqa') {
      const q = a.numHeads * a.headDim;
      const kv = a.numKvHeads * a.headDim;
      for (const [proj, dim] of [['q_proj', q], ['k_proj', kv], ['v_proj', kv]] as const) {
        linear(N.attn(l, proj), dim, H);
        if (a.qkvBias) bias(N.attn(l, proj, 'bias'), dim);
      }
      linear(N.attn(l, 'o_proj'), H, q);
      if (a.oBias) bias(N.attn(l, 'o_proj', 'bias'), H);
      if (a.qkNorm) {
        norm(N.attn(l, 'q_norm'), a.headDim);
        norm(N.attn(l, 'k_norm'), a.headDim);
      }
    } else {
      const qHead = a.qkNopeHeadDim + a.qkRopeHeadDim;
      // transformers DeepseekV2/V3Attention: only q_a_proj, kv_a_proj_with_mqa and o_proj take attention_bias
      if (a.qLoraRank === null) {
        linear(N.attn(l, 'q_proj'), a.numHeads * qHead, H);
      } else {
        linear(N.attn(l, 'q_a_proj'), a.qLoraRank, H);
        if (a.attentionBias) bias(N.attn(l, 'q_a_proj', 'bias'), a.qLoraRank);
        norm(N.attn(l, 'q_a_layernorm'), a.qLoraRank);
        linear(N.attn(l, 'q_b_proj'), a.numHeads * qHead, a.qLoraRank);
      }
      linear(N.attn(l, 'kv_a_proj_with_mqa'), a.kvLoraRank + a.qkRopeHeadDim, H);
      if (a.attentionBias) bias(N.attn(l, 'kv_a_proj_with_mqa', 'bias'), a.kvLoraRank + a.qkRopeHeadDim);
      norm(N.attn(l, 'kv_a_layernorm'), a.kvLoraRank);
      linear(N.attn(l, 'kv_b_proj'), a.numHeads * (a.qkNopeHeadDim + a.vHeadDim), a.kvLoraRank);
      linear(N.attn(l, 'o_proj'), H, a.numHeads * a.vHeadDim);
      if (a.attentionBias) bias(N.attn(l, 'o_proj', 'bias'), H);
    }

    if (layer.mlp === 'dense') {
      mlp(N.denseMlp(l, 'gate_proj'), N.denseMlp(l, 'up_proj'), N.denseMlp(l, 'down_proj'), cfg.denseIntermediateSize);
    } else {
      const m = cfg.moe;
      // router gate (+ correction bias), then the experts: the parameter order Hugging Face shards in
      linear(N.routerGate(cfg, l), m.nRoutedExperts, H); // [E, H]
      if (m.useCorrectionBias) out.push({ name: N.correctionBias(l), shape: [m.nRoutedExperts], kind: 'correction_bias' });
      for (let e = 0; e < m.nRoutedExperts; e++) mlp(N.expert(cfg, l, e, 'gate'), N.expert(cfg, l, e, 'up'), N.expert(cfg, l, e, 'down'), m.intermediateSize);
      if (m.shared) {
        const s = m.shared;
        mlp(N.sharedExpert(cfg, l, 'gate'), N.sharedExpert(cfg, l, 'up'), N.sharedExpert(cfg, l, 'down'), s.intermediateSize);
        if (s.sigmoidGate) linear(N.sharedExpertGate(l), 1, H);
      }
    }
    norm(N.inputNorm(l), H);
    norm(N.postAttnNorm(l), H);
  }
  norm(N.FINAL_NORM, H);
  if (!cfg.tieWordEmbeddings) linear(N.LM_HEAD, cfg.vocabSize, H);
  return out;
}

/** How many problems a validation error lists before summarising the rest. */
const MAX_LISTED_PROBLEMS = 8;

const fmt = (shape: readonly number[]) => `[${shape.join(', ')}]`;

/**
 * Every expected tensor present with the expected shape, else ServerError('checkpoint_invalid')
 * listing the first problems. Extra tensors are allowed (e.g. DeepSeek-V3's MTP layer).
 */
export function validateCheckpoint(cfg: MoeModelConfig, ckpt: TensorSource): void {
  const problems: string[] = [];
  for (const t of expectedTensors(cfg)) {
    if (!ckpt.has(t.name)) {
      problems.push(`missing "${t.name}" (expected ${fmt(t.shape)})`);
      continue;
    }
    const shape = ckpt.info(t.name).shape;
    if (shape.length !== t.shape.length || shape.some((d, i) => d !== t.shape[i])) {
      problems.push(`"${t.name}" has shape ${fmt(shape)}, expected ${fmt(t.shape)}`);
    }
  }
  if (problems.length === 0) return;
  const listed = problems.slice(0, MAX_LISTED_PROBLEMS).join('; ');
  const more = problems.length > MAX_LISTED_PROBLEMS ? `; and ${problems.length - MAX_LISTED_PROBLEMS} more` : '';
  throw new ServerError('checkpoint_invalid', `${ckpt.dir}: checkpoint does not match ${cfg.architecture} config.json: ${problems.length} problem(s): ${listed}${more}`);
}
