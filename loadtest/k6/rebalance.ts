/**
 * k6: skewed routing-balance traffic before and after a live EPLB rebalance (POST /admin/rebalance).
 *
 *   before     CONCURRENCY VUs send REQUESTS skewed requests (HOT_TOKENS ids per prompt)
 *   rebalance  at REBALANCE_AT: POST /admin/rebalance (the server plans from the load it saw)
 *   after      at AFTER_AT: the same REQUESTS requests again
 *   teardown   prints, per MoE layer, the balancedness (mean / max (token, expert) rows per worker)
 *              of each phase from /metrics, and sets the gauges the thresholds hold:
 *              balancedness_after >= MIN_AFTER and balancedness_gain > 0 (worst layer after minus
 *              worst layer before); handleSummary adds each phase's throughput.
 * The after phase's per-worker load is the server's load window since the switch (start the server
 * with --load-window-steps larger than the after phase's steps); before = totals - window - setup.
 *
 *   k6 run -e BASE_URL=http://127.0.0.1:8000 -e MODEL=NAME -e VOCAB=1000 -e HOT_TOKENS=8 \
 *          -e CONCURRENCY=8 -e REQUESTS=64 -e REBALANCE_AT=40s -e AFTER_AT=50s loadtest/k6/rebalance.ts
 * Throughput of a phase (closed loop, every VU busy): CONCURRENCY x output tokens / mean request time.
 */
import { check } from 'k6';
import http from 'k6/http';
import exec from 'k6/execution';
import { Gauge } from 'k6/metrics';
import type { Options } from 'k6/options';
import { completionBody, parseRouting, promptIds, SCENARIOS, type RoutingView } from '../lib/scenarios.ts';

declare const console: { log(...args: unknown[]): void };

const BASE_URL = __ENV.BASE_URL ?? 'http://127.0.0.1:8000';
const MODEL = __ENV.MODEL ?? 'qwen3-demo';
const VOCAB = Number(__ENV.VOCAB ?? '151669');
const CONCURRENCY = Number(__ENV.CONCURRENCY ?? '8');
const REQUESTS = Number(__ENV.REQUESTS ?? String(8 * CONCURRENCY));
const HOT_TOKENS = Number(__ENV.HOT_TOKENS ?? '8');
const SEED = Number(__ENV.SEED ?? '0');
const MIN_AFTER = Number(__ENV.MIN_AFTER ?? '0.85');
const scenario = SCENARIOS['routing-balance'];

const balBefore = new Gauge('balancedness_before');
const balAfter = new Gauge('balancedness_after');
const balGain = new Gauge('balancedness_gain');

export const options: Options = {
  scenarios: {
    before: { executor: 'shared-iterations', vus: CONCURRENCY, iterations: REQUESTS, maxDuration: __ENV.REBALANCE_AT ?? '40s', exec: 'traffic', tags: { phase: 'before' } },
    rebalance: { executor: 'per-vu-iterations', vus: 1, iterations: 1, startTime: __ENV.REBALANCE_AT ?? '40s', exec: 'rebalance' },
    after: { executor: 'shared-iterations', vus: CONCURRENCY, iterations: REQUESTS, startTime: __ENV.AFTER_AT ?? '50s', maxDuration: '10m', exec: 'traffic', tags: { phase: 'after' } },
  },
  thresholds: {
    checks: ['rate==1'],
    balancedness_after: [`value>=${MIN_AFTER}`],
    balancedness_gain: ['value>0'],
    'http_req_duration{phase:before}': ['avg>0'],
    'http_req_duration{phase:after}': ['avg>0'],
    'http_reqs{phase:before}': ['count>0'],
    'http_reqs{phase:after}': ['count>0'],
  },
};

const headers: Record<string, string> = { 'content-type': 'application/json' };
if (__ENV.API_KEY) headers['authorization'] = `Bearer ${__ENV.API_KEY}`;

function scrape(): RoutingView {
  const res = http.get(`${BASE_URL}/metrics`, { tags: { phase: 'control' } });
  check(res, { 'metrics 200': (r) => r.status === 200 });
  return parseRouting(String(res.body));
}

