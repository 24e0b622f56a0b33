/**
 * DenseRunner: one forward pass of the model over a batch of sequences, running every dense unit
 * (embedding, attention, norms, dense MLPs, router gates, shared experts, LM head) in ONNX Runtime
 * and handing routed experts to a `RoutedExperts` (in-process shard, or the router's gRPC fan-out).
 *
 * Batch layout. The step's sequences are split into attention groups: all single-token sequences
 * (decodes) form one group [B, T=1]; multi-token sequences (prefill chunks) form groups [B, T]
 * by (chunk length, past length), up to PREFILL_GROUP_ROWS rows each: equal prompts prefill in
 * one run per layer, not one each. So no query row is ever padding; only the decode group's past
 * axis is padded to its longest past. Rows of all groups are concatenated (group by group,
 * sequence-major) into the step's row space [N, H], which the MLP / MoE half of every layer
 * processes in one go.
 *
 * Letters: N rows in the step, H hidden, V vocab, A activated experts, X routed experts,
 * B sequences in a group, T query slots, P past slots, L = P + T, E cache row elements, R rotary dims.
 */
import { ServerError } from '../../../common/src/errors.js';
import type { MoeModelConfig } from '../../../model/src/config.js';
import { kvLayoutFor } from '../../../kvcache/src/layout.js';
import { buildGqaAttention, buildMlaAttention, mlaNaiveCheaper, type MlaImpl } from '../../../model/src/graphs/attention.js';
import { buildDenseMlp, buildEmbedding, buildLmHead, buildSharedExpert } from '../../../model/src/graphs/mlp.js';
import type { GraphOptions } from '../../../model/src/graphs/linear.js';
import { RopeTable } from '../../../model/src/graphs/rope.js';
import type { WeightSource } from '../../../model/src/graphs/source.js';
import * as W from '../../../model/src/names.js';
import { GraphBuilder } from '../../../model/src/onnx/graph.js';
import { f32, i64, OrtSession, type Feed, type RuntimeOptions } from '../../../model/src/runtime/onnx.js';
import { GateScratch, route } from '../../../../router/src/gating.js';
import { DecodePast } from './decode-past.js';
import { DEFAULT_ENGINE_SIZING } from './sizing.js';
import type { RoutedExperts } from '../../../../router/src/types.js';

/** The KV cache as the attention path sees it (implemented by services/kvcache). */
export interface KvStore {
  readonly rowElements: number;
  /** Copies each sequence's first lengths[b] rows of `layer` (rows from[b].. with `from`) into out [numSeqs, maxLen, E]. */
  gather(layer: number, seqIds: Int32Array, numSeqs: number, lengths: Int32Array, maxLen: number, out: Float32Array, from?: Int32Array | null): void;
  /** GQA caches: the same rows head-major, K into outK [numSeqs, g, maxLen, D] and V into outV alike. */
  gatherHeads(layer: number, seqIds: Int32Array, numSeqs: number, lengths: Int32Array, maxLen: number, outK: Float32Array, outV: Float32Array, from?: Int32Array | null): void;
  /** The sequence's incarnation: unchanged while its rows are only appended to (KvCacheManager.epoch). */
  epoch(seqId: number): number;
  /** Writes numRows rows (src rows srcRow..) into the sequence's slots startPos.. (capacity ensured by the caller). */
  writeRows(layer: number, seqId: number, startPos: number, src: Float32Array, srcRow: number, numRows: number): void;
}

export interface ForwardSeq {
  /** This step's tokens for the sequence (a prefill chunk, or one decode token). */
  readonly tokens: ArrayLike<number>;
  /** Tokens of this sequence already in the KV cache; the first token's position. */
  readonly pastLen: number;
  /** KV-manager sequence id; -1 = no cache (pastLen must be 0; nothing is stored). */
  readonly kvSeqId: number;
  /** Which positions need logits. */
  readonly logits: 'last' | 'all' | 'none';
}

export interface RoutingTrace {
  /** Per MoE layer: ids [N, A] and weights [N, A] over the step's rows. */
  readonly layers: { layer: number; ids: Int32Array; weights: Float32Array }[];
}

