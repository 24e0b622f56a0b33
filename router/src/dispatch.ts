/**
 * Dispatch and combine: the routed half of an MoE layer over expert workers.
 *
 * `planDispatch` (pure) assigns every (row, slot) of a step to one live worker holding that
 * slot's expert: a replicated expert's slot goes to its least-loaded live replica so far in the
 * call (even load, as EPLB plans it), ties to a worker the row already goes to (a row crosses the
 * wire once per worker, not once per expert), then round-robin.
 *
 * `ShardedExperts.forward` (the gateway's RoutedExperts over gRPC) then, per call:
 *   1. plans; experts with no live worker fail the call at once (experts_unavailable, naming them);
 *   2. writes one request per worker that has rows (several only when the rows exceed the message
 *      limit), all before the first await, so the requests are on the wire while the gateway
 *      computes the shared experts;
 *   3. awaits the replies; requests that failed (worker lost, deadline missed, request refused)
 *      are re-planned onto other live replicas of the same experts, excluding the workers that
 *      failed in this call, until none is left to try;
 *   4. combines: out[r] = Σ over replies of their row r, in a fixed order (worker index, chunk),
 *      so a run is reproducible bit for bit.
 * The placement can change while serving (`switchPlacement`, used by the rebalancer): the new one
 * takes effect at a step boundary (the first MoE layer's call), never between the layers of one
 * step, so a step routes every layer with one placement.
 * Workers with no rows in a call get no message (at most one message per worker per layer).
 *
 * Letters: n rows of the call, k slots per row, H hidden, W workers, X routed experts,
 * m rows of one request.
 */
import { RETRYABLE, ServerError } from '../../services/common/src/errors.js';
import { bytesOf, DTYPE_BYTES, RowCodec, type ForwardReply, type ForwardRequest } from '../../proto/index.js';
import { REQUEST_OVERHEAD_BYTES, type WorkerClient } from './client.js';
import type { RoutingStats } from './stats.js';
import type { DispatchOptions, Placement, RoutedExperts } from './types.js';

// ---------------------------------------------------------------- planning (pure)

/** Plan buffers, reused across calls (grown on demand). */
export class DispatchPlan {
  /** [n * k] worker of each slot; -1 for unused slots (id -1) and slots of missing experts. */
  slotWorker = new Int32Array(0);
  /** [W] rows going to each worker (token rows: messages on the wire). */
  readonly rowCount: Int32Array;
  /** [W] (row, slot) pairs each worker computes (its load). */
  readonly slotCount: Int32Array;
  /** [W] local row indices per worker, ascending (first rowCount[w] entries valid). */
  readonly rows: Int32Array[];
  private readonly chosen: Int32Array;

  constructor(
    readonly numWorkers: number,
    maxK = 64,
  ) {
    this.rowCount = new Int32Array(numWorkers);
    this.slotCount = new Int32Array(numWorkers);
    this.rows = Array.from({ length: numWorkers }, () => new Int32Array(0));
    this.chosen = new Int32Array(maxK);
  }

  /** Scratch of distinct workers chosen for one row (at most k). */
  chosenScratch(k: number): Int32Array {
    return this.chosen.length >= k ? this.chosen : new Int32Array(k);
  }

  reset(n: number, k: number): void {
    if (this.slotWorker.length < n * k) this.slotWorker = new Int32Array(Math.max(n * k, this.slotWorker.length * 2));
    this.rowCount.fill(0);
    this.slotCount.fill(0);
    for (let w = 0; w < this.numWorkers; w++) if (this.rows[w]!.length < n) this.rows[w] = new Int32Array(Math.max(n, this.rows[w]!.length * 2));
  }
}

/**
 * Assigns each (row, slot) to a live worker holding the slot's expert.
 *   replicas  expert -> workers holding it (ascending)
 *   live      [W] non-zero = may receive rows
 *   ids       int32 [n, k] expert ids (-1 = unused slot)
 *   cursor    uint32 [X] per-expert round-robin position (advanced; persists across calls)
 * Fills `plan`; returns the experts that have no live replica (empty when every slot is placed).
 */
