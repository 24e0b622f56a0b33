/**
 * Expert-parallel load balancing (pure): DeepSeek's EPLB (deepseek-ai/EPLB `eplb.py`,
 * `replicate_experts` + `balanced_packing`) for one MoE layer, plus a relabelling step that keeps
 * experts on the worker that already holds them (fewer experts to load when applying it).
 *
 *   1. replicate  the S spare slots go, one at a time, to the expert with the highest load per
 *                 replica (load[e] / count[e]; ties: lowest id), never beyond W replicas;
 *   2. pack       the X + S replicas, heaviest (load[e] / count[e]) first, each onto the worker
 *                 with the least load that has a free slot and does not hold that expert yet
 *                 (ties: lowest index): never two replicas of one expert on one worker;
 *   3. relabel    the packs are interchangeable: pack p goes to the worker w holding most of
 *                 its experts now (greedy on the overlap, ties: lowest p, then lowest w).
 *
 * Slots: C = X + S in all; worker w has floor(C / W) slots, the first C mod W workers one more.
 * The load of a worker is Σ over its replicas of load[e] / count[e]: the (token, expert) rows it
 * computes when a replicated expert's rows are spread evenly over its replicas (dispatch.ts).
 *
 * Letters: X routed experts, W workers, S spare slots, C slots.
 */
import { ServerError } from '../../services/common/src/errors.js';

export interface EplbLayerPlan {
  /** expert -> workers holding it, ascending: [X][count[e]]. */
  readonly homes: number[][];
  /** [X] replicas per expert. */
  readonly replicas: number[];
  /** [W] expected (token, expert) rows per worker under this plan (the loads given, spread). */
  readonly workerLoad: number[];
  /** mean / max of workerLoad (1 = even; 1 when there is no load). */
  readonly balancedness: number;
}

/** mean / max of non-negative loads; 1 when all are zero (nothing to balance). */
export function balancednessOf(loads: ArrayLike<number>): number {
  let max = 0;
  let sum = 0;
  for (let i = 0; i < loads.length; i++) {
    const v = loads[i]!;
    sum += v;
    if (v > max) max = v;
  }
  return max > 0 ? sum / loads.length / max : 1;
}

/** Step 1: replica counts [X] after giving `spare` slots to the heaviest experts per replica. */
export function replicateExperts(load: ArrayLike<number>, spare: number, numWorkers: number): number[] {
  const X = load.length;
  const count = new Array<number>(X).fill(1);
  for (let s = 0; s < spare; s++) {
    let best = -1;
    for (let e = 0; e < X; e++) {
      if (count[e]! >= numWorkers) continue;
      if (best < 0 || load[e]! / count[e]! > load[best]! / count[best]!) best = e;
    }
    if (best < 0) break; // every expert on every worker already
    count[best]!++;
  }
  return count;
}

/** Slots of each worker: C split as evenly as possible, the first C mod W workers one more. */
export function slotsPerWorker(totalSlots: number, numWorkers: number): number[] {
  const base = Math.floor(totalSlots / numWorkers);
  const extra = totalSlots % numWorkers;
  return Array.from({ length: numWorkers }, (_, w) => base + (w < extra ? 1 : 0));
}

/** Step 2: packs [W] of expert ids (each pack's experts distinct), heaviest replica first. */
export function packReplicas(load: ArrayLike<number>, count: readonly number[], numWorkers: number): number[][] {
  const X = load.length;
  const items: number[] = []; // one entry per replica: its expert
  for (let e = 0; e < X; e++) for (let c = 0; c < count[e]!; c++) items.push(e);
  const per = (e: number) => load[e]! / count[e]!;
  // Heaviest first; ties by expert id (stable and deterministic).
  items.sort((a, b) => per(b) - per(a) || a - b);
  const cap = slotsPerWorker(items.length, numWorkers);
  const packs: number[][] = Array.from({ length: numWorkers }, () => []);
  const packLoad = new Array<number>(numWorkers).fill(0);
  for (const e of items) {
    let best = -1;
    for (let w = 0; w < numWorkers; w++) {
      if (packs[w]!.length >= cap[w]! || packs[w]!.includes(e)) continue;
      if (best < 0 || packLoad[w]! < packLoad[best]!) best = w;
    }
    if (best < 0) best = makeRoom(packs, cap, e, packLoad, per);
    packs[best]!.push(e);
    packLoad[best] += per(e);
  }
  return packs;
}

