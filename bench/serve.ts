/**
 * bench:serve — the OpenAI server under load, on a generated mixtral-perf checkpoint.
 *
 * One process, measured side by side in one run (this machine is shared and noisy: read the
 * ratios and medians):
 * - the server in-process on a loopback port (engine on its thread, as `moeserve serve` runs
 *   it), driven by the Node load runner (loadtest/runner.ts, the k6 throughput scenario): at
 *   concurrency 1, 4, 16 and 64, 64-token prompts, 64 output tokens (ignore_eos), streamed —
 *   request throughput, output tokens/s, TTFT and ITL p50/p99 (vLLM `bench serve` definitions);
 * - the engine alone (an in-process Engine, no HTTP, no thread) with the same prompts at the
 *   same concurrency, right after each HTTP level: output tokens/s;
 * - serving overhead: output tokens/s through HTTP ÷ the engine alone.
 * - at the end, each MoE layer's expert balancedness over the whole HTTP run (from /metrics).
 *
 * Usage: npm run bench:serve [-- --levels 1,4,16,64] [--output-tokens 64] [--quick]
 */
import { parseArgs } from 'node:util';
import { pino } from 'pino';
import { formatBalance, formatReports, runLoad, runPrompts, scrapeRouting, type LoadConfig, type LoadReport } from '../loadtest/runner.js';
import { routingDelta, SCENARIOS } from '../loadtest/lib/scenarios.js';
import type { Engine } from '../services/gateway/src/engine/engine.js';
import { loadModel } from '../services/gateway/src/engine/load.js';
import { httpOptions } from '../services/gateway/src/http/options.js';
import { DEFAULT_SAMPLING } from '../services/gateway/src/sampling/params.js';
import { startServer } from '../services/gateway/src/server.js';
import { DEFAULT_RUNTIME } from '../services/model/src/runtime/onnx.js';
import { ensurePerfModel, table } from './lib/perf-models.js';

const { values } = parseArgs({
  options: {
    levels: { type: 'string', default: '1,4,16,64' },
    'output-tokens': { type: 'string' },
    quick: { type: 'boolean', default: false },
  },
});
const LEVELS = values.levels.split(',').map(Number);
const OUTPUT = Number(values['output-tokens'] ?? (values.quick ? 16 : 64));
/** Requests per level: 4 at concurrency 1, two waves at 4, one wave above (a wave of 64 takes ~2 min here). */
const REQUESTS = (c: number) => (values.quick ? Math.max(2, c) : c === 1 ? 4 : c === 4 ? 8 : c);
const PRESET = 'mixtral-perf';
/** The same engine settings on both sides. */
const ENGINE = { maxNumSeqs: 64, maxBatchedTokens: 512, maxModelLen: 2048, kvCacheBytes: 2 * 2 ** 30, blockSize: 16 };
const scenario = { ...SCENARIOS.throughput, outputTokens: OUTPUT };

/** The engine alone: `concurrency` sequences in flight, the next added as one finishes; output tokens/s. */
async function engineAlone(engine: Engine, prompts: number[][], concurrency: number): Promise<{ tokS: number; tokens: number; seconds: number }> {
  const sampling = { ...DEFAULT_SAMPLING, temperature: 0 };
  const live = new Set<number>();
  let next = 0;
  const add = () => live.add(engine.add({ promptIds: prompts[next++]!, sampling, maxTokens: OUTPUT, stopTokenIds: [], logprobs: null, promptLogprobs: null }));
  while (live.size < concurrency && next < prompts.length) add();
  const t0 = performance.now();
  let tokens = 0;
  while (live.size > 0) {
    for (const ev of await engine.step()) {
      if (ev.tokenId >= 0) tokens++;
      if (ev.finishReason) {
        live.delete(ev.seqId);
        if (next < prompts.length) add();
      }
    }
  }
  const seconds = (performance.now() - t0) / 1000;
  return { tokS: tokens / seconds, tokens, seconds };
}

const dir = ensurePerfModel(PRESET);
const logger = pino({ level: 'warn' });
process.stdout.write(`## bench:serve on ${PRESET} (levels ${LEVELS.join(', ')}; ${scenario.promptTokens}-token prompts, ${OUTPUT} output tokens, streamed)\n`);
const t0 = performance.now();
const server = await startServer(
  {
    modelDir: dir,
    host: '127.0.0.1',
    port: 0,
    http: httpOptions({ servedModelName: PRESET, maxWaiting: 1024 }),
    engine: { device: 'cpu', deviceId: 0, intraOpThreads: 1, mlaImpl: 'absorbed', ...ENGINE },
    shutdownGraceMs: 1000,
  },
  logger,
);
const alone = await loadModel(dir, { runtime: DEFAULT_RUNTIME, mlaImpl: 'absorbed', ...ENGINE });
process.stdout.write(`server and engine loaded in ${((performance.now() - t0) / 1000).toFixed(1)} s\n`);

const base: Omit<LoadConfig, 'concurrency' | 'requests'> = { baseUrl: server.url, model: PRESET, scenario, vocabSize: alone.cfg.vocabSize, seed: 7 };
// warm-up: both paths, one short request
await runLoad({ ...base, concurrency: 1, requests: 1, promptOffset: 999_999 });
await engineAlone(alone.engine, runPrompts({ ...base, requests: 1, promptOffset: 999_998 }), 1);

const before = await scrapeRouting(server.url);
const reports: LoadReport[] = [];
const rows: (string | number)[][] = [['concurrency', 'requests', 'HTTP out tok/s', 'engine alone out tok/s', 'HTTP / engine']];
for (const [i, c] of LEVELS.entries()) {
  const cfg: LoadConfig = { ...base, concurrency: c, requests: REQUESTS(c), promptOffset: i * 10_000 };
  const r = await runLoad(cfg);
  reports.push(r);
  const e = await engineAlone(alone.engine, runPrompts(cfg), c);
  rows.push([c, cfg.requests, r.outputTokS, e.tokS, r.outputTokS / e.tokS]);
  process.stdout.write(`concurrency ${c}: HTTP ${r.outputTokS.toFixed(1)} tok/s (${r.completed} ok, ${r.failed} failed), engine alone ${e.tokS.toFixed(1)} tok/s\n`);
  for (const err of r.errors) process.stdout.write(`  error: ${err}\n`);
}
const after = await scrapeRouting(server.url);

process.stdout.write(`\nthrough HTTP (vLLM bench-serve metrics; ms):\n${formatReports(reports)}\n`);
process.stdout.write(`\nserving overhead (same prompts, same concurrency, engine settings ${JSON.stringify(ENGINE)}):\n${table(rows)}\n`);
process.stdout.write(`\nrouted load over the HTTP runs (in-process: one worker "local"):\n${formatBalance(routingDelta(before, after))}\n`);

await server.close();
alone.checkpoint.close();
process.stdout.write(`\ntotal ${((performance.now() - t0) / 1000).toFixed(0)} s\n`);