export function planDispatch(
  replicas: readonly (readonly number[])[],
  live: Uint8Array,
  ids: Int32Array,
  n: number,
  k: number,
  cursor: Uint32Array,
  plan: DispatchPlan,
): number[] {
  plan.reset(n, k);
  const { slotWorker, rowCount, slotCount, rows } = plan;
  const chosen = plan.chosenScratch(k);
  let missing: number[] | null = null;
  for (let r = 0; r < n; r++) {
    let nChosen = 0;
    for (let j = 0; j < k; j++) {
      const slot = r * k + j;
      const e = ids[slot]!;
      slotWorker[slot] = -1;
      if (e < 0) continue;
      const reps = replicas[e];
      if (!reps) throw new ServerError('internal', `expert ${e} is outside the placement (${replicas.length} experts)`);
      let w = -1;
      if (reps.length === 1) {
        if (live[reps[0]!]) w = reps[0]!;
      } else {
        // Least loaded: the live replica with the fewest (row, slot) pairs so far in this call
        // (what EPLB's placement assumes: a replicated expert's rows split evenly; ties in
        // round-robin order). A worker this row already goes to wins when it is at most one pair
        // above that (one message less; the imbalance this allows stays bounded).
        const start = cursor[e]! % reps.length;
        let pick = -1;
        for (let t = 0; t < reps.length; t++) {
          const cand = reps[(start + t) % reps.length]!;
          if (live[cand] && (w < 0 || slotCount[cand]! < slotCount[w]!)) {
            w = cand;
            pick = t;
          }
        }
        for (let c = 0; c < nChosen && w >= 0; c++) {
          const cw = chosen[c]!;
          if (cw !== w && slotCount[cw]! <= slotCount[w]! + 1 && reps.includes(cw)) {
            w = cw;
            break;
          }
        }
        if (w >= 0) cursor[e] = start + pick + 1;
      }
      if (w < 0) {
        (missing ??= []).push(e);
        continue;
      }
      slotWorker[slot] = w;
      slotCount[w]!++;
      let seen = false;
      for (let c = 0; c < nChosen; c++) if (chosen[c] === w) seen = true;
      if (!seen) chosen[nChosen++] = w;
    }
    for (let c = 0; c < nChosen; c++) {
      const w = chosen[c]!;
      rows[w]![rowCount[w]!++] = r;
    }
  }
  return missing ? [...new Set(missing)].sort((a, b) => a - b) : [];
}

// ---------------------------------------------------------------- dispatch over workers

/** Per-worker request scratch (reused across calls; a failover round gets fresh ones). */
class WorkerScratch {
  xs = new Float32Array(0); // [m, H] request rows
  ys = new Float32Array(0); // [m, H] reply rows, when they cannot be viewed in place
  ids = new Int32Array(0); // [m, k]
  weights = new Float32Array(0); // [m, k]
  src = new Int32Array(0); // [m] source row (in the call's row space) of each request row
  readonly encoder = new RowCodec();
  ensure(m: number, H: number, k: number): void {
    if (this.src.length < m) {
      const cap = Math.max(m, this.src.length * 2);
      this.xs = new Float32Array(cap * H);
      this.ys = new Float32Array(cap * H);
      this.ids = new Int32Array(cap * k);
      this.weights = new Float32Array(cap * k);
      this.src = new Int32Array(cap);
    } else if (this.ids.length < m * k) {
      this.ids = new Int32Array(this.src.length * k);
      this.weights = new Float32Array(this.src.length * k);
    }
  }
}

/** Rows still to compute: srcRows[i] is the call row of job row i; ids/weights [n, k] name only the slots to compute. */
interface Job {
  readonly n: number;
  readonly srcRows: Int32Array | null; // null = identity (the whole call)
  readonly ids: Int32Array;
  readonly weights: Float32Array;
}

interface Exchange {
  readonly worker: number;
  readonly m: number;
  readonly src: Int32Array; // [m] call rows
  readonly ids: Int32Array; // [m, k]
  readonly weights: Float32Array; // [m, k]
  readonly ys: Float32Array; // [m, H] where the reply is decoded when it cannot be viewed
  readonly reply: Promise<ForwardReply>;
}

interface Part {
  readonly src: Int32Array;
  readonly data: Float32Array; // [m, H]
}