export interface ForwardResult {
  /** logits float32 [S, V]: the requested positions, sequence by sequence. */
  readonly logits: Float32Array;
  /** First logits row of each sequence (-1 when it asked for none). */
  readonly logitRow: Int32Array;
  /** First step row of each sequence. */
  readonly rowStart: Int32Array;
  readonly routing: RoutingTrace | null;
}

export interface DenseRunnerOptions {
  readonly runtime: RuntimeOptions;
  /**
   * MLA attention form: 'auto' (per attention group, whichever costs fewer multiply-adds: absorbed
   * for decodes, naive for a prompt's first chunk and long later ones), 'absorbed' or 'naive' (the
   * oracle). @defaultValue 'auto'
   */
  readonly mlaImpl: MlaImpl;
  /** Positions covered by the RoPE table. @defaultValue cfg.maxPositionEmbeddings */
  readonly maxPositions?: number;
  /** Bound on the decode group's past kept between steps (decode-past.ts); 0 gathers it every step. @defaultValue DEFAULT_ENGINE_SIZING.decodePastBytes */
  readonly decodePastBytes?: number;
}

interface LayerUnits {
  readonly attn: OrtSession;
  /** MLA 'auto': the naive form, for groups whose query chunk makes it cheaper (null otherwise). */
  readonly attnWide: OrtSession | null;
  readonly dense: OrtSession | null;
  readonly shared: OrtSession | null;
  readonly correctionBias: Float32Array | null;
}

const MASKED = -1e30;

export const PROFILE_UNITS = ['embed', 'kv_gather', 'mask', 'attention', 'kv_write', 'gating', 'experts', 'shared', 'dense_mlp', 'residual', 'lm_head'] as const;
export type ProfileUnit = (typeof PROFILE_UNITS)[number];

/** Cumulative wall milliseconds per unit; enabled by setting `DenseRunner.profile` (off by default). */
export class StepProfile {
  readonly ms: Record<ProfileUnit, number> = Object.fromEntries(PROFILE_UNITS.map((u) => [u, 0])) as Record<ProfileUnit, number>;
  reset(): void {
    for (const u of PROFILE_UNITS) this.ms[u] = 0;
  }
}

/**
 * One attention group of a step: its sequences share one ONNX Runtime run per layer.
 * B sequences, T query rows each, P past slots (the longest past), L = P + T; rows
 * [first, first + n) of the step. Masks are built once per step per sliding window.
 */
interface GroupPlan {
  readonly B: number;
  readonly T: number;
  readonly P: number;
  readonly L: number;
  readonly first: number;
  readonly n: number;
  readonly kvSeqIds: Int32Array;
  readonly pastLens: Int32Array;
  /** window (null = full attention) -> mask float32 [B, T, L] */
  readonly masks: Map<number | null, Float32Array>;
  /** The past comes from DecodePast (P is its slot count), not from a gather of this step. */
  readonly staged: boolean;
  /** MLA's naive form costs fewer multiply-adds for this group's rows and keys (mlaNaiveCheaper). */
  readonly mlaNaive: boolean;
}

/**
 * Query rows a prefill group takes at most; more sequences of its shape start another group.
 * Prefill of 16 64-token prompts, attention ms (2 runs each): mixtral-perf one group per
 * sequence 657/698, 256 rows 426/476, one group 498/458; dsv2-perf 688/855, 713/874, 957/1083
 * (MLA's naive form expands per-head keys and values: a group's intermediates outgrow the caches).
 */
const PREFILL_GROUP_ROWS = 256;

/**
 * The step's attention groups, as indices into `seqs`: the decodes (one token each) first, then
 * the prefill chunks by (length, past length), so no query row and no past slot of a chunk is
 * padding, at most `maxPrefillRows` query rows a group; each group's members in step order.
 */
export function attentionGroups(seqs: readonly ForwardSeq[], maxPrefillRows = PREFILL_GROUP_ROWS): number[][] {
  const decodes: number[] = [];
  const prefills: number[][] = [];
  const open = new Map<string, number[]>();
  for (let s = 0; s < seqs.length; s++) {
    const q = seqs[s]!;
    const T = q.tokens.length;
    if (T === 1) {
      decodes.push(s);
      continue;
    }
    const key = `${T}:${q.pastLen}`;
    const members = open.get(key);
    if (members && (members.length + 1) * T <= maxPrefillRows) members.push(s);
    else {
      const fresh = [s];
      open.set(key, fresh);
      prefills.push(fresh);
    }
  }
  return decodes.length > 0 ? [decodes, ...prefills] : prefills;
}

