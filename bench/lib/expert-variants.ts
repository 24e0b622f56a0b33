/**
 * How a worker runs its experts, measured three ways on one shard of a perf preset's layer
 * (random weights of the real shapes; time per forward call of `n` rows with top-k routing):
 *
 * - batched graph    workers/src/shard.ts: one session per layer, rows grouped by expert,
 *                    Split -> per-expert SwiGLU -> Concat, weighted combine in JS (what runs)
 * - per-expert       one session per expert, run once per expert that has rows
 * - com.microsoft    ONNX Runtime's fused MoE contrib op (CPU kernel): it softmaxes its router
 *   MoE op           input and takes the top k, so the router input is log(weight) on the row's
 *                    slots (-inf elsewhere) and each output row is scaled back by Σ weights
 *
 * Letters: n rows, k slots, S experts in the shard, H hidden, I intermediate.
 */
import type { MoeModelConfig } from '../../services/model/src/config.js';
import { buildRoutedExperts } from '../../services/model/src/graphs/mlp.js';
import { MapWeights } from '../../services/model/src/graphs/source.js';
import * as W from '../../services/model/src/names.js';
import { GraphBuilder } from '../../services/model/src/onnx/graph.js';
import { DT } from '../../services/model/src/onnx/proto.js';
import { DEFAULT_RUNTIME, f32, i64, OrtSession } from '../../services/model/src/runtime/onnx.js';
import { ExpertShard } from '../../workers/src/shard.js';
import { median } from './perf-models.js';

export interface VariantResult {
  readonly name: string;
  readonly n: number;
  readonly ms: number;
  /** Max |out - batched graph out|. */
  readonly maxDiff: number;
}

let seed = 7;
function rnd(len: number, scale: number): Float32Array {
  const out = new Float32Array(len);
  for (let i = 0; i < len; i++) {
    seed = (seed * 1103515245 + 12345) >>> 0;
    out[i] = ((seed / 2 ** 32) * 2 - 1) * scale;
  }
  return out;
}

