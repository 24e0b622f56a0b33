/**
 * Weight manifest: expectedTensors on the three golden fixtures lists exactly the tensors their
 * checkpoints hold, with their shapes; per-architecture details (Qwen3 q/k norm, MLA with a q
 * LoRA, attention biases, V3 correction bias) from preset configs; validateCheckpoint names the
 * missing or misshaped tensor.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ServerError } from '../../services/common/src/errors.js';
import { Checkpoint } from '../../services/model/src/checkpoint/checkpoint.js';
import { parseModelConfig, type MoeModelConfig } from '../../services/model/src/config.js';
import { PRESETS, type PresetName } from '../../services/model/src/presets.js';
import { expectedTensors, validateCheckpoint, type TensorSource } from '../../services/model/src/weights.js';

const GOLDEN = join(import.meta.dirname, '../fixtures/golden');
const FIXTURES = ['mixtral-tiny', 'qwen2-moe-tiny', 'deepseek-v2-tiny'] as const;

const fixtureConfig = (f: string) => parseModelConfig(JSON.parse(readFileSync(join(GOLDEN, f, 'config.json'), 'utf8')));
const presetConfig = (p: PresetName, extra: Record<string, unknown> = {}) => parseModelConfig({ ...PRESETS[p].config, ...extra });
const shapes = (cfg: MoeModelConfig) => new Map(expectedTensors(cfg).map((t) => [t.name, t.shape]));

function expectCheckpointInvalid(fn: () => void, ...patterns: RegExp[]): void {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  expect(caught).toBeInstanceOf(ServerError);
  expect((caught as ServerError).code).toBe('checkpoint_invalid');
  for (const p of patterns) expect((caught as ServerError).message).toMatch(p);
}

describe('expectedTensors on the golden fixtures', () => {
  it.each(FIXTURES)('%s: exactly the checkpoint tensors, shapes equal, and it validates', (fixture) => {
    const cfg = fixtureConfig(fixture);
    const ckpt = Checkpoint.open(join(GOLDEN, fixture));
    try {
      const expected = expectedTensors(cfg);
      expect(expected.map((t) => t.name).sort()).toEqual(ckpt.names().sort());
      for (const t of expected) expect(ckpt.info(t.name).shape).toEqual(t.shape);
      expect(() => validateCheckpoint(cfg, ckpt)).not.toThrow();
    } finally {
      ckpt.close();
    }
  });

  it('mixtral-tiny: 3 MoE layers of 8 experts, block_sparse_moe names, untied head', () => {
    const s = shapes(fixtureConfig('mixtral-tiny'));
    expect(s.size).toBe(1 + 3 * (4 + 1 + 8 * 3 + 2) + 1 + 1);
    expect(s.get('model.layers.2.block_sparse_moe.gate.weight')).toEqual([8, 64]);
    expect(s.get('model.layers.0.block_sparse_moe.experts.7.w1.weight')).toEqual([96, 64]);
    expect(s.get('model.layers.0.block_sparse_moe.experts.7.w2.weight')).toEqual([64, 96]);
    expect(s.get('model.layers.0.self_attn.k_proj.weight')).toEqual([32, 64]); // 2 KV heads × 16
    expect(s.get('lm_head.weight')).toEqual([512, 64]);
  });

  it('qwen2-moe-tiny: q/k/v biases but no o bias, sigmoid shared-expert gate, tied head', () => {
    const s = shapes(fixtureConfig('qwen2-moe-tiny'));
    expect(s.get('model.layers.0.self_attn.q_proj.bias')).toEqual([64]);
    expect(s.get('model.layers.0.self_attn.v_proj.bias')).toEqual([32]);
    expect(s.has('model.layers.0.self_attn.o_proj.bias')).toBe(false);
    expect(s.get('model.layers.1.mlp.shared_expert.up_proj.weight')).toEqual([96, 64]);
    expect(s.get('model.layers.1.mlp.shared_expert_gate.weight')).toEqual([1, 64]);
    expect(s.has('lm_head.weight')).toBe(false);
  });

  it('deepseek-v2-tiny: dense layer 0, MLA without q LoRA, 2 shared experts concatenated', () => {
    const s = shapes(fixtureConfig('deepseek-v2-tiny'));
    expect(s.get('model.layers.0.mlp.gate_proj.weight')).toEqual([128, 64]);
    expect(s.has('model.layers.0.mlp.gate.weight')).toBe(false);
    expect(s.get('model.layers.1.self_attn.q_proj.weight')).toEqual([4 * 24, 64]);
    expect(s.get('model.layers.1.self_attn.kv_a_proj_with_mqa.weight')).toEqual([32 + 8, 64]);
    expect(s.get('model.layers.1.self_attn.kv_a_layernorm.weight')).toEqual([32]);
    expect(s.get('model.layers.1.self_attn.kv_b_proj.weight')).toEqual([4 * (16 + 12), 32]);
    expect(s.get('model.layers.1.self_attn.o_proj.weight')).toEqual([64, 4 * 12]);
    expect(s.get('model.layers.1.mlp.shared_experts.down_proj.weight')).toEqual([64, 64]);
    expect(s.has('model.layers.1.mlp.gate.e_score_correction_bias')).toBe(false);
  });
});

describe('expectedTensors per architecture flag', () => {
  it('Qwen3: q_norm/k_norm over head_dim, head_dim × heads ≠ hidden, dense mlp_only layer', () => {
    const s = shapes(presetConfig('tiny-qwen3-moe'));
    expect(s.get('model.layers.0.self_attn.q_norm.weight')).toEqual([16]);
    expect(s.get('model.layers.0.self_attn.k_norm.weight')).toEqual([16]);
    expect(s.get('model.layers.0.self_attn.q_proj.weight')).toEqual([128, 64]);
    expect(s.get('model.layers.0.self_attn.o_proj.weight')).toEqual([64, 128]);
    expect(s.get('model.layers.0.self_attn.k_proj.weight')).toEqual([32, 64]);
    expect(s.has('model.layers.0.self_attn.q_proj.bias')).toBe(false);
    expect(s.get('model.layers.1.mlp.down_proj.weight')).toEqual([64, 128]);
    expect(s.has('model.layers.1.mlp.gate.weight')).toBe(false);
    expect(s.get('model.layers.2.mlp.gate.weight')).toEqual([8, 64]);
  });

  it('Qwen3 with attention_bias: q/k/v and o biases', () => {
    const s = shapes(presetConfig('tiny-qwen3-moe', { attention_bias: true }));
    expect(s.get('model.layers.0.self_attn.k_proj.bias')).toEqual([32]);
    expect(s.get('model.layers.0.self_attn.o_proj.bias')).toEqual([64]);
  });

  it('DeepSeek-V3: q LoRA path, correction bias, one shared expert', () => {
    const s = shapes(presetConfig('tiny-dsv3'));
    expect(s.has('model.layers.1.self_attn.q_proj.weight')).toBe(false);
    expect(s.get('model.layers.1.self_attn.q_a_proj.weight')).toEqual([48, 64]);
    expect(s.get('model.layers.1.self_attn.q_a_layernorm.weight')).toEqual([48]);
    expect(s.get('model.layers.1.self_attn.q_b_proj.weight')).toEqual([4 * 24, 48]);
    expect(s.get('model.layers.1.mlp.gate.e_score_correction_bias')).toEqual([16]);
    expect(s.get('model.layers.2.mlp.shared_experts.gate_proj.weight')).toEqual([32, 64]);
    expect(s.has('model.layers.0.mlp.gate.e_score_correction_bias')).toBe(false);
  });

  it('MLA attention_bias: only q_a_proj, kv_a_proj_with_mqa and o_proj get a bias', () => {
    const withLora = [...shapes(presetConfig('tiny-dsv3', { attention_bias: true })).keys()].filter((n) => n.startsWith('model.layers.0.') && n.endsWith('.bias'));
    expect(withLora).toEqual(['model.layers.0.self_attn.q_a_proj.bias', 'model.layers.0.self_attn.kv_a_proj_with_mqa.bias', 'model.layers.0.self_attn.o_proj.bias']);
    const s = shapes(presetConfig('tiny-dsv2', { attention_bias: true }));
    expect([...s.keys()].filter((n) => n.startsWith('model.layers.0.') && n.endsWith('.bias'))).toEqual([
      'model.layers.0.self_attn.kv_a_proj_with_mqa.bias',
      'model.layers.0.self_attn.o_proj.bias',
    ]);
    expect(s.get('model.layers.0.self_attn.kv_a_proj_with_mqa.bias')).toEqual([40]);
  });

  it('names are unique', () => {
    for (const p of Object.keys(PRESETS) as PresetName[]) {
      const names = expectedTensors(presetConfig(p)).map((t) => t.name);
      expect(new Set(names).size).toBe(names.length);
    }
  });
});

/** A view of a checkpoint with some tensors hidden or reshaped. */
function doctored(ckpt: Checkpoint, hide: string[], reshape: Record<string, number[]> = {}): TensorSource {
  return {
    dir: ckpt.dir,
    has: (n) => ckpt.has(n) && !hide.includes(n),
    info: (n) => (reshape[n] ? { shape: reshape[n] } : ckpt.info(n)),
  };
}

