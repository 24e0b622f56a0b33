/**
 * Expert placement (router/src/placement.ts) and the worker's --experts spec: exact layouts for
 * uneven counts (8 experts on 3 workers), explicit maps, replicas of hot experts, and clear errors.
 */
import { describe, expect, it } from 'vitest';
import { basePlacement, contiguous, describeHomes, explicit, expertsOf, parseReplicate, placementFromHeld, replicate, roundRobin, uniformPlacement } from '../../router/src/placement.js';
import { formatExpertsSpec, formatIdList, parseExpertsSpec, parseIdList } from '../../services/model/src/experts-spec.js';
import { ServerError } from '../../services/common/src/errors.js';
import { readModelConfig } from '../../services/model/src/model-dir.js';
import { fixtureDir } from '../helpers/golden.js';

const byWorker = (homes: number[][], W: number) => Array.from({ length: W }, (_, w) => expertsOf(homes, w));

describe('base placements', () => {
  it('contiguous: 8 experts on 3 workers = 0-2 | 3-5 | 6-7 (extra experts first)', () => {
    expect(byWorker(contiguous(8, 3), 3)).toEqual([[0, 1, 2], [3, 4, 5], [6, 7]]);
    expect(byWorker(contiguous(16, 3), 3)).toEqual([[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [11, 12, 13, 14, 15]]);
    expect(byWorker(contiguous(8, 1), 1)).toEqual([[0, 1, 2, 3, 4, 5, 6, 7]]);
  });

  it('round-robin: 8 experts on 3 workers = 0,3,6 | 1,4,7 | 2,5', () => {
    expect(byWorker(roundRobin(8, 3), 3)).toEqual([[0, 3, 6], [1, 4, 7], [2, 5]]);
  });

  it('explicit map, with an expert listed twice as a replica', () => {
    const homes = explicit('0-2;3-5,2;6,7', 8, 3);
    expect(byWorker(homes, 3)).toEqual([[0, 1, 2], [2, 3, 4, 5], [6, 7]]);
    expect(homes[2]).toEqual([0, 1]);
    expect(basePlacement('0-2;3-5,2;6,7', 8, 3)).toEqual(homes);
  });

  it('describes a layout in one line', () => {
    expect(describeHomes(contiguous(8, 3), 3)).toBe('w0: 0,1,2 | w1: 3,4,5 | w2: 6,7');
  });
});

describe('replicas', () => {
  it('all: every expert on every worker', () => {
    const homes = replicate(contiguous(8, 2), parseReplicate('all', 8, 2), 2);
    expect(byWorker(homes, 2)).toEqual([[0, 1, 2, 3, 4, 5, 6, 7], [0, 1, 2, 3, 4, 5, 6, 7]]);
  });

  it('N: every expert on N workers, the extra copies on the next workers', () => {
    const homes = replicate(contiguous(8, 4), parseReplicate('2', 8, 4), 4);
    expect(homes).toEqual([[0, 1], [0, 1], [1, 2], [1, 2], [2, 3], [2, 3], [0, 3], [0, 3]]);
  });

  it('hot experts only: 3:2,5:3 on 3 workers', () => {
    const homes = replicate(contiguous(8, 3), parseReplicate('3:2,5:3', 8, 3), 3);
    expect(homes[3]).toEqual([1, 2]);
    expect(homes[5]).toEqual([0, 1, 2]);
    expect(homes[0]).toEqual([0]);
    expect(byWorker(homes, 3)).toEqual([[0, 1, 2, 5], [3, 4, 5], [3, 5, 6, 7]]);
  });

  it('a uniform placement gives every MoE layer the same frozen homes', () => {
    const p = uniformPlacement(roundRobin(4, 2), [1, 2], 2);
    expect([...p.layers.keys()]).toEqual([1, 2]);
    expect(p.layers.get(1)).toEqual([[0], [1], [0], [1]]);
    expect(Object.isFrozen(p.layers.get(2))).toBe(true);
  });
});

describe('placement from what running workers hold', () => {
  it('per layer, replicas where two workers hold the same expert', () => {
    const held = [new Map([[1, [0, 1]], [2, [0, 1, 2, 3]]]), new Map([[1, [1, 2, 3]], [2, [3]]])];
    const p = placementFromHeld(held, [1, 2], 4);
    expect(p.layers.get(1)).toEqual([[0], [0, 1], [1], [1]]);
    expect(p.layers.get(2)).toEqual([[0], [0], [0], [0, 1]]);
  });

  it('EXPECTED FAILURE - an expert no worker holds is named', () => {
    const held = [new Map([[1, [0, 1]]]), new Map([[1, [3]]])];
    expect(() => placementFromHeld(held, [1], 4)).toThrow(/layer 1: 2/);
  });
});

describe('EXPECTED FAILURE - bad placement input', () => {
  const bad = (fn: () => unknown, re: RegExp) => {
    let err: unknown;
    try {
      fn();
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ServerError);
    expect((err as ServerError).code).toBe('invalid_request');
    expect((err as Error).message).toMatch(re);
  };
  it('more workers than experts', () => bad(() => contiguous(2, 3), /3 workers for 2 experts/));
  it('an explicit map with the wrong number of workers', () => bad(() => explicit('0-3;4-7', 8, 3), /lists 2 workers; there are 3/));
  it('an explicit map that forgets an expert', () => bad(() => explicit('0-2;3-5;6', 8, 3), /expert 7 on no worker/));
  it('an explicit map naming an expert out of range', () => bad(() => explicit('0-2;3-5;6-8', 8, 3), /expert 8 out of range/));
  it('an unknown placement kind', () => bad(() => basePlacement('random', 8, 2), /contiguous, round-robin or an explicit map/));
  it('more replicas than workers', () => bad(() => parseReplicate('3', 8, 2), /in \[1, 2\]/));
  it('a malformed --replicate', () => bad(() => parseReplicate('hot', 8, 2), /expert:count pairs/));
});

describe('--experts SPEC', () => {
  const cfg = readModelConfig(fixtureDir('deepseek-v2-tiny')); // layer 0 dense, 1-2 MoE, 16 experts

  it('id lists and ranges round-trip', () => {
    expect(parseIdList('0-2,5,4', 8)).toEqual([0, 1, 2, 4, 5]);
    expect(formatIdList([5, 0, 1, 2, 4])).toBe('0-2,4-5');
  });

  it('a global list applies to every MoE layer; all; per-layer with a default', () => {
    expect([...parseExpertsSpec('0-3', cfg)]).toEqual([[1, [0, 1, 2, 3]], [2, [0, 1, 2, 3]]]);
    expect(parseExpertsSpec('all', cfg).get(2)).toHaveLength(16);
    expect([...parseExpertsSpec('*:0-1;2:7', cfg)]).toEqual([[1, [0, 1]], [2, [7]]]);
    expect([...parseExpertsSpec('2:3', cfg)]).toEqual([[2, [3]]]);
  });

  it('i/N: the contiguous share i of N, the same split as the router\'s contiguous placement', () => {
    expect(parseExpertsSpec('0/3', cfg).get(1)).toEqual([0, 1, 2, 3, 4, 5]);
    expect(parseExpertsSpec('2/3', cfg).get(2)).toEqual([11, 12, 13, 14, 15]);
    const homes = contiguous(16, 3);
    for (let w = 0; w < 3; w++) expect(parseExpertsSpec(`${w}/3`, cfg).get(1)).toEqual(expertsOf(homes, w));
    expect(() => parseExpertsSpec('3/3', cfg)).toThrow(/share 3 of 3 does not exist/);
  });

  it('formats back compactly', () => {
    expect(formatExpertsSpec(parseExpertsSpec('0-3', cfg), [1, 2])).toBe('0-3');
    expect(formatExpertsSpec(parseExpertsSpec('*:0-1;2:7', cfg), [1, 2])).toBe('1:0-1;2:7');
  });

  it('EXPECTED FAILURE - a dense layer, an expert out of range, garbage', () => {
    expect(() => parseExpertsSpec('0:1', cfg)).toThrow(/layer 0 is not an MoE layer/);
    expect(() => parseExpertsSpec('0-16', cfg)).toThrow(/expert 16 out of range \[0, 16\)/);
    expect(() => parseExpertsSpec('one', cfg)).toThrow(/not an id or a range/);
  });
});
