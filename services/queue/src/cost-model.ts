/**
 * A cost model of one decode step of a MoE model served as moeserve serves it: a gateway runs the
 * dense path and sends, per MoE layer, ONE message to each expert worker holding at least one of a
 * token's top-k experts (all that worker's rows), and gets one reply back. Pure functions.
 *
 * Letters: T tokens in the step (the batch: decodes, or prefill tokens), H hidden size, I expert
 * FFN width (moe_intermediate_size), E routed experts per layer, k experts per token, L MoE layers,
 * W workers, s_w experts held by worker w, b bytes per wire element (f32 4, f16/bf16 2).
 *
 * Routing is modelled as uniform: each token picks k distinct experts uniformly at random (the
 * ideal a balancing loss trains towards; measured runs say how far real gating is from it).
 *
 *   P(token touches worker w)  p_w = 1 - C(E - s_w, k) / C(E, k)
 *   rows to w per layer        T p_w                    (token rows; one row even if 2 experts there)
 *   bytes gateway -> w / layer T p_w (H b + 8 k)        (hidden row, int32 ids [k], f32 weights [k])
 *   bytes w -> gateway / layer T p_w H b                (the gate-weighted sum of its experts)
 *   (token, expert) pairs on w T k s_w / E
 *   expert FLOPs on w / layer  T k (s_w / E) 6 H I      (SwiGLU: gate, up, down matmuls, 2 FLOPs per MAC)
 *   weights read on w / layer  s_w (1 - (1 - k/E)^T) 3 H I wb  (experts hit by >= 1 token)
 *
 * Times (per layer; a step is L of them, one round trip each, workers in parallel):
 *   compute  max_w max(FLOPs_w / peakFlops, weightBytes_w / memBandwidth)   (roofline)
 *   network  the gateway's NIC carries every link: max(sum out, sum in) * 8 / bandwidth + latency
 * A step is network-bound when network > compute.
 *
 * Bytes are the payload of ForwardRequest / ForwardReply (their `bytes` fields, what a worker's
 * Stats counts); protobuf tags, HTTP/2 frames and TCP/IP headers add a few percent on a real link
 * (runs across namespaces measure that too).
 */

/** What the cost of a step depends on. */
export interface StepShape {
  /** H: elements per hidden row. */
  readonly hidden: number;
  /** I: each routed expert's FFN width. */
  readonly moeIntermediate: number;
  /** E: routed experts per MoE layer. */
  readonly experts: number;
  /** k: experts per token. */
  readonly topK: number;
  /** L: MoE layers. */
  readonly moeLayers: number;
  /** W: expert workers (>= 1). */
  readonly workers: number;
  /** contiguous or round-robin (both give s_w = E/W, up to one); an explicit map gives its own sizes. */
  readonly expertsPerWorker?: readonly number[];
  /** T: tokens in the step. */
  readonly tokens: number;
  /** b: bytes per activation element on the wire (f32 4, f16/bf16 2). */
  readonly wireBytes: number;
}

export interface WorkerStepCost {
  /** Expected token rows sent to this worker per layer. */
  readonly rowsPerLayer: number;
  /** Expected (token, expert) pairs it computes per layer. */
  readonly pairsPerLayer: number;
  /** Payload bytes gateway -> worker per step (all L layers). */
  readonly bytesOut: number;
  /** Bytes worker -> gateway per step. */
  readonly bytesIn: number;
  /** Expert FLOPs per step. */
  readonly flops: number;
}

export interface StepCost {
  readonly workers: readonly WorkerStepCost[];
  /** Sum over links, per step. */
  readonly bytesOut: number;
  readonly bytesIn: number;
  /** (bytesOut + bytesIn) / T. */
  readonly bytesPerToken: number;
  /** Expected distinct workers a token's row is sent to, per layer. */
  readonly workersPerToken: number;
  /** Largest per-worker FLOPs per step (the critical path). */
  readonly maxWorkerFlops: number;
}