export class ShardedExperts implements RoutedExperts {
  private readonly W: number;
  private readonly plan: DispatchPlan;
  private readonly scratch: WorkerScratch[];
  private readonly live: Uint8Array;
  /** [W] workers that failed during the current call (not retried within it). */
  private readonly excluded: Uint8Array;
  /** Only its realignment scratch is used: decoded rows land in each exchange's own region. */
  private readonly decoder = new RowCodec();
  private readonly cursors = new Map<number, Uint32Array>();
  private step = 0;
  private busy = false;
  /** The current placement (replaced at a step boundary by switchPlacement). */
  private current: Placement;
  private pending: { placement: Placement; done: () => void } | null = null;
  /** First and last MoE layer: a step starts with the first's call and ends after the last's. */
  private readonly firstLayer: number;
  private readonly lastLayer: number;
  /** A step is between its first and last MoE layer calls. */
  private inStep = false;
  /** Called at each step boundary, before the step's first MoE layer (the auto rebalance check). Must not allocate. */
  onStepBoundary: (() => void) | null = null;
  /** The last failure of a forward call (the CLI prints it; the engine gets it on its events). */
  lastError: ServerError | null = null;

  constructor(
    readonly hiddenSize: number,
    placement: Placement,
    readonly clients: readonly WorkerClient[],
    readonly opts: DispatchOptions,
    readonly stats: RoutingStats,
  ) {
    this.W = clients.length;
    this.current = placement;
    const layers = [...placement.layers.keys()];
    this.firstLayer = Math.min(...layers);
    this.lastLayer = Math.max(...layers);
    if (placement.numWorkers !== this.W) throw new ServerError('internal', `placement for ${placement.numWorkers} workers, ${this.W} clients`);
    this.plan = new DispatchPlan(this.W);
    this.scratch = clients.map(() => new WorkerScratch());
    this.live = new Uint8Array(this.W);
    this.excluded = new Uint8Array(this.W);
    for (const l of placement.layers.keys()) this.cursors.set(l, new Uint32Array(placement.numExperts));
  }

  /** Step boundary (after the last MoE layer, or a failed call): a pending placement takes effect. */
  private endStep(): void {
    this.inStep = false;
    this.applyPending();
  }

  private applyPending(): void {
    const p = this.pending;
    if (!p) return;
    this.current = p.placement;
    this.pending = null;
    p.done();
  }

  /** The placement rows are routed with now. */
  get placement(): Placement {
    return this.current;
  }

  /**
   * Routes with `next` from the next step boundary on (at once when no step is in flight).
   * Resolves once it is in effect. The workers must hold both placements' experts until then.
   */
  switchPlacement(next: Placement): Promise<void> {
    if (next.numWorkers !== this.W || next.numExperts !== this.current.numExperts) throw new ServerError('internal', `placement for ${next.numWorkers} workers / ${next.numExperts} experts, have ${this.W} / ${this.current.numExperts}`);
    this.pending?.done(); // superseded: the newer one wins
    if (!this.inStep && !this.busy) {
      this.current = next;
      this.pending = null;
      return Promise.resolve();
    }
    return new Promise<void>((resolve) => (this.pending = { placement: next, done: resolve }));
  }

