/**
 * Expert placement: which workers hold which routed experts (pure functions).
 *
 * A base layout gives each expert one home worker:
 *   contiguous    worker w holds a contiguous block; uneven counts put the extra experts first
 *                 (8 experts on 3 workers: 0-2 | 3-5 | 6-7)
 *   round-robin   expert e lives on worker e mod W (8 on 3: 0,3,6 | 1,4,7 | 2,5)
 *   explicit      "0-2;3-5;6,7": one expert list per worker, separated by ';' (an expert may be
 *                 listed on several workers: those are replicas)
 *   layers        every expert of a MoE layer on one worker, the layers in contiguous blocks
 *                 (8 MoE layers on 2 workers: layers 0-3 | 4-7 of the MoE layers). A step then
 *                 sends one request per MoE layer instead of one per worker holding a chosen
 *                 expert: fewer round trips, and no parallel compute within a layer, which local
 *                 workers sharing one machine's cores do not get anyway.
 * then `replicate` adds replicas on the next workers after the home (w+1, w+2, ... mod W):
 *   all           every expert on every worker
 *   N             every expert on N workers
 *   e:n,e:n       hot experts only (expert e on n workers)
 * Every MoE layer gets the same layout, except with `layers`; `placementFromHeld` builds a
 * per-layer placement from what running workers report (Info), which may differ per layer.
 */
import { ServerError } from '../../services/common/src/errors.js';
import { contiguousShare, formatExpertsSpec, parseIdList } from '../../services/model/src/experts-spec.js';
import type { Placement } from './types.js';

/** expert -> worker indices (ascending). */
export type ExpertHomes = number[][];

export const PLACEMENT_KINDS = ['contiguous', 'round-robin', 'layers'] as const;

function invalid(msg: string, param = 'placement'): never {
  throw new ServerError('invalid_request', msg, { param });
}

function checkCounts(numExperts: number, numWorkers: number): void {
  if (!Number.isInteger(numWorkers) || numWorkers < 1) invalid(`need at least one worker, got ${numWorkers}`, 'workers');
  if (numWorkers > numExperts) invalid(`${numWorkers} workers for ${numExperts} experts: some workers would hold nothing (use --replicate, or fewer workers)`, 'workers');
}

export function contiguous(numExperts: number, numWorkers: number): ExpertHomes {
  checkCounts(numExperts, numWorkers);
  // The same split as a worker's `--experts i/N` (services/model/src/experts-spec.ts).
  const homes: ExpertHomes = [];
  for (let w = 0; w < numWorkers; w++) for (const _ of contiguousShare(numExperts, w, numWorkers)) homes.push([w]);
  return homes;
}

export function roundRobin(numExperts: number, numWorkers: number): ExpertHomes {
  checkCounts(numExperts, numWorkers);
  return Array.from({ length: numExperts }, (_, e) => [e % numWorkers]);
}

/** "0-2;3-5;6,7" -> homes; every worker must hold >= 1 expert and every expert >= 1 worker. */
export function explicit(spec: string, numExperts: number, numWorkers: number): ExpertHomes {
  const lists = spec.split(';').map((s) => s.trim());
  if (lists.length !== numWorkers) invalid(`--placement "${spec}" lists ${lists.length} workers; there are ${numWorkers}`);
  const homes: ExpertHomes = Array.from({ length: numExperts }, () => []);
  lists.forEach((list, w) => {
    if (list === '') invalid(`--placement "${spec}": worker ${w} holds no expert`);
    for (const e of parseIdList(list, numExperts, spec)) homes[e]!.push(w);
  });
  const orphans = homes.map((h, e) => (h.length === 0 ? e : -1)).filter((e) => e >= 0);
  if (orphans.length > 0) invalid(`--placement "${spec}": expert${orphans.length > 1 ? 's' : ''} ${orphans.join(', ')} on no worker`);
  return homes;
}

/** --placement value -> base homes. */
export function basePlacement(kind: string, numExperts: number, numWorkers: number): ExpertHomes {
  if (kind === 'contiguous') return contiguous(numExperts, numWorkers);
  if (kind === 'round-robin') return roundRobin(numExperts, numWorkers);
  if (/^[\d,;\s-]+$/.test(kind)) return explicit(kind, numExperts, numWorkers);
  return invalid(`--placement must be contiguous, round-robin, layers or an explicit map like "0-2;3-5;6,7", got "${kind}"`);
}

/**
 * --placement and --replicate -> each MoE layer's homes. `layers`: MoE layer j of L (in order)
 * lives on worker w for j in contiguousShare(L, w, W); the others give every layer the same homes.
 */
export function layerHomes(kind: string, replicateSpec: string, numExperts: number, numWorkers: number, moeLayers: readonly number[]): Map<number, ExpertHomes> {
  const want = (W: number) => parseReplicate(replicateSpec, numExperts, W);
  if (kind !== 'layers') {
    const homes = replicate(basePlacement(kind, numExperts, numWorkers), want(numWorkers), numWorkers);
    return new Map(moeLayers.map((l) => [l, homes]));
  }
  if (!Number.isInteger(numWorkers) || numWorkers < 1) invalid(`need at least one worker, got ${numWorkers}`, 'workers');
  if (numWorkers > moeLayers.length) invalid(`${numWorkers} workers for ${moeLayers.length} MoE layers: with --placement layers some workers would hold nothing`, 'workers');
  const copies = want(numWorkers);
  const byLayer = new Map<number, ExpertHomes>();
  for (let w = 0; w < numWorkers; w++) {
    for (const j of contiguousShare(moeLayers.length, w, numWorkers)) {
      byLayer.set(moeLayers[j]!, replicate(Array.from({ length: numExperts }, () => [w]), copies, numWorkers));
    }
  }
  return byLayer;
}

