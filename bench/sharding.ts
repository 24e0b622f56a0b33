/**
 * bench:sharding — decode speed with the routed experts in-process vs on 2 and 4 local worker
 * processes (gRPC over Unix sockets), on generated mixtral-perf and dsv2-perf checkpoints.
 *
 * One gateway (dense runner + KV cache) is loaded once per model, its ONNX Runtime pool not
 * spinning (as a gateway with workers serves; the in-process server's pool spins, so served
 * in-process decode is faster than this bench's in-process figure); the engine's RoutedExperts is
 * swapped between the topologies, which all stay up, and the measurements interleave (round r:
 * in-process, 2 workers, 4 workers) so drift on this shared machine hits them alike. Per
 * (topology, batch): the median decode step over the measured steps of every round, after
 * warm-up; printed as tokens/s and as a ratio to in-process measured in the same run, with
 * round trips per decode step and bytes on the wire per generated token. Then, where a step's
 * time goes, per topology: the gateway's units (StepProfile) and the workers' own compute time
 * (their Stats), so the remainder is transport + scheduling.
 *
 * Last, how a worker runs its experts: the batched graph it uses vs per-expert sessions vs ONNX
 * Runtime's com.microsoft MoE op, on one 2-worker shard of the layer (bench/lib/expert-variants.ts).
 *
 * Usage: npm run bench:sharding [-- mixtral-perf dsv2-perf] [--steps N] [--rounds R]
 *        [--batches 1,16] [--transport unix|tcp] [--worker-prof DIR] [--no-variants]
 * --worker-prof DIR runs the workers under node --cpu-prof (profiles written to DIR on exit).
 */
import fs from 'node:fs';
import { DEFAULT_TOPOLOGY, startTopology, type RoutedExperts, type Topology } from '../router/index.js';
import { PROFILE_UNITS, StepProfile } from '../services/gateway/src/engine/dense-runner.js';
import type { Engine, EngineRequest } from '../services/gateway/src/engine/engine.js';
import { loadModel, type LoadedModel } from '../services/gateway/src/engine/load.js';
import { DEFAULT_SAMPLING } from '../services/gateway/src/sampling/params.js';
import { DEFAULT_RUNTIME } from '../services/model/src/runtime/onnx.js';
import { measureExpertVariants } from './lib/expert-variants.js';
import { ensurePerfModel, median, table } from './lib/perf-models.js';

const args = process.argv.slice(2);
const flag = (name: string): string | undefined => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const STEPS = Number(flag('--steps') ?? 8);
const ROUNDS = Number(flag('--rounds') ?? 3);
const BATCHES = (flag('--batches') ?? '1,16').split(',').map(Number);
const TRANSPORT = (flag('--transport') ?? 'unix') as 'unix' | 'tcp';
const WORKER_PROF = flag('--worker-prof');
const VARIANTS = !args.includes('--no-variants');
const VALUED = new Set(['--steps', '--rounds', '--batches', '--transport', '--worker-prof']);
const presets = args.filter((a, i) => !a.startsWith('--') && !VALUED.has(args[i - 1] ?? ''));
const PRESETS = presets.length ? presets : ['mixtral-perf', 'dsv2-perf'];
const WARMUP = 3;
const PROMPT_LEN = 16;
const GREEDY = { ...DEFAULT_SAMPLING, temperature: 0 };

let rngState = 4242;
function randomIds(n: number, vocab: number): number[] {
  return Array.from({ length: n }, () => {
    rngState = (rngState * 1103515245 + 12345) >>> 0;
    return 3 + (rngState % (vocab - 3));
  });
}

function request(promptIds: number[]): EngineRequest {
  return { promptIds, sampling: GREEDY, maxTokens: 512, stopTokenIds: [], logprobs: null, promptLogprobs: null };
}

/** The engine's RoutedExperts, pointed at one topology at a time. */
class Switch implements RoutedExperts {
  target: RoutedExperts | null = null;
  forward(layer: number, x: Float32Array, n: number, ids: Int32Array, w: Float32Array, k: number, out: Float32Array): Promise<void> {
    return this.target!.forward(layer, x, n, ids, w, k, out);
  }
}

interface Sample {
  readonly stepMs: number[];
  requests: number;
  bytes: number;
  tokens: number;
  steps: number;
  readonly profile: StepProfile;
  /** Router: wall ms of the routed-expert calls, and of their slowest worker's compute. */
  forwardMs: number;
  criticalMs: number;
  /** Summed one-way latencies (µs) and their count. */
  requestUs: number;
  replyUs: number;
  answered: number;
  /** CPU ms (user + system, all threads) of the gateway and of all its workers over the measured steps. */
  gatewayCpuMs: number;
  workersCpuMs: number;
  wallMs: number;
}

const CLK_TCK = 100; // Linux USER_HZ for /proc/<pid>/stat