/**
 * Every worker with a free slot already holds `e`: move one replica from a full worker q that
 * lacks e to a worker p with a free slot that lacks that replica's expert; e then goes to q.
 * Returns q. (Rare: only near the end of packing, when few slots are left.)
 */
function makeRoom(packs: number[][], cap: readonly number[], e: number, packLoad: number[], per: (e: number) => number): number {
  const W = packs.length;
  for (let q = 0; q < W; q++) {
    if (packs[q]!.includes(e)) continue;
    for (let p = 0; p < W; p++) {
      if (packs[p]!.length >= cap[p]!) continue;
      const i = packs[q]!.findIndex((f) => !packs[p]!.includes(f));
      if (i < 0) continue;
      const f = packs[q]![i]!;
      packs[q]!.splice(i, 1);
      packLoad[q] -= per(f);
      packs[p]!.push(f);
      packLoad[p] += per(f);
      return q;
    }
  }
  throw new ServerError('internal', `EPLB: no worker can take another replica of expert ${e}`);
}

/** Step 3: pack -> worker, greedily maximizing experts that stay where they are. */
export function relabelPacks(packs: readonly (readonly number[])[], current: readonly (readonly number[])[] | null): number[] {
  const W = packs.length;
  if (!current) return packs.map((_, p) => p);
  const overlap: number[][] = packs.map((pack) => Array.from({ length: W }, (_, w) => pack.filter((e) => current[e]?.includes(w)).length));
  const workerOf = new Array<number>(W).fill(-1);
  const taken = new Array<boolean>(W).fill(false);
  for (let round = 0; round < W; round++) {
    let bp = -1;
    let bw = -1;
    for (let p = 0; p < W; p++) {
      if (workerOf[p]! >= 0) continue;
      for (let w = 0; w < W; w++) {
        if (taken[w]) continue;
        if (bp < 0 || overlap[p]![w]! > overlap[bp]![bw]!) {
          bp = p;
          bw = w;
        }
      }
    }
    workerOf[bp] = bw;
    taken[bw] = true;
  }
  return workerOf;
}

/**
 * The EPLB plan of one layer.
 *   load     [X] observed (token, expert) rows per expert (a sliding window)
 *   spare    redundant slots beyond one per expert (S)
 *   current  expert -> workers now (for relabelling), or null
 */
export function eplbLayer(load: ArrayLike<number>, numWorkers: number, spare: number, current: readonly (readonly number[])[] | null = null): EplbLayerPlan {
  const X = load.length;
  if (!Number.isInteger(numWorkers) || numWorkers < 1) throw new ServerError('invalid_request', `EPLB needs at least one worker, got ${numWorkers}`);
  if (!Number.isInteger(spare) || spare < 0) throw new ServerError('invalid_request', `EPLB spare slots must be a non-negative integer, got ${spare}`, { param: 'eplb_spare_slots' });
  if (X + spare < numWorkers) throw new ServerError('invalid_request', `EPLB: ${X} experts + ${spare} spare slots cannot fill ${numWorkers} workers`, { param: 'eplb_spare_slots' });
  const replicas = replicateExperts(load, spare, numWorkers);
  const packs = packReplicas(load, replicas, numWorkers);
  const workerOf = relabelPacks(packs, current);
  const homes: number[][] = Array.from({ length: X }, () => []);
  const workerLoad = new Array<number>(numWorkers).fill(0);
  packs.forEach((pack, p) => {
    const w = workerOf[p]!;
    for (const e of pack) {
      homes[e]!.push(w);
      workerLoad[w] += load[e]! / replicas[e]!;
    }
  });
  for (const h of homes) h.sort((a, b) => a - b);
  return { homes, replicas, workerLoad, balancedness: balancednessOf(workerLoad) };
}

/** Expected (token, expert) rows per worker of `load` under an existing placement (replicas share evenly). */
export function expectedWorkerLoad(load: ArrayLike<number>, homes: readonly (readonly number[])[], numWorkers: number): number[] {
  const out = new Array<number>(numWorkers).fill(0);
  homes.forEach((h, e) => {
    for (const w of h) out[w] += (load[e] ?? 0) / h.length;
  });
  return out;
}
