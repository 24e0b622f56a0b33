/**
 * The shared KV tier with real processes: two `moeserve serve` gateways (child processes) on one
 * real redis-server.
 * - Gateway A computes a 1k-token prompt cold; its full blocks are written to Redis behind it.
 * - Gateway B (empty pool) serves the same prompt from the tier: Redis hit tokens in its
 *   /metrics, and the same output as A's cold one.
 * - Redis killed mid-run: requests to B still succeed, with the output a cold run gives.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { Redis } from 'ioredis';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BIN, REPO } from '../helpers/cli.js';
import { fixtureDir, loadExpected } from '../helpers/golden.js';
import { freePort, startRedis, type RedisServer } from '../helpers/redis.js';
import { metric, waitFor } from './http-helpers.js';

interface Gateway {
  url: string;
  client: OpenAI;
  proc: ChildProcess;
}

async function startGateway(redisUrl: string | null): Promise<Gateway> {
  const port = await freePort();
  const args = [BIN, 'serve', '--model', fixtureDir('mixtral-tiny'), '--port', String(port), '--kv-cache-bytes', '8MiB', '--max-model-len', '2048', '--log-level', 'warn'];
  if (redisUrl) args.push('--kv-redis', redisUrl);
  const proc = spawn(process.execPath, args, { cwd: REPO, stdio: ['ignore', 'ignore', 'inherit'] });
  const url = `http://127.0.0.1:${port}`;
  await waitFor(
    `gateway on ${port}`,
    async () => {
      if (proc.exitCode !== null) throw new Error(`gateway exited with ${proc.exitCode}`);
      return fetch(`${url}/health`).then((r) => r.ok, () => false);
    },
    60_000,
  );
  return { url, proc, client: new OpenAI({ baseURL: `${url}/v1`, apiKey: 'none', maxRetries: 0 }) };
}

function stopGateway(g: Gateway | undefined): Promise<void> {
  if (!g || g.proc.exitCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    g.proc.once('exit', () => resolve());
    g.proc.kill('SIGTERM');
  });
}

async function complete(g: Gateway, prompt: number[]): Promise<string> {
  const r = await g.client.completions.create({ model: fixtureDir('mixtral-tiny'), prompt, max_tokens: 8, temperature: 0 });
  return r.choices[0]!.text;
}

describe('two gateways on one Redis', () => {
  let redis: RedisServer;
  let a: Gateway | undefined;
  let b: Gateway | undefined;
  let cold: Gateway | undefined;
  const base = loadExpected('mixtral-tiny').prompts.len33.input_ids;
  // A 1024-token shared prefix (+ a few distinct tokens per request), ids inside the vocabulary.
  const prefix = Array.from({ length: 1024 }, (_, i) => (base[i % base.length]! + 7 * Math.floor(i / base.length)) % 509);
  const promptA = [...prefix, 11, 12, 13];

  beforeAll(async () => {
    redis = await startRedis({ maxmemory: '256mb' });
    [a, b, cold] = await Promise.all([startGateway(redis.url), startGateway(redis.url), startGateway(null)]);
  });
  afterAll(async () => {
    await Promise.all([stopGateway(a), stopGateway(b), stopGateway(cold)]);
    await redis?.stop();
  });

  it('gateway B serves the 1k-token prefix from the tier: hit tokens in its metrics, same output', async () => {
    const outA = await complete(a!, promptA);
    // Write-behind: wait until A's 64 full prefix blocks are in Redis.
    const r = new Redis(redis.url);
    await waitFor('prefix blocks in redis', async () => (await r.dbsize()) >= 64, 20_000);
    r.disconnect();
    const before = (await metric(b!.url, 'moeserve:kv_redis_hits_total')) ?? 0;
    const outB = await complete(b!, promptA);
    expect(outB).toBe(outA);
    const hits = (await metric(b!.url, 'moeserve:kv_redis_hits_total'))! - before;
    expect(hits).toBeGreaterThanOrEqual(1024);
    // and B did not find it in its own pool before asking the tier
    expect(await metric(b!.url, 'moeserve:prefix_cache_hits_total')).toBeGreaterThanOrEqual(1024);
    expect(await complete(cold!, promptA)).toBe(outA);
  });

  it('Redis killed mid-run: requests still succeed with the cold output', async () => {
    // Prompts B has never seen (so it asks the tier), some in flight while Redis dies, some after.
    const fresh = (k: number) => Array.from({ length: 600 }, (_, i) => (prefix[(i * 13 + k) % prefix.length]! + 31 * (k + 1)) % 509);
    const inFlight = [0, 1, 2].map((k) => complete(b!, fresh(k)));
    await redis.kill();
    const after = [3, 4].map((k) => complete(b!, fresh(k)));
    const got = await Promise.all([...inFlight, ...after]);
    const want: string[] = [];
    for (let k = 0; k < 5; k++) want.push(await complete(cold!, fresh(k)));
    expect(got).toEqual(want);
    expect(await metric(b!.url, 'moeserve:kv_redis_errors_total')).toBeGreaterThan(0);
  });
});
