/**
 * LiveShard: a worker's experts, per MoE layer, replaceable while serving (live rebalancing).
 *
 * It holds one ExpertShard per layer (the initial load's shard serves every layer it was built
 * with). `prepare(layers)` builds each listed layer's replacement in the background, as an
 * ExpertShard over that layer only (its own ONNX Runtime session), while Forward requests keep
 * running on the current ones; `swap(prepared)` installs them at once (synchronous: the server
 * calls it between two requests) and returns the replaced layers, which the caller frees with
 * `release` after the request using them finished.
 */
import { ServerError } from '../../services/common/src/errors.js';
import type { MoeModelConfig } from '../../services/model/src/config.js';
import type { ExpertShard, ShardExperts } from './shard.js';

/** Builds an ExpertShard of the given layers' experts (opens and closes the checkpoint itself). */
export type ShardLoader = (experts: ShardExperts) => Promise<{ shard: ExpertShard; bytesRead: number }>;

/** Replacement layers, built and not yet installed. */
export interface PreparedLayers {
  readonly shard: ExpertShard;
  readonly layers: readonly number[];
  readonly bytesRead: number;
}

/** Layers taken out of service by a swap: free them once no request uses them. */
export interface RetiredLayers {
  readonly entries: readonly { readonly shard: ExpertShard; readonly layer: number }[];
}

export class LiveShard {
  /** layer -> the shard serving it. */
  private readonly byLayer = new Map<number, ExpertShard>();
  /** layer -> experts held (sorted), rebuilt on swap; held() returns it without copying (hot path). */
  private heldMap = new Map<number, readonly number[]>();

  constructor(
    readonly cfg: MoeModelConfig,
    initial: ExpertShard,
    private readonly loader: ShardLoader | null,
  ) {
    for (const l of initial.held().keys()) this.byLayer.set(l, initial);
    this.refreshHeld();
  }

  private refreshHeld(): void {
    const m = new Map<number, readonly number[]>();
    for (const [l, s] of [...this.byLayer].sort((a, b) => a[0] - b[0])) m.set(l, s.held().get(l)!);
    this.heldMap = m;
  }

  get sessionDevice(): string {
    for (const s of this.byLayer.values()) return s.sessionDevice;
    return 'cpu';
  }

  held(): ReadonlyMap<number, readonly number[]> {
    return this.heldMap;
  }

  holds(layer: number, expert: number): boolean {
    const s = this.byLayer.get(layer);
    return !!s && s.holds(layer, expert);
  }

  forward(layer: number, x: Float32Array, numRows: number, ids: Int32Array, weights: Float32Array, k: number, out: Float32Array): Promise<void> {
    const s = this.byLayer.get(layer);
    if (!s) throw new ServerError('bad_message', `this shard holds no experts of layer ${layer}`);
    return s.forward(layer, x, numRows, ids, weights, k, out);
  }

  /** Builds the listed layers' new experts (background; serving goes on). Layers whose set is unchanged are skipped. */
  async prepare(wanted: ShardExperts): Promise<PreparedLayers | null> {
    const changed = new Map<number, readonly number[]>();
    for (const [l, ids] of wanted) {
      if (this.cfg.layers[l]?.mlp !== 'moe') throw new ServerError('invalid_request', `layer ${l} is not an MoE layer`);
      if (ids.length === 0) continue;
      const sorted = [...new Set(ids)].sort((a, b) => a - b);
      const now = this.heldMap.get(l);
      if (now && now.length === sorted.length && now.every((e, i) => e === sorted[i])) continue;
      changed.set(l, sorted);
    }
    if (changed.size === 0) return null;
    if (!this.loader) throw new ServerError('invalid_request', 'this worker cannot load experts (no checkpoint loader)');
    const { shard, bytesRead } = await this.loader(changed);
    return { shard, layers: [...changed.keys()], bytesRead };
  }

  /** Installs prepared layers at once; returns what they replaced. */
  swap(p: PreparedLayers): RetiredLayers {
    const entries: { shard: ExpertShard; layer: number }[] = [];
    for (const l of p.layers) {
      const old = this.byLayer.get(l);
      if (old) entries.push({ shard: old, layer: l });
      this.byLayer.set(l, p.shard);
    }
    this.refreshHeld();
    return { entries };
  }

  /** Frees retired layers' sessions (call when no request runs on them). */
  async release(r: RetiredLayers): Promise<void> {
    for (const { shard, layer } of r.entries) await shard.release(layer);
  }
}
