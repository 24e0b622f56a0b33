/**
 * In-place selection over an index scratch, for top-k and top-p without sorting the vocabulary.
 *
 * Legend: V vocab size, m candidates, k the top-k.
 *   keys: Float32Array [V]   values indexed by token id (logits for top-k, weights for top-p)
 *   idx:  Int32Array   [>= m] token ids; idx[0, m) are the candidates, in any order
 *
 * Both selections are quickselects with a three-way (Dijkstra) partition: expected O(m) work,
 * no allocation, and equal keys grouped so ties cannot degrade them. Pivots are the median of
 * three keys (first, middle, last) — deterministic, so a seeded draw walks the same order every
 * time. Why not sort: a full sort of a 152k-entry index array costs tens of milliseconds per
 * token with a comparator (see sampler.ts for the measurement); a selection touches each
 * candidate a few times.
 *
 * NaN keys compare neither greater nor smaller, so they land with the pivot's equal group; the
 * loops still shrink every round (the pivot's own group is never empty) and terminate.
 */

/** Median of three keys, as the pivot value. */
function pivotOf(keys: Float32Array, idx: Int32Array, lo: number, hi: number): number {
  const a = keys[idx[lo]!]!;
  const b = keys[idx[(lo + hi) >>> 1]!]!;
  const c = keys[idx[hi - 1]!]!;
  if (a < b) return b < c ? b : a < c ? c : a;
  return a < c ? a : b < c ? c : b;
}

/**
 * Three-way partition of idx[lo, hi) around `pivot`, descending:
 * [lo, gtEnd) keys > pivot, [gtEnd, eqEnd) keys == pivot, [eqEnd, hi) keys < pivot.
 * Returns gtEnd; eqEnd is left in `partitionEqEnd` (a module slot instead of a tuple: no
 * allocation per call).
 */
let partitionEqEnd = 0;
function partition3(keys: Float32Array, idx: Int32Array, lo: number, hi: number, pivot: number): number {
  let lt = lo;
  let i = lo;
  let gt = hi;
  while (i < gt) {
    const id = idx[i]!;
    const v = keys[id]!;
    if (v > pivot) {
      idx[i] = idx[lt]!;
      idx[lt] = id;
      lt++;
      i++;
    } else if (v < pivot) {
      gt--;
      idx[i] = idx[gt]!;
      idx[gt] = id;
    } else {
      i++;
    }
  }
  partitionEqEnd = gt;
  return lt;
}

/**
 * Moves the ids whose key is >= the k-th largest key of idx[0, m) to idx[0, count) and returns
 * count. Ties at the k-th value are all kept (count may exceed k), as vLLM's threshold top-k does.
 * Requires 1 <= k < m.
 */
export function selectTopK(keys: Float32Array, idx: Int32Array, m: number, k: number): number {
  let lo = 0;
  let hi = m;
  let need = k; // how many more of the largest we still need from idx[lo, hi)
  while (hi - lo > 0) {
    const gtEnd = partition3(keys, idx, lo, hi, pivotOf(keys, idx, lo, hi));
    const eqEnd = partitionEqEnd;
    const gtCount = gtEnd - lo;
    if (gtCount >= need) {
      if (gtCount === need) return gtEnd;
      hi = gtEnd; // the k-th largest is strictly above the pivot
      continue;
    }
    if (gtCount + (eqEnd - gtEnd) >= need) return eqEnd; // the k-th largest equals the pivot: keep all ties
    need -= eqEnd - lo;
    lo = eqEnd;
  }
  return lo;
}

/**
 * Nucleus (top-p) selection over non-negative weights: moves to idx[0, count) the smallest set of
 * highest-weight ids whose weight sum is >= `target` (= top_p * total weight), and returns count
 * (at least 1). Weights equal to the boundary weight are taken lowest-position-first, only as many
 * as needed. The caller sums the kept weights (it walks them for the draw anyway).
 */
export function selectNucleus(weights: Float32Array, idx: Int32Array, m: number, target: number): number {
  let lo = 0;
  let hi = m;
  let need = target;
  while (hi - lo > 0 && need > 0) {
    const gtEnd = partition3(weights, idx, lo, hi, pivotOf(weights, idx, lo, hi));
    const eqEnd = partitionEqEnd;
    let gtMass = 0;
    for (let j = lo; j < gtEnd; j++) gtMass += weights[idx[j]!]!;
    if (gtMass >= need && gtEnd > lo) {
      hi = gtEnd; // the boundary lies among the keys above the pivot
      continue;
    }
    need -= gtMass;
    const q = eqEnd > gtEnd ? weights[idx[gtEnd]!]! : 0;
    const eqCount = eqEnd - gtEnd;
    if (q > 0 && q * eqCount >= need) {
      // Take only as many equal-weight ids as the remaining mass needs.
      let take = Math.ceil(need / q);
      if (take < 1) take = 1;
      if (take > eqCount) take = eqCount;
      return gtEnd + take;
    }
    need -= q * eqCount;
    lo = eqEnd;
  }
  if (lo === 0) {
    // need <= 0 before anything was kept (target <= 0): keep the single best id.
    lo = 1;
    let best = weights[idx[0]!]!;
    for (let j = 1; j < m; j++) {
      const w = weights[idx[j]!]!;
      if (w > best) {
        best = w;
        const t = idx[0]!;
        idx[0] = idx[j]!;
        idx[j] = t;
      }
    }
  }
  return lo;
}
