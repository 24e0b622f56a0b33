/**
 * Attention unit of one decoder layer, as one ONNX graph:
 *   hidden -> input_layernorm -> q/k/v (GQA) or latent (MLA) projections -> RoPE
 *   -> attention over [past rows from the KV cache | this step's rows] -> o_proj -> + residual
 *   -> post_attention_layernorm (-> router logits on MoE layers).
 *
 * Letters: B sequences in the group, T query slots per sequence (padded), P past slots (padded),
 * L = P + T, N = B·T rows, H hidden, h query heads, g KV heads, G = h/g, D head dim,
 * C kv_lora_rank, R rotary dims, F = R/2, E cache row elements, X routed experts.
 *
 * Inputs (every variant):
 *   hidden  float32 [N, H]      residual stream rows, sequence-major (row = b·T + t)
 *   cos,sin float32 [N, 1, R]   RoPE rows for each row's absolute position (RopeTable's layout;
 *                               the 1 broadcasts over heads)
 *   past    float32 [B, P, E]   MLA: this layer's cache rows gathered from the KV pool (P may be 0)
 *   past_k, past_v float32 [B, g, P, D]  GQA: the same, head-major (KvCacheManager.gatherHeads)
 *   mask    float32 [B, T, L]   additive: 0 visible, -1e30 hidden (causality, padding, windows)
 * Outputs:
 *   hidden_out float32 [N, H]   hidden + attention
 *   x_norm     float32 [N, H]   post_attention_layernorm(hidden_out): the MLP / MoE input
 *   kv_new     float32 [N, E]   this step's cache rows, in the KV pool's row format:
 *                               GQA [K: g·D | V: g·D] (K after RoPE); MLA [c_kv: C | k_pe: R]
 *                               (c_kv after kv_a_layernorm, k_pe after RoPE)
 *   router_logits float32 [N, X] (MoE layers only)
 */
import { ServerError } from '../../../common/src/errors.js';
import type { MoeModelConfig } from '../config.js';
import * as W from '../names.js';
import { type GraphBuilder } from '../onnx/graph.js';
import { DT } from '../onnx/proto.js';
import { DEFAULT_GRAPH_OPTIONS, projection, type GraphOptions } from './linear.js';
import { applyRope } from './rope.js';
import type { WeightSource } from './source.js';

/**
 * MLA attention form. 'naive' rebuilds per-head keys and values from the latent (the reference;
 * cheaper for a prompt's chunks), 'absorbed' attends over the cached latent with W_UK folded into
 * the query (far cheaper per decoded token), 'auto' uses each where it costs fewer multiply-adds
 * for the group's query rows and keys (`mlaNaiveCheaper`), as DeepSeek and vLLM do (MHA for
 * prefill, MQA over the latent for decode).
 */
export type MlaImpl = 'naive' | 'absorbed' | 'auto';
export const MLA_IMPLS: readonly MlaImpl[] = Object.freeze(['auto', 'absorbed', 'naive']);

/**
 * Whether the naive form costs fewer multiply-adds for a group of T query rows per sequence over
 * L = past + T keys. Per sequence and head:
 *   naive    = L·C·(Dn+Dv)  (every key and value rebuilt from the latent) + T·L·(Dn+R+Dv)
 *   absorbed = T·C·(Dn+Dv)  (W_UK into the query, W_UV after)             + T·L·(2C+R)
 * naive < absorbed  ⟺  C·(Dn+Dv)·(L−T) < T·L·(2C−Dn−Dv).
 * A prompt's first chunk (L = T) is naive at any length; with a past, dsv2-perf needs T ≥ 86 for
 * every L (the limit L → ∞: T·(2C−Dn−Dv) > C·(Dn+Dv)). Decode (T = 1, a past) is always absorbed.
 * Measured on dsv2-perf, 16 prompts of 64 tokens (L = T = 64): prefill attention 1,241/964 ms
 * absorbed, 836/669 ms naive (two runs each).
 */
