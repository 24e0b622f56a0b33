/**
 * KV layouts: exact bytes per token for the golden configs, the row format offsets, and
 * the MHA-equivalent spec used by benchmarks.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parseModelConfig, type MoeModelConfig } from '../../services/model/src/config.js';
import { gqaLayout, kvLayoutFor, mhaEquivalentLayout, mlaLayout } from '../../services/kvcache/src/layout.js';
import { expectServerError } from '../helpers/errors.js';

function goldenConfig(name: string): MoeModelConfig {
  const url = new URL(`../fixtures/golden/${name}/config.json`, import.meta.url);
  return parseModelConfig(JSON.parse(readFileSync(url, 'utf8')));
}

describe('kvLayoutFor on the golden configs', () => {
  it('mixtral-tiny (GQA, 2 kv heads x 16): 2·2·16·4 = 256 bytes per token per layer', () => {
    const cfg = goldenConfig('mixtral-tiny');
    const l = kvLayoutFor(cfg);
    expect(l.kind).toBe('gqa');
    if (l.kind !== 'gqa') return;
    expect([l.numKvHeads, l.headDim, l.vHeadDim, l.vOffset]).toEqual([2, 16, 16, 32]);
    expect(l.elementsPerToken).toBe(64);
    expect(l.bytesPerTokenPerLayer).toBe(2 * 2 * 16 * 4);
    expect(l.bytesPerTokenPerLayer).toBe(256);
    expect(l.bytesPerToken).toBe(256 * 3);
    expect(l.pageSizeBytes(4)).toBe(1024);
  });

  it('qwen2-moe-tiny (GQA, 2 kv heads x 16): 256 bytes per token per layer', () => {
    const cfg = goldenConfig('qwen2-moe-tiny');
    const l = kvLayoutFor(cfg);
    expect(l.kind).toBe('gqa');
    expect(l.bytesPerTokenPerLayer).toBe(2 * 2 * 16 * 4);
    expect(l.bytesPerToken).toBe(768);
  });

  it('deepseek-v2-tiny (MLA, kv_lora_rank 32 + qk_rope 8): (32+8)·4 = 160 bytes per token per layer', () => {
    const cfg = goldenConfig('deepseek-v2-tiny');
    const l = kvLayoutFor(cfg);
    expect(l.kind).toBe('mla');
    if (l.kind !== 'mla') return;
    expect([l.kvLoraRank, l.qkRopeHeadDim, l.kPeOffset]).toEqual([32, 8, 32]);
    expect(l.elementsPerToken).toBe(40);
    expect(l.bytesPerTokenPerLayer).toBe(160);
    expect(l.bytesPerToken).toBe(480);
    expect(l.pageSizeBytes(16)).toBe(16 * 160);
  });
});

describe('mhaEquivalentLayout', () => {
  it('MLA model: numHeads·(qkNope+qkRope) + numHeads·vHeadDim = 4·24 + 4·12 = 144 elements', () => {
    const l = mhaEquivalentLayout(goldenConfig('deepseek-v2-tiny'));
    expect([l.kind, l.numKvHeads, l.headDim, l.vHeadDim, l.vOffset]).toEqual(['gqa', 4, 24, 12, 96]);
    expect(l.elementsPerToken).toBe(144);
    expect(l.bytesPerTokenPerLayer).toBe(576);
    expect(l.bytesPerTokenPerLayer / kvLayoutFor(goldenConfig('deepseek-v2-tiny')).bytesPerTokenPerLayer).toBe(3.6);
  });

  it('GQA model: 2·numHeads·headDim = 2·4·16 = 128 elements', () => {
    const l = mhaEquivalentLayout(goldenConfig('mixtral-tiny'));
    expect([l.numKvHeads, l.headDim, l.elementsPerToken, l.bytesPerTokenPerLayer]).toEqual([4, 16, 128, 512]);
  });
});

describe('layout specs', () => {
  it('are frozen', () => {
    const l = gqaLayout({ numLayers: 2, numKvHeads: 1, headDim: 8 });
    expect(Object.isFrozen(l)).toBe(true);
    expect(() => {
      (l as { numLayers: number }).numLayers = 3;
    }).toThrow(TypeError);
  });

  it('keep dtypeBytes as a field', () => {
    const l = mlaLayout({ numLayers: 4, kvLoraRank: 512, qkRopeHeadDim: 64, dtypeBytes: 2 });
    expect([l.elementsPerToken, l.bytesPerTokenPerLayer, l.bytesPerToken, l.pageSizeBytes(64)]).toEqual([576, 1152, 4608, 73728]);
  });

  it('BAD CALL - a non-positive dimension throws invalid_request', () => {
    expectServerError(() => gqaLayout({ numLayers: 2, numKvHeads: 0, headDim: 8 }), 'invalid_request', /numKvHeads must be a positive integer/);
  });

  it('BAD CALL - pageSizeBytes of a fractional block size throws', () => {
    const l = mlaLayout({ numLayers: 1, kvLoraRank: 4, qkRopeHeadDim: 2 });
    expectServerError(() => l.pageSizeBytes(1.5), 'invalid_request', /blockSize must be a positive integer/);
  });
});