function planGroup(cfg: MoeModelConfig, members: readonly number[], seqs: readonly ForwardSeq[], rowStart: Int32Array, past: DecodePast | null, kv: KvStore | null): GroupPlan {
  const B = members.length;
  const T = seqs[members[0]!]!.tokens.length; // the same for every member
  const kvSeqIds = new Int32Array(B);
  const pastLens = new Int32Array(B);
  let P = 0;
  members.forEach((s, b) => {
    kvSeqIds[b] = seqs[s]!.kvSeqId;
    pastLens[b] = seqs[s]!.pastLen;
    P = Math.max(P, seqs[s]!.pastLen);
  });
  // The decode group reads its past from the rows kept since the last step, where they fit.
  const slots = past && kv && T === 1 ? past.prepare(kv, B, kvSeqIds, pastLens, P) : -1;
  if (slots >= 0) P = slots;
  return { B, T, P, L: P + T, first: rowStart[members[0]!]!, n: B * T, kvSeqIds, pastLens, masks: new Map(), staged: slots >= 0, mlaNaive: mlaNaiveCheaper(cfg, T, P + T) };
}

/**
 * mask [B, T, L], additive: past key j is visible to query t of sequence b if j < pastLen[b];
 * the step's key P + j' if j' <= t (causal); and with a sliding window only keys within it.
 */
function maskFor(g: GroupPlan, window: number | null): Float32Array {
  let mask = g.masks.get(window);
  if (mask) return mask;
  const { B, T, P, L } = g;
  mask = new Float32Array(B * T * L).fill(MASKED);
  for (let b = 0; b < B; b++) {
    const pl = g.pastLens[b]!;
    for (let t = 0; t < T; t++) {
      const qPos = pl + t;
      const rowBase = (b * T + t) * L;
      const lo = window === null ? 0 : Math.max(0, qPos - window + 1);
      for (let j = lo; j < pl; j++) mask[rowBase + j] = 0;
      for (let j = 0; j <= t; j++) if (pl + j >= lo) mask[rowBase + P + j] = 0;
    }
  }
  g.masks.set(window, mask);
  return mask;
}

/**
 * out[i] += a[i] for i < n. The residual adds live in small functions: inside forward() (a long
 * async function) the same loops ran at ~0.1 µs an element (not optimized there), 0.5-0.8 ms of
 * a batch-1 step and ~0.2 s of a 16-prompt prefill.
 */
function addInto(out: Float32Array, a: Float32Array, n: number): void {
  for (let i = 0; i < n; i++) out[i] += a[i]!;
}

/** out[i] += a[i] + b[i] for i < n (see addInto). */
function addInto2(out: Float32Array, a: Float32Array, b: Float32Array, n: number): void {
  for (let i = 0; i < n; i++) out[i] += a[i]! + b[i]!;
}