export function mlaNaiveCheaper(cfg: MoeModelConfig, T: number, L: number): boolean {
  const a = cfg.attention;
  if (a.kind !== 'mla') return false;
  const perRow = 2 * a.kvLoraRank - a.qkNopeHeadDim - a.vHeadDim;
  return perRow > 0 && a.kvLoraRank * (a.qkNopeHeadDim + a.vHeadDim) * (L - T) < T * L * perRow;
}

/**
 * Epsilon of MLA's inner norms (q_a_layernorm, kv_a_layernorm): transformers builds them as
 * `DeepseekV2RMSNorm(rank)` without passing rms_norm_eps, so they keep the class default 1e-6
 * whatever the config says (DeepSeek's own code does the same).
 */
export const MLA_INNER_NORM_EPS = 1e-6;

/**
 * The KV layout owns the row size (services/kvcache/src/layout.ts, `elementsPerToken`); the graph
 * is told it and asserts that the rows it writes have exactly that shape: GQA [K: g·D | V: g·D],
 * MLA [c_kv: C | k_pe: R].
 */
function assertRowElements(cfg: MoeModelConfig, rowElements: number): void {
  const a = cfg.attention;
  const writes = a.kind === 'mla' ? a.kvLoraRank + a.qkRopeHeadDim : a.numKvHeads * (a.headDim + a.headDim);
  if (rowElements !== writes) throw new ServerError('internal', `KV layout rows of ${rowElements} elements, attention writes ${writes}`);
}

function weight(g: GraphBuilder, ws: WeightSource, name: string, dims: number[]): string {
  return g.initializer(name, DT.FLOAT, dims, ws.readF32(name));
}

/** x · W^T for the checkpoint weight `name` [N, K], in the chosen weight format. */
function proj(g: GraphBuilder, ws: WeightSource, x: string, name: string, N: number, K: number, opts: GraphOptions, bias?: string): string {
  return projection(g, x, name, ws.readF32(name), N, K, opts, bias);
}

function optionalBias(g: GraphBuilder, ws: WeightSource, name: string, present: boolean, n: number): string | undefined {
  return present ? weight(g, ws, name, [n]) : undefined;
}

/** Declares the inputs every variant has (not the past); returns their names. E: the KV layout's row elements. */
function declareInputs(g: GraphBuilder, cfg: MoeModelConfig, E: number) {
  assertRowElements(cfg, E);
  const H = cfg.hiddenSize;
  const R = cfg.rope.dim;
  return {
    hidden: g.input('hidden', DT.FLOAT, ['N', H]),
    cos: g.input('cos', DT.FLOAT, ['N', 1, R]),
    sin: g.input('sin', DT.FLOAT, ['N', 1, R]),
    mask: g.input('mask', DT.FLOAT, ['B', 'T', 'L']),
  };
}

/** attention output [N, h·Dv] -> o_proj -> residual -> post norm (+ router logits). */
function finish(g: GraphBuilder, ws: WeightSource, cfg: MoeModelConfig, layer: number, hidden: string, attnOut: string, oIn: number, oBias: boolean, opts: GraphOptions): void {
  const H = cfg.hiddenSize;
  const o = proj(g, ws, attnOut, W.attn(layer, 'o_proj'), H, oIn, opts, optionalBias(g, ws, W.attn(layer, 'o_proj', 'bias'), oBias, H));
  const hiddenOut = g.add(hidden, o);
  g.output(hiddenOut, 'hidden_out');
  const xNorm = g.rmsNorm(hiddenOut, weight(g, ws, W.postAttnNorm(layer), [H]), cfg.rmsNormEps);
  g.output(xNorm, 'x_norm');
  if (cfg.layers[layer]!.mlp === 'moe') {
    const X = cfg.moe.nRoutedExperts;
    // The gate stays fp32 in every weight format: routing decisions are discrete.
    g.output(g.linear(xNorm, weight(g, ws, W.routerGate(cfg, layer), [X, H])), 'router_logits');
  }
}

