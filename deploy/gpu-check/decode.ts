/**
 * Decode tokens/s of a perf preset on one device and weight format, at the given batches (16-token
 * prompts, 2 warm-up steps, median of STEPS steps), as in bench/engine.ts. Prints one JSON line.
 *   node --import tsx deploy/gpu-check/decode.ts PRESET DEVICE QUANT 1,16,64 [STEPS]
 */
import { loadModel, type LoadedModel } from '../../services/gateway/src/engine/load.js';
import type { EngineRequest } from '../../services/gateway/src/engine/engine.js';
import { DEFAULT_SAMPLING } from '../../services/gateway/src/sampling/params.js';
import { DEFAULT_THREADS } from '../../services/model/src/runtime/onnx.js';
import type { Quantization } from '../../services/model/src/graphs/linear.js';
import { ensurePerfModel, median } from '../../bench/lib/perf-models.js';

const [preset = 'mixtral-perf', device = 'cuda', quant = 'fp16', batchesArg = '1,16,64', stepsArg = '8'] = process.argv.slice(2);
const batches = batchesArg.split(',').map(Number);
const STEPS = Number(stepsArg);
let seed = 12345;
const rnd = (n: number, vocab: number) =>
  Array.from({ length: n }, () => {
    seed = (seed * 1103515245 + 12345) >>> 0;
    return 3 + (seed % (vocab - 3));
  });
const req = (promptIds: number[]): EngineRequest => ({ promptIds, sampling: { ...DEFAULT_SAMPLING, temperature: 0 }, maxTokens: 1000, stopTokenIds: [], logprobs: null, promptLogprobs: null });

async function rate(m: LoadedModel, batch: number): Promise<{ tokS: number; stepMs: number }> {
  const ids = new Set<number>();
  for (let b = 0; b < batch; b++) ids.add(m.engine.add(req(rnd(16, m.cfg.vocabSize))));
  const pending = new Set(ids);
  while (pending.size > 0) for (const ev of await m.engine.step()) if (ev.tokenId >= 0) pending.delete(ev.seqId);
  for (let i = 0; i < 2; i++) await m.engine.step();
  const times: number[] = [];
  for (let i = 0; i < STEPS; i++) {
    const t0 = performance.now();
    await m.engine.step();
    times.push(performance.now() - t0);
  }
  for (const id of ids) m.engine.abort(id);
  const stepMs = median(times);
  return { tokS: (batch * 1000) / stepMs, stepMs };
}

const dir = ensurePerfModel(preset);
const logs: string[] = [];
const t0 = performance.now();
const m = await loadModel(dir, {
  runtime: { device: device as 'cpu' | 'cuda', deviceId: 0, intraOpThreads: DEFAULT_THREADS, quantization: quant as Quantization, log: (msg) => logs.push(msg) },
  mlaImpl: 'auto',
  kvCacheBytes: 4 * 2 ** 30,
  maxNumSeqs: Math.max(...batches),
  maxBatchedTokens: 2048,
  maxModelLen: 2048,
});
const loadS = (performance.now() - t0) / 1000;
const decode: Record<number, { tokS: number; stepMs: number }> = {};
for (const b of batches) decode[b] = await rate(m, b);
process.stdout.write(`${JSON.stringify({ preset, device, quant, loadS, decode, runtime: logs })}\n`);
process.exit(0);
