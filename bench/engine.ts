/**
 * bench:engine — the batched decode engine on generated mixtral-perf and dsv2-perf checkpoints.
 *
 * Prints, per model, measured side by side in one run (medians; this machine is shared and noisy):
 * - prefill tokens/s (one 128-token prompt in one step);
 * - decode tokens/s at batch 1, 8 and 32 (16-token prompts, steady state after warm-up);
 * - cached vs recompute: time to generate 16 tokens after a 128-token prompt, and the ratio;
 * - KV bytes per token (the layout's, and for MLA the MHA-equivalent);
 * - each decode figure against the bandwidth bound: the weight bytes a step must read (batch 1:
 *   the active weights per token; larger batches: the weights of every expert the step hits)
 *   ÷ the machine's read bandwidth with all cores, measured in this run;
 * - the same with --quantization int8 (weights read at a quarter of the bytes), and with one
 * ONNX Runtime thread (a pool of its own) for comparison;
 * - where decode time goes (per-unit wall time at batch 8);
 * - the engine on the main thread vs in a worker thread: decode tokens/s and the main event
 *   loop's p99 delay while decoding (what HTTP/SSE would feel).
 *
 * Usage: npm run bench:engine [-- mixtral-perf dsv2-perf] [--steps N] [--no-thread] [--no-variants]
 */
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { EngineHost } from '../services/gateway/src/engine/host.js';
import { PROFILE_UNITS, StepProfile } from '../services/gateway/src/engine/dense-runner.js';
import type { Engine, EngineRequest } from '../services/gateway/src/engine/engine.js';
import { generateRecompute } from '../services/gateway/src/engine/generate.js';
import { loadModel, type LoadedModel } from '../services/gateway/src/engine/load.js';
import { DEFAULT_SAMPLING } from '../services/gateway/src/sampling/params.js';
import type { MoeModelConfig } from '../services/model/src/config.js';
import { mhaEquivalentLayout } from '../services/kvcache/src/layout.js';
import { DEFAULT_RUNTIME, DEFAULT_THREADS, type RuntimeOptions } from '../services/model/src/runtime/onnx.js';
import { expectedTensors } from '../services/model/src/weights.js';
import { ensurePerfModel, median, memcpyBandwidth, readBandwidth, table } from './lib/perf-models.js';

const args = process.argv.slice(2);
const stepsArg = args.indexOf('--steps');
const STEPS = stepsArg >= 0 ? Number(args[stepsArg + 1]) : 8;
const presets = args.filter((a, i) => !a.startsWith('--') && args[i - 1] !== '--steps');
const THREAD_CHECK = !args.includes('--no-thread');
const VARIANTS = !args.includes('--no-variants');
const PRESETS = presets.length ? presets : ['mixtral-perf', 'dsv2-perf'];
const GREEDY = { ...DEFAULT_SAMPLING, temperature: 0 };
const LOAD = { runtime: DEFAULT_RUNTIME, mlaImpl: 'auto' as const, kvCacheBytes: 2 * 2 ** 30, maxNumSeqs: 64, maxBatchedTokens: 2048, maxModelLen: 2048 };

let rngState = 12345;
function randomIds(n: number, vocab: number): number[] {
  return Array.from({ length: n }, () => {
    rngState = (rngState * 1103515245 + 12345) >>> 0;
    return 3 + (rngState % (vocab - 3));
  });
}

function request(promptIds: number[], maxTokens: number): EngineRequest {
  return { promptIds, sampling: GREEDY, maxTokens, stopTokenIds: [], logprobs: null, promptLogprobs: null };
}

/** Steps until every listed sequence has produced its first token (prefill done). */
async function prefillAll(engine: Engine, ids: Set<number>): Promise<void> {
  const pending = new Set(ids);
  while (pending.size > 0) for (const ev of await engine.step()) if (ev.tokenId >= 0) pending.delete(ev.seqId);
}

/**
 * Weight bytes one decode step reads when `expertsHit` experts of each MoE layer have rows: every
 * dense weight, those experts, one embedding row per token. int8 (blocks of 32, one float scale
 * each) is 1 + 4/32 bytes per weight; norms, gates and the embedding stay fp32.
 */
function stepWeightBytes(cfg: MoeModelConfig, expertsHit: number, int8: boolean): number {
  const perWeight = int8 ? 1 + 4 / 32 : 4;
  let bytes = 0;
  for (const t of expectedTensors(cfg)) {
    const n = t.shape.reduce((a, b) => a * b, 1);
    if (t.name.includes('.experts.')) continue;
    if (t.name === 'model.embed_tokens.weight') bytes += cfg.hiddenSize * 4 + (cfg.tieWordEmbeddings ? n * perWeight : 0);
    // Router gates and MLA's kv_b_proj (absorbed into fp32 MatMuls) stay fp32.
    else if (t.shape.length === 2 && !t.name.endsWith('mlp.gate.weight') && !t.name.endsWith('kv_b_proj.weight') && !t.name.endsWith('shared_expert_gate.weight')) bytes += n * perWeight;
    else bytes += n * 4;
  }
  const perExpert = 3 * cfg.hiddenSize * cfg.moe.intermediateSize * perWeight;
  bytes += cfg.layers.filter((l) => l.mlp === 'moe').length * expertsHit * perExpert;
  return bytes;
}