describe('validateCheckpoint', () => {
  const cfg = fixtureConfig('mixtral-tiny');
  const dir = join(GOLDEN, 'mixtral-tiny');

  it('BAD CALL - a missing tensor is named with its expected shape', () => {
    const ckpt = Checkpoint.open(dir);
    try {
      expectCheckpointInvalid(
        () => validateCheckpoint(cfg, doctored(ckpt, ['model.layers.1.block_sparse_moe.experts.3.w2.weight'])),
        new RegExp(dir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')),
        /MixtralForCausalLM/,
        /1 problem\(s\): missing "model\.layers\.1\.block_sparse_moe\.experts\.3\.w2\.weight" \(expected \[64, 96\]\)$/,
      );
    } finally {
      ckpt.close();
    }
  });

  it('BAD CALL - a misshaped tensor is named with both shapes', () => {
    const ckpt = Checkpoint.open(dir);
    try {
      expectCheckpointInvalid(
        () => validateCheckpoint(cfg, doctored(ckpt, [], { 'model.norm.weight': [65] })),
        /"model\.norm\.weight" has shape \[65\], expected \[64\]/,
      );
    } finally {
      ckpt.close();
    }
  });

  it('BAD CALL - a checkpoint of another config lists the first problems and counts the rest', () => {
    // the mixtral checkpoint checked against a 4-expert config with a wider FFN: 3 layers × (gate + 4 × 3 experts)
    const other = parseModelConfig({ ...JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')), intermediate_size: 128, num_local_experts: 4 });
    const ckpt = Checkpoint.open(dir);
    try {
      expectCheckpointInvalid(
        () => validateCheckpoint(other, ckpt),
        /39 problem\(s\): "model\.layers\.0\.block_sparse_moe\.gate\.weight" has shape \[8, 64\], expected \[4, 64\]; "model\.layers\.0\.block_sparse_moe\.experts\.0\.w1\.weight" has shape \[96, 64\], expected \[128, 64\]/,
        /; and 31 more$/,
      );
    } finally {
      ckpt.close();
    }
  });
});