/** CPU time of a process, ms (Linux /proc; 0 elsewhere). */
function cpuMs(pid: number): number {
  try {
    const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
    return ((Number(rest[11]) + Number(rest[12])) * 1000) / CLK_TCK; // utime, stime (fields 14, 15)
  } catch {
    return 0;
  }
}

function workersCpuMs(t: Topology): number {
  return t.workers.reduce((sum, w) => sum + (w.process?.pid ? cpuMs(w.process.pid) : 0), 0);
}

function newSample(): Sample {
  return { stepMs: [], requests: 0, bytes: 0, tokens: 0, steps: 0, profile: new StepProfile(), forwardMs: 0, criticalMs: 0, requestUs: 0, replyUs: 0, answered: 0, gatewayCpuMs: 0, workersCpuMs: 0, wallMs: 0 };
}

function latency(t: Topology): { requestUs: number; replyUs: number; count: number } {
  const sum = { requestUs: 0, replyUs: 0, count: 0 };
  for (const w of t.workers) {
    if (!w.client) continue;
    sum.requestUs += w.client.latency.requestUs;
    sum.replyUs += w.client.latency.replyUs;
    sum.count += w.client.latency.count;
  }
  return sum;
}

/** Prefill `batch` prompts, warm up, then time STEPS decode steps into `s`. */
async function measure(model: LoadedModel, engine: Engine, t: Topology, batch: number, s: Sample): Promise<void> {
  const ids: number[] = [];
  for (let b = 0; b < batch; b++) ids.push(engine.add(request(randomIds(PROMPT_LEN, model.cfg.vocabSize))));
  const pending = new Set(ids);
  while (pending.size > 0) for (const ev of await engine.step()) if (ev.tokenId >= 0) pending.delete(ev.seqId);
  for (let i = 0; i < WARMUP; i++) await engine.step();
  const before = t.stats.snapshot();
  const latBefore = latency(t);
  const cpu0 = [cpuMs(process.pid), workersCpuMs(t), performance.now()];
  model.runner.profile = s.profile;
  for (let i = 0; i < STEPS; i++) {
    const t0 = performance.now();
    const events = await engine.step();
    s.stepMs.push(performance.now() - t0);
    s.tokens += events.filter((e) => e.tokenId >= 0).length;
  }
  model.runner.profile = null;
  s.gatewayCpuMs += cpuMs(process.pid) - cpu0[0]!;
  s.workersCpuMs += workersCpuMs(t) - cpu0[1]!;
  s.wallMs += performance.now() - cpu0[2]!;
  const after = t.stats.snapshot();
  const latAfter = latency(t);
  s.requestUs += latAfter.requestUs - latBefore.requestUs;
  s.replyUs += latAfter.replyUs - latBefore.replyUs;
  s.answered += latAfter.count - latBefore.count;
  s.steps += STEPS;
  s.requests += after.requests - before.requests;
  s.bytes += after.bytesSent - before.bytesSent + (after.bytesReceived - before.bytesReceived);
  s.forwardMs += after.forwardMs - before.forwardMs;
  s.criticalMs += after.criticalComputeMs - before.criticalComputeMs;
  for (const id of ids) engine.abort(id);
}

