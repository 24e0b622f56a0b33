/**
 * A tiny sweep end to end on a real redis-server, through the CLI as real processes: submit,
 * a worker SIGKILLed in the middle of a run, a second worker that finishes the sweep. The report
 * has every point exactly once; a point that cannot run is recorded as failed and the sweep goes on.
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startRedis, type RedisServer } from '../helpers/redis.js';

const BIN = path.resolve('bin/moeserve.mjs');

function cli(args: string[]): string {
  return execFileSync(process.execPath, [BIN, ...args], { encoding: 'utf8', timeout: 60_000 });
}

function exited(p: ChildProcess): Promise<number | null> {
  return new Promise((r) => (p.exitCode !== null || p.signalCode !== null ? r(p.exitCode) : p.once('exit', (code) => r(code))));
}

async function until<T>(what: string, f: () => Promise<T | null | undefined | false>, timeoutMs: number): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const v = await f();
    if (v) return v;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}`);
}

describe('moeserve experiment on BullMQ (real redis-server, real runs)', () => {
  let redis: RedisServer;
  let client: Redis;
  let dir: string;
  const prefix = `queue-${randomUUID()}`;
  const workers: ChildProcess[] = [];

  beforeAll(async () => {
    redis = await startRedis();
    client = new Redis(redis.url);
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moeserve-exp-'));
  });

  afterAll(async () => {
    for (const w of workers) if (w.exitCode === null && w.signalCode === null) w.kill('SIGKILL');
    await client?.quit();
    await redis?.stop();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('BAD CALL - a sweep with a bad field is refused before anything is queued', () => {
    const file = path.join(dir, 'bad.yaml');
    fs.writeFileSync(file, 'model: {preset: tiny-mixtral}\naxes: {experts: [8], topK: [16]}\n');
    let stderr = '';
    try {
      cli(['experiment', 'submit', file, '--redis', redis.url, '--prefix', prefix]);
    } catch (err) {
      stderr = String((err as { stderr: string }).stderr);
    }
    expect(stderr).toMatch(/sweep: axes \(point e8-k16-w1-contiguous-rnone-f32\): topK 16 exceeds experts 8/);
  });

  it('SIGKILL mid-sweep, restart: every point exactly once, a failing point recorded with its reason', async () => {
    const sweep = {
      name: 'kill test',
      model: { preset: 'tiny-mixtral' },
      // The third point's explicit placement leaves expert 7 on no worker: it can never run.
      points: [{ experts: 8, topK: 2, workers: 1 }, { experts: 8, topK: 2, workers: 2 }, { experts: 8, topK: 2, workers: 2, placement: '0-3;4-6' }],
      load: { concurrency: 2, requests: 4, promptTokens: 8, outputTokens: 4, warmupRequests: 1 },
      network: { mode: 'netns', bandwidthMbit: 200 },
      retry: { attempts: 2, backoffMs: 100 },
    };
    const file = path.join(dir, 'sweep.json');
    fs.writeFileSync(file, JSON.stringify(sweep));
    const out = path.join(dir, 'out');
    const id = cli(['experiment', 'submit', file, '--redis', redis.url, '--prefix', prefix, '--out', out]).trim();
    expect(id).toMatch(/^kill-test-[0-9a-z]+$/);
    const key = `${prefix}:experiment:${id}`;
    const workerArgs = [BIN, 'experiment', 'worker', '--redis', redis.url, '--prefix', prefix, '--lock-ms', '1500', '--cache-dir', path.join(dir, 'models'), '--log-level', 'warn'];

    const first = spawn(process.execPath, workerArgs, { stdio: ['ignore', 'pipe', 'pipe'] });
    workers.push(first);
    // Kill it while the second point runs: its gateway and workers are up.
    await until('the first point recorded', async () => (await client.hlen(`${key}:results`)) === 1, 90_000);
    await until('the second point running', async () => (await client.hexists(`${key}:started`, 'e8-k2-w2-contiguous-rnone-f32-n0')) === 1, 30_000);
    await new Promise((r) => setTimeout(r, 2500));
    first.kill('SIGKILL');
    await exited(first);
    // Its watchdog removes the run's namespaces (and kills its gateway and workers).
    await until('namespaces of the killed worker removed', async () => !execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' }).includes(`msx-${first.pid}-`) || null, 10_000).catch(() => {
      throw new Error(`namespaces of ${first.pid} left behind`);
    });

    const second = spawn(process.execPath, [...workerArgs, '--exit-after', id], { stdio: ['ignore', 'pipe', 'pipe'] });
    workers.push(second);
    let stdout = '';
    second.stdout!.on('data', (d) => (stdout += d));
    let stderr = '';
    second.stderr!.on('data', (d) => (stderr += d));
    const code = await Promise.race([exited(second), new Promise<'timeout'>((r) => setTimeout(r, 150_000, 'timeout'))]);
    expect(code, stderr).toBe(0);
    expect(stdout).toContain(`report ${id}: ${path.join(out, 'report.md')}`);

    const lines = fs.readFileSync(path.join(out, 'results.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l)).sort((a, b) => a.index - b.index);
    expect(lines.map((l) => l.pointId)).toEqual(['e8-k2-w1-contiguous-rnone-f32-n0', 'e8-k2-w2-contiguous-rnone-f32-n0', 'e8-k2-w2-0.3.4.6-rnone-f32-n0']);
    expect(lines.map((l) => l.status)).toEqual(['ok', 'ok', 'failed']);
    // The first point ran once, before the kill; the second ran again after it.
    expect(lines[0].attempts).toBe(1);
    expect(lines[2].reason).toMatch(/placement 0-3;4-6 .*expert 7 on no worker/);
    expect(lines[2].attempts).toBe(1);
    for (const l of lines.slice(0, 2)) {
      expect(l.measurement.load.completed).toBe(4);
      expect(l.measurement.processedTokens).toBe(4 * (8 + 4 - 1));
      // Total (token, expert) pairs are exact: every processed token picks top-2 in each of 2 MoE layers.
      const pairs = l.measurement.workers.reduce((a: number, w: { pairsPerLayer: Record<string, number> }) => a + Object.values(w.pairsPerLayer).reduce((x, y) => x + y, 0), 0);
      expect(pairs).toBe(4 * 11 * 2 * 2);
      expect(l.measurement.network.mode === 'netns' || l.measurement.network.fallbackReason !== null).toBe(true);
    }
    expect(await client.hlen(`${key}:results`)).toBe(3);

    const csv = fs.readFileSync(path.join(out, 'points.csv'), 'utf8').trim().split('\n');
    expect(csv).toHaveLength(4);
    const report = fs.readFileSync(path.join(out, 'report.md'), 'utf8');
    expect(report).toMatch(/3 runs: 2 ok, 1 failed/);
    expect(report).toContain('### Failed runs');
    expect(report).toMatch(/Payload bytes per processed token, 2 runs with workers: mean \|error\|/);
    for (const f of ['throughput_vs_experts.svg', 'wire_bytes_per_token.svg', 'balancedness_per_layer.svg', 'projection_network_vs_compute.svg']) expect(fs.readFileSync(path.join(out, f), 'utf8')).toMatch(/^<svg /);

    const status = cli(['experiment', 'status', id, '--redis', redis.url, '--prefix', prefix]);
    expect(status).toMatch(/runs: 3 total, 2 ok, 1 failed, 0 to go/);
    expect(status).toContain('[##############################] 3/3 runs (1 failed) report written');
  });
});
