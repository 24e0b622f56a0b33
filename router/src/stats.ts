/**
 * Routing load statistics, kept for /metrics, benchmarks and rebalancing: per forward call (one
 * MoE layer of one step) the rows per expert and per worker, and running totals, plus wire
 * counters. The one place routed rows are counted: every topology (in-process included, as one
 * worker) records here.
 *
 * Two counts per worker, on purpose:
 *   load      (token, expert) rows it computes: a token with two experts on the worker counts
 *             twice. This is the load expert-parallel systems balance (DeepSeek's EPLB, vLLM's
 *             balancedness = mean / max over ranks) and what `balancedness` is computed from.
 *   messages  token rows sent to it: a token crosses the wire once per worker holding any of
 *             its experts (wire cost, not compute).
 * A sliding window of the last `windowCalls` calls per layer keeps the per-expert and per-worker
 * loads recent (the rebalancer plans from it and the auto trigger watches it).
 *
 * Hot path: every counter lives in a typed array sized once at construction; recording a call
 * allocates nothing. `snapshot()` copies (cold path).
 *
 * Letters: L layers (all, dense ones included, so a layer index is its own offset), X routed
 * experts, W workers.
 */

export interface RoutingStatsSnapshot {
  /** Forward calls (MoE layer × step). */
  readonly calls: number;
  /** Requests sent (round trips), failover requests included. */
  readonly requests: number;
  /** Request / reply payload bytes (hidden + ids + weights / output). */
  readonly bytesSent: number;
  readonly bytesReceived: number;
  /** (row, slot) pairs re-sent to another replica after a worker failed or missed its deadline. */
  readonly failoverSlots: number;
  /** Forward calls that failed (experts_unavailable). */
  readonly failedCalls: number;
  /** Wall ms of forward calls, and of their slowest worker's own compute (see RoutingStats). */
  readonly forwardMs: number;
  readonly criticalComputeMs: number;
  /** Totals: [layer][expert] (row, expert) pairs; [worker] token rows sent; [worker] (token, expert) rows computed. */
  readonly rowsPerExpert: number[][];
  readonly rowsPerWorker: number[];
  readonly loadPerWorker: number[];
  /** The last call of each layer: rows per expert, token rows and (token, expert) rows per worker (this step's counts). */
  readonly lastStep: { layer: number; rowsPerExpert: number[]; rowsPerWorker: number[]; loadPerWorker: number[] }[];
}

export class RoutingStats {
  calls = 0;
  requests = 0;
  bytesSent = 0;
  bytesReceived = 0;
  failoverSlots = 0;
  failedCalls = 0;
  /** Wall time of forward calls, ms (from the first send to the combined output). */
  forwardMs = 0;
  /** Per call, the longest worker-reported compute (its critical path), summed, ms. forwardMs minus this is transport + queueing. */
  criticalComputeMs = 0;
  /** [L * X] cumulative (row, expert) pairs. */
  readonly totalPerExpert: Float64Array;
  /** [W] cumulative rows sent per worker. */
  readonly totalPerWorker: Float64Array;
  /** [L * W] cumulative rows sent per worker per layer (the /metrics worker_rows_total). */
  readonly totalPerLayerWorker: Float64Array;
  /** [L * X] the last call's (row, expert) pairs per layer. */
  readonly lastPerExpert: Int32Array;
  /** [L * W] the last call's rows per worker per layer. */
  readonly lastPerWorker: Int32Array;
  /** [W] cumulative (token, expert) rows computed per worker. */
  readonly totalLoadPerWorker: Float64Array;
  /** [L * W] cumulative (token, expert) rows computed per worker per layer (the /metrics worker_load_rows_total). */
  readonly totalLoadPerLayerWorker: Float64Array;
  /** [L * W] the last call's (token, expert) rows per worker per layer. */
  readonly lastLoadPerWorker: Int32Array;
  /** Calls per layer the sliding window spans. */
  readonly windowCalls: number;
  /** [L * X] (token, expert) rows per expert over the window. */
  readonly windowPerExpert: Float64Array;
  /** [L * W] (token, expert) rows per worker over the window (since the last resetWorkerWindow). */
  readonly windowLoadPerWorker: Float64Array;
  /** Ring of the window's calls: [windowCalls][L * X] and [windowCalls][L * W]. */
  private readonly ringExpert: Int32Array;
  private readonly ringWorker: Int32Array;
  /** [L] the ring position of each layer's current call. */
  private readonly ringPos: Int32Array;
  /** [L] 1 when the layer has had a call. */
  private readonly seen: Uint8Array;

