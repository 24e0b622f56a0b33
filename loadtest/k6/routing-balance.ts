/**
 * k6: the routing-balance scenario (loadtest/lib/scenarios.ts). setup() reads the per-expert /
 * per-worker routed rows from /metrics, the VUs send the traffic, teardown() reads them again
 * and prints, per MoE layer, the rows each expert and each worker received during the run and
 * the balancedness (mean / max rows per worker; 1 = even).
 *
 *   k6 run -e BASE_URL=http://127.0.0.1:8000 -e MODEL=NAME -e VOCAB=32000 -e CONCURRENCY=8 \
 *          -e REQUESTS=64 [-e HOT_TOKENS=16] loadtest/k6/routing-balance.ts
 *
 * HOT_TOKENS > 0 draws every prompt from that many token ids: skewed traffic, to see how the
 * router's load follows the input distribution.
 */
import { check } from 'k6';
import http from 'k6/http';
import exec from 'k6/execution';
import type { Options } from 'k6/options';
import { completionBody, parseRouting, promptIds, routingDelta, SCENARIOS, type RoutingView } from '../lib/scenarios.ts';

// k6 provides console; @types/k6 does not declare it.
declare const console: { log(...args: unknown[]): void };

const BASE_URL = __ENV.BASE_URL ?? 'http://127.0.0.1:8000';
const MODEL = __ENV.MODEL ?? 'qwen3-demo';
const VOCAB = Number(__ENV.VOCAB ?? '151669');
const CONCURRENCY = Number(__ENV.CONCURRENCY ?? '8');
const REQUESTS = Number(__ENV.REQUESTS ?? String(8 * CONCURRENCY));
const HOT_TOKENS = Number(__ENV.HOT_TOKENS ?? '0');
const SEED = Number(__ENV.SEED ?? '0');
const scenario = SCENARIOS['routing-balance'];

export const options: Options = {
  scenarios: {
    routing: { executor: 'shared-iterations', vus: CONCURRENCY, iterations: REQUESTS, maxDuration: '30m' },
  },
  thresholds: { checks: ['rate==1'] },
};

const headers: Record<string, string> = { 'content-type': 'application/json' };
if (__ENV.API_KEY) headers['authorization'] = `Bearer ${__ENV.API_KEY}`;

function scrape(): RoutingView {
  const res = http.get(`${BASE_URL}/metrics`);
  check(res, { 'metrics 200': (r) => r.status === 200 });
  return parseRouting(String(res.body));
}

export function setup(): { before: RoutingView } {
  return { before: scrape() };
}

export default function (): void {
  const i = exec.scenario.iterationInTest;
  const body = completionBody(MODEL, promptIds(SEED, i, scenario.promptTokens, VOCAB, HOT_TOKENS), scenario.outputTokens, false);
  const res = http.post(`${BASE_URL}/v1/completions`, JSON.stringify(body), { headers, timeout: '600s' });
  check(res, { 'status 200': (r) => r.status === 200 });
}

export function teardown(data: { before: RoutingView }): void {
  for (const l of routingDelta(data.before, scrape())) {
    console.log(
      `layer ${l.layer}: worker balancedness ${l.workerBalancedness.toFixed(3)}, expert balancedness ${l.expertBalancedness.toFixed(3)}; ` +
        `rows per worker ${JSON.stringify(l.workerRows)}; rows per expert [${l.expertRows.join(', ')}]`,
    );
  }
}