/** One turn of the event loop (pending socket writes go out). */
function yieldToIo(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/** A grow-only Float32Array (reused across steps: avoid GC on the per-step path). */
class Grow {
  buf = new Float32Array(0);
  take(n: number): Float32Array {
    if (this.buf.length < n) this.buf = new Float32Array(Math.max(n, this.buf.length * 2));
    return this.buf.subarray(0, n);
  }
}

export class DenseRunner {
  private readonly rope: RopeTable;
  private readonly gate: GateScratch;
  private readonly E: number;
  // per-step scratch
  private readonly hidden = new Grow();
  private readonly xNorm = new Grow();
  private readonly routedOut = new Grow();
  private readonly routerLogits = new Grow();
  private readonly routeWeights = new Grow();
  private routeIds = new Int32Array(0);
  private readonly cos = new Grow();
  private readonly sin = new Grow();
  private readonly past = new Grow();
  private readonly pastK = new Grow();
  private readonly pastV = new Grow();
  private readonly headIn = new Grow();
  private readonly decodePast: DecodePast | null;
  /** When set, forward() accumulates per-unit wall time here (benchmarks only). */
  profile: StepProfile | null = null;
  private lastMark = 0;
  /**
   * Attributes the wall time since the previous mark to `unit` (null: to nothing), when profiling.
   * forward() marks the end of each phase, so the phases tile the step.
   */
  private mark(unit: ProfileUnit | null): void {
    if (!this.profile) return;
    const now = performance.now();
    if (unit) this.profile.ms[unit] += now - this.lastMark;
    this.lastMark = now;
  }

  private constructor(
    readonly cfg: MoeModelConfig,
    private readonly embed: OrtSession,
    private readonly head: OrtSession,
    private readonly units: readonly LayerUnits[],
    maxPositions: number,
    decodePastBytes: number,
  ) {
    this.rope = new RopeTable(cfg.rope, maxPositions);
    this.gate = new GateScratch(cfg.moe);
    const layout = kvLayoutFor(cfg);
    this.E = layout.elementsPerToken;
    this.decodePast = decodePastBytes > 0 ? new DecodePast(layout, decodePastBytes) : null;
  }

  static async load(cfg: MoeModelConfig, ws: WeightSource, opts: DenseRunnerOptions): Promise<DenseRunner> {
    const rt = opts.runtime;
    const gopts: GraphOptions = { quantization: rt.quantization ?? 'none' };
    // The KV layout owns the row size; the attention graphs assert they write exactly that.
    const rowElements = kvLayoutFor(cfg).elementsPerToken;
    const embed = await OrtSession.create('embedding', buildEmbedding(ws, cfg), rt);
    const head = await OrtSession.create('lm_head', buildLmHead(ws, cfg, gopts), rt);
    const units: LayerUnits[] = [];
    for (const layer of cfg.layers) {
      const l = layer.index;
      const attention = (impl: 'naive' | 'absorbed') => {
        const g = new GraphBuilder(`attention_${l}`);
        if (cfg.attention.kind === 'gqa') buildGqaAttention(g, ws, cfg, l, rowElements, gopts);
        else buildMlaAttention(g, ws, cfg, l, impl, rowElements, gopts);
        return OrtSession.create(`attention_${l}_${impl}`, g.toModel(), rt);
      };
      const auto = opts.mlaImpl === 'auto' && cfg.attention.kind === 'mla';
      const isMoe = layer.mlp === 'moe';
      units.push({
        attn: await attention(opts.mlaImpl === 'naive' ? 'naive' : 'absorbed'),
        // Two sessions hold the layer's projections twice (dsv2-perf: +14 MB a layer): the price
        // of a fast prefill and a fast decode, until sessions can share initializers.
        attnWide: auto ? await attention('naive') : null,
        dense: isMoe ? null : await OrtSession.create(`dense_mlp_${l}`, buildDenseMlp(ws, cfg, l, gopts), rt),
        shared: isMoe && cfg.moe.shared ? await OrtSession.create(`shared_expert_${l}`, buildSharedExpert(ws, cfg, l, gopts), rt) : null,
        correctionBias: isMoe && cfg.moe.useCorrectionBias ? ws.readF32(W.correctionBias(l)) : null,
      });
    }
    return new DenseRunner(cfg, embed, head, units, opts.maxPositions ?? cfg.maxPositionEmbeddings, opts.decodePastBytes ?? DEFAULT_ENGINE_SIZING.decodePastBytes);
  }

  get maxPositions(): number {
    return this.rope.maxPositions;
  }

  /** Bytes holding the decode group's past between steps now (decode-past.ts). */
  get stagedPastBytes(): number {
    return this.decodePast?.bytes ?? 0;
  }

  async forward(seqs: readonly ForwardSeq[], kv: KvStore | null, experts: RoutedExperts, traceRouting = false): Promise<ForwardResult> {
    const cfg = this.cfg;
    const H = cfg.hiddenSize;
    const A = cfg.moe.nActivatedExperts;
    const X = cfg.moe.nRoutedExperts;
    const R = this.rope.width;

    // ---- rows and groups
    // Validated at the engine's edge (Engine.add, HTTP): asserted here, not re-checked per token.
    const numSeqs = seqs.length;
    for (let s = 0; s < numSeqs; s++) {
      const q = seqs[s]!;
      if (q.tokens.length === 0 || (q.kvSeqId < 0 && q.pastLen !== 0) || q.pastLen + q.tokens.length > this.rope.maxPositions) {
        throw new ServerError('internal', `forward: sequence ${s} has ${q.tokens.length} tokens after ${q.pastLen} (kv ${q.kvSeqId}), ${this.rope.maxPositions} positions served`);
      }
    }
    const groupMembers = attentionGroups(seqs);
    // Rows are laid out group by group, so each group's rows are contiguous.
    const order = groupMembers.flat();
    const rowStart = new Int32Array(numSeqs);
    let N = 0;
    for (const s of order) {
      rowStart[s] = N;
      N += seqs[s]!.tokens.length;
    }
    // Per-group facts and masks are the same for every layer: computed once per step.
    const groups = groupMembers.map((g) => planGroup(cfg, g, seqs, rowStart, this.decodePast, kv));

    // ---- embedding
    this.mark(null);
    const ids = new BigInt64Array(N);
    for (const s of order) {
      const q = seqs[s]!;
      for (let t = 0; t < q.tokens.length; t++) ids[rowStart[s]! + t] = BigInt(q.tokens[t]!);
    }
    const hidden = this.hidden.take(N * H);
    hidden.set(this.embed.run({ ids: i64(ids, [N]) }, ['hidden']).hidden!.data);
    const xNorm = this.xNorm.take(N * H);
    const cos = this.cos.take(N * R);
    const sin = this.sin.take(N * R);
    for (const s of order) {
      const q = seqs[s]!;
      for (let t = 0; t < q.tokens.length; t++) this.rope.fill(q.pastLen + t, cos, sin, rowStart[s]! + t);
    }
    const trace: RoutingTrace | null = traceRouting ? { layers: [] } : null;
    if (this.routeIds.length < N * A) this.routeIds = new Int32Array(N * A * 2);
    const routeIds = this.routeIds.subarray(0, N * A);
    const routeWeights = this.routeWeights.take(N * A);
    const routerLogits = this.routerLogits.take(N * X);
    this.mark('embed');

    for (const layer of cfg.layers) {
      const l = layer.index;
      const unit = this.units[l]!;
      const isMoe = layer.mlp === 'moe';
      // ---- attention, group by group
      for (const group of groups) {
        const session = unit.attnWide && group.mlaNaive ? unit.attnWide : unit.attn;
        this.attentionGroup(l, layer.slidingWindow, session, group, kv, hidden, xNorm, cos, sin, isMoe ? routerLogits : null);
      }
      // ---- MLP / MoE over all rows
      if (!isMoe) {
        const y = unit.dense!.run({ x: f32(xNorm, [N, H]) }, ['y']).y!.data;
        this.mark('dense_mlp');
        addInto(hidden, y, N * H);
        this.mark('residual');
        continue;
      }
      route(cfg.moe, routerLogits, N, unit.correctionBias, routeIds, routeWeights, this.gate);
      if (trace) trace.layers.push({ layer: l, ids: routeIds.slice(), weights: routeWeights.slice() });
      this.mark('gating');
      const routed = this.routedOut.take(N * H);
      // Routed experts go out first; shared experts run while they are in flight. In-process
      // experts compute inside forward() (ONNX Runtime runs synchronously): nothing overlaps.
      const pending = experts.forward(l, xNorm, N, routeIds, routeWeights, A, routed);
      let shared: Float32Array | null = null;
      if (unit.shared) {
        // Guard the shared run so a routed failure is not left unobserved while it computes.
        pending.catch(() => undefined);
        // Let the event loop flush the requests to the workers first, or they would leave only
        // after the (synchronous) shared experts are done.
        if (!experts.inProcess) await yieldToIo();
        else this.mark('experts');
        shared = unit.shared.run({ x: f32(xNorm, [N, H]) }, ['y']).y!.data;
        this.mark('shared');
      }
      await pending;
      this.mark('experts');
      if (shared) addInto2(hidden, shared, routed, N * H);
      else addInto(hidden, routed, N * H);
      this.mark('residual');
    }

    // ---- final norm + LM head on the positions that sample
    const logitRow = new Int32Array(numSeqs).fill(-1);
    let S = 0;
    for (let s = 0; s < numSeqs; s++) {
      const q = seqs[s]!;
      if (q.logits === 'none') continue;
      logitRow[s] = S;
      S += q.logits === 'all' ? q.tokens.length : 1;
    }
    // Every layer has read the staged group's past: its slots now hold it.
    for (const g of groups) if (g.staged) this.decodePast!.commit(g.B, g.pastLens);
    let logits: Float32Array = new Float32Array(0);
    if (S > 0) {
      const headIn = this.headIn.take(S * H);
      for (let s = 0; s < numSeqs; s++) {
        const q = seqs[s]!;
        if (q.logits === 'none') continue;
        const n = q.logits === 'all' ? q.tokens.length : 1;
        const first = rowStart[s]! + q.tokens.length - n;
        headIn.set(hidden.subarray(first * H, (first + n) * H), logitRow[s]! * H);
      }
      logits = this.head.run({ hidden: f32(headIn, [S, H]) }, ['logits']).logits!.data;
      this.mark('lm_head');
    }
    return { logits, logitRow, rowStart, routing: trace };
  }

  /** Runs one layer's attention for one group and writes its rows back into the step buffers. */
  private attentionGroup(
    layer: number,
    window: number | null,
    session: OrtSession,
    g: GroupPlan,
    kv: KvStore | null,
    hidden: Float32Array,
    xNorm: Float32Array,
    cos: Float32Array,
    sin: Float32Array,
    routerLogits: Float32Array | null,
  ): void {
    const H = this.cfg.hiddenSize;
    const R = this.rope.width;
    const E = this.E;
    const X = this.cfg.moe.nRoutedExperts;
    const { B, T, P, L, first, n } = g;

    // The past from the KV pool: GQA head-major K and V [B, g, P, D]; MLA rows [B, P, E].
    this.mark(null);
    if (P > 0 && !kv) throw new ServerError('internal', 'forward: pastLen > 0 without a KV store');
    const a = this.cfg.attention;
    // GQA: K, V [B, g, P, D]; MLA: rows [B, P, E] (second buffer unused)
    let pastA: Float32Array;
    let pastB: Float32Array;
    if (g.staged) {
      const past = this.decodePast!;
      past.refresh(kv!, layer, B, g.kvSeqIds, g.pastLens);
      pastA = past.kFeedOf(layer);
      pastB = past.vFeedOf(layer);
    } else if (a.kind === 'gqa') {
      pastA = this.pastK.take(B * P * a.numKvHeads * a.headDim);
      pastB = this.pastV.take(B * P * a.numKvHeads * a.headDim);
      if (P > 0) kv!.gatherHeads(layer, g.kvSeqIds, B, g.pastLens, P, pastA, pastB);
    } else {
      pastA = this.past.take(B * P * E);
      pastB = pastA;
      if (P > 0) kv!.gather(layer, g.kvSeqIds, B, g.pastLens, P, pastA);
    }
    const feeds: Record<string, Feed> = {};
    if (a.kind === 'gqa') {
      feeds.past_k = f32(pastA, [B, a.numKvHeads, P, a.headDim]);
      feeds.past_v = f32(pastB, [B, a.numKvHeads, P, a.headDim]);
    } else feeds.past = f32(pastA, [B, P, E]);
    this.mark('kv_gather');
    const mask = maskFor(g, window);
    this.mark('mask');
    feeds.hidden = f32(hidden.subarray(first * H, (first + n) * H), [n, H]);
    feeds.cos = f32(cos.subarray(first * R, (first + n) * R), [n, 1, R]);
    feeds.sin = f32(sin.subarray(first * R, (first + n) * R), [n, 1, R]);
    feeds.mask = f32(mask, [B, T, L]);
    const outs = routerLogits ? ['hidden_out', 'x_norm', 'kv_new', 'router_logits'] : ['hidden_out', 'x_norm', 'kv_new'];
    const res = session.run(feeds, outs);
    this.mark('attention');
    hidden.set(res.hidden_out!.data, first * H);
    xNorm.set(res.x_norm!.data, first * H);
    if (routerLogits) routerLogits.set(res.router_logits!.data, first * X);
    if (kv) {
      const kvNew = res.kv_new!.data;
      for (let b = 0; b < B; b++) {
        if (g.kvSeqIds[b]! >= 0) kv.writeRows(layer, g.kvSeqIds[b]!, g.pastLens[b]!, kvNew, b * T, T);
      }
    }
    this.mark('kv_write');
  }
}
