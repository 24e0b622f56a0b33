/**
 * Routing load statistics, kept for /metrics and benchmarks: per forward call (one MoE layer of
 * one step) the rows per expert and per worker, and running totals, plus wire counters. The one
 * place routed rows are counted: every topology (in-process included, as one worker) records here.
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
  /** Totals: [layer][expert] (row, expert) pairs; [worker] rows sent. */
  readonly rowsPerExpert: number[][];
  readonly rowsPerWorker: number[];
  /** The last call of each layer: rows per expert / per worker (this step's counts). */
  readonly lastStep: { layer: number; rowsPerExpert: number[]; rowsPerWorker: number[] }[];
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
  /** [L] 1 when the layer has had a call. */
  private readonly seen: Uint8Array;

  constructor(
    readonly numLayers: number,
    readonly numExperts: number,
    readonly numWorkers: number,
  ) {
    this.totalPerExpert = new Float64Array(numLayers * numExperts);
    this.totalPerWorker = new Float64Array(numWorkers);
    this.totalPerLayerWorker = new Float64Array(numLayers * numWorkers);
    this.lastPerExpert = new Int32Array(numLayers * numExperts);
    this.lastPerWorker = new Int32Array(numLayers * Math.max(1, numWorkers));
    this.seen = new Uint8Array(numLayers);
  }

  /** Counts one call's routing: ids int32 [n, k] (-1 = unused). */
  recordExperts(layer: number, ids: Int32Array, n: number, k: number): void {
    const X = this.numExperts;
    const base = layer * X;
    this.calls++;
    this.seen[layer] = 1;
    this.lastPerExpert.fill(0, base, base + X);
    for (let i = 0; i < n * k; i++) {
      const e = ids[i]!;
      if (e >= 0) this.lastPerExpert[base + e]++;
    }
    for (let e = 0; e < X; e++) this.totalPerExpert[base + e] += this.lastPerExpert[base + e]!;
  }

  /** Counts one dispatch round's rows per worker: rowsPerWorker [W]; failover rounds add to the call's counts. */
  recordWorkers(layer: number, rowsPerWorker: Int32Array, failover = false): void {
    const W = this.numWorkers;
    for (let w = 0; w < W; w++) {
      const r = rowsPerWorker[w]!;
      if (failover) this.lastPerWorker[layer * W + w] += r;
      else this.lastPerWorker[layer * W + w] = r;
      this.totalPerWorker[w] += r;
      this.totalPerLayerWorker[layer * W + w] += r;
    }
  }

  snapshot(): RoutingStatsSnapshot {
    const X = this.numExperts;
    const W = this.numWorkers;
    const rowsPerExpert: number[][] = [];
    const lastStep: RoutingStatsSnapshot['lastStep'] = [];
    for (let l = 0; l < this.numLayers; l++) {
      if (!this.seen[l]) continue;
      rowsPerExpert[l] = Array.from(this.totalPerExpert.subarray(l * X, (l + 1) * X));
      lastStep.push({ layer: l, rowsPerExpert: Array.from(this.lastPerExpert.subarray(l * X, (l + 1) * X)), rowsPerWorker: Array.from(this.lastPerWorker.subarray(l * W, (l + 1) * W)) });
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
      lastStep,
    };
  }
}
