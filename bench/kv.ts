/**
 * bench:kv — what the KV-cache manager turns into capacity and reuse.
 *
 * (a) Capacity: how many 1k-token sequences a fixed KV budget admits for dsv2-perf with the MLA
 *     layout (c_kv + k_pe per token per layer) vs the same model with K and V expanded per head
 *     (MHA-equivalent bytes), counted by admitting sequences into real pools until one is refused;
 *     printed beside the ratio the byte formulas predict.
 * (b) Reuse: time to first token for a request whose 1k-token prefix is cached — in the pool, and
 *     in the Redis tier (a fresh engine, empty pool) — divided by the cold TTFT, in the same run.
 * (c) The decoding sequences' past kept between steps (engine/decode-past.ts) vs copied out of the
 *     pool every step (--decode-past-bytes 0): decode step time and the part spent copying the
 *     past, batch 16 after 512-token prompts, two engines on the same prompts, rounds interleaved.
 *
 * Usage: npm run bench:kv [-- --budget-mib 1024] [--model dsv2-perf] [--reps 3] [--batch 16] [--past 512] [--parts abc]
 */
import { spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import { KvCacheManager } from '../services/kvcache/src/manager.js';
import { kvLayoutFor, mhaEquivalentLayout, type KvLayout } from '../services/kvcache/src/layout.js';
import { BlockPool } from '../services/kvcache/src/pool.js';
import { RedisKvTier } from '../services/kvcache/src/redis-tier.js';
import type { Engine, EngineRequest } from '../services/gateway/src/engine/engine.js';
import { loadModel, type LoadedModel } from '../services/gateway/src/engine/load.js';
import { DEFAULT_SAMPLING } from '../services/gateway/src/sampling/params.js';
import { StepProfile } from '../services/gateway/src/engine/dense-runner.js';
import { parseModelConfig } from '../services/model/src/config.js';
import { DEFAULT_RUNTIME } from '../services/model/src/runtime/onnx.js';
import fs from 'node:fs';
import path from 'node:path';
import { freePort } from '../services/common/src/proc.js';
import { ensurePerfModel, median, table } from './lib/perf-models.js';

const args = process.argv.slice(2);
const arg = (name: string, dflt: string) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1]! : dflt;
};
const BUDGET = Number(arg('--budget-mib', '1024')) * 2 ** 20;
const PRESET = arg('--model', 'dsv2-perf');
const REPS = Number(arg('--reps', '3'));
const PARTS = arg('--parts', 'abc');
const BATCH = Number(arg('--batch', '16'));
const PAST = Number(arg('--past', '512'));
const SEQ_LEN = 1024;
const BLOCK = 16;

/** Admits 1k-token sequences into a pool of `budget` bytes until one is refused. */
function admitUntilFull(layout: KvLayout): number {
  const kv = new KvCacheManager(BlockPool.fromBudgetBytes(layout, BUDGET, BLOCK));
  let n = 0;
  for (;;) {
    const id = kv.createSequence();
    if (!kv.ensureCapacity(id, SEQ_LEN)) return n;
    n++;
  }
}