/** Worker sizes of an even split (contiguous and round-robin both give these, up to order). */
export function evenSplit(experts: number, workers: number): number[] {
  return Array.from({ length: workers }, (_, w) => Math.floor(experts / workers) + (w < experts % workers ? 1 : 0));
}

/** C(E - s, k) / C(E, k): the probability that k distinct uniform picks from E all miss s given experts. */
export function missProbability(experts: number, held: number, k: number): number {
  let p = 1;
  for (let i = 0; i < k; i++) {
    const num = experts - held - i;
    if (num <= 0) return 0;
    p *= num / (experts - i);
  }
  return p;
}

function check(s: StepShape): void {
  for (const [k, v] of Object.entries({ hidden: s.hidden, experts: s.experts, topK: s.topK, moeLayers: s.moeLayers, workers: s.workers, wireBytes: s.wireBytes })) {
    if (!Number.isInteger(v) || v < 1) throw new RangeError(`cost model: ${k} must be a positive integer, got ${v}`);
  }
  if (s.topK > s.experts) throw new RangeError(`cost model: topK ${s.topK} exceeds experts ${s.experts}`);
  if (!(s.tokens >= 0)) throw new RangeError(`cost model: tokens must be >= 0, got ${s.tokens}`);
  if (s.expertsPerWorker && s.expertsPerWorker.length !== s.workers) throw new RangeError(`cost model: expertsPerWorker has ${s.expertsPerWorker.length} entries for ${s.workers} workers`);
}

/** Bytes and FLOPs of one step (see the header for every formula). */
export function stepCost(s: StepShape): StepCost {
  check(s);
  const { hidden: H, moeIntermediate: I, experts: E, topK: k, moeLayers: L, tokens: T, wireBytes: b } = s;
  const sizes = s.expertsPerWorker ?? evenSplit(E, s.workers);
  const workers = sizes.map((sw): WorkerStepCost => {
    const p = 1 - missProbability(E, sw, k);
    const rows = T * p;
    const pairs = (T * k * sw) / E;
    return {
      rowsPerLayer: rows,
      pairsPerLayer: pairs,
      bytesOut: L * rows * (H * b + 8 * k),
      bytesIn: L * rows * H * b,
      flops: L * pairs * 6 * H * I,
    };
  });
  const bytesOut = workers.reduce((a, w) => a + w.bytesOut, 0);
  const bytesIn = workers.reduce((a, w) => a + w.bytesIn, 0);
  return {
    workers,
    bytesOut,
    bytesIn,
    bytesPerToken: T > 0 ? (bytesOut + bytesIn) / T : 0,
    workersPerToken: sizes.reduce((a, sw) => a + 1 - missProbability(E, sw, k), 0),
    maxWorkerFlops: Math.max(...workers.map((w) => w.flops)),
  };
}

/** One accelerator node and its link to the gateway. */
export interface Hardware {
  /** Dense matmul FLOP/s one worker sustains. */
  readonly flops: number;
  /** Memory bandwidth, bytes/s (expert weights are read once per step per hit expert). */
  readonly memBandwidth: number;
  /** Bytes per expert weight element (fp8 1, bf16 2). */
  readonly weightBytes: number;
  /** Link bandwidth, bits/s (the gateway's NIC carries every worker's traffic). */
  readonly linkBitsPerS: number;
  /** One-way latency of a message, seconds (each layer is one round trip). */
  readonly latencyS: number;
}

export interface StepTime {
  /** Per step (L layers), seconds. */
  readonly computeS: number;
  readonly networkS: number;
  /** networkS / computeS: > 1 means the network bounds the step. */
  readonly ratio: number;
  readonly bound: 'network' | 'compute';
  readonly cost: StepCost;
}