/** Expected distinct experts hit per layer by a batch of B tokens choosing A of X uniformly. */
function expectedExpertsHit(X: number, A: number, B: number): number {
  return X * (1 - Math.pow(1 - A / X, B));
}

async function decodeRate(model: LoadedModel, batch: number, profile: StepProfile | null): Promise<{ tokS: number; stepMs: number }> {
  const { engine, cfg } = model;
  const ids = new Set<number>();
  for (let b = 0; b < batch; b++) ids.add(engine.add(request(randomIds(16, cfg.vocabSize), 1000)));
  await prefillAll(engine, ids);
  for (let i = 0; i < 2; i++) await engine.step(); // warm-up
  const times: number[] = [];
  model.runner.profile = profile;
  for (let i = 0; i < STEPS; i++) {
    const t0 = performance.now();
    await engine.step();
    times.push(performance.now() - t0);
  }
  model.runner.profile = null;
  for (const id of ids) engine.abort(id);
  const stepMs = median(times);
  return { tokS: (batch * 1000) / stepMs, stepMs };
}

interface Variant {
  readonly label: string;
  readonly runtime: RuntimeOptions;
}

interface Measured {
  loadS: number;
  prefillTokS: number;
  decode: Record<number, { tokS: number; stepMs: number }>;
}

const BATCHES = [1, 16, 32];

async function measure(model: LoadedModel, profile: StepProfile | null): Promise<Omit<Measured, 'loadS'>> {
  const { cfg, engine } = model;
  // prefill: one 128-token prompt per step
  const prefill: number[] = [];
  for (let i = 0; i < 5; i++) {
    const id = engine.add(request(randomIds(128, cfg.vocabSize), 1));
    const s = performance.now();
    while ((await engine.step()).every((e) => e.seqId !== id || e.tokenId < 0));
    prefill.push(performance.now() - s);
  }
  const decode: Record<number, { tokS: number; stepMs: number }> = {};
  for (const b of BATCHES) decode[b] = await decodeRate(model, b, b === 16 ? profile : null);
  return { prefillTokS: 128_000 / median(prefill.slice(1)), decode };
}

