import { describe, expect, it } from 'vitest';
import { attentionGroups, type ForwardSeq } from '../../services/gateway/src/engine/dense-runner.js';

const seq = (tokens: number, pastLen: number): ForwardSeq => ({ tokens: new Array<number>(tokens).fill(5), pastLen, kvSeqId: 0, logits: 'last' });

describe('attention groups of a step', () => {
  it('decodes form one group; prefill chunks group by (length, past length), in step order', () => {
    const seqs = [seq(64, 0), seq(1, 80), seq(64, 0), seq(7, 0), seq(1, 3), seq(64, 128), seq(64, 0), seq(7, 0)];
    expect(attentionGroups(seqs)).toEqual([[1, 4], [0, 2, 6], [3, 7], [5]]);
  });

  it('a group of one shape takes at most maxPrefillRows query rows; the next sequences start another', () => {
    const seqs = [seq(64, 0), seq(64, 0), seq(64, 0), seq(64, 0), seq(64, 0), seq(300, 0), seq(64, 0)];
    expect(attentionGroups(seqs, 256)).toEqual([[0, 1, 2, 3], [4, 6], [5]]);
    expect(attentionGroups(seqs, 64)).toEqual([[0], [1], [2], [3], [4], [5], [6]]);
  });

  it('a step of prefills only has no decode group; one sequence is one group', () => {
    expect(attentionGroups([seq(9, 0), seq(9, 4)])).toEqual([[0], [1]]);
    expect(attentionGroups([seq(1, 0)])).toEqual([[0]]);
    expect(attentionGroups([])).toEqual([]);
  });
});
