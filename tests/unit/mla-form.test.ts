import fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parseModelConfig } from '../../services/model/src/config.js';
import { mlaNaiveCheaper } from '../../services/model/src/graphs/attention.js';

const fixture = JSON.parse(fs.readFileSync(new URL('../fixtures/golden/deepseek-v2-tiny/config.json', import.meta.url), 'utf8'));
// dsv2-perf's attention shape (kv_lora_rank 256, heads of 64 + 32 rope, values of 64).
const perf = { ...fixture, kv_lora_rank: 256, qk_nope_head_dim: 64, qk_rope_head_dim: 32, v_head_dim: 64, num_attention_heads: 16 };

/** Multiply-adds per sequence and head, GEMM by GEMM, of each form (T query rows, L keys). */
function macs(C: number, Dn: number, R: number, Dv: number, T: number, L: number): { naive: number; absorbed: number } {
  const naive = L * C * Dn /* keys rebuilt */ + L * C * Dv /* values rebuilt */ + T * L * (Dn + R) /* scores */ + T * L * Dv; /* context */
  const absorbed = T * Dn * C /* W_UK into q */ + T * L * (C + R) /* scores over latent rows */ + T * L * C /* context */ + T * C * Dv; /* W_UV */
  return { naive, absorbed };
}

describe('MLA form choice (auto)', () => {
  for (const [name, raw] of [['deepseek-v2-tiny', fixture], ['dsv2-perf shape', perf]] as const) {
    const cfg = parseModelConfig(raw);
    const a = cfg.attention;
    if (a.kind !== 'mla') throw new Error('not MLA');
    it(`${name}: picks the form with fewer multiply-adds for every (T, past)`, () => {
      for (const T of [1, 2, 7, 16, 64, 85, 86, 87, 128, 512]) {
        for (const past of [0, 1, 15, 64, 200, 1000, 4000]) {
          const L = past + T;
          const m = macs(a.kvLoraRank, a.qkNopeHeadDim, a.qkRopeHeadDim, a.vHeadDim, T, L);
          expect(mlaNaiveCheaper(cfg, T, L), `T ${T} past ${past}`).toBe(m.naive < m.absorbed);
        }
      }
    });
    it(`${name}: a prompt's first chunk is naive, a decode with a past absorbed`, () => {
      for (const T of [2, 16, 64, 300]) expect(mlaNaiveCheaper(cfg, T, T)).toBe(true);
      for (const past of [1, 10, 1000]) expect(mlaNaiveCheaper(cfg, 1, past + 1)).toBe(false);
    });
  }
  it('GQA models never take the MLA forms', () => {
    const gqa = parseModelConfig(JSON.parse(fs.readFileSync(new URL('../fixtures/golden/mixtral-tiny/config.json', import.meta.url), 'utf8')));
    expect(mlaNaiveCheaper(gqa, 64, 64)).toBe(false);
  });
});
