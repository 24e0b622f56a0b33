/**
 * Live rebalancing: from the observed per-expert load (RoutingStats' sliding window), an EPLB
 * placement (eplb.ts) is applied while serving, in three phases:
 *   1. grow     every worker loads (old ∪ new) experts per layer, in the background (proto Load):
 *               serving goes on with the old placement, which stays valid;
 *   2. switch   the dispatcher routes with the new placement from the next step boundary on
 *               (ShardedExperts.switchPlacement): one step never mixes placements;
 *   3. shrink   every worker drops the experts only the old placement gave it (their sessions are
 *               freed after the request using them).
 * No request fails and none waits on a load: steps keep running through phases 1 and 3, and the
 * switch is a pointer swap between steps. Both placements compute each expert with the same
 * weights, so greedy outputs are the same before, during and after.
 *
 * If phase 1 fails (a worker down, a load error), the old placement stays and workers that grew
 * are shrunk back; the error is reported. Triggers: `rebalance()` (POST /admin/rebalance) and, when
 * `autoThreshold` > 0, the step-boundary check: the window's balancedness (mean / max (token,
 * expert) rows per worker, the worst MoE layer) below the threshold for `autoSteps` consecutive
 * steps, at least one full window after the last rebalance.
 *
 * Letters: L MoE layers, X routed experts, W workers.
 */
import { ServerError, toServerError } from '../../services/common/src/errors.js';
import type { WorkerClient } from './client.js';
import type { ShardedExperts } from './dispatch.js';
import { balancednessOf, eplbLayer, expectedWorkerLoad } from './eplb.js';
import type { RoutingStats } from './stats.js';
import type { LogFn, Placement } from './types.js';

export interface RebalanceOptions {
  /** Redundant expert slots per layer beyond one per expert; null = one per worker. @defaultValue null */
  readonly spareSlots: number | null;
  /** Auto trigger: rebalance when the window balancedness stays below this; 0 = off. @defaultValue 0 */
  readonly autoThreshold: number;
  /** Auto trigger: consecutive steps below the threshold. @defaultValue 32 */
  readonly autoSteps: number;
  /** Time a worker may take to load its new experts, ms. @defaultValue 300000 */
  readonly loadTimeoutMs: number;
}

export const DEFAULT_REBALANCE: RebalanceOptions = Object.freeze({ spareSlots: null, autoThreshold: 0, autoSteps: 32, loadTimeoutMs: 300_000 });

export interface RebalanceReport {
  readonly trigger: 'manual' | 'auto';
  /** false when nothing changed (no load observed yet, or the placement is already the plan). */
  readonly applied: boolean;
  readonly reason?: string;
  /** Per MoE layer: expected balancedness of the window's load under the old and the new placement. */
  readonly layers: readonly { readonly layer: number; readonly before: number; readonly after: number }[];
  /** Wall time from the start to the shrink's end, ms; and of the switch alone (waiting for a step boundary). */
  readonly applyMs: number;
  readonly switchMs: number;
  /** Experts loaded onto workers that did not hold them (replicas added or moved), summed over layers. */
  readonly expertsLoaded: number;
}

export interface RebalanceStatus {
  readonly rebalances: number;
  readonly failures: number;
  readonly running: boolean;
  /** Sum and last of applyMs over applied rebalances. */
  readonly applySecondsTotal: number;
  readonly lastApplyMs: number;
  readonly last: RebalanceReport | null;
}

export class Rebalancer {
  private rebalances = 0;
  private failures = 0;
  private applySecondsTotal = 0;
  private lastApplyMs = 0;
  private last: RebalanceReport | null = null;
  private running: Promise<RebalanceReport> | null = null;
  /** Auto trigger state: consecutive steps below the threshold, and steps since the last rebalance. */
  private below = 0;
  private sinceLast = 0;
  /** Called with each worker's new experts per layer once a placement is in effect (local workers restart with them). */
  onPlaced: (held: readonly ReadonlyMap<number, readonly number[]>[]) => void = () => undefined;

  constructor(
    private readonly experts: ShardedExperts,
    private readonly clients: readonly WorkerClient[],
    private readonly stats: RoutingStats,
    readonly opts: RebalanceOptions,
    private readonly log: LogFn,
  ) {
    if (opts.autoThreshold > 0) experts.onStepBoundary = () => this.checkStep();
  }

  status(): RebalanceStatus {
    return { rebalances: this.rebalances, failures: this.failures, running: this.running !== null, applySecondsTotal: this.applySecondsTotal, lastApplyMs: this.lastApplyMs, last: this.last };
  }

  /** Step-boundary auto trigger (allocation-free unless it fires). */
  private checkStep(): void {
    this.sinceLast++;
    if (this.running) return;
    if (this.stats.windowBalancedness() >= this.opts.autoThreshold) {
      this.below = 0;
      return;
    }
    if (++this.below < this.opts.autoSteps || this.sinceLast < this.stats.windowCalls) return;
    this.below = 0;
    this.rebalance('auto').catch(() => undefined); // logged and counted in rebalance()
  }

  /** Plans from the window and applies (see the header). A call while one runs gets that one's report. */
  rebalance(trigger: 'manual' | 'auto' = 'manual'): Promise<RebalanceReport> {
    if (this.running) return this.running;
    const run = this.apply(trigger).finally(() => (this.running = null));
    this.running = run;
    return run;
  }

