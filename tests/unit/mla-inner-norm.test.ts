/**
 * MLA's inner norms (kv_a_layernorm, q_a_layernorm) use epsilon 1e-6 whatever rms_norm_eps says,
 * as transformers builds them (DeepseekV2RMSNorm(rank) without an eps). Checked on the attention
 * graph's cached latent (kv_new = [c_kv | k_pe]) against a TypeScript reference, with an
 * rms_norm_eps large enough (0.5) that using it for the inner norm would be far off.
 */
import { describe, expect, it } from 'vitest';
import { parseModelConfig } from '../../services/model/src/config.js';
import { buildMlaAttention } from '../../services/model/src/graphs/attention.js';
import { MapWeights } from '../../services/model/src/graphs/source.js';
import * as W from '../../services/model/src/names.js';
import { GraphBuilder } from '../../services/model/src/onnx/graph.js';
import { DEFAULT_RUNTIME, f32, OrtSession } from '../../services/model/src/runtime/onnx.js';

const H = 16;
const C = 8; // kv_lora_rank
const R = 4; // qk_rope_head_dim
const cfg = parseModelConfig({
  architectures: ['DeepseekV2ForCausalLM'],
  model_type: 'deepseek_v2',
  hidden_size: H, num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 2, vocab_size: 32,
  kv_lora_rank: C, q_lora_rank: null, qk_nope_head_dim: 4, qk_rope_head_dim: R, v_head_dim: 4,
  n_routed_experts: 4, num_experts_per_tok: 2, moe_intermediate_size: 8, n_shared_experts: 1,
  first_k_dense_replace: 0, rms_norm_eps: 0.5, intermediate_size: 8,
});

let seed = 1;
const rand = (n: number, scale = 1) => Float32Array.from({ length: n }, () => ((seed = (seed * 16807) % 2147483647) / 2147483647 - 0.5) * scale);

function rmsNorm(x: Float32Array, w: Float32Array, eps: number): Float32Array {
  const ms = x.reduce((s, v) => s + v * v, 0) / x.length;
  return x.map((v, i) => (v / Math.sqrt(ms + eps)) * w[i]!);
}

describe('MLA inner norm epsilon', () => {
  it('kv_a_layernorm uses 1e-6, not rms_norm_eps', async () => {
    const a = cfg.attention;
    if (a.kind !== 'mla') throw new Error('expected MLA');
    const h = a.numHeads;
    const weights = new Map<string, Float32Array>([
      [W.inputNorm(0), rand(H, 0.2).map((v) => 1 + v)],
      [W.attn(0, 'q_proj'), rand(h * (4 + R) * H)],
      [W.attn(0, 'kv_a_proj_with_mqa'), rand((C + R) * H)],
      [W.attn(0, 'kv_a_layernorm'), rand(C, 0.2).map((v) => 1 + v)],
      [W.attn(0, 'kv_b_proj'), rand(h * (4 + 4) * C)],
      [W.attn(0, 'o_proj'), rand(H * h * 4)],
      [W.postAttnNorm(0), rand(H, 0.2).map((v) => 1 + v)],
      [W.routerGate(cfg, 0), rand(4 * H)],
    ]);
    const g = new GraphBuilder('mla');
    buildMlaAttention(g, new MapWeights(weights), cfg, 0, 'absorbed', C + R);
    const session = await OrtSession.create('mla', g.toModel(), DEFAULT_RUNTIME);
    // small hidden values: mean(x^2) is far below 0.5, so the two epsilons give very different norms
    const hidden = rand(H, 0.05);
    const res = await session.run(
      { hidden: f32(hidden, [1, H]), cos: f32(new Float32Array(R).fill(1), [1, 1, R]), sin: f32(new Float32Array(R), [1, 1, R]), past: f32(new Float32Array(0), [1, 0, C + R]), mask: f32(new Float32Array(1), [1, 1, 1]) },
      ['kv_new'],
    );
    const x = rmsNorm(hidden, weights.get(W.inputNorm(0))!, cfg.rmsNormEps);
    const kvA = weights.get(W.attn(0, 'kv_a_proj_with_mqa'))!;
    const c = new Float32Array(C);
    for (let o = 0; o < C; o++) for (let i = 0; i < H; i++) c[o] += kvA[o * H + i]! * x[i]!;
    const expected = rmsNorm(c, weights.get(W.attn(0, 'kv_a_layernorm'))!, 1e-6);
    const wrong = rmsNorm(c, weights.get(W.attn(0, 'kv_a_layernorm'))!, cfg.rmsNormEps);
    const got = res.kv_new!.data.subarray(0, C);
    for (let i = 0; i < C; i++) expect(got[i]).toBeCloseTo(expected[i]!, 4);
    expect(Math.max(...Array.from(got, (v, i) => Math.abs(v - wrong[i]!)))).toBeGreaterThan(0.1);
  });
});