/** Roofline time of a step's experts vs the time its bytes take on the gateway's NIC. */
export function stepTime(s: StepShape, hw: Hardware): StepTime {
  const cost = stepCost(s);
  const sizes = s.expertsPerWorker ?? evenSplit(s.experts, s.workers);
  const hitFraction = 1 - Math.pow(1 - s.topK / s.experts, s.tokens);
  let computeS = 0;
  cost.workers.forEach((w, i) => {
    const weightBytes = s.moeLayers * sizes[i]! * hitFraction * 3 * s.hidden * s.moeIntermediate * hw.weightBytes;
    computeS = Math.max(computeS, w.flops / hw.flops, weightBytes / hw.memBandwidth);
  });
  const networkS = (Math.max(cost.bytesOut, cost.bytesIn) * 8) / hw.linkBitsPerS + s.moeLayers * 2 * hw.latencyS;
  return { computeS, networkS, ratio: networkS / computeS, bound: networkS > computeS ? 'network' : 'compute', cost };
}

/** Published shapes of the models the report projects to. */
export const REFERENCE_MODELS = Object.freeze({
  'DeepSeek-V3': Object.freeze({ hidden: 7168, moeIntermediate: 2048, experts: 256, topK: 8, moeLayers: 58, weightBytes: 1 }),
  'Mixtral-8x7B': Object.freeze({ hidden: 4096, moeIntermediate: 14336, experts: 8, topK: 2, moeLayers: 32, weightBytes: 2 }),
});
export type ReferenceModel = keyof typeof REFERENCE_MODELS;

/**
 * An H100 SXM class node: 989 TFLOP/s dense bf16 at 50% utilization, 3.35 TB/s HBM3, 5 µs one-way
 * message latency (RDMA class). The link rate is the projection's variable.
 */
export const H100_NODE = Object.freeze({ flops: 0.5 * 989e12, memBandwidth: 3.35e12, latencyS: 5e-6 });

export interface ProjectionRow {
  readonly model: ReferenceModel;
  readonly nodes: number;
  readonly gbps: number;
  readonly tokens: number;
  readonly computeMs: number;
  readonly networkMs: number;
  readonly ratio: number;
  readonly bound: 'network' | 'compute';
  /** Wire bytes per token per step (all layers, both directions). */
  readonly bytesPerToken: number;
}

/** The report's projection grid: each model over its node counts, link rates and batch sizes, bf16 on the wire. */
export function projectReference(model: ReferenceModel, nodes: readonly number[], gbps: readonly number[], tokens: readonly number[]): ProjectionRow[] {
  const m = REFERENCE_MODELS[model];
  const rows: ProjectionRow[] = [];
  for (const n of nodes) {
    for (const g of gbps) {
      for (const t of tokens) {
        const shape: StepShape = { hidden: m.hidden, moeIntermediate: m.moeIntermediate, experts: m.experts, topK: m.topK, moeLayers: m.moeLayers, workers: n, tokens: t, wireBytes: 2 };
        const r = stepTime(shape, { ...H100_NODE, weightBytes: m.weightBytes, linkBitsPerS: g * 1e9 });
        rows.push({ model, nodes: n, gbps: g, tokens: t, computeMs: r.computeS * 1e3, networkMs: r.networkS * 1e3, ratio: r.ratio, bound: r.bound, bytesPerToken: r.cost.bytesPerToken });
      }
    }
  }
  return rows;
}

/**
 * The smallest batch (tokens per step, powers of two up to maxTokens) from which the network bounds
 * the step, or null when compute bounds every batch up to maxTokens. Small batches read expert
 * weights for few tokens (memory-bound compute); bytes on the wire grow with every token.
 */
export function networkBoundFrom(model: ReferenceModel, nodes: number, gbps: number, maxTokens = 1 << 16): number | null {
  const m = REFERENCE_MODELS[model];
  for (let t = 1; t <= maxTokens; t *= 2) {
    const r = stepTime({ hidden: m.hidden, moeIntermediate: m.moeIntermediate, experts: m.experts, topK: m.topK, moeLayers: m.moeLayers, workers: nodes, tokens: t, wireBytes: 2 }, { ...H100_NODE, weightBytes: m.weightBytes, linkBitsPerS: gbps * 1e9 });
    if (r.bound === 'network') return t;
  }
  return null;
}
