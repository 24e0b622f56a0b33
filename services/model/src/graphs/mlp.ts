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
import type { WeightSource } from './source.js';

/** SwiGLU: down(silu(gate(x)) · up(x)), with gate and up fused into one [2I, H] weight. */
function swiglu(g: GraphBuilder, x: string, gateUp: string, down: string, I: number): string {
  const [gate, up] = g.split(g.linear(x, gateUp), 1, [I, I]) as [string, string];
  return g.linear(g.mul(g.silu(gate), up), down);
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
export function buildDenseMlp(ws: WeightSource, cfg: MoeModelConfig, layer: number): Uint8Array {
  const g = new GraphBuilder(`dense_mlp_${layer}`);
  const H = cfg.hiddenSize;
  const I = cfg.denseIntermediateSize;
  const x = g.input('x', DT.FLOAT, ['N', H]);
  const gu = g.initializer(`layers.${layer}.mlp.gate_up`, DT.FLOAT, [2 * I, H], fuseGateUp(ws, W.denseMlp(layer, 'gate_proj'), W.denseMlp(layer, 'up_proj')));
  const down = g.initializer(W.denseMlp(layer, 'down_proj'), DT.FLOAT, [H, I], ws.readF32(W.denseMlp(layer, 'down_proj')));
  g.output(swiglu(g, x, gu, down, I), 'y');
  return g.toModel();
}

/**
 * Shared expert(s) of an MoE layer (always run, in the gateway).  x float32 [N, H] -> y float32 [N, H].
 * Qwen2-MoE multiplies by sigmoid(shared_expert_gate(x)) [N, 1].
 */
export function buildSharedExpert(ws: WeightSource, cfg: MoeModelConfig, layer: number): Uint8Array {
  const shared = cfg.moe.shared;
  if (!shared) throw new Error('buildSharedExpert: the model has no shared expert');
  const g = new GraphBuilder(`shared_expert_${layer}`);
  const H = cfg.hiddenSize;
  const I = shared.intermediateSize;
  const x = g.input('x', DT.FLOAT, ['N', H]);
  const gu = g.initializer(`layers.${layer}.shared.gate_up`, DT.FLOAT, [2 * I, H], fuseGateUp(ws, W.sharedExpert(cfg, layer, 'gate'), W.sharedExpert(cfg, layer, 'up')));
  const downName = W.sharedExpert(cfg, layer, 'down');
  const down = g.initializer(downName, DT.FLOAT, [H, I], ws.readF32(downName));
  let y = swiglu(g, x, gu, down, I);
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
export function buildRoutedExperts(ws: WeightSource, cfg: MoeModelConfig, layer: number, experts: readonly number[]): Uint8Array {
  const g = new GraphBuilder(`experts_${layer}`);
  const H = cfg.hiddenSize;
  const I = cfg.moe.intermediateSize;
  const x = g.input('x', DT.FLOAT, ['M', H]);
  const counts = g.input('counts', DT.INT64, [experts.length]);
  const parts = g.node('Split', [x, counts], { axis: 0 }, experts.length);
  const ys = experts.map((e, i) => {
    const gu = g.initializer(`layers.${layer}.experts.${e}.gate_up`, DT.FLOAT, [2 * I, H], fuseGateUp(ws, W.expert(cfg, layer, e, 'gate'), W.expert(cfg, layer, e, 'up')));
    const downName = W.expert(cfg, layer, e, 'down');
    const down = g.initializer(downName, DT.FLOAT, [H, I], ws.readF32(downName));
    return swiglu(g, parts[i]!, gu, down, I);
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
export function buildLmHead(ws: WeightSource, cfg: MoeModelConfig): Uint8Array {
  const g = new GraphBuilder('lm_head');
  const H = cfg.hiddenSize;
  const hidden = g.input('hidden', DT.FLOAT, ['S', H]);
  const norm = g.initializer(W.FINAL_NORM, DT.FLOAT, [H], ws.readF32(W.FINAL_NORM));
  const headName = cfg.tieWordEmbeddings ? W.EMBED : W.LM_HEAD;
  const head = g.initializer(headName, DT.FLOAT, [cfg.vocabSize, H], ws.readF32(headName));
  g.output(g.linear(g.rmsNorm(hidden, norm, cfg.rmsNormEps), head), 'logits');
  return g.toModel();
}
