import { describe, expect, it } from 'vitest';
import { evenSplit, missProbability, networkBoundFrom, projectReference, stepCost, stepTime } from '../../services/queue/src/cost-model.js';
import { checkModel, pointRows, toCsv } from '../../services/queue/src/report.js';

describe('decode-step cost model', () => {
  it('one worker gets every token once per layer: exact bytes and FLOPs', () => {
    const c = stepCost({ hidden: 64, moeIntermediate: 96, experts: 8, topK: 2, moeLayers: 2, workers: 1, tokens: 10, wireBytes: 4 });
    // out: 10 tokens x 2 layers x (64*4 + 8*2); in: 10 x 2 x 64*4
    expect(c.bytesOut).toBe(10 * 2 * (256 + 16));
    expect(c.bytesIn).toBe(10 * 2 * 256);
    expect(c.bytesPerToken).toBe(2 * (272 + 256));
    expect(c.workers[0]!.flops).toBe(2 * 10 * 2 * 6 * 64 * 96);
    expect(c.workersPerToken).toBe(1);
  });

  it('the probability a token misses a worker is C(E-s,k)/C(E,k)', () => {
    expect(missProbability(8, 4, 2)).toBeCloseTo((4 * 3) / (8 * 7), 12);
    expect(missProbability(8, 7, 2)).toBe(0);
    expect(evenSplit(8, 3)).toEqual([3, 3, 2]);
    // 8 experts top-2 on 2 workers: each worker is hit with p = 1 - 12/56 = 11/14.
    const c = stepCost({ hidden: 64, moeIntermediate: 96, experts: 8, topK: 2, moeLayers: 2, workers: 2, tokens: 1, wireBytes: 4 });
    expect(c.workersPerToken).toBeCloseTo(22 / 14, 12);
    expect(c.bytesPerToken).toBeCloseTo((22 / 14) * 2 * (272 + 256), 9);
  });

  it('f16/bf16 halve the activation bytes, not the ids and weights', () => {
    const s = { hidden: 128, moeIntermediate: 64, experts: 16, topK: 4, moeLayers: 3, workers: 1, tokens: 1 };
    expect(stepCost({ ...s, wireBytes: 4 }).bytesPerToken - stepCost({ ...s, wireBytes: 2 }).bytesPerToken).toBe(3 * 2 * 128 * 2);
  });

  it('BAD SHAPE - rejects impossible shapes', () => {
    expect(() => stepCost({ hidden: 64, moeIntermediate: 1, experts: 4, topK: 8, moeLayers: 1, workers: 1, tokens: 1, wireBytes: 4 })).toThrow(/topK 8 exceeds experts 4/);
    expect(() => stepCost({ hidden: 64, moeIntermediate: 1, experts: 4, topK: 2, moeLayers: 1, workers: 0, tokens: 1, wireBytes: 4 })).toThrow(RangeError);
  });

  it('projects DeepSeek-V3 and Mixtral: the network bounds DeepSeek-V3 at 100 Gb/s, Mixtral on 2 nodes at 400 Gb/s is compute-bound', () => {
    const dsv3 = projectReference('DeepSeek-V3', [8, 64], [100, 400], [64]);
    expect(dsv3.map((r) => r.bound)).toEqual(['network', 'compute', 'network', 'network']);
    expect(networkBoundFrom('Mixtral-8x7B', 2, 400)).toBeNull();
    expect(networkBoundFrom('Mixtral-8x7B', 8, 100)).toBe(128);
    const t = stepTime({ hidden: 7168, moeIntermediate: 2048, experts: 256, topK: 8, moeLayers: 58, workers: 8, tokens: 64, wireBytes: 2 }, { flops: 1e15, memBandwidth: 3e12, weightBytes: 1, linkBitsPerS: 1e11, latencyS: 0 });
    expect(t.networkS).toBeCloseTo((Math.max(t.cost.bytesOut, t.cost.bytesIn) * 8) / 1e11, 12);
  });

  it('report rows: model bytes, error and scaling efficiency from stored results', () => {
    const layers = [{ layer: '0', load: [10, 10], balancedness: 1, expertBalancedness: 1 }];
    const mk = (index: number, workers: number, outTokS: number, payloadBytes: number) => ({
      pointId: `p${index}`,
      index,
      point: { index, id: `p${index}`, repeat: 0, experts: 8, topK: 2, workers, placement: 'contiguous', replicate: 'none', wireDtype: 'f32' as const },
      status: 'ok' as const,
      reason: null,
      attempts: 1,
      host: 'h',
      finishedAt: '',
      measurement: {
        model: { experts: 8, topK: 2, hidden: 64, moeIntermediate: 96, moeLayers: 1, layers: 1, vocabSize: 512, architecture: 'x', dir: '', made: false },
        load: { outputTokS: outTokS, requestThroughput: 1, ttftMs: { mean: 1, p50: 1, p99: 1 }, itlMs: { mean: 1, p50: 1, p99: 1 }, tpotMs: { mean: 1, p50: 1, p99: 1 }, e2eMs: { mean: 1, p50: 1, p99: 1 }, failed: 0, completed: 1, concurrency: 1, durationS: 1, outputTokens: 1, errors: [] },
        processedTokens: 100,
        workers: Array.from({ length: workers }, (_, i) => ({ worker: `w${i}`, experts: workers === 1 ? '0,1,2,3,4,5,6,7' : i === 0 ? '0,1,2,3' : '4,5,6,7', requests: 10, rows: 50, bytesIn: 0, bytesOut: 0, computeUs: 1000, pairsPerLayer: { '0': 100 }, linkTx: null, linkRx: null })),
        payloadBytes,
        linkBytes: null,
        steps: 10,
        layers,
        network: { mode: 'loopback' as const, bandwidthMbit: 0, fallbackReason: null },
        metricsError: null,
        host: 'h',
        startS: 1,
        wallS: 2,
      },
    });
    const rows = pointRows([mk(0, 1, 100, 100 * 528), mk(1, 2, 150, Math.round(100 * 528 * (22 / 14)))]);
    expect(rows.map((r) => r.modelBytesPerToken)).toEqual([528, 829.7]);
    expect(rows.map((r) => r.bytesErrorPct)).toEqual([0, 0]);
    expect(rows.map((r) => r.scalingEfficiency)).toEqual([1, 0.75]);
    expect(checkModel(rows).bytesMaxAbsErrPct).toBe(0);
    expect(toCsv([{ a: 1, b: 'x,y' }])).toBe('a,b\n1,"x,y"\n');
  });
});