export function setup(): { start: RoutingView } {
  return { start: scrape() };
}

export function traffic(): void {
  const i = exec.scenario.iterationInTest;
  // The after phase draws other prompts from the same hot ids: the same skew, and no prefix-cache
  // hits on the before phase's prompts (which would leave it decode-only, another load).
  const seed = exec.scenario.name === 'after' ? SEED + 1 : SEED;
  const body = completionBody(MODEL, promptIds(seed, i, scenario.promptTokens, VOCAB, HOT_TOKENS), scenario.outputTokens, false);
  const res = http.post(`${BASE_URL}/v1/completions`, JSON.stringify(body), { headers, timeout: '600s' });
  check(res, { 'status 200': (r) => r.status === 200 });
}

export function rebalance(): void {
  const res = http.post(`${BASE_URL}/admin/rebalance`, '{}', { headers, timeout: '600s', tags: { phase: 'control' } });
  check(res, { 'rebalance 200': (r) => r.status === 200, 'rebalance applied': (r) => (r.json() as { applied?: boolean }).applied === true });
  console.log(`rebalance: ${String(res.body)}`);
}

const meanOverMax = (xs: number[]) => {
  const max = Math.max(0, ...xs);
  return max > 0 ? xs.reduce((a, b) => a + b, 0) / xs.length / max : 1;
};

export function teardown(data: { start: RoutingView }): void {
  const end = scrape();
  const res = http.get(`${BASE_URL}/dashboard/data`, { headers, tags: { phase: 'control' } });
  check(res, { 'dashboard data 200': (r) => r.status === 200 });
  const d = res.json() as { layers: number[]; workers: string[]; worker_load_window: number[][]; replicas: number[][] };
  let worstBefore = 1;
  let worstAfter = 1;
  d.layers.forEach((layer, i) => {
    const L = String(layer);
    const after = d.worker_load_window[i]!;
    const before = d.workers.map((w, j) => (end.workerLoad[L]?.[w] ?? 0) - (data.start.workerLoad[L]?.[w] ?? 0) - after[j]!);
    const b = meanOverMax(before);
    const a = meanOverMax(after);
    worstBefore = Math.min(worstBefore, b);
    worstAfter = Math.min(worstAfter, a);
    console.log(`layer ${L}: balancedness before ${b.toFixed(3)} [${before.join(', ')}] -> after ${a.toFixed(3)} [${after.join(', ')}]; replicas [${d.replicas[i]!.join(', ')}]`);
  });
  console.log(`worst layer: balancedness before ${worstBefore.toFixed(3)}, after ${worstAfter.toFixed(3)}`);
  balBefore.add(worstBefore);
  balAfter.add(worstAfter);
  balGain.add(worstAfter - worstBefore);
}

interface SummaryData {
  metrics: Record<string, { values: Record<string, number> }>;
}

export function handleSummary(data: SummaryData): Record<string, string> {
  const v = (name: string, field: string) => data.metrics[name]?.values[field] ?? NaN;
  const tput = (phase: string) => (CONCURRENCY * scenario.outputTokens) / (v(`http_req_duration{phase:${phase}}`, 'avg') / 1000);
  const lines = [
    `balancedness (worst MoE layer): before ${v('balancedness_before', 'value').toFixed(3)}, after ${v('balancedness_after', 'value').toFixed(3)}`,
    ...['before', 'after'].map((p) => `throughput ${p}: ${tput(p).toFixed(1)} output tokens/s (${v(`http_reqs{phase:${p}}`, 'count')} requests, mean ${v(`http_req_duration{phase:${p}}`, 'avg').toFixed(0)} ms, p95 ${v(`http_req_duration{phase:${p}}`, 'p(95)').toFixed(0)} ms)`),
    `throughput after / before: ${(tput('after') / tput('before')).toFixed(3)}`,
  ];
  return { stdout: `\n${lines.join('\n')}\n` };
}
