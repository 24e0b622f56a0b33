/**
 * `--experts SPEC`: which routed experts of which MoE layers a worker holds.
 *
 *   all              every expert of every MoE layer
 *   0-2,5            experts 0, 1, 2 and 5 of every MoE layer
 *   i/N              share i of N contiguous shares of every MoE layer (the router's contiguous
 *                    placement: 8 experts, 1/3 = 3-5); for fleets started one shard per pod
 *   1:0-3;2:4-7      per layer (layers not named hold nothing); `*:LIST` sets the default for
 *                    layers not named, e.g. `*:0-3;5:0-7`
 *
 * Expert ids are checked against the model (0 <= id < n_routed_experts); layers must be MoE layers.
 */
import { ServerError } from '../../common/src/errors.js';
import type { MoeModelConfig } from './config.js';

function bad(spec: string, why: string): never {
  throw new ServerError('invalid_request', `--experts "${spec}": ${why}`, { param: 'experts' });
}

/**
 * Experts of share i when numExperts are split into n contiguous shares, the larger shares first
 * (8 on 3: 0-2 | 3-5 | 6-7). The router's contiguous placement uses the same split.
 */
export function contiguousShare(numExperts: number, i: number, n: number): number[] {
  const base = Math.floor(numExperts / n);
  const extra = numExperts % n;
  const start = i * base + Math.min(i, extra);
  const count = base + (i < extra ? 1 : 0);
  return Array.from({ length: count }, (_, j) => start + j);
}

/** "0-2,5" -> [0, 1, 2, 5] (sorted, unique), each in [0, limit). */
export function parseIdList(list: string, limit: number, spec = list): number[] {
  const out = new Set<number>();
  for (const part of list.split(',').map((p) => p.trim())) {
    if (part === '') continue;
    const m = /^(\d+)(?:-(\d+))?$/.exec(part);
    if (!m) bad(spec, `"${part}" is not an id or a range a-b`);
    const lo = Number(m[1]);
    const hi = m[2] === undefined ? lo : Number(m[2]);
    if (hi < lo) bad(spec, `range ${part} is empty`);
    if (hi >= limit) bad(spec, `expert ${hi} out of range [0, ${limit})`);
    for (let e = lo; e <= hi; e++) out.add(e);
  }
  return [...out].sort((a, b) => a - b);
}

/** [0, 1, 2, 5] -> "0-2,5". */
export function formatIdList(ids: readonly number[]): string {
  const s = [...new Set(ids)].sort((a, b) => a - b);
  const parts: string[] = [];
  for (let i = 0; i < s.length; ) {
    let j = i;
    while (j + 1 < s.length && s[j + 1] === s[j]! + 1) j++;
    parts.push(j > i ? `${s[i]}-${s[j]}` : `${s[i]}`);
    i = j + 1;
  }
  return parts.join(',');
}

/** The spec as layer -> sorted expert ids, over the model's MoE layers (layers holding nothing are left out). */
export function parseExpertsSpec(spec: string, cfg: MoeModelConfig): Map<number, number[]> {
  const X = cfg.moe.nRoutedExperts;
  const moeLayers = cfg.layers.filter((l) => l.mlp === 'moe').map((l) => l.index);
  const out = new Map<number, number[]>();
  const s = spec.trim();
  if (s === '') bad(spec, 'empty');
  if (s === 'all') {
    for (const l of moeLayers) out.set(l, Array.from({ length: X }, (_, i) => i));
    return out;
  }
  const share = /^(\d+)\/(\d+)$/.exec(s);
  if (share) {
    const i = Number(share[1]);
    const n = Number(share[2]);
    if (n < 1 || i >= n) bad(spec, `share ${i} of ${n} does not exist (shares are 0..${n - 1})`);
    if (n > X) bad(spec, `${n} shares of ${X} experts: some shares would be empty`);
    const ids = contiguousShare(X, i, n);
    for (const l of moeLayers) out.set(l, ids);
    return out;
  }
  if (!s.includes(':')) {
    const ids = parseIdList(s, X, spec);
    for (const l of moeLayers) out.set(l, ids);
    return out;
  }
  let fallback: number[] | null = null;
  const named = new Map<number, number[]>();
  for (const clause of s.split(';').map((c) => c.trim()).filter((c) => c !== '')) {
    const colon = clause.indexOf(':');
    if (colon < 0) bad(spec, `"${clause}" is not LAYER:LIST`);
    const layer = clause.slice(0, colon).trim();
    const list = clause.slice(colon + 1).trim();
    const ids = list === 'all' ? Array.from({ length: X }, (_, i) => i) : parseIdList(list, X, spec);
    if (layer === '*') {
      fallback = ids;
      continue;
    }
    if (!/^\d+$/.test(layer)) bad(spec, `"${layer}" is not a layer index`);
    const l = Number(layer);
    if (!moeLayers.includes(l)) bad(spec, `layer ${l} is not an MoE layer (MoE layers: ${formatIdList(moeLayers)})`);
    named.set(l, ids);
  }
  for (const l of moeLayers) {
    const ids = named.get(l) ?? fallback;
    if (ids && ids.length > 0) out.set(l, ids);
  }
  return out;
}

/**
 * layer -> experts as a spec string (the inverse of parseExpertsSpec): the compact global form
 * when every MoE layer holds the same list, else the per-layer form.
 */
export function formatExpertsSpec(held: ReadonlyMap<number, readonly number[]>, moeLayers: readonly number[]): string {
  const lists = [...held.entries()].filter(([, ids]) => ids.length > 0).sort((a, b) => a[0] - b[0]).map(([l, ids]) => [l, formatIdList(ids)] as const);
  if (lists.length === 0) throw new ServerError('invalid_request', 'a worker must hold at least one expert');
  const everyLayer = lists.length === moeLayers.length && moeLayers.every((l) => held.has(l));
  if (everyLayer && lists.every(([, s]) => s === lists[0]![1])) return lists[0]![1];
  return lists.map(([l, s]) => `${l}:${s}`).join(';');
}