  constructor(
    readonly numLayers: number,
    readonly numExperts: number,
    readonly numWorkers: number,
    /** @defaultValue 64 calls per layer (steps) */
    windowCalls = 64,
  ) {
    const L = numLayers;
    const X = numExperts;
    const W = Math.max(1, numWorkers);
    this.totalPerExpert = new Float64Array(L * X);
    this.totalPerWorker = new Float64Array(numWorkers);
    this.totalPerLayerWorker = new Float64Array(L * numWorkers);
    this.lastPerExpert = new Int32Array(L * X);
    this.lastPerWorker = new Int32Array(L * W);
    this.totalLoadPerWorker = new Float64Array(numWorkers);
    this.totalLoadPerLayerWorker = new Float64Array(L * numWorkers);
    this.lastLoadPerWorker = new Int32Array(L * W);
    this.windowCalls = Math.max(1, windowCalls);
    this.windowPerExpert = new Float64Array(L * X);
    this.windowLoadPerWorker = new Float64Array(L * W);
    this.ringExpert = new Int32Array(this.windowCalls * L * X);
    this.ringWorker = new Int32Array(this.windowCalls * L * W);
    this.ringPos = new Int32Array(L);
    this.seen = new Uint8Array(L);
  }

  /** Counts one call's routing: ids int32 [n, k] (-1 = unused). Opens the layer's next window slot. */
  recordExperts(layer: number, ids: Int32Array, n: number, k: number): void {
    const X = this.numExperts;
    const W = Math.max(1, this.numWorkers);
    const LX = this.numLayers * X;
    const LW = this.numLayers * W;
    const base = layer * X;
    this.calls++;
    // Advance the layer's ring slot: what the slot held leaves the window.
    const pos = this.seen[layer] ? (this.ringPos[layer]! + 1) % this.windowCalls : 0;
    this.ringPos[layer] = pos;
    this.seen[layer] = 1;
    const re = pos * LX + base;
    const rw = pos * LW + layer * W;
    for (let e = 0; e < X; e++) {
      this.windowPerExpert[base + e] -= this.ringExpert[re + e]!;
      this.ringExpert[re + e] = 0;
    }
    for (let w = 0; w < W; w++) {
      this.windowLoadPerWorker[layer * W + w] -= this.ringWorker[rw + w]!;
      this.ringWorker[rw + w] = 0;
    }
    this.lastPerExpert.fill(0, base, base + X);
    for (let i = 0; i < n * k; i++) {
      const e = ids[i]!;
      if (e >= 0) this.lastPerExpert[base + e]++;
    }
    for (let e = 0; e < X; e++) {
      const c = this.lastPerExpert[base + e]!;
      this.totalPerExpert[base + e] += c;
      this.windowPerExpert[base + e] += c;
      this.ringExpert[re + e] = c;
    }
  }