/** A placement from each MoE layer's homes. */
export function placementOf(byLayer: ReadonlyMap<number, ExpertHomes>, numExperts: number, numWorkers: number): Placement {
  const layers = new Map<number, readonly (readonly number[])[]>();
  for (const [l, homes] of byLayer) layers.set(l, Object.freeze(homes.map((h) => Object.freeze([...h]))));
  return Object.freeze({ numWorkers, numExperts, layers });
}

/** What worker w holds: MoE layer -> its experts there (empty where it holds none of a layer). */
export function heldBy(byLayer: ReadonlyMap<number, ExpertHomes>, w: number): Map<number, number[]> {
  return new Map([...byLayer].map(([l, homes]) => [l, expertsOf(homes, w)]));
}

/** One line: describeHomes when every layer has the same homes, else each worker's --experts spec. */
export function describePlacement(byLayer: ReadonlyMap<number, ExpertHomes>, numWorkers: number): string {
  const all = [...byLayer.values()];
  if (all.every((h) => h === all[0])) return describeHomes(all[0] ?? [], numWorkers);
  const layers = [...byLayer.keys()];
  return Array.from({ length: numWorkers }, (_, w) => `w${w}: ${formatExpertsSpec(heldBy(byLayer, w), layers)}`).join(' | ');
}

/** expert -> replica count wanted. */
export function parseReplicate(spec: string, numExperts: number, numWorkers: number): Int32Array {
  const want = new Int32Array(numExperts).fill(1);
  const s = spec.trim();
  const check = (n: number) => {
    if (!Number.isInteger(n) || n < 1 || n > numWorkers) invalid(`--replicate "${spec}": a replica count must be in [1, ${numWorkers}] (the number of workers), got ${n}`, 'replicate');
    return n;
  };
  if (s === '' || s === 'none') return want;
  if (s === 'all') return want.fill(numWorkers);
  if (/^\d+$/.test(s)) return want.fill(check(Number(s)));
  for (const part of s.split(',').map((p) => p.trim()).filter((p) => p !== '')) {
    const m = /^(\d+):(\d+)$/.exec(part);
    if (!m) invalid(`--replicate "${spec}": expected all, N, or expert:count pairs like 3:2,5:2`, 'replicate');
    const e = Number(m[1]);
    if (e >= numExperts) invalid(`--replicate "${spec}": expert ${e} out of range [0, ${numExperts})`, 'replicate');
    want[e] = check(Number(m[2]));
  }
  return want;
}

/** Adds replicas on the workers after each expert's first home until it has `want[e]` of them. */
export function replicate(homes: ExpertHomes, want: Int32Array, numWorkers: number): ExpertHomes {
  return homes.map((h, e) => {
    const out = [...h];
    const first = h[0]!;
    for (let step = 1; out.length < want[e]! && step < numWorkers; step++) {
      const w = (first + step) % numWorkers;
      if (!out.includes(w)) out.push(w);
    }
    return out.sort((a, b) => a - b);
  });
}

/** The same homes for every MoE layer. */
export function uniformPlacement(homes: ExpertHomes, moeLayers: readonly number[], numWorkers: number): Placement {
  return placementOf(new Map(moeLayers.map((l) => [l, homes])), homes.length, numWorkers);
}

/** Experts of one worker (the same for every layer of a uniform placement). */
export function expertsOf(homes: ExpertHomes, w: number): number[] {
  return homes.flatMap((h, e) => (h.includes(w) ? [e] : []));
}

/**
 * Placement from what running workers hold (Info), per layer. Throws when an expert of some MoE
 * layer is held by no worker, naming them.
 */
export function placementFromHeld(held: readonly ReadonlyMap<number, readonly number[]>[], moeLayers: readonly number[], numExperts: number): Placement {
  const layers = new Map<number, readonly (readonly number[])[]>();
  const missing: string[] = [];
  for (const l of moeLayers) {
    const homes: number[][] = Array.from({ length: numExperts }, () => []);
    held.forEach((m, w) => {
      for (const e of m.get(l) ?? []) if (e >= 0 && e < numExperts) homes[e]!.push(w);
    });
    const orphans = homes.map((h, e) => (h.length === 0 ? e : -1)).filter((e) => e >= 0);
    if (orphans.length > 0) missing.push(`layer ${l}: ${orphans.join(',')}`);
    layers.set(l, Object.freeze(homes.map((h) => Object.freeze(h))));
  }
  if (missing.length > 0) throw new ServerError('experts_unavailable', `no worker holds these experts (${missing.join('; ')})`);
  return Object.freeze({ numWorkers: held.length, numExperts, layers });
}

/** A one-line description: "w0: 0-2 | w1: 3-5 | w2: 6,7" (replicas show up on several workers). */
export function describeHomes(homes: ExpertHomes, numWorkers: number): string {
  const parts: string[] = [];
  for (let w = 0; w < numWorkers; w++) parts.push(`w${w}: ${expertsOf(homes, w).join(',')}`);
  return parts.join(' | ');
}
