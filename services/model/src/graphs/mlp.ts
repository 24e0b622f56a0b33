/**
 * Feed-forward units as ONNX graphs: dense MLP, shared experts, routed experts, and the model's
 * ends (embedding, final norm + LM head). Each unit is its own graph so that routed experts can
 * run in another process (workers/) while the gateway keeps the rest.
 *
 * Letters: N rows, M routed rows (grouped by expert), H hidden, I intermediate, V vocab,
 * S local experts of one layer.
 */
import type { MoeModelConfig } from '../config.js';
import * as W from '../names.js';
import { GraphBuilder } from '../onnx/graph.js';
import { DT } from '../onnx/proto.js';
import { DEFAULT_GRAPH_OPTIONS, projection, type GraphOptions } from './linear.js';
import type { WeightSource } from './source.js';

/**
 * SwiGLU: down(silu(gate(x)) · up(x)), with gate and up fused into one [2I, H] weight (one
 * weight read instead of two). `prefix` names the fused weight in the graph.
 */
function swiglu(g: GraphBuilder, x: string, prefix: string, gateUp: Float32Array, downName: string, down: Float32Array, H: number, I: number, opts: GraphOptions): string {
  const [gate, up] = g.split(projection(g, x, `${prefix}.gate_up`, gateUp, 2 * I, H, opts), 1, [I, I]) as [string, string];
  return projection(g, g.mul(g.silu(gate), up), downName, down, H, I, opts);
}

function fuseGateUp(ws: WeightSource, gateName: string, upName: string): Float32Array {
  const gate = ws.readF32(gateName);
  const up = ws.readF32(upName);
  const out = new Float32Array(gate.length + up.length);
  out.set(gate, 0);
  out.set(up, gate.length);
  return out;
}

/**
 * Dense MLP of a non-MoE layer.  x float32 [N, H] -> y float32 [N, H].
 */
export function buildDenseMlp(ws: WeightSource, cfg: MoeModelConfig, layer: number, opts: GraphOptions = DEFAULT_GRAPH_OPTIONS): Uint8Array {
  const g = new GraphBuilder(`dense_mlp_${layer}`);
  const H = cfg.hiddenSize;
  const I = cfg.denseIntermediateSize;
  const x = g.input('x', DT.FLOAT, ['N', H]);
  const gu = fuseGateUp(ws, W.denseMlp(layer, 'gate_proj'), W.denseMlp(layer, 'up_proj'));
  const downName = W.denseMlp(layer, 'down_proj');
  g.output(swiglu(g, x, `layers.${layer}.mlp`, gu, downName, ws.readF32(downName), H, I, opts), 'y');
  return g.toModel();
}

/**
 * Shared expert(s) of an MoE layer (always run, in the gateway).  x float32 [N, H] -> y float32 [N, H].
 * Qwen2-MoE multiplies by sigmoid(shared_expert_gate(x)) [N, 1].
 */
export function buildSharedExpert(ws: WeightSource, cfg: MoeModelConfig, layer: number, opts: GraphOptions = DEFAULT_GRAPH_OPTIONS): Uint8Array {
  const shared = cfg.moe.shared;
  if (!shared) throw new Error('buildSharedExpert: the model has no shared expert');
  const g = new GraphBuilder(`shared_expert_${layer}`);
  const H = cfg.hiddenSize;
  const I = shared.intermediateSize;
  const x = g.input('x', DT.FLOAT, ['N', H]);
  const gu = fuseGateUp(ws, W.sharedExpert(cfg, layer, 'gate'), W.sharedExpert(cfg, layer, 'up'));
  const downName = W.sharedExpert(cfg, layer, 'down');
  let y = swiglu(g, x, `layers.${layer}.shared`, gu, downName, ws.readF32(downName), H, I, opts);
  if (shared.sigmoidGate) {
    const gate = g.initializer(W.sharedExpertGate(layer), DT.FLOAT, [1, H], ws.readF32(W.sharedExpertGate(layer)));
    y = g.mul(y, g.sigmoid(g.linear(x, gate)));
  }
  g.output(y, 'y');
  return g.toModel();
}

/**
 * A set of routed experts of one layer in one graph (one run per layer per step, whatever the
 * number of experts). Rows arrive grouped by expert, in the order of `experts`:
 *   x      float32 [M, H]  rows; rows [off_i, off_i + counts[i]) belong to experts[i]
 *   counts int64   [S]     rows per local expert (zeros allowed)
 *   y      float32 [M, H]  each row's expert output, same order (not yet weighted)
 */
export function buildRoutedExperts(ws: WeightSource, cfg: MoeModelConfig, layer: number, experts: readonly number[], opts: GraphOptions = DEFAULT_GRAPH_OPTIONS): Uint8Array {
  const g = new GraphBuilder(`experts_${layer}`);
  const H = cfg.hiddenSize;
  const I = cfg.moe.intermediateSize;
  const x = g.input('x', DT.FLOAT, ['M', H]);
  const counts = g.input('counts', DT.INT64, [experts.length]);
  const parts = g.node('Split', [x, counts], { axis: 0 }, experts.length);
  const ys = experts.map((e, i) => {
    const gu = fuseGateUp(ws, W.expert(cfg, layer, e, 'gate'), W.expert(cfg, layer, e, 'up'));
    const downName = W.expert(cfg, layer, e, 'down');
    return swiglu(g, parts[i]!, `layers.${layer}.experts.${e}`, gu, downName, ws.readF32(downName), H, I, opts);
  });
  g.output(ys.length === 1 ? ys[0]! : g.concat(ys, 0), 'y');
  return g.toModel();
}

/** ids int64 [N] -> hidden float32 [N, H]. */
export function buildEmbedding(ws: WeightSource, cfg: MoeModelConfig): Uint8Array {
  const g = new GraphBuilder('embedding');
  const ids = g.input('ids', DT.INT64, ['N']);
  const table = g.initializer(W.EMBED, DT.FLOAT, [cfg.vocabSize, cfg.hiddenSize], ws.readF32(W.EMBED));
  g.output(g.op('Gather', [table, ids], { axis: 0 }), 'hidden');
  return g.toModel();
}

/** hidden float32 [S, H] -> final norm -> LM head (tied to the embedding when configured) -> logits float32 [S, V]. */
export function buildLmHead(ws: WeightSource, cfg: MoeModelConfig, opts: GraphOptions = DEFAULT_GRAPH_OPTIONS): Uint8Array {
  const g = new GraphBuilder('lm_head');
  const H = cfg.hiddenSize;
  const hidden = g.input('hidden', DT.FLOAT, ['S', H]);
  const norm = g.initializer(W.FINAL_NORM, DT.FLOAT, [H], ws.readF32(W.FINAL_NORM));
  const headName = cfg.tieWordEmbeddings ? W.EMBED : W.LM_HEAD;
  g.output(projection(g, g.rmsNorm(hidden, norm, cfg.rmsNormEps), headName, ws.readF32(headName), cfg.vocabSize, H, opts), 'logits');
  return g.toModel();
}