function capacity(dir: string): void {
  const cfg = parseModelConfig(JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')));
  const mla = kvLayoutFor(cfg);
  const mha = mhaEquivalentLayout(cfg);
  const nMla = admitUntilFull(mla);
  const nMha = admitUntilFull(mha);
  process.stdout.write(`\n(a) capacity: ${SEQ_LEN}-token sequences in a ${BUDGET / 2 ** 20} MiB KV budget, ${PRESET}, blocks of ${BLOCK}\n`);
  process.stdout.write(
    `${table([
      ['layout', 'bytes/token (all layers)', 'sequences admitted'],
      [`${mla.kind} (c_kv + k_pe)`, mla.bytesPerToken, nMla],
      ['MHA-equivalent (K, V per head)', mha.bytesPerToken, nMha],
      ['ratio', mha.bytesPerToken / mla.bytesPerToken, nMla / Math.max(1, nMha)],
    ])}\n`,
  );
  process.stdout.write(`measured capacity ratio ÷ byte-formula ratio = ${(nMla / Math.max(1, nMha) / (mha.bytesPerToken / mla.bytesPerToken)).toFixed(3)}\n`);
}

// ---- (b) TTFT with a cached prefix

let seed = 99;
function randomIds(n: number, vocab: number): number[] {
  return Array.from({ length: n }, () => {
    seed = (seed * 1103515245 + 12345) >>> 0;
    return 3 + (seed % (vocab - 3));
  });
}

function req(promptIds: number[]): EngineRequest {
  return { promptIds, sampling: { ...DEFAULT_SAMPLING, temperature: 0 }, maxTokens: 1, stopTokenIds: [], logprobs: null, promptLogprobs: null };
}

/** Time from submission to the first sampled token. */
async function ttft(engine: Engine, promptIds: number[]): Promise<number> {
  const t0 = performance.now();
  const id = engine.add(req(promptIds));
  for (;;) for (const ev of await engine.step()) if (ev.seqId === id && ev.tokenId >= 0) return performance.now() - t0;
}


async function startRedis(): Promise<{ url: string; proc: ChildProcess }> {
  const port = await freePort();
  const proc = spawn('redis-server', ['--port', String(port), '--save', '', '--appendonly', 'no', '--maxmemory', '512mb', '--maxmemory-policy', 'allkeys-lru'], { stdio: 'ignore' });
  const url = `redis://127.0.0.1:${port}`;
  for (let i = 0; i < 100; i++) {
    const ok = await new Promise<boolean>((r) => {
      const c = net.connect(port, '127.0.0.1', () => {
        c.end();
        r(true);
      });
      c.on('error', () => r(false));
    });
    if (ok) return { url, proc };
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error('redis-server did not start');
}

async function reuse(dir: string): Promise<void> {
  const load = () => loadModel(dir, { runtime: DEFAULT_RUNTIME, mlaImpl: 'absorbed', kvCacheBytes: 512 * 2 ** 20, maxBatchedTokens: 2048, maxModelLen: 2048 });
  let redis: { url: string; proc: ChildProcess } | null = null;
  try {
    redis = await startRedis();
  } catch (err) {
    process.stdout.write(`(redis-server unavailable: ${(err as Error).message}; the Redis row is skipped)\n`);
  }
  const a: LoadedModel = await load();
  const tierA = redis ? new RedisKvTier(a.kv, { url: redis.url, modelId: `bench-${PRESET}` }) : null;
  if (tierA) await tierA.whenReady(2000);
  const V = a.cfg.vocabSize;
  const cold: number[] = [];
  const pool: number[] = [];
  const fromRedis: number[] = [];
  const prefixes: number[][] = [];
  await ttft(a.engine, randomIds(64, V)); // warm-up
  for (let r = 0; r < REPS; r++) {
    const prefix = randomIds(SEQ_LEN, V);
    prefixes.push(prefix);
    cold.push(await ttft(a.engine, [...prefix, ...randomIds(8, V)]));
    pool.push(await ttft(a.engine, [...prefix, ...randomIds(8, V)]));
  }
  await tierA?.flush();
  if (redis) {
    // A second engine with an empty pool (as a restarted or second gateway) on the same Redis.
    const b = await load();
    const tierB = new RedisKvTier(b.kv, { url: redis.url, modelId: `bench-${PRESET}`, fetchTimeoutMs: 500 });
    await tierB.whenReady(2000);
    await ttft(b.engine, randomIds(64, V));
    for (const prefix of prefixes) {
      const prompt = [...prefix, ...randomIds(8, V)];
      const t0 = performance.now();
      await tierB.prefetch(prompt, prompt.length, null);
      const rest = await ttft(b.engine, prompt);
      void rest;
      fromRedis.push(performance.now() - t0);
    }
    process.stdout.write(`redis tier B: ${JSON.stringify(b.kv.stats().redis)}\n`);
    await tierB.close();
    b.checkpoint.close();
  }
  await tierA?.close();
  a.checkpoint.close();
  redis?.proc.kill('SIGKILL');
  const c = median(cold);
  const rows: (string | number)[][] = [
    ['prefix source', 'TTFT ms (median)', '÷ cold'],
    ['cold (no cache)', c, 1],
    ['pool (prefix cached)', median(pool), median(pool) / c],
  ];
  if (fromRedis.length) rows.push(['Redis tier (empty pool)', median(fromRedis), median(fromRedis) / c]);
  process.stdout.write(`\n(b) TTFT with a ${SEQ_LEN}-token cached prefix (+8 new tokens), ${PRESET}, ${REPS} prefixes\n${table(rows)}\n`);
}

// ---- (c) the decode group's past kept between steps vs gathered every step

async function decodePast(dir: string): Promise<void> {
  const STEPS = 8;
  const ROUNDS = 3;
  const load = (decodePastBytes?: number) =>
    loadModel(dir, { runtime: DEFAULT_RUNTIME, mlaImpl: 'auto', kvCacheBytes: 2 ** 30, maxNumSeqs: BATCH, maxBatchedTokens: 2048, maxModelLen: 2048, decodePastBytes });
  const variants = [
    { name: 'kept between steps', model: await load(), stepMs: [] as number[], profile: new StepProfile() },
    { name: 'gathered every step', model: await load(0), stepMs: [] as number[], profile: new StepProfile() },
  ];
  const prompts = Array.from({ length: BATCH }, () => randomIds(PAST, variants[0]!.model.cfg.vocabSize));
  for (const v of variants) {
    const ids = new Set(prompts.map((p) => v.model.engine.add({ ...req(p), maxTokens: 2048 - PAST })));
    const pending = new Set(ids);
    while (pending.size > 0) for (const ev of await v.model.engine.step()) if (ev.tokenId >= 0) pending.delete(ev.seqId);
    for (let i = 0; i < 3; i++) await v.model.engine.step(); // warm-up
  }
  for (let r = 0; r < ROUNDS; r++) {
    for (const v of variants) {
      v.model.runner.profile = v.profile;
      for (let i = 0; i < STEPS; i++) {
        const t0 = performance.now();
        await v.model.engine.step();
        v.stepMs.push(performance.now() - t0);
      }
      v.model.runner.profile = null;
    }
  }
  const ref = median(variants[1]!.stepMs);
  const rows: (string | number)[][] = [['decode past', 'step ms (median)', 'tokens/s', 'copying the past, ms/step', 'staged MiB', '÷ gathered']];
  for (const v of variants) {
    const ms = median(v.stepMs);
    rows.push([v.name, ms, (BATCH * 1000) / ms, v.profile.ms.kv_gather / v.stepMs.length, v.model.runner.stagedPastBytes / 2 ** 20, ms / ref]);
    v.model.checkpoint.close();
  }
  process.stdout.write(`\n(c) decode at batch ${BATCH} after ${PAST}-token prompts, ${PRESET}: ${ROUNDS} rounds x ${STEPS} steps, interleaved\n${table(rows)}\n`);
}

const dir = ensurePerfModel(PRESET);
if (PARTS.includes('a')) capacity(dir);
if (PARTS.includes('b')) await reuse(dir);
if (PARTS.includes('c')) await decodePast(dir);
process.exit(0);