  private async apply(trigger: 'manual' | 'auto'): Promise<RebalanceReport> {
    const t0 = performance.now();
    const old = this.experts.placement;
    const W = old.numWorkers;
    const spare = this.opts.spareSlots ?? W;
    const layers: { layer: number; before: number; after: number }[] = [];
    const next = new Map<number, readonly (readonly number[])[]>();
    let changed = false;
    let observed = false;
    let expertsLoaded = 0;
    for (const [l, homes] of old.layers) {
      const load = this.stats.windowExpertLoad(l);
      if (load.some((v) => v > 0)) observed = true;
      const before = balancednessOf(expectedWorkerLoad(load, homes, W));
      const plan = eplbLayer(load, W, spare, homes);
      // Keep a layer whose plan is no better (or no load): nothing to load for it.
      if (!load.some((v) => v > 0) || plan.balancedness <= before + 1e-9) {
        next.set(l, homes);
        layers.push({ layer: l, before, after: before });
        continue;
      }
      changed = true;
      plan.homes.forEach((h, e) => (expertsLoaded += h.filter((w) => !homes[e]!.includes(w)).length));
      next.set(l, Object.freeze(plan.homes.map((h) => Object.freeze(h))));
      layers.push({ layer: l, before, after: plan.balancedness });
    }
    if (!changed) {
      const report: RebalanceReport = { trigger, applied: false, reason: observed ? 'the placement is already balanced for the observed load' : 'no routed load observed yet', layers, applyMs: 0, switchMs: 0, expertsLoaded: 0 };
      this.last = report;
      return report;
    }
    const placement: Placement = Object.freeze({ numWorkers: W, numExperts: old.numExperts, layers: next });
    const oldHeld = heldPerWorker(old);
    const newHeld = heldPerWorker(placement);
    const union = oldHeld.map((m, w) => unionOf(m, newHeld[w]!));
    try {
      // 1. grow: old ∪ new on every worker (background loads; serving goes on).
      await Promise.all(this.clients.map((c, w) => c.load(union[w]!, this.opts.loadTimeoutMs)));
    } catch (err) {
      this.failures++;
      const e = toServerError(err);
      this.log(`rebalance (${trigger}) failed while loading experts, the placement is unchanged: ${e.message}`, 'warn');
      // Shrink back what did grow (best effort; workers hold a superset meanwhile, which is harmless).
      await Promise.allSettled(this.clients.map((c, w) => c.load(oldHeld[w]!, this.opts.loadTimeoutMs)));
      throw new ServerError(e.code === 'invalid_request' ? 'invalid_request' : 'experts_unavailable', `rebalance failed: ${e.message}`, { cause: e });
    }
    // 2. switch at a step boundary.
    const ts = performance.now();
    await this.experts.switchPlacement(placement);
    const switchMs = performance.now() - ts;
    this.stats.resetWorkerWindow();
    this.sinceLast = 0;
    this.onPlaced(newHeld);
    // 3. shrink: drop what only the old placement needed (frees those sessions).
    const shrunk = await Promise.allSettled(this.clients.map((c, w) => c.load(newHeld[w]!, this.opts.loadTimeoutMs)));
    shrunk.forEach((r, w) => {
      if (r.status === 'rejected') this.log(`rebalance: worker ${w} keeps its old experts too (${toServerError(r.reason).message})`, 'warn');
    });
    const applyMs = performance.now() - t0;
    this.rebalances++;
    this.applySecondsTotal += applyMs / 1000;
    this.lastApplyMs = applyMs;
    const report: RebalanceReport = { trigger, applied: true, layers, applyMs, switchMs, expertsLoaded };
    this.last = report;
    this.log(`rebalance (${trigger}) applied in ${applyMs.toFixed(0)} ms (switch ${switchMs.toFixed(1)} ms): ${expertsLoaded} experts loaded; balancedness ${layers.map((x) => `L${x.layer} ${x.before.toFixed(3)}->${x.after.toFixed(3)}`).join(', ')}`, 'info');
    return report;
  }
}

/** Per worker, its experts per MoE layer (ascending). */
export function heldPerWorker(p: Placement): Map<number, number[]>[] {
  const out = Array.from({ length: p.numWorkers }, () => new Map<number, number[]>());
  for (const [l, homes] of p.layers) {
    for (const m of out) m.set(l, []);
    homes.forEach((h, e) => {
      for (const w of h) out[w]!.get(l)!.push(e);
    });
  }
  return out;
}

function unionOf(a: ReadonlyMap<number, readonly number[]>, b: ReadonlyMap<number, readonly number[]>): Map<number, number[]> {
  const out = new Map<number, number[]>();
  for (const l of new Set([...a.keys(), ...b.keys()])) out.set(l, [...new Set([...(a.get(l) ?? []), ...(b.get(l) ?? [])])].sort((x, y) => x - y));
  return out;
}

/** Replicas per expert per MoE layer: [L][X] (for /metrics and the dashboard). */
export function replicaCounts(p: Placement): { layer: number; replicas: number[] }[] {
  return [...p.layers].map(([layer, homes]) => ({ layer, replicas: homes.map((h) => h.length) }));
}
