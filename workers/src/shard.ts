/**
 * ExpertShard: the routed experts one worker holds (some experts of every MoE layer), as one
 * ONNX Runtime session per layer, and the per-row combine over them.
 *
 * Contract (the same in-process and behind gRPC):
 *   forward(layer, x, numRows, ids, weights, k, out)
 *     x        float32 [n, H]  normalized hidden rows (one per token that needs this shard)
 *     ids      int32   [n, k]  expert ids per row; -1 = slot unused (the expert lives elsewhere)
 *     weights  float32 [n, k]  their combine weights (already renormalised and scaled)
 *     out      float32 [n, H]  out[r] = Σ_j weights[r, j] · expert_{ids[r, j]}(x[r])
 * Returning the gate-weighted sum per row (not per (row, expert)) keeps the reply at n·H floats
 * however many of a token's experts live on this shard.
 *
 * Letters: n rows, H hidden, k slots per row, S experts held in the layer, M = Σ rows per expert.
 */
import { ServerError } from '../../services/common/src/errors.js';
import type { MoeModelConfig } from '../../services/model/src/config.js';
import { buildRoutedExperts } from '../../services/model/src/graphs/mlp.js';
import type { WeightSource } from '../../services/model/src/graphs/source.js';
import { f32, i64, OrtSession, type RuntimeOptions } from '../../services/model/src/runtime/onnx.js';

/** Which experts of which layers a shard holds: layer -> sorted expert ids. */
export type ShardExperts = ReadonlyMap<number, readonly number[]>;

interface LayerShard {
  readonly session: OrtSession;
  readonly experts: readonly number[];
  /** expert id -> local index, -1 when not held. */
  readonly localIndex: Int32Array;
}

export class ExpertShard {
  private readonly layers = new Map<number, LayerShard>();
  // Scratch grown on demand and reused across calls (avoid GC on the per-layer path).
  private xs = new Float32Array(0);
  private counts = new BigInt64Array(0);
  private offsets = new Int32Array(0);
  private rowOf = new Int32Array(0); // grouped row -> source row
  private weightOf = new Float32Array(0); // grouped row -> weight

  private constructor(
    readonly cfg: MoeModelConfig,
    readonly device: string,
  ) {}

  static async load(cfg: MoeModelConfig, ws: WeightSource, experts: ShardExperts, runtime: RuntimeOptions): Promise<ExpertShard> {
    const shard = new ExpertShard(cfg, runtime.device);
    for (const [layer, ids] of experts) {
      if (cfg.layers[layer]?.mlp !== 'moe') throw new ServerError('invalid_request', `layer ${layer} is not an MoE layer`);
      if (ids.length === 0) continue;
      const sorted = [...ids].sort((a, b) => a - b);
      for (const e of sorted) {
        if (!Number.isInteger(e) || e < 0 || e >= cfg.moe.nRoutedExperts) throw new ServerError('invalid_request', `expert ${e} out of range [0, ${cfg.moe.nRoutedExperts})`);
      }
      const session = await OrtSession.create(`experts_${layer}`, buildRoutedExperts(ws, cfg, layer, sorted, { quantization: runtime.quantization ?? 'none' }), runtime);
      const localIndex = new Int32Array(cfg.moe.nRoutedExperts).fill(-1);
      sorted.forEach((e, i) => (localIndex[e] = i));
      shard.layers.set(layer, { session, experts: sorted, localIndex });
    }
    return shard;
  }

  /** The execution provider the sessions actually run on ('cuda' falls back to 'cpu' at load). */
  get sessionDevice(): string {
    for (const s of this.layers.values()) return s.session.device;
    return this.device;
  }

  /** Layers and experts held. */
  held(): ShardExperts {
    const m = new Map<number, readonly number[]>();
    for (const [l, s] of this.layers) m.set(l, s.experts);
    return m;
  }

  /** Frees one layer's session (live rebalancing retires a layer's old copy); false if not held. */
  async release(layer: number): Promise<boolean> {
    const s = this.layers.get(layer);
    if (!s) return false;
    this.layers.delete(layer);
    await s.session.release();
    return true;
  }

  holds(layer: number, expert: number): boolean {
    const s = this.layers.get(layer);
    return !!s && expert >= 0 && expert < s.localIndex.length && s.localIndex[expert]! >= 0;
  }

  async forward(layer: number, x: Float32Array, numRows: number, ids: Int32Array, weights: Float32Array, k: number, out: Float32Array): Promise<void> {
    const H = this.cfg.hiddenSize;
    const shard = this.layers.get(layer);
    if (!shard) throw new ServerError('bad_message', `this shard holds no experts of layer ${layer}`);
    const S = shard.experts.length;
    if (x.length < numRows * H || ids.length < numRows * k || weights.length < numRows * k || out.length < numRows * H) {
      throw new ServerError('bad_message', `row buffers too small for ${numRows} rows of hidden ${H} with ${k} slots`);
    }
    // 1. count rows per local expert
    if (this.offsets.length < S + 1) {
      this.offsets = new Int32Array(S + 1);
      this.counts = new BigInt64Array(S);
    }
    const offsets = this.offsets;
    offsets.fill(0);
    let M = 0;
    for (let i = 0; i < numRows * k; i++) {
      const e = ids[i]!;
      if (e < 0) continue;
      const li = e < shard.localIndex.length ? shard.localIndex[e]! : -1;
      if (li < 0) throw new ServerError('bad_message', `expert ${e} of layer ${layer} is not held by this shard`);
      offsets[li + 1]!++;
      M++;
    }
    out.fill(0, 0, numRows * H);
    if (M === 0) return;
    for (let i = 0; i < S; i++) {
      this.counts[i] = BigInt(offsets[i + 1]!);
      offsets[i + 1] += offsets[i]!;
    }
    // 2. gather rows grouped by expert: xs [M, H]
    if (this.xs.length < M * H) this.xs = new Float32Array(M * H * 2);
    if (this.rowOf.length < M) {
      this.rowOf = new Int32Array(M * 2);
      this.weightOf = new Float32Array(M * 2);
    }
    const fill = offsets.slice(0, S); // per-expert cursor (small, S entries)
    for (let r = 0; r < numRows; r++) {
      for (let j = 0; j < k; j++) {
        const e = ids[r * k + j]!;
        if (e < 0) continue;
        const slot = fill[shard.localIndex[e]!]!++;
        this.rowOf[slot] = r;
        this.weightOf[slot] = weights[r * k + j]!;
        this.xs.set(x.subarray(r * H, r * H + H), slot * H);
      }
    }
    // 3. one run for all experts of the layer
    const res = await shard.session.run({ x: f32(this.xs.subarray(0, M * H), [M, H]), counts: i64(this.counts.subarray(0, S), [S]) }, ['y']);
    const y = res.y!.data;
    // 4. weighted combine per source row
    for (let slot = 0; slot < M; slot++) {
      const r = this.rowOf[slot]!;
      const w = this.weightOf[slot]!;
      const src = slot * H;
      const dst = r * H;
      for (let d = 0; d < H; d++) out[dst + d] += w * y[src + d]!;
    }
  }
}
