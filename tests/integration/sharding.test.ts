/**
 * Expert sharding over real worker processes and real gRPC (Unix sockets, loopback), against the
 * single-process output, for every golden fixture:
 * - 1, 2 and 3 local workers (3 is uneven: 8 experts as 3+3+2, 16 as 6+5+5), and 2 workers with
 *   every expert replicated: the same greedy ids and top-5 ids as one process, last logits
 *   within 1e-5 of it (and the fixture's ids);
 * - every worker receives rows, the gateway sends at most one request per worker per MoE layer
 *   per step, and the per-expert counts equal the routing;
 * - requests over the message limit are chunked (same output); f16/bf16 on the wire stay close.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_TOPOLOGY, startTopology, type Topology, type TopologyOptions } from '../../router/index.js';
import { generateCached, type GenerationResult } from '../../services/gateway/src/engine/generate.js';
import { loadModel } from '../../services/gateway/src/engine/load.js';
import { DEFAULT_SAMPLING } from '../../services/gateway/src/sampling/params.js';
import { DEFAULT_RUNTIME } from '../../services/model/src/runtime/onnx.js';
import { WIRE_DTYPE } from '../../proto/index.js';
import { readModelConfig } from '../../services/model/src/model-dir.js';
import { FIXTURES, fixtureDir, loadExpected, maxAbsDiff, PROMPTS, type FixtureName } from '../helpers/golden.js';

const GREEDY = { ...DEFAULT_SAMPLING, temperature: 0 };
const PARAMS = { maxTokens: 16, sampling: GREEDY, stopTokenIds: [] };
const LOAD = { runtime: DEFAULT_RUNTIME, mlaImpl: 'absorbed' as const, blockSize: 4, kvCacheBytes: 4 << 20 };

const TOPOLOGIES = [
  { name: '1 worker', workers: 1, replicate: null },
  { name: '2 workers', workers: 2, replicate: null },
  { name: '3 workers (uneven)', workers: 3, replicate: null },
  { name: '2 workers, every expert replicated', workers: 2, replicate: 'all' },
] as const;

function options(fixture: FixtureName, over: Partial<TopologyOptions>): TopologyOptions {
  return { ...DEFAULT_TOPOLOGY, modelDir: fixtureDir(fixture), runtime: DEFAULT_RUNTIME, log: () => undefined, ...over };
}

async function generate(fixture: FixtureName, topology: Topology | null): Promise<GenerationResult[]> {
  const expected = loadExpected(fixture);
  const model = await loadModel(fixtureDir(fixture), { ...LOAD, experts: topology?.experts });
  try {
    return await generateCached(model.engine, PROMPTS.map((p) => expected.prompts[p].input_ids), PARAMS);
  } finally {
    model.checkpoint.close();
  }
}

function expectSame(actual: GenerationResult[], single: GenerationResult[]): void {
  PROMPTS.forEach((p, i) => {
    expect(actual[i]!.greedy_ids, `${p} greedy ids`).toEqual(single[i]!.greedy_ids);
    expect(actual[i]!.top5_ids, `${p} top-5 ids`).toEqual(single[i]!.top5_ids);
    expect(maxAbsDiff(actual[i]!.last_logits, single[i]!.last_logits), `${p} last logits`).toBeLessThanOrEqual(1e-5);
  });
}

for (const fixture of FIXTURES) {
  describe(`sharded ${fixture} equals one process`, () => {
    const expected = loadExpected(fixture);
    const cfg = readModelConfig(fixtureDir(fixture));
    const moeLayers = cfg.layers.filter((l) => l.mlp === 'moe').length;
    let single: GenerationResult[];

    beforeAll(async () => {
      single = await generate(fixture, null);
      PROMPTS.forEach((p, i) => expect(single[i]!.greedy_ids).toEqual(expected.prompts[p].greedy_ids));
    });

    for (const t of TOPOLOGIES) {
      it(`${t.name}: same greedy ids and top-5, last logits within 1e-5`, async () => {
        const topology = await startTopology(cfg, options(fixture, { workers: t.workers, replicate: t.replicate }));
        try {
          const out = await generate(fixture, topology);
          expectSame(out, single);
          PROMPTS.forEach((p, i) => expect(out[i]!.greedy_ids).toEqual(expected.prompts[p].greedy_ids));
          const s = topology.stats.snapshot();
          expect(s.failedCalls).toBe(0);
          expect(s.failoverSlots).toBe(0);
          // every worker did some of the work
          for (const rows of s.rowsPerWorker) expect(rows).toBeGreaterThan(0);
          // at most one request per worker per MoE layer per step
          expect(s.requests).toBeLessThanOrEqual(s.calls * t.workers);
          expect(s.calls % moeLayers).toBe(0);
          // (row, expert) counts: every row of every call has exactly top-k experts
          const pairs = s.rowsPerExpert.flat().reduce((a, b) => a + b, 0);
          expect(pairs % cfg.moe.nActivatedExperts).toBe(0);
        } finally {
          await topology.close();
        }
      });
    }
  });
}

describe('message limit and wire dtypes (mixtral-tiny, 2 workers)', () => {
  const fixture = 'mixtral-tiny';
  const cfg = readModelConfig(fixtureDir(fixture));
  let single: GenerationResult[];
  beforeAll(async () => {
    single = await generate(fixture, null);
  });

  it('a limit of 4 KiB splits the 33-token prefill into several requests per worker; output unchanged', async () => {
    // 64 hidden x 4 B + 2 slots x 8 B = 272 B per row: 14 rows per 4 KiB request
    const topology = await startTopology(cfg, options(fixture, { workers: 2, dispatch: { ...DEFAULT_TOPOLOGY.dispatch, maxMessageBytes: 4096 } }));
    try {
      const out = await generate(fixture, topology);
      expectSame(out, single);
      const s = topology.stats.snapshot();
      expect(s.requests).toBeGreaterThan(s.calls * 2);
    } finally {
      await topology.close();
    }
  });

  for (const [dtype, atol] of [['f16', 2e-2], ['bf16', 1e-1]] as const) {
    it(`${dtype} on the wire: 2 bytes per value, logits within ${atol} of f32`, async () => {
      const topology = await startTopology(cfg, options(fixture, { workers: 2, dispatch: { ...DEFAULT_TOPOLOGY.dispatch, wireDtype: WIRE_DTYPE[dtype] } }));
      try {
        const out = await generate(fixture, topology);
        const s = topology.stats.snapshot();
        // half-precision activations move the logits a little (bf16: 8 mantissa bits, f16: 11)
        PROMPTS.forEach((_, i) => expect(maxAbsDiff(out[i]!.last_logits, single[i]!.last_logits)).toBeLessThan(atol));
        expect(out[1]!.top5_ids[0]![0]).toBe(single[1]!.top5_ids[0]![0]);
        // every reply row is H values of 2 bytes
        const rows = s.rowsPerWorker.reduce((a, b) => a + b, 0);
        expect(s.bytesReceived).toBe(rows * cfg.hiddenSize * 2);
      } finally {
        await topology.close();
      }
    });
  }
});
