/**
 * Worker failure with real processes (mixtral-tiny; workers are `moeserve worker` processes on
 * Unix sockets; the gateway is this process, driving the engine step by step):
 * - with replicas, a worker SIGKILLed mid-generation: the generation completes with the same ids;
 * - without, the affected sequences end with a clear experts_unavailable error within 2 s, the
 *   gateway and its engine stay usable; the worker restarted at the same address: the next
 *   request succeeds within 5 s, without restarting the gateway.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { DEFAULT_TOPOLOGY, startTopology, type Topology } from '../../router/index.js';
import type { Engine, StepEvent } from '../../services/gateway/src/engine/engine.js';
import { loadModel, type LoadedModel } from '../../services/gateway/src/engine/load.js';
import { DEFAULT_SAMPLING } from '../../services/gateway/src/sampling/params.js';
import { DEFAULT_RUNTIME } from '../../services/model/src/runtime/onnx.js';
import { readModelConfig } from '../../services/model/src/model-dir.js';
import { spawnWorker, stopProcess, type WorkerProcess } from '../../workers/src/spawn.js';
import { fixtureDir, loadExpected, PROMPTS } from '../helpers/golden.js';

const FIXTURE = 'mixtral-tiny';
const DIR = fixtureDir(FIXTURE);
const expected = loadExpected(FIXTURE);
const cfg = readModelConfig(DIR);
const GREEDY = { ...DEFAULT_SAMPLING, temperature: 0 };
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'moeserve-fail-'));
const procs: WorkerProcess[] = [];
const cleanups: (() => Promise<void>)[] = [];

function worker(name: string, experts: string): { proc: WorkerProcess; socket: string } {
  const socket = path.join(tmp, `${name}.sock`);
  const proc = spawnWorker({ args: ['--model', DIR, '--experts', experts, '--socket', socket, '--log-level', 'error', '--exit-with-stdin'], name, startTimeoutMs: 60_000 });
  procs.push(proc);
  return { proc, socket };
}

async function gateway(sockets: string[], deadlineMs = 2000): Promise<{ topology: Topology; model: LoadedModel }> {
  const topology = await startTopology(cfg, {
    ...DEFAULT_TOPOLOGY,
    modelDir: DIR,
    runtime: DEFAULT_RUNTIME,
    workerAddrs: sockets.map((s) => `unix:${s}`),
    dispatch: { ...DEFAULT_TOPOLOGY.dispatch, deadlineMs, reconnectMinMs: 50, reconnectMaxMs: 400 },
    log: () => undefined,
  });
  const model = await loadModel(DIR, { runtime: DEFAULT_RUNTIME, mlaImpl: 'absorbed', blockSize: 4, kvCacheBytes: 4 << 20, experts: topology.experts });
  cleanups.push(async () => {
    await topology.close();
    model.checkpoint.close();
  });
  return { topology, model };
}

function add(engine: Engine, ids: number[], maxTokens = 16): number {
  return engine.add({ promptIds: ids, sampling: GREEDY, maxTokens, stopTokenIds: [], logprobs: null, promptLogprobs: null });
}

/** SIGKILL; resolves once the process is gone. */
function killed(p: WorkerProcess): Promise<void> {
  return new Promise((resolve) => {
    if (p.child.exitCode !== null || p.child.signalCode !== null) return resolve();
    p.child.once('exit', () => resolve());
    p.child.kill('SIGKILL');
  });
}

/** Steps until every listed sequence finished; returns the finishing event of each and the tokens. */
async function run(engine: Engine, ids: number[], onStep?: (step: number) => Promise<void>): Promise<{ tokens: Map<number, number[]>; last: Map<number, StepEvent> }> {
  const tokens = new Map(ids.map((i) => [i, [] as number[]]));
  const last = new Map<number, StepEvent>();
  for (let step = 0; last.size < ids.length; step++) {
    await onStep?.(step);
    for (const ev of await engine.step()) {
      if (ev.tokenId >= 0) tokens.get(ev.seqId)?.push(ev.tokenId);
      if (ev.finishReason) last.set(ev.seqId, ev);
    }
  }
  return { tokens, last };
}