/** alpha · a · bᵀ over the last two axes (batch axes broadcast), without materializing bᵀ. */
function matmulT(g: GraphBuilder, a: string, b: string, alpha: number): string {
  return g.node('FusedMatMul', [a, b], { transB: 1, alpha: { float: alpha } }, 1, 'com.microsoft')[0]!;
}

/** Splits [..., L] along the last axis into the past part [..., P] and this step's [..., T]; pLen: [P]. */
function splitPastNew(g: GraphBuilder, x: string, pLen: string, mask: string): [string, string] {
  const sizes = g.concat([pLen, g.shape(mask, 1, 2)], 0); // [P, T]
  return g.node('Split', [x, sizes], { axis: -1 }, 2) as [string, string];
}

/** [B, T, ...] -> shape tensor value: Shape(mask)[0:2] ++ rest. */
function btShape(g: GraphBuilder, mask: string, rest: number[]): string {
  return g.concat([g.shape(mask, 0, 2), g.constI64(rest)], 0);
}

export function buildGqaAttention(g: GraphBuilder, ws: WeightSource, cfg: MoeModelConfig, layer: number, kvRowElements: number, opts: GraphOptions = DEFAULT_GRAPH_OPTIONS): void {
  const a = cfg.attention;
  if (a.kind !== 'gqa') throw new Error('buildGqaAttention: not a GQA model');
  const H = cfg.hiddenSize;
  const { numHeads: h, numKvHeads: kvh, headDim: D } = a;
  const G = h / kvh;
  const R = cfg.rope.dim;
  const inp = declareInputs(g, cfg, kvRowElements);

  const x = g.rmsNorm(inp.hidden, weight(g, ws, W.inputNorm(layer), [H]), cfg.rmsNormEps);
  // One fused projection [h·D + 2·g·D, H]: one weight read instead of three.
  const qkvW = concatRows(ws, [W.attn(layer, 'q_proj'), W.attn(layer, 'k_proj'), W.attn(layer, 'v_proj')]);
  let qkvB: string | undefined;
  if (a.qkvBias) {
    const b = concatRows(ws, [W.attn(layer, 'q_proj', 'bias'), W.attn(layer, 'k_proj', 'bias'), W.attn(layer, 'v_proj', 'bias')]);
    qkvB = g.initializer(`layers.${layer}.self_attn.qkv_proj.bias`, DT.FLOAT, [(h + 2 * kvh) * D], b);
  }
  const qkv = g.reshape(projection(g, x, `layers.${layer}.self_attn.qkv_proj.weight`, qkvW, (h + 2 * kvh) * D, H, opts, qkvB), [0, h + 2 * kvh, D]); // [N, h+2g, D]
  let q: string;
  let k: string; // [N, g, D] after RoPE
  let v: string; // [N, g, D]
  if (a.qkNorm) {
    const [q0, k0, v0] = g.split(qkv, 1, [h, kvh, kvh]) as [string, string, string];
    q = applyRope(g, g.rmsNorm(q0, weight(g, ws, W.attn(layer, 'q_norm'), [D]), cfg.rmsNormEps), inp.cos, inp.sin, R, D, cfg.rope.interleaved);
    k = applyRope(g, g.rmsNorm(k0, weight(g, ws, W.attn(layer, 'k_norm'), [D]), cfg.rmsNormEps), inp.cos, inp.sin, R, D, cfg.rope.interleaved);
    v = v0;
  } else {
    // q and k heads rotate in one go (the same cos/sin for every head); v heads pass through.
    const [qk, v0] = g.split(qkv, 1, [h + kvh, kvh]) as [string, string];
    [q, k] = g.split(applyRope(g, qk, inp.cos, inp.sin, R, D, cfg.rope.interleaved), 1, [h, kvh]) as [string, string];
    v = v0;
  }
  g.output(g.reshape(g.concat([k, v], 1), [0, 2 * kvh * D]), 'kv_new'); // [N, 2·g·D]: the cache row [K | V]

  // The past is attended where it lies (the pool gathers it head-major), and this step's keys and
  // values beside it: scores and weighted values are computed in two parts ([past | new] along
  // the key axis), so the window is never concatenated and nothing of the past is copied in the
  // graph (q·Kᵀ is a FusedMatMul with transB).
  const pk = g.input('past_k', DT.FLOAT, ['B', kvh, 'P', D]);
  const pv = g.input('past_v', DT.FLOAT, ['B', kvh, 'P', D]);
  const toBgTD = (x: string) => g.transpose(g.reshape(x, btShape(g, inp.mask, [kvh, D])), [0, 2, 1, 3]); // [N, g, D] -> [B, g, T, D]
  const kN = toBgTD(k);
  const vN = toBgTD(v);
  // q rows grouped by KV head: [N, h, D] -> [B, T, g, G, D] -> [B, g, G, T, D] -> [B, g, G·T, D]
  const q5 = g.transpose(g.reshape(q, btShape(g, inp.mask, [kvh, G, D])), [0, 2, 3, 1, 4]);
  const qG = g.reshape(q5, [0, kvh, -1, D]);
  // The softmax scale rides on the score products (FusedMatMul's alpha): one node fewer.
  const scores = g.concat([matmulT(g, qG, pk, cfg.softmaxScale), matmulT(g, qG, kN, cfg.softmaxScale)], 3); // [B, g, G·T, L]
  const s5 = g.reshape(scores, g.concat([g.shape(q5, 0, 4), g.shape(inp.mask, 2, 3)], 0)); // [B, g, G, T, L]
  const probs = g.softmax(g.add(s5, g.unsqueeze(inp.mask, [1, 2])), -1);
  const [pPast, pNew] = splitPastNew(g, g.reshape(probs, g.shape(scores)), g.shape(pk, 2, 3), inp.mask);
  const ctx = g.add(g.matmul(pPast, pv), g.matmul(pNew, vN)); // [B, g, G·T, D]
  const ctx5 = g.reshape(ctx, g.shape(q5)); // [B, g, G, T, D]
  const attnOut = g.reshape(g.transpose(ctx5, [0, 3, 1, 2, 4]), [-1, h * D]); // [N, h·D]
  finish(g, ws, cfg, layer, inp.hidden, attnOut, h * D, a.oBias, opts);
}

