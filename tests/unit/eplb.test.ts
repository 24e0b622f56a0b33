/**
 * EPLB (router/src/eplb.ts), pure: DeepSeek's replicate-then-pack for one MoE layer, with exact
 * replica counts and placements, the one-replica-per-worker rule, and relabelling that keeps
 * experts where they are.
 */
import { describe, expect, it } from 'vitest';
import { balancednessOf, eplbLayer, expectedWorkerLoad, packReplicas, relabelPacks, replicateExperts, slotsPerWorker } from '../../router/src/eplb.js';
import { contiguous } from '../../router/src/placement.js';
import { heldPerWorker } from '../../router/src/rebalance.js';
import { ServerError } from '../../services/common/src/errors.js';

/** The skewed layer of issue 11 (k6, HOT_TOKENS=8): (token, expert) rows per expert. */
const SKEWED = [0, 15, 160, 709, 232, 0, 229, 380, 191, 23, 220, 155, 633, 11, 50, 0];

describe('EPLB', () => {
  it('replicates the heaviest expert per replica into the spare slots, never beyond W replicas', () => {
    expect(replicateExperts([8, 4, 2, 2], 2, 2)).toEqual([2, 2, 1, 1]); // 8 -> 4 + 4, then 4 (ties: lowest id) and e0 is capped
    expect(replicateExperts([10, 1, 1], 3, 3)).toEqual([3, 2, 1]);
    expect(replicateExperts(SKEWED, 4, 4)).toEqual([1, 1, 1, 3, 1, 1, 1, 2, 1, 1, 1, 1, 2, 1, 1, 1]);
  });

  it('packs heaviest replica first onto the least-loaded worker with room that lacks that expert', () => {
    expect(slotsPerWorker(6, 4)).toEqual([2, 2, 1, 1]);
    expect(packReplicas([8, 4, 2, 2], [2, 2, 1, 1], 2)).toEqual([
      [0, 1, 2],
      [0, 1, 3],
    ]);
    expect(packReplicas([10, 1, 1], [3, 2, 1], 3)).toEqual([
      [0, 2],
      [0, 1],
      [0, 1],
    ]);
  });

  it('plans the skewed layer of issue 11 on 4 workers with 4 spare slots: exact homes, 0.851 -> 0.927', () => {
    const current = contiguous(16, 4);
    expect(balancednessOf(expectedWorkerLoad(SKEWED, current, 4))).toBeCloseTo(0.8507, 4);
    const plan = eplbLayer(SKEWED, 4, 4, current);
    expect(plan.replicas).toEqual([1, 1, 1, 3, 1, 1, 1, 2, 1, 1, 1, 1, 2, 1, 1, 1]);
    expect(plan.homes).toEqual([[0], [0], [0], [0, 2, 3], [3], [1], [2], [1, 3], [2], [3], [1], [2], [0, 1], [1], [3], [2]]);
    expect(plan.workerLoad.map((v) => Math.round(v * 1000) / 1000)).toEqual([727.833, 737.5, 811.333, 731.333]);
    expect(plan.balancedness).toBeCloseTo(0.92687, 5);
    // 5 slots per worker, never two replicas of one expert on one worker.
    const held = heldPerWorker({ numWorkers: 4, numExperts: 16, layers: new Map([[1, plan.homes]]) });
    expect(held.map((m) => m.get(1)!.length)).toEqual([5, 5, 5, 5]);
    for (const h of plan.homes) expect(new Set(h).size).toBe(h.length);
  });

  it('relabels packs so experts stay on the worker holding them (fewer loads)', () => {
    expect(relabelPacks([[0, 1, 2], [0, 1, 3]], null)).toEqual([0, 1]);
    // pack 0 = {0,1,2} overlaps w1 (holding 0,1) most: it becomes w1
    expect(relabelPacks([[0, 1, 2], [0, 1, 3]], [[1], [1], [0], [0]])).toEqual([1, 0]);
    expect(eplbLayer([8, 4, 2, 2], 2, 2, [[1], [1], [0], [0]]).homes).toEqual([[0, 1], [0, 1], [1], [0]]);
    // Without a current placement the same skewed plan lands on other worker numbers, same loads.
    expect(eplbLayer(SKEWED, 4, 4, null).workerLoad.map(Math.round)).toEqual([728, 738, 731, 811]);
  });

  it('no load: every expert once, even slots; errors name the bad input', () => {
    const plan = eplbLayer([0, 0, 0, 0], 2, 0, null);
    expect(plan.homes).toEqual([[0], [0], [1], [1]]);
    expect(plan.balancedness).toBe(1);
    expect(() => eplbLayer([1, 2], 4, 1, null)).toThrow(ServerError);
    expect(() => eplbLayer([1, 2], 4, 1, null)).toThrow(/2 experts \+ 1 spare slots cannot fill 4 workers/);
    expect(() => eplbLayer([1, 2], 1, -1, null)).toThrow(/non-negative integer/);
  });
});
