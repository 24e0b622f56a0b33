/**
 * Expert placement: which workers hold which routed experts (pure functions).
 *
 * A base layout gives each expert one home worker:
 *   contiguous    worker w holds a contiguous block; uneven counts put the extra experts first
 *                 (8 experts on 3 workers: 0-2 | 3-5 | 6-7)
 *   round-robin   expert e lives on worker e mod W (8 on 3: 0,3,6 | 1,4,7 | 2,5)
 *   explicit      "0-2;3-5;6,7": one expert list per worker, separated by ';' (an expert may be
 *                 listed on several workers: those are replicas)
 * then `replicate` adds replicas on the next workers after the home (w+1, w+2, ... mod W):
 *   all           every expert on every worker
 *   N             every expert on N workers
 *   e:n,e:n       hot experts only (expert e on n workers)
 * Every MoE layer gets the same layout here; `placementFromHeld` builds a per-layer placement
 * from what running workers report (Info), which may differ per layer.
 */
import { ServerError } from '../../services/common/src/errors.js';
import { contiguousShare, parseIdList } from '../../services/model/src/experts-spec.js';
import type { Placement } from './types.js';

/** expert -> worker indices (ascending). */
export type ExpertHomes = number[][];

export const PLACEMENT_KINDS = ['contiguous', 'round-robin'] as const;

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
  return invalid(`--placement must be contiguous, round-robin or an explicit map like "0-2;3-5;6,7", got "${kind}"`);
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
  const frozen = Object.freeze(homes.map((h) => Object.freeze([...h])));
  return Object.freeze({ numWorkers, numExperts: homes.length, layers: new Map(moeLayers.map((l) => [l, frozen])) });
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