export function buildMlaAttention(g: GraphBuilder, ws: WeightSource, cfg: MoeModelConfig, layer: number, impl: 'naive' | 'absorbed', kvRowElements: number, opts: GraphOptions = DEFAULT_GRAPH_OPTIONS): void {
  const a = cfg.attention;
  if (a.kind !== 'mla') throw new Error('buildMlaAttention: not an MLA model');
  const H = cfg.hiddenSize;
  const { numHeads: h, kvLoraRank: C, qkNopeHeadDim: Dn, qkRopeHeadDim: R, vHeadDim: Dv } = a;
  const Dq = Dn + R;
  const inp = { ...declareInputs(g, cfg, kvRowElements), past: g.input('past', DT.FLOAT, ['B', 'P', kvRowElements]) };
  const bias = a.attentionBias;

  const x = g.rmsNorm(inp.hidden, weight(g, ws, W.inputNorm(layer), [H]), cfg.rmsNormEps);
  // The projections that read x (q_proj, or q_a_proj with a q LoRA; and kv_a_proj_with_mqa) as
  // one fused weight [Q1 + C + R, H]: one weight read instead of two. q_proj has no bias.
  const q1Name = a.qLoraRank === null ? W.attn(layer, 'q_proj') : W.attn(layer, 'q_a_proj');
  const Q1 = a.qLoraRank === null ? h * Dq : a.qLoraRank;
  const kvAName = W.attn(layer, 'kv_a_proj_with_mqa');
  let xBias: string | undefined;
  if (bias) {
    const q1Bias = a.qLoraRank === null ? new Float32Array(Q1) : W.attn(layer, 'q_a_proj', 'bias');
    xBias = g.initializer(`layers.${layer}.self_attn.q_kv_a_proj.bias`, DT.FLOAT, [Q1 + C + R], concatRows(ws, [q1Bias, W.attn(layer, 'kv_a_proj_with_mqa', 'bias')]));
  }
  const fromX = projection(g, x, `layers.${layer}.self_attn.q_kv_a_proj.weight`, concatRows(ws, [q1Name, kvAName]), Q1 + C + R, H, opts, xBias);
  const [q1, kvA] = g.split(fromX, 1, [Q1, C + R]) as [string, string];
  let qFlat = q1;
  if (a.qLoraRank !== null) {
    const qaN = g.rmsNorm(q1, weight(g, ws, W.attn(layer, 'q_a_layernorm'), [Q1]), MLA_INNER_NORM_EPS);
    qFlat = proj(g, ws, qaN, W.attn(layer, 'q_b_proj'), h * Dq, Q1, opts);
  }
  const [qNope, qPeRaw] = g.split(g.reshape(qFlat, [0, h, Dq]), 2, [Dn, R]) as [string, string]; // [N,h,Dn], [N,h,R]
  const qPe = applyRope(g, qPeRaw, inp.cos, inp.sin, R, R, cfg.rope.interleaved);

  const [cRaw, kPeRaw] = g.split(kvA, 1, [C, R]) as [string, string];
  const cKv = g.rmsNorm(cRaw, weight(g, ws, W.attn(layer, 'kv_a_layernorm'), [C]), MLA_INNER_NORM_EPS); // [N, C]
  const kPe = g.reshape(applyRope(g, g.reshape(kPeRaw, [0, 1, R]), inp.cos, inp.sin, R, R, cfg.rope.interleaved), [0, R]);
  const kvNew = g.concat([cKv, kPe], 1); // [N, C + R]
  g.output(kvNew, 'kv_new');

  const latNew = g.reshape(kvNew, btShape(g, inp.mask, [C + R])); // [B, T, C+R]
  const maskB = g.unsqueeze(inp.mask, [1]); // [B, 1, T, L]
  // q as [B, h, T, *]
  const toBhT = (v: string, d: number) => g.transpose(g.reshape(v, btShape(g, inp.mask, [h, d])), [0, 2, 1, 3]);
  const kvB = ws.readF32(W.attn(layer, 'kv_b_proj')); // [h·(Dn+Dv), C]
  let attnOut: string; // [N, h·Dv]
  if (impl === 'naive') {
    // Rebuild per-head keys and values from every cached latent: the reference path.
    const lat = g.concat([inp.past, latNew], 1); // [B, L, C+R]
    const [cAll, kPeAll] = g.split(lat, 2, [C, R]) as [string, string];
    const kvFull = g.reshape(g.matmul(cAll, g.transpose(g.initializer(W.attn(layer, 'kv_b_proj'), DT.FLOAT, [h * (Dn + Dv), C], kvB), [1, 0])), [0, 0, h, Dn + Dv]); // [B, L, h, Dn+Dv]
    const [kNope, v] = g.split(kvFull, 3, [Dn, Dv]) as [string, string];
    const kPeH = g.op('Expand', [g.unsqueeze(kPeAll, [2]), g.concat([g.shape(kNope, 0, 3), g.constI64([R])], 0)]); // [B, L, h, R]
    const k = g.transpose(g.concat([kNope, kPeH], 3), [0, 2, 3, 1]); // [B, h, Dq, L]
    const qFull = toBhT(g.concat([qNope, qPe], 2), Dq); // [B, h, T, Dq]
    const probs = g.softmax(g.add(g.scale(g.matmul(qFull, k), cfg.softmaxScale), maskB), -1);
    const ctx = g.matmul(probs, g.transpose(v, [0, 2, 1, 3])); // [B, h, T, Dv]
    attnOut = g.reshape(g.transpose(ctx, [0, 2, 1, 3]), [-1, h * Dv]);
  } else {
    // Absorbed: W_UK folded into the query, attention over the cached latent itself, W_UV after.
    const { wUK, wUVt } = splitKvB(kvB, h, Dn, Dv, C);
    const wUKName = g.initializer(`layers.${layer}.self_attn.w_uk`, DT.FLOAT, [h, Dn, C], wUK);
    const wUVName = g.initializer(`layers.${layer}.self_attn.w_uv_t`, DT.FLOAT, [h, C, Dv], wUVt);
    // W_UK and W_UV take every row of the step per head at once ([h, N, *], h GEMMs), not one
    // row per sequence and head (B·h GEMVs).
    const hBT = g.concat([g.constI64([h]), g.shape(inp.mask, 0, 2)], 0); // [h, B, T]
    const qLatH = g.matmul(g.transpose(qNope, [1, 0, 2]), wUKName); // [h, N, C]
    const qLat = g.transpose(g.reshape(qLatH, g.concat([hBT, g.constI64([C])], 0)), [1, 0, 2, 3]); // [B, h, T, C]
    const qCat = g.concat([qLat, toBhT(qPe, R)], 3); // [B, h, T, C+R] — matches the cache row [c_kv | k_pe]
    const bhT = g.shape(qCat, 0, 3); // [B, h, T]
    // Past latents are attended where they lie (no concat, no transpose, no copy in the graph),
    // this step's beside them; the weighted sum runs over whole rows [c_kv | k_pe] and keeps c_kv.
    // Every head reads the same latent rows, so the h·T query rows of a sequence are one matrix
    // [h·T, C+R] against them (one GEMM per sequence reads its past once, not once per head).
    const pastU = g.unsqueeze(inp.past, [1]); // [B, 1, P, C+R]
    const newU = g.unsqueeze(latNew, [1]); // [B, 1, T, C+R]
    const qRows = g.reshape(qCat, [0, 1, -1, C + R]); // [B, 1, h·T, C+R]
    const scores = g.reshape(g.concat([matmulT(g, qRows, pastU, cfg.softmaxScale), matmulT(g, qRows, newU, cfg.softmaxScale)], 3), g.concat([bhT, g.shape(inp.mask, 2, 3)], 0)); // [B, h, T, L]
    const probs = g.reshape(g.softmax(g.add(scores, maskB), -1), [0, 1, -1, 0]); // [B, 1, h·T, L]
    const [pPast, pNew] = splitPastNew(g, probs, g.shape(inp.past, 1, 2), inp.mask);
    const ctxLat = g.add(g.matmul(pPast, pastU), g.matmul(pNew, newU)); // [B, 1, h·T, C+R]
    const ctxH = g.transpose(g.reshape(g.slice(ctxLat, 3, 0, C), g.concat([bhT, g.constI64([C])], 0)), [1, 0, 2, 3]); // [h, B, T, C]
    const outH = g.matmul(g.reshape(ctxH, [0, -1, C]), wUVName); // [h, N, Dv]
    attnOut = g.reshape(g.transpose(outH, [1, 0, 2]), [-1, h * Dv]);
  }
  finish(g, ws, cfg, layer, inp.hidden, attnOut, h * Dv, bias, opts);
}

/** kv_b_proj [h·(Dn+Dv), C] -> W_UK [h, Dn, C] and W_UV^T [h, C, Dv]. */
function splitKvB(kvB: Float32Array, h: number, Dn: number, Dv: number, C: number): { wUK: Float32Array; wUVt: Float32Array } {
  const wUK = new Float32Array(h * Dn * C);
  const wUVt = new Float32Array(h * C * Dv);
  for (let head = 0; head < h; head++) {
    const base = head * (Dn + Dv) * C;
    wUK.set(kvB.subarray(base, base + Dn * C), head * Dn * C);
    for (let d = 0; d < Dv; d++) {
      const row = base + (Dn + d) * C;
      for (let c = 0; c < C; c++) wUVt[head * C * Dv + c * Dv + d] = kvB[row + c]!;
    }
  }
  return { wUK, wUVt };
}

/** The named checkpoint tensors (or given values: a part a checkpoint lacks, e.g. q_proj's absent bias as zeros) end to end. */
function concatRows(ws: WeightSource, sources: (string | Float32Array)[]): Float32Array {
  const parts = sources.map((n) => (typeof n === 'string' ? ws.readF32(n) : n));
  const out = new Float32Array(parts.reduce((s, p) => s + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}