/** Runs the three variants for the first MoE layer with `S` local experts; returns per-variant ms per call. */
export async function measureExpertVariants(cfg: MoeModelConfig, S: number, rowsList: readonly number[], reps = 20): Promise<VariantResult[]> {
  const H = cfg.hiddenSize;
  const I = cfg.moe.intermediateSize;
  const k = cfg.moe.nActivatedExperts;
  const layer = cfg.layers.find((l) => l.mlp === 'moe')!.index;
  const experts = Array.from({ length: S }, (_, e) => e);
  const tensors = new Map<string, Float32Array>();
  for (const e of experts) {
    tensors.set(W.expert(cfg, layer, e, 'gate'), rnd(I * H, 0.03));
    tensors.set(W.expert(cfg, layer, e, 'up'), rnd(I * H, 0.03));
    tensors.set(W.expert(cfg, layer, e, 'down'), rnd(H * I, 0.03));
  }
  const ws = new MapWeights(tensors);
  const rt = DEFAULT_RUNTIME;

  // batched graph (the shard as it runs in a worker)
  const shard = await ExpertShard.load(cfg, ws, new Map([[layer, experts]]), rt);

  // per-expert sessions
  const single = await Promise.all(experts.map((e) => OrtSession.create(`expert_${e}`, buildRoutedExperts(ws, cfg, layer, [e]), rt)));
  const perExpert = async (x: Float32Array, n: number, ids: Int32Array, w: Float32Array, out: Float32Array) => {
    out.fill(0, 0, n * H);
    for (const e of experts) {
      const rows: number[] = [];
      const wts: number[] = [];
      for (let r = 0; r < n; r++) for (let j = 0; j < k; j++) if (ids[r * k + j] === e) (rows.push(r), wts.push(w[r * k + j]!));
      if (rows.length === 0) continue;
      const xs = new Float32Array(rows.length * H);
      rows.forEach((r, i) => xs.set(x.subarray(r * H, r * H + H), i * H));
      const y = (await single[e]!.run({ x: f32(xs, [rows.length, H]), counts: i64(BigInt64Array.of(BigInt(rows.length)), [1]) }, ['y'])).y!.data;
      rows.forEach((r, i) => {
        for (let d = 0; d < H; d++) out[r * H + d] += wts[i]! * y[i * H + d]!;
      });
    }
  };

  // com.microsoft MoE: fc1 [S, 2I, H] with gate/up rows interleaved (swiglu_fusion 1), fc2 [S, H, I]
  const g = new GraphBuilder('moe_op');
  const gx = g.input('x', DT.FLOAT, ['N', H]);
  const gr = g.input('router', DT.FLOAT, ['N', S]);
  const fc1 = new Float32Array(S * 2 * I * H);
  const fc2 = new Float32Array(S * H * I);
  for (const e of experts) {
    const gate = tensors.get(W.expert(cfg, layer, e, 'gate'))!;
    const up = tensors.get(W.expert(cfg, layer, e, 'up'))!;
    for (let i = 0; i < I; i++) {
      fc1.set(gate.subarray(i * H, i * H + H), (e * 2 * I + 2 * i) * H);
      fc1.set(up.subarray(i * H, i * H + H), (e * 2 * I + 2 * i + 1) * H);
    }
    fc2.set(tensors.get(W.expert(cfg, layer, e, 'down'))!, e * H * I);
  }
  const w1 = g.initializer('fc1', DT.FLOAT, [S, 2 * I, H], fc1);
  const w2 = g.initializer('fc2', DT.FLOAT, [S, H, I], fc2);
  const [gy] = g.node('MoE', [gx, gr, w1, '', w2], { k, activation_type: 'swiglu', swiglu_fusion: 1, activation_alpha: { float: 1 }, activation_beta: { float: 0 }, swiglu_limit: { float: 1e30 }, normalize_routing_weights: 0 }, 1, 'com.microsoft');
  g.output(gy!, 'y');
  let moeOp: OrtSession | null = null;
  try {
    moeOp = await OrtSession.create('moe_op', g.toModel(), rt);
  } catch {
    moeOp = null; // an ONNX Runtime build without the CPU MoE kernel
  }
  const viaMoeOp = async (x: Float32Array, n: number, ids: Int32Array, w: Float32Array, out: Float32Array) => {
    const router = new Float32Array(n * S).fill(-1e30);
    const scale = new Float32Array(n);
    for (let r = 0; r < n; r++) {
      for (let j = 0; j < k; j++) {
        const e = ids[r * k + j]!;
        if (e < 0) continue;
        router[r * S + e] = Math.log(w[r * k + j]!);
        scale[r] += w[r * k + j]!;
      }
    }
    const y = (await moeOp!.run({ x: f32(x, [n, H]), router: f32(router, [n, S]) }, ['y'])).y!.data;
    for (let r = 0; r < n; r++) for (let d = 0; d < H; d++) out[r * H + d] = scale[r]! * y[r * H + d]!;
  };

  const results: VariantResult[] = [];
  for (const n of rowsList) {
    const x = rnd(n * H, 1);
    const ids = new Int32Array(n * k);
    const w = new Float32Array(n * k);
    for (let r = 0; r < n; r++) {
      const picked = new Set<number>();
      for (let j = 0; j < k; j++) {
        let e = (r * 3 + j * 5) % S;
        while (picked.has(e)) e = (e + 1) % S;
        picked.add(e);
        ids[r * k + j] = e;
        w[r * k + j] = 0.2 + 0.1 * j;
      }
    }
    const ref = new Float32Array(n * H);
    await shard.forward(layer, x, n, ids, w, k, ref);
    const variants: [string, (out: Float32Array) => Promise<void>][] = [
      ['batched graph (shard.ts)', (out) => shard.forward(layer, x, n, ids, w, k, out)],
      ['per-expert sessions', (out) => perExpert(x, n, ids, w, out)],
    ];
    if (moeOp) variants.push(['com.microsoft MoE op', (out) => viaMoeOp(x, n, ids, w, out)]);
    for (const [name, run] of variants) {
      const out = new Float32Array(n * H);
      for (let i = 0; i < 3; i++) await run(out);
      const times: number[] = [];
      for (let i = 0; i < reps; i++) {
        const t0 = performance.now();
        await run(out);
        times.push(performance.now() - t0);
      }
      let maxDiff = 0;
      for (let i = 0; i < n * H; i++) maxDiff = Math.max(maxDiff, Math.abs(out[i]! - ref[i]!));
      results.push({ name, n, ms: median(times), maxDiff });
    }
  }
  return results;
}
