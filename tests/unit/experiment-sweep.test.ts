import { describe, expect, it } from 'vitest';
import { ServerError } from '../../services/common/src/errors.js';
import { expandPoints, parseSweepText, validateSweep } from '../../services/queue/src/sweep.js';
import { pointOverrides } from '../../services/queue/src/checkpoint-cache.js';
import { workerExpertLists } from '../../services/queue/src/run-point.js';
import { progressLine } from '../../services/cli/experiment.js';

const base = { model: { preset: 'tiny-mixtral' }, axes: { experts: [8, 16], topK: [2, 4], workers: [1, 2] } };

function expectBad(raw: unknown, param: string, pattern: RegExp): void {
  let err: unknown;
  try {
    validateSweep(raw);
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(ServerError);
  expect((err as ServerError).code).toBe('invalid_request');
  expect((err as ServerError).param).toBe(param);
  expect((err as ServerError).message).toMatch(pattern);
}

describe('sweep files', () => {
  it('expands the cartesian product in axis order with defaults and stable ids', () => {
    const s = validateSweep({ ...base, repeats: 2 });
    const pts = expandPoints(s);
    expect(pts).toHaveLength(16);
    expect(pts.slice(0, 3).map((p) => p.id)).toEqual(['e8-k2-w1-contiguous-rnone-f32-n0', 'e8-k2-w1-contiguous-rnone-f32-n1', 'e8-k2-w2-contiguous-rnone-f32-n0']);
    expect(pts.map((p) => p.index)).toEqual([...Array(16).keys()]);
    expect(s.load).toEqual({ scenario: 'throughput', concurrency: 4, requests: 16, promptTokens: 32, outputTokens: 16, hotTokens: 0, warmupRequests: 1, seed: 0 });
    expect(s.network).toEqual({ mode: 'loopback', bandwidthMbit: 1000 });
    expect(s.retry).toEqual({ attempts: 3, backoffMs: 2000 });
    expect(Object.isFrozen(s) && Object.isFrozen(s.points[0])).toBe(true);
  });

  it('reads YAML and JSON alike', () => {
    const yaml = 'model: {preset: tiny-mixtral}\naxes:\n  experts: [8, 16]\n  topK: [2, 4]\n  workers: [1, 2]\n';
    expect(validateSweep(parseSweepText(yaml))).toEqual(validateSweep(parseSweepText(JSON.stringify(base))));
  });

  it('takes an explicit point list', () => {
    const pts = expandPoints(validateSweep({ model: { preset: 'tiny-mixtral' }, points: [{ experts: 8, topK: 2, workers: 2, placement: 'round-robin' }, { workers: 3, experts: 8, placement: '0-2;3-5;6,7', wireDtype: 'bf16' }] }));
    expect(pts.map((p) => p.id)).toEqual(['e8-k2-w2-round.robin-rnone-f32-n0', 'e8-k_-w3-0.2.3.5.6.7-rnone-bf16-n0']);
  });

  it.each([
    [{ ...base, extra: 1 }, 'extra', /unknown field/],
    [{ axes: base.axes }, 'model', /is required/],
    [{ model: { preset: 'x', checkpoint: '/y' }, axes: base.axes }, 'model', /exactly one of preset, checkpoint/],
    [{ ...base, axes: { ...base.axes, experts: [8, 'many'] } }, 'axes.experts[1]', /must be an integer in \[1, 4096\], got "many"/],
    [{ ...base, axes: { ...base.axes, topK: [] } }, 'axes.topK', /must not be an empty list/],
    [{ ...base, axes: { ...base.axes, topK: [2, 2] } }, 'axes.topK', /duplicate/],
    [{ ...base, axes: { experts: [4], topK: [8] } }, 'axes (point e4-k8-w1-contiguous-rnone-f32)', /topK 8 exceeds experts 4/],
    [{ ...base, axes: { experts: [2], workers: [4] } }, 'axes (point e2-k_-w4-contiguous-rnone-f32)', /some workers would hold nothing/],
    [{ ...base, axes: { ...base.axes, placement: ['diagonal'] } }, 'axes.placement[0]', /contiguous, round-robin or an explicit map/],
    [{ ...base, axes: { ...base.axes, wireDtype: ['fp8'] } }, 'axes.wireDtype[0]', /one of f32, f16, bf16/],
    [{ ...base, load: { concurrency: 0 } }, 'load.concurrency', /integer in \[1, 1024\], got number 0/],
    [{ ...base, load: { scenario: 'chaos' } }, 'load.scenario', /one of throughput, routing-balance/],
    [{ ...base, network: { mode: 'netns', bandwith: 10 } }, 'network.bandwith', /unknown field/],
    [{ model: { checkpoint: '/ckpt' }, axes: { experts: [8] } }, 'axes (point e8-k_-w1-contiguous-rnone-f32)', /cannot vary with model.checkpoint/],
    [{ ...base, axes: undefined, points: [{ workers: 2 }, { workers: 2 }] }, 'points', /listed twice/],
    [{ model: { preset: 'p' }, points: [{ workers: 0, wireDtype: 'f16' }] }, 'points[0]', /workers 0 runs the experts in the gateway/],
  ])('BAD SWEEP - %# names the field', (raw, param, pattern) => expectBad(raw, param, pattern));

  it('BAD SWEEP - unparsable text names the format', () => {
    expect(() => parseSweepText('model: [unclosed', 'x.yaml')).toThrow(/x.yaml: not valid YAML/);
    expect(() => parseSweepText('{"a":', 'x.json')).toThrow(/x.json: not valid JSON/);
    expect(() => parseSweepText('  ', 'x.yaml')).toThrow(/the file is empty/);
  });

  it('maps the expert count to the architecture\'s config key', () => {
    expect(pointOverrides({ preset: 'tiny-mixtral', checkpoint: null, set: { hidden_size: 128 }, seed: 0, dtype: 'F32' }, { experts: 16, topK: 4 })).toEqual({ hidden_size: 128, num_local_experts: 16, num_experts_per_tok: 4 });
    expect(pointOverrides({ preset: 'tiny-dsv2', checkpoint: null, set: {}, seed: 0, dtype: 'F32' }, { experts: 32, topK: null })).toEqual({ n_routed_experts: 32 });
    expect(pointOverrides({ preset: 'tiny-qwen3-moe', checkpoint: null, set: {}, seed: 0, dtype: 'F32' }, { experts: 16, topK: 2 })).toEqual({ num_experts: 16, num_experts_per_tok: 2 });
  });

  it('places experts on workers as serve --placement / --replicate would', () => {
    expect(workerExpertLists({ workers: 3, placement: 'contiguous', replicate: 'none' }, 8)).toEqual(['0,1,2', '3,4,5', '6,7']);
    expect(workerExpertLists({ workers: 2, placement: 'round-robin', replicate: '0:2' }, 4)).toEqual(['0,2', '0,1,3']);
  });

  it('draws the progress line', () => {
    const st = { total: 18, ok: 5, failed: 1, etaS: 130, report: null } as unknown as Parameters<typeof progressLine>[0];
    expect(progressLine(st, 18)).toBe('[######............] 6/18 runs (1 failed) ETA 2m10s');
  });
});