async function benchModel(preset: string, threadCheck: boolean): Promise<void> {
  const dir = ensurePerfModel(preset);
  const variants: Variant[] = [{ label: `fp32, ${DEFAULT_THREADS} threads`, runtime: DEFAULT_RUNTIME }];
  if (VARIANTS) {
    variants.push({ label: `int8, ${DEFAULT_THREADS} threads`, runtime: { ...DEFAULT_RUNTIME, quantization: 'int8' } });
    if (DEFAULT_THREADS > 1) variants.push({ label: 'fp32, 1 thread', runtime: { ...DEFAULT_RUNTIME, intraOpThreads: 1 } });
  }
  const bw = await readBandwidth(DEFAULT_THREADS);
  const bw1 = await readBandwidth(1);
  const copy = memcpyBandwidth();
  const profile = new StepProfile();
  const results: Measured[] = [];
  let first: LoadedModel | null = null;
  for (const v of variants) {
    const t0 = performance.now();
    const model = await loadModel(dir, { ...LOAD, runtime: v.runtime });
    const loadS = (performance.now() - t0) / 1000;
    results.push({ loadS, ...(await measure(model, results.length === 0 ? profile : null)) });
    if (!first) first = model;
    else model.checkpoint.close();
  }
  const model = first!;
  const { cfg, engine } = model;
  process.stdout.write(`\n## ${preset}  (${cfg.architecture}, hidden ${cfg.hiddenSize}, ${cfg.numLayers} layers, ${cfg.moe.nRoutedExperts} experts top-${cfg.moe.nActivatedExperts}, attention ${cfg.attention.kind})\n`);
  process.stdout.write(`read bandwidth, this run: ${(bw / 1e9).toFixed(1)} GB/s with ${DEFAULT_THREADS} threads, ${(bw1 / 1e9).toFixed(1)} GB/s with 1 (a one-thread memcpy: ${(copy / 1e9).toFixed(1)} GB/s)\n`);

  const X = cfg.moe.nRoutedExperts;
  const A = cfg.moe.nActivatedExperts;
  const rows: (string | number)[][] = [['metric', ...variants.map((v) => v.label)]];
  rows.push(['load s', ...results.map((r) => r.loadS)]);
  rows.push(['prefill tokens/s (128-token prompt)', ...results.map((r) => r.prefillTokS)]);
  for (const b of BATCHES) {
    rows.push([`decode tokens/s, batch ${b}`, ...results.map((r) => r.decode[b]!.tokS)]);
    const hit = b === 1 ? A : expectedExpertsHit(X, A, b);
    rows.push([
      `  ÷ bandwidth bound (${b === 1 ? 'active' : `~${hit.toFixed(1)} experts hit`})`,
      ...variants.map((v, i) => {
        const bytes = stepWeightBytes(cfg, hit, v.runtime.quantization === 'int8');
        const threads = v.runtime.intraOpThreads;
        const boundStepS = bytes / (threads > 1 ? bw : bw1);
        return results[i]!.decode[b]!.stepMs / 1000 > 0 ? boundStepS / (results[i]!.decode[b]!.stepMs / 1000) : 0;
      }),
    ]);
  }
  rows.push(['weight MB read per token at batch 1', ...variants.map((v) => stepWeightBytes(cfg, A, v.runtime.quantization === 'int8') / 2 ** 20)]);
  process.stdout.write(`${table(rows)}\n`);

  // cached vs recompute: 16 tokens after a 128-token prompt, batch 1 (default variant)
  const prompt = randomIds(128, cfg.vocabSize);
  const c0 = performance.now();
  const id = engine.add(request(prompt, 16));
  for (let done = false; !done; ) for (const ev of await engine.step()) if (ev.seqId === id && ev.finishReason) done = true;
  const cachedMs = performance.now() - c0;
  const r0 = performance.now();
  await generateRecompute(cfg, model.runner, model.experts, [prompt], { maxTokens: 16, sampling: GREEDY, stopTokenIds: [] });
  const recomputeMs = performance.now() - r0;
  const kv = model.kv.stats();
  const more: (string | number)[][] = [
    ['metric', 'value'],
    ['16 tokens after 128: cached ms', cachedMs],
    ['16 tokens after 128: recompute ms', recomputeMs],
    ['cached vs recompute speed-up (x)', recomputeMs / cachedMs],
    ['KV bytes/token (all layers, fp32)', kv.bytesPerToken],
  ];
  if (cfg.attention.kind === 'mla') {
    const mha = mhaEquivalentLayout(cfg).bytesPerToken;
    more.push(['KV bytes/token if K,V expanded per head', mha], ['MLA saving (x)', mha / kv.bytesPerToken]);
  }
  process.stdout.write(`\n${table(more)}\n`);

  const total = PROFILE_UNITS.reduce((s, u) => s + profile.ms[u], 0);
  process.stdout.write(`\nwhere decode time goes (${variants[0]!.label}, batch 16, ${STEPS} steps, ${(total / STEPS).toFixed(1)} ms/step):\n`);
  process.stdout.write(`${table([['unit', 'ms/step', 'share'], ...PROFILE_UNITS.filter((u) => profile.ms[u] > 0).map((u) => [u, profile.ms[u] / STEPS, `${((100 * profile.ms[u]) / total).toFixed(1)}%`])])}\n`);

  if (threadCheck) await threadComparison(dir, model);
  model.checkpoint.close();
}

/** Main-thread engine vs worker-thread engine: decode tokens/s and the main loop's p99 delay. */
async function threadComparison(dir: string, model: LoadedModel): Promise<void> {
  const B = 8;
  const steps = STEPS * 2;
  const measure = async (run: () => Promise<void>) => {
    const h = monitorEventLoopDelay({ resolution: 1 });
    h.enable();
    const t0 = performance.now();
    await run();
    const ms = performance.now() - t0;
    h.disable();
    return { tokS: (B * steps * 1000) / ms, p99: h.percentile(99) / 1e6, max: h.max / 1e6 };
  };
  const main = await measure(async () => {
    const ids = new Set<number>();
    for (let b = 0; b < B; b++) ids.add(model.engine.add(request(randomIds(16, model.cfg.vocabSize), steps + 1)));
    for (let done = 0; done < B; ) for (const ev of await model.engine.step()) if (ev.finishReason) done++;
  });
  const host = await EngineHost.start(dir, { device: 'cpu', deviceId: 0, intraOpThreads: DEFAULT_THREADS, mlaImpl: 'auto', kvCacheBytes: 2 ** 30, maxModelLen: 2048 });
  const thread = await measure(
    () =>
      new Promise<void>((resolve) => {
        let done = 0;
        for (let b = 0; b < B; b++) {
          host.submit(request(randomIds(16, model.cfg.vocabSize), steps + 1), (ev) => {
            if (ev.finishReason && ++done === B) resolve();
          }, () => resolve());
        }
      }),
  );
  await host.close();
  process.stdout.write(`\nengine placement (batch ${B}, ${steps} tokens each, incl. prefill):\n`);
  process.stdout.write(
    `${table([
      ['where', 'tokens/s', 'main loop p99 delay ms', 'max delay ms'],
      ['main thread', main.tokS, main.p99, main.max],
      ['worker thread', thread.tokS, thread.p99, thread.max],
      ['ratio thread/main', thread.tokS / main.tokS, thread.p99 / main.p99, thread.max / main.max],
    ])}\n`,
  );
}

for (let i = 0; i < PRESETS.length; i++) await benchModel(PRESETS[i]!, THREAD_CHECK && i === 0);