  async forward(layer: number, x: Float32Array, numRows: number, ids: Int32Array, weights: Float32Array, k: number, out: Float32Array): Promise<void> {
    if (this.busy) throw new ServerError('internal', 'ShardedExperts.forward is not re-entrant: one MoE layer at a time');
    const H = this.hiddenSize;
    if (layer === this.firstLayer) {
      this.applyPending(); // normally applied at the end of the previous step already
      this.inStep = true;
      this.onStepBoundary?.();
    }
    const replicas = this.current.layers.get(layer);
    if (!replicas) throw new ServerError('internal', `layer ${layer} is not an MoE layer of the placement`);
    this.busy = true;
    this.step++;
    const t0 = performance.now();
    try {
      this.stats.recordExperts(layer, ids, numRows, k);
      // Round 1 on reused buffers; every request is written before the first await.
      const excluded = this.excluded.fill(0);
      let exchanges = this.sendRound(layer, replicas, x, { n: numRows, srcRows: null, ids, weights }, k, this.plan, this.scratch, excluded, null);
      const parts: Part[] = [];
      let critical = 0;
      for (let round = 1; ; round++) {
        const settled = await Promise.allSettled(exchanges.map((e) => e.reply));
        let roundMax = 0;
        let failed: Exchange[] | null = null; // allocated on failure only
        const reasons: string[] = [];
        settled.forEach((s, i) => {
          const ex = exchanges[i]!;
          if (s.status === 'fulfilled') {
            const data = this.decodeReply(ex, s.value);
            roundMax = Math.max(roundMax, s.value.computeUs + s.value.queueUs);
            if (data) {
              parts.push({ src: ex.src, data });
              return;
            }
            reasons.push(`worker ${ex.worker}: malformed reply`);
          } else {
            const e = s.reason as ServerError;
            reasons.push(`worker ${ex.worker} (${this.clients[ex.worker]!.address}): ${e.message}`);
            // A refused request (worker alive) that no replica could do better is not retried.
            if (this.clients[ex.worker]!.live && !RETRYABLE[e.code] && e.code !== 'internal') {
              throw new ServerError('experts_unavailable', `layer ${layer}: ${e.message}`, { cause: e });
            }
          }
          excluded[ex.worker] = 1;
          (failed ??= []).push(ex);
        });
        critical += roundMax;
        if (!failed) break;
        // Failover: the failed requests' slots go to other live replicas (fresh buffers).
        const job = mergeJobs(failed, k);
        let slots = 0;
        for (let i = 0; i < job.n * k; i++) if (job.ids[i]! >= 0) slots++;
        this.stats.failoverSlots += slots;
        if (round > this.W) throw new ServerError('experts_unavailable', `layer ${layer}: no worker answered (${reasons.join('; ')})`);
        exchanges = this.sendRound(layer, replicas, x, job, k, new DispatchPlan(this.W), this.clients.map(() => new WorkerScratch()), excluded, reasons);
      }
      // Combine in a fixed order (round, worker, chunk): reproducible sums.
      out.fill(0, 0, numRows * H);
      for (const p of parts) {
        const { src, data } = p;
        for (let i = 0; i < src.length; i++) {
          const dst = src[i]! * H;
          const from = i * H;
          for (let d = 0; d < H; d++) out[dst + d] += data[from + d]!;
        }
      }
      this.stats.criticalComputeMs += critical / 1000;
      this.stats.forwardMs += performance.now() - t0;
      if (layer === this.lastLayer) this.endStep();
    } catch (err) {
      this.endStep(); // the step fails as a whole
      this.stats.failedCalls++;
      this.lastError = err instanceof ServerError && err.code === 'experts_unavailable' ? err : new ServerError('experts_unavailable', `layer ${layer}: ${(err as Error).message}`, { cause: err });
      throw this.lastError;
    } finally {
      this.busy = false;
    }
  }