async function benchModel(preset: string): Promise<void> {
  const dir = ensurePerfModel(preset);
  const sw = new Switch();
  const t0 = performance.now();
  // The gateway's pool sleeps between runs (the Switch is not in-process: loadModel), as a gateway
  // of workers serves; a spinning one would hold the workers' cores. So in-process here is slower
  // than served.
  const model = await loadModel(dir, { runtime: DEFAULT_RUNTIME, mlaImpl: 'auto', experts: sw, kvCacheBytes: 2 ** 30, maxNumSeqs: 64, maxBatchedTokens: 2048, maxModelLen: 1024 });
  const { cfg, engine } = model;
  const log = (msg: string, level: string) => {
    if (level !== 'info') process.stderr.write(`[${level}] ${msg}\n`);
  };
  const base = { ...DEFAULT_TOPOLOGY, modelDir: dir, runtime: DEFAULT_RUNTIME, transport: TRANSPORT, log };
  const topologies: [string, Topology][] = [];
  for (const [name, workers] of [['in-process', 0], ['2 workers', 2], ['4 workers', 4]] as const) {
    const nodeArgs = WORKER_PROF && workers > 0 ? ['--cpu-prof', `--cpu-prof-dir=${WORKER_PROF}`] : undefined;
    topologies.push([name, await startTopology(cfg, { ...base, workers, workerNodeArgs: nodeArgs })]);
  }
  const loadS = (performance.now() - t0) / 1000;
  process.stdout.write(`\n## ${preset}  (${cfg.architecture}, hidden ${cfg.hiddenSize}, ${cfg.numLayers} layers, ${cfg.moe.nRoutedExperts} experts top-${cfg.moe.nActivatedExperts}${cfg.moe.shared ? ' + shared' : ''}; gateway + 7 workers up in ${loadS.toFixed(0)} s)\n`);
  for (const [name, t] of topologies) process.stdout.write(`  ${name}: ${t.description}\n`);

  const samples = new Map<string, Sample>();
  const key = (name: string, b: number) => `${name}|${b}`;
  for (let r = 0; r < ROUNDS; r++) {
    for (const b of BATCHES) {
      for (const [name, t] of topologies) {
        sw.target = t.experts;
        const s = samples.get(key(name, b)) ?? newSample();
        samples.set(key(name, b), s);
        await measure(model, engine, t, b, s);
      }
    }
  }

  const moeLayers = cfg.layers.filter((l) => l.mlp === 'moe').length;
  const rows: (string | number)[][] = [['topology', 'batch', 'step ms (median)', 'tokens/s', 'ratio to in-process', 'round trips/step', 'wire KiB/token']];
  for (const b of BATCHES) {
    const ref = median(samples.get(key('in-process', b))!.stepMs);
    for (const [name] of topologies) {
      const s = samples.get(key(name, b))!;
      const ms = median(s.stepMs);
      rows.push([name, b, ms, (b * 1000) / ms, ref / ms, s.requests / s.steps, s.bytes / s.tokens / 1024]);
    }
  }
  process.stdout.write(`\ndecode (prompts of ${PROMPT_LEN} tokens; ${ROUNDS} rounds x ${STEPS} steps each; ${moeLayers} MoE layers per step):\n${table(rows)}\n`);

  // Where a decode step goes, per topology: the gateway's units, and the routed experts split into
  // the slowest worker's own compute per call (decode + ONNX Runtime + encode, as it reports) and
  // the rest (serialization, gRPC/HTTP2, the kernel, process wake-ups, combine).
  for (const b of BATCHES) {
    const units = PROFILE_UNITS.filter((u) => topologies.some(([name]) => samples.get(key(name, b))!.profile.ms[u] > 0.005 * STEPS));
    const per = (n: string, f: (s: Sample) => number) => {
      const s = samples.get(key(n, b))!;
      return f(s) / s.steps;
    };
    const prof: (string | number)[][] = [['ms per decode step', ...topologies.map(([n]) => n)]];
    prof.push(['step (mean)', ...topologies.map(([n]) => per(n, (s) => s.stepMs.reduce((x, y) => x + y, 0)))]);
    for (const u of units) prof.push([u, ...topologies.map(([n]) => per(n, (s) => s.profile.ms[u]))]);
    prof.push(['routed experts: forward calls', ...topologies.map(([n]) => per(n, (s) => s.forwardMs))]);
    prof.push(['  of which slowest worker compute', ...topologies.map(([n]) => per(n, (s) => s.criticalMs))]);
    prof.push(['  of which transport + wake-ups', ...topologies.map(([n]) => per(n, (s) => s.forwardMs - s.criticalMs))]);
    const oneWay = (n: string, f: (s: Sample) => number) => {
      const s = samples.get(key(n, b))!;
      return s.answered > 0 ? f(s) / s.answered / 1000 : '-';
    };
    prof.push(['request one-way latency, ms (mean)', ...topologies.map(([n]) => oneWay(n, (s) => s.requestUs))]);
    prof.push(['reply one-way latency, ms (mean)', ...topologies.map(([n]) => oneWay(n, (s) => s.replyUs))]);
    prof.push(['CPU: gateway process', ...topologies.map(([n]) => per(n, (s) => s.gatewayCpuMs))]);
    prof.push(['CPU: worker processes (sum)', ...topologies.map(([n]) => per(n, (s) => s.workersCpuMs))]);
    prof.push(['wall - all CPU (no process running, at least)', ...topologies.map(([n]) => per(n, (s) => s.wallMs - s.gatewayCpuMs - s.workersCpuMs))]);
    process.stdout.write(`\nwhere a decode step goes, batch ${b}:\n${table(prof)}\n`);
  }

  for (const [, t] of topologies) await t.close();
  model.checkpoint.close();

  if (VARIANTS) {
    const S = Math.ceil(cfg.moe.nRoutedExperts / 2);
    const res = await measureExpertVariants(cfg, S, [1, 16, 128]);
    const vt: (string | number)[][] = [['expert runtime (one layer, ' + S + ' experts)', 'rows', 'ms per call (median)', 'max |diff| vs batched']];
    for (const r of res) vt.push([r.name, r.n, r.ms, r.maxDiff]);
    process.stdout.write(`\nhow a worker runs its experts (random weights, real shapes; top-${cfg.moe.nActivatedExperts}):\n${table(vt)}\n`);
  }
}

for (const p of PRESETS) await benchModel(p);