  /**
   * Counts one dispatch round per worker: token rows (messages) rowsPerWorker [W] and (token,
   * expert) rows loadPerWorker [W]; failover rounds add to the call's counts. Call after
   * recordExperts of the same call.
   */
  recordWorkers(layer: number, rowsPerWorker: Int32Array, loadPerWorker: Int32Array, failover = false): void {
    const W = this.numWorkers;
    const rw = this.ringPos[layer]! * this.numLayers * Math.max(1, W) + layer * W;
    for (let w = 0; w < W; w++) {
      const r = rowsPerWorker[w]!;
      const s = loadPerWorker[w]!;
      const at = layer * W + w;
      if (failover) {
        this.lastPerWorker[at] += r;
        this.lastLoadPerWorker[at] += s;
      } else {
        this.lastPerWorker[at] = r;
        this.lastLoadPerWorker[at] = s;
      }
      this.totalPerWorker[w] += r;
      this.totalPerLayerWorker[at] += r;
      this.totalLoadPerWorker[w] += s;
      this.totalLoadPerLayerWorker[at] += s;
      this.windowLoadPerWorker[at] += s;
      this.ringWorker[rw + w] += s;
    }
  }

  /** Forgets everything counted, as if just constructed (the engine's warm-up is not traffic). */
  reset(): void {
    this.calls = this.requests = this.bytesSent = this.bytesReceived = this.failoverSlots = this.failedCalls = 0;
    this.forwardMs = this.criticalComputeMs = 0;
    for (const a of [this.totalPerExpert, this.totalPerWorker, this.totalPerLayerWorker, this.lastPerExpert, this.lastPerWorker, this.totalLoadPerWorker, this.totalLoadPerLayerWorker, this.lastLoadPerWorker, this.windowPerExpert, this.windowLoadPerWorker, this.ringExpert, this.ringWorker, this.ringPos, this.seen]) a.fill(0);
  }

  /** Forgets the per-worker window (after a placement change: the old layout's loads no longer apply). */
  resetWorkerWindow(): void {
    this.windowLoadPerWorker.fill(0);
    this.ringWorker.fill(0);
  }

  /**
   * mean / max (token, expert) rows per worker over the window, the lowest over the MoE layers
   * that have load (1 when none has). Allocation-free (the auto trigger calls it every step).
   */
  windowBalancedness(): number {
    const W = this.numWorkers;
    let worst = 1;
    for (let l = 0; l < this.numLayers; l++) {
      if (!this.seen[l]) continue;
      let max = 0;
      let sum = 0;
      for (let w = 0; w < W; w++) {
        const v = this.windowLoadPerWorker[l * W + w]!;
        sum += v;
        if (v > max) max = v;
      }
      if (max > 0) worst = Math.min(worst, sum / W / max);
    }
    return worst;
  }

  /** Window (token, expert) rows per expert of one layer: a copy, [X] (cold path). */
  windowExpertLoad(layer: number): number[] {
    const X = this.numExperts;
    return Array.from(this.windowPerExpert.subarray(layer * X, (layer + 1) * X));
  }

  snapshot(): RoutingStatsSnapshot {
    const X = this.numExperts;
    const W = this.numWorkers;
    const rowsPerExpert: number[][] = [];
    const lastStep: RoutingStatsSnapshot['lastStep'] = [];
    for (let l = 0; l < this.numLayers; l++) {
      if (!this.seen[l]) continue;
      rowsPerExpert[l] = Array.from(this.totalPerExpert.subarray(l * X, (l + 1) * X));
      lastStep.push({
        layer: l,
        rowsPerExpert: Array.from(this.lastPerExpert.subarray(l * X, (l + 1) * X)),
        rowsPerWorker: Array.from(this.lastPerWorker.subarray(l * W, (l + 1) * W)),
        loadPerWorker: Array.from(this.lastLoadPerWorker.subarray(l * W, (l + 1) * W)),
      });
    }
    return {
      calls: this.calls,
      requests: this.requests,
      bytesSent: this.bytesSent,
      bytesReceived: this.bytesReceived,
      failoverSlots: this.failoverSlots,
      failedCalls: this.failedCalls,
      forwardMs: this.forwardMs,
      criticalComputeMs: this.criticalComputeMs,
      rowsPerExpert,
      rowsPerWorker: Array.from(this.totalPerWorker),
      loadPerWorker: Array.from(this.totalLoadPerWorker),
      lastStep,
    };
  }
}
