/**
 * A local expert worker killed (issue 13, item 5). A real server with `--workers 2` (mixtral-tiny:
 * 8 experts, w0 holds 0-3 and w1 holds 4-7 in every MoE layer); w1 gets SIGKILL:
 * - /health stops saying 200: 503 experts_unavailable, status "unavailable", naming experts 4-7 of
 *   each MoE layer and w1 as down; /metrics has moeserve:worker_up{worker="w1"} 0;
 * - nobody restarts anything by hand: the gateway restarts w1 on its socket, w1 rejoins, /health
 *   is 200 again, worker_up 1 and worker_restarts_total 1, and the same request gives the same
 *   greedy output as before the kill.
 */
import { execFileSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_TOPOLOGY } from '../../router/index.js';
import { loadExpected } from '../helpers/golden.js';
import { metric, startTestServer, waitFor, type TestServer } from './http-helpers.js';

const LEN7 = loadExpected('mixtral-tiny').prompts.len7.input_ids;

/** The pid of this process's child `moeserve worker --id local-<i>`. */
function localWorkerPid(i: number): number {
  const out = execFileSync('ps', ['-o', 'pid=,args=', '--ppid', String(process.pid)], { encoding: 'utf8' });
  const line = out.split('\n').find((l) => l.includes(' worker ') && l.includes(`--id local-${i} `));
  if (!line) throw new Error(`no local worker ${i} among: ${out}`);
  return Number(line.trim().split(/\s+/, 1)[0]);
}

describe('a killed local worker is restarted and rejoins', () => {
  let t: TestServer;
  beforeAll(async () => {
    t = await startTestServer({
      captureLogs: true,
      engine: { experts: { ...DEFAULT_TOPOLOGY, workers: 2, dispatch: { ...DEFAULT_TOPOLOGY.dispatch, reconnectMinMs: 50, reconnectMaxMs: 200 } } },
    });
  });
  afterAll(async () => t?.close());

  it('EXPECTED FAILURE - /health names the experts lost with w1; then w1 is back without a hand restart', async () => {
    const req = { model: t.model, prompt: LEN7, max_tokens: 6, temperature: 0 };
    const before = await t.client.completions.create(req);
    expect((await fetch(`${t.url}/health`)).status).toBe(200);
    expect(await metric(t.url, 'moeserve:worker_up', { worker: 'w1' })).toBe(1);

    const pid = localWorkerPid(1);
    const killedAt = performance.now();
    process.kill(pid, 'SIGKILL');

    let seen: { status: number; body: any } | null = null;
    await waitFor('/health to report w1 down', async () => {
      const res = await fetch(`${t.url}/health`);
      if (res.status === 200) return false;
      seen = { status: res.status, body: await res.json() };
      return true;
    });
    const h = seen!;
    expect(h.status).toBe(503);
    expect(h.body.error).toMatchObject({ code: 'experts_unavailable', type: 'service_unavailable_error', param: null });
    expect(h.body.error.message).toMatch(/^experts 4-7 of MoE layers 0, 1, 2 have no live worker \(w1 down\)$/);
    expect(h.body.status).toBe('unavailable');
    expect(h.body.unavailable_experts).toEqual([0, 1, 2].map((layer) => ({ layer, experts: [4, 5, 6, 7] })));
    expect(h.body.workers.map((w: { name: string; up: boolean }) => [w.name, w.up])).toEqual([['w0', true], ['w1', false]]);

    await waitFor('w1 restarted and rejoined', async () => (await fetch(`${t.url}/health`)).status === 200, 60_000);
    const backMs = performance.now() - killedAt;
    expect(localWorkerPid(1)).not.toBe(pid);
    const after = await t.client.completions.create(req);
    expect(after.choices[0]!.text).toBe(before.choices[0]!.text);
    expect(await metric(t.url, 'moeserve:worker_up', { worker: 'w1' })).toBe(1);
    expect(await metric(t.url, 'moeserve:worker_restarts_total', { worker: 'w1' })).toBe(1);
    expect(await metric(t.url, 'moeserve:worker_restarts_total', { worker: 'w0' })).toBe(0);
    const lastSeen = await metric(t.url, 'moeserve:worker_last_seen_seconds', { worker: 'w1' });
    expect(Math.abs(lastSeen! - Date.now() / 1000)).toBeLessThan(30);
    console.log(`w1 SIGKILLed: /health 503 naming experts 4-7, back to 200 after ${backMs.toFixed(0)} ms (restart + rejoin)`);
  });
});