  /** Plans `job` over live, non-excluded workers and writes its requests; returns them in flight. */
  private sendRound(
    layer: number,
    replicas: readonly (readonly number[])[],
    x: Float32Array,
    job: Job,
    k: number,
    plan: DispatchPlan,
    scratch: WorkerScratch[],
    excluded: Uint8Array,
    /** null in the first round; in a failover round, why the previous round's requests failed. */
    failover: readonly string[] | null,
  ): Exchange[] {
    const H = this.hiddenSize;
    const W = this.W;
    for (let w = 0; w < W; w++) this.live[w] = this.clients[w]!.live && !excluded[w] ? 1 : 0;
    const missing = planDispatch(replicas, this.live, job.ids, job.n, k, this.cursors.get(layer)!, plan);
    if (missing.length > 0) throw this.unavailable(layer, missing, replicas, failover ?? []);
    this.stats.recordWorkers(layer, plan.rowCount, plan.slotCount, failover !== null);
    const dtype = this.opts.wireDtype;
    const perRow = H * DTYPE_BYTES[dtype]! + k * 8;
    const exchanges: Exchange[] = [];
    for (let w = 0; w < W; w++) {
      const m = plan.rowCount[w]!;
      if (m === 0) continue;
      const client = this.clients[w]!;
      const s = scratch[w]!;
      s.ensure(m, H, k);
      // Gather this worker's rows: hidden rows, its slots' ids (-1 elsewhere) and weights.
      const localRows = plan.rows[w]!;
      for (let i = 0; i < m; i++) {
        const lr = localRows[i]!;
        const src = job.srcRows ? job.srcRows[lr]! : lr;
        s.src[i] = src;
        s.xs.set(x.subarray(src * H, src * H + H), i * H);
        for (let j = 0; j < k; j++) {
          const mine = plan.slotWorker[lr * k + j] === w;
          s.ids[i * k + j] = mine ? job.ids[lr * k + j]! : -1;
          s.weights[i * k + j] = mine ? job.weights[lr * k + j]! : 0;
        }
      }
      const maxRows = Math.max(1, Math.floor((client.maxRequestBytes - REQUEST_OVERHEAD_BYTES) / perRow));
      for (let lo = 0; lo < m; lo += maxRows) {
        const hi = Math.min(m, lo + maxRows);
        const cm = hi - lo;
        const xs = s.xs.subarray(lo * H, hi * H);
        const ids = s.ids.subarray(lo * k, hi * k);
        const wts = s.weights.subarray(lo * k, hi * k);
        // The stream serializes a write at once when nothing is buffered; otherwise it keeps the
        // message object until the previous write completes, and the encoder's scratch (f16/bf16)
        // may be overwritten by the next chunk by then: copy in that (rare) case.
        const copy = !client.writesImmediately;
        const hidden = s.encoder.encode(xs, dtype);
        const req: ForwardRequest = {
          requestId: 0,
          layer,
          numRows: cm,
          topK: k,
          dtype,
          hidden: copy ? Buffer.from(hidden) : hidden,
          expertIds: copy ? Buffer.from(bytesOf(ids)) : bytesOf(ids),
          weights: copy ? Buffer.from(bytesOf(wts)) : bytesOf(wts),
          step: this.step,
          sentAtUs: 0,
        };
        this.stats.requests++;
        this.stats.bytesSent += hidden.byteLength + cm * k * 8;
        exchanges.push({ worker: w, m: cm, src: s.src.subarray(lo, hi), ids, weights: wts, ys: s.ys.subarray(lo * H, hi * H), reply: client.send(req, this.opts.deadlineMs) });
      }
    }
    return exchanges;
  }

  /** The reply's rows as float32 [m, H] (a view, or decoded into the exchange's own region), or null when malformed. */
  private decodeReply(ex: Exchange, reply: ForwardReply): Float32Array | null {
    const H = this.hiddenSize;
    if (reply.numRows !== ex.m || reply.dtype !== this.opts.wireDtype) return null;
    this.stats.bytesReceived += reply.output.byteLength;
    try {
      return this.decoder.decodeTo(reply.output, reply.dtype, ex.m * H, ex.ys, 'output');
    } catch {
      return null;
    }
  }

  private unavailable(layer: number, missing: readonly number[], replicas: readonly (readonly number[])[], why: readonly string[]): ServerError {
    const down = new Set<number>();
    for (const e of missing) for (const w of replicas[e]!) down.add(w);
    const causes = [...down].sort((a, b) => a - b).map((w) => {
      const c = this.clients[w]!;
      return `worker ${w} at ${c.address} ${c.state}${c.lastError ? `: ${c.lastError.message}` : ''}`;
    });
    const detail = why.length > 0 ? why.join('; ') : causes.join('; ');
    return new ServerError('experts_unavailable', `experts ${missing.join(',')} of layer ${layer} have no live worker (${detail})`);
  }

  close(): void {
    for (const c of this.clients) c.close();
  }
}

/** The failed requests of a round as one job (copies: the round's buffers may be reused). */
function mergeJobs(failed: readonly Exchange[], k: number): Job {
  let n = 0;
  for (const f of failed) n += f.m;
  const srcRows = new Int32Array(n);
  const ids = new Int32Array(n * k);
  const weights = new Float32Array(n * k);
  let at = 0;
  for (const f of failed) {
    srcRows.set(f.src, at);
    ids.set(f.ids, at * k);
    weights.set(f.weights, at * k);
    at += f.m;
  }
  return { n, srcRows, ids, weights };
}
