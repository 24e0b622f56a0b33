/**
 * k6: the throughput scenario (loadtest/lib/scenarios.ts) against a running moeserve.
 *
 *   k6 run -e BASE_URL=http://127.0.0.1:8000 -e MODEL=NAME -e VOCAB=32000 -e CONCURRENCY=16 \
 *          -e REQUESTS=64 [-e API_KEY=...] loadtest/k6/throughput.ts
 *
 * Non-streaming requests (k6 has no SSE client): request throughput, output tokens/s and
 * end-to-end latency; TTFT and inter-token latency come from the server's /metrics histograms,
 * or from the Node runner (loadtest/runner.ts), which streams.
 */
import { check } from 'k6';
import http from 'k6/http';
import exec from 'k6/execution';
import { Counter, Trend } from 'k6/metrics';
import type { Options } from 'k6/options';
import { completionBody, promptIds, SCENARIOS } from '../lib/scenarios.ts';

const BASE_URL = __ENV.BASE_URL ?? 'http://127.0.0.1:8000';
const MODEL = __ENV.MODEL ?? 'qwen3-demo';
const VOCAB = Number(__ENV.VOCAB ?? '151669');
const CONCURRENCY = Number(__ENV.CONCURRENCY ?? '16');
const REQUESTS = Number(__ENV.REQUESTS ?? String(4 * CONCURRENCY));
const SEED = Number(__ENV.SEED ?? '0');
const scenario = SCENARIOS.throughput;

export const options: Options = {
  scenarios: {
    throughput: { executor: 'shared-iterations', vus: CONCURRENCY, iterations: REQUESTS, maxDuration: '30m' },
  },
  thresholds: { checks: ['rate==1'] },
};

const outputTokens = new Counter('output_tokens');
const e2e = new Trend('e2e_latency', true);

const headers: Record<string, string> = { 'content-type': 'application/json' };
if (__ENV.API_KEY) headers['authorization'] = `Bearer ${__ENV.API_KEY}`;

export default function (): void {
  const i = exec.scenario.iterationInTest;
  const body = completionBody(MODEL, promptIds(SEED, i, scenario.promptTokens, VOCAB), scenario.outputTokens, false);
  const res = http.post(`${BASE_URL}/v1/completions`, JSON.stringify(body), { headers, timeout: '600s' });
  const ok = check(res, { 'status 200': (r) => r.status === 200 });
  if (!ok) return;
  e2e.add(res.timings.duration);
  const usage = (res.json('usage') ?? {}) as { completion_tokens?: number };
  outputTokens.add(usage.completion_tokens ?? 0);
}