afterEach(async () => {
  for (const c of cleanups.splice(0)) await c();
  await Promise.all(procs.splice(0).map((p) => stopProcess(p.child)));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('a worker SIGKILLed mid-generation', () => {
  it('with every expert replicated on 2 workers: the generation completes with the same ids', async () => {
    const a = worker('a', 'all');
    const b = worker('b', 'all');
    await Promise.all([a.proc.ready, b.proc.ready]);
    const { topology, model } = await gateway([a.socket, b.socket]);
    const seqs = PROMPTS.map((p) => add(model.engine, expected.prompts[p].input_ids));
    const { tokens, last } = await run(model.engine, seqs, async (step) => {
      if (step === 4) await killed(b.proc);
    });
    PROMPTS.forEach((p, i) => {
      expect(last.get(seqs[i]!)!.finishReason).toBe('length');
      expect(tokens.get(seqs[i]!)).toEqual(expected.prompts[p].greedy_ids);
    });
    expect(topology.workers[1]!.client!.state).toBe('down');
    expect(topology.workers[0]!.client!.state).toBe('live');
  });

  it('a worker that stops answering (SIGSTOP) misses its deadline: its rows go to the replica, same ids; it rejoins after SIGCONT', async () => {
    const a = worker('a', 'all');
    const b = worker('b', 'all');
    await Promise.all([a.proc.ready, b.proc.ready]);
    const { topology, model } = await gateway([a.socket, b.socket], 400);
    const seqs = PROMPTS.map((p) => add(model.engine, expected.prompts[p].input_ids));
    let stoppedAt = 0;
    const { tokens } = await run(model.engine, seqs, async (step) => {
      if (step === 3) {
        b.proc.child.kill('SIGSTOP'); // alive, connected, silent: only the deadline can tell
        stoppedAt = performance.now();
      }
    });
    PROMPTS.forEach((p, i) => expect(tokens.get(seqs[i]!)).toEqual(expected.prompts[p].greedy_ids));
    const wb = topology.workers[1]!.client!;
    expect(wb.state).toBe('down');
    expect(wb.lastError?.code).toBe('deadline_exceeded');
    expect(topology.stats.snapshot().failoverSlots).toBeGreaterThan(0);
    expect(performance.now() - stoppedAt).toBeLessThan(10_000);
    b.proc.child.kill('SIGCONT');
    const resumed = performance.now();
    while (wb.state !== 'live' && performance.now() - resumed < 8000) await new Promise((r) => setTimeout(r, 50));
    expect(wb.state).toBe('live');
    expect(wb.reconnects).toBe(1);
  });

  it('without replicas: a clear error within 2 s, the gateway goes on, the restarted worker is used again within 5 s', async () => {
    const a = worker('a', '0-3');
    const b = worker('b', '4-7');
    await Promise.all([a.proc.ready, b.proc.ready]);
    const { topology, model } = await gateway([a.socket, b.socket]);
    const engine = model.engine;
    const seqs = PROMPTS.map((p) => add(engine, expected.prompts[p].input_ids));
    let killedAt = 0;
    const { last } = await run(engine, seqs, async (step) => {
      if (step === 3) {
        killedAt = performance.now();
        await killed(a.proc);
      }
    });
    const failedAfter = performance.now() - killedAt;
    expect(failedAfter).toBeLessThan(2000);
    for (const id of seqs) {
      const ev = last.get(id)!;
      expect(ev.finishReason).toBe('error');
      expect(ev.error?.code).toBe('experts_unavailable');
      expect(ev.error?.message).toMatch(/experts [\d,]+ of layer \d+ have no live worker/);
    }
    // The engine is usable and empty: every failed sequence's KV blocks are free.
    expect(engine.hasWork()).toBe(false);
    expect(model.kv.stats().blocksUsed).toBe(0);
    // A request now fails at once (clear error, no hang) while the worker is down.
    const t0 = performance.now();
    const { last: again } = await run(engine, [add(engine, expected.prompts.len7.input_ids, 2)]);
    expect([...again.values()][0]!.error?.code).toBe('experts_unavailable');
    expect(performance.now() - t0).toBeLessThan(1000);

    // Restart the worker at the same address; the gateway reconnects on its own.
    const a2 = worker('a', '0-3');
    await a2.proc.ready;
    const restarted = performance.now();
    let ok: number[] | null = null;
    while (!ok && performance.now() - restarted < 5000) {
      const id = add(engine, expected.prompts.len7.input_ids);
      const { tokens, last: l } = await run(engine, [id]);
      if (l.get(id)!.finishReason === 'length') ok = tokens.get(id)!;
      else await new Promise((r) => setTimeout(r, 100));
    }
    expect(ok, 'a request succeeded within 5 s of the restart').not.toBeNull();
    expect(ok).toEqual(expected.prompts.len7.greedy_ids);
    expect(topology.workers[0]!.client!.reconnects).toBe(1);
  });
});
