/**
 * The Node load runner: the scenarios of lib/scenarios.ts (the same requests as the k6 scripts)
 * against a running moeserve, streaming, with the metrics of vLLM's `vllm bench serve`:
 *
 *   request throughput  completed requests / wall time of the run
 *   output tokens/s     output tokens (usage.completion_tokens) / wall time
 *   TTFT                arrival of the first chunk with text, from the request's start
 *   ITL                 gaps between consecutive text chunks, over all requests
 *   TPOT                per request (e2e - TTFT) / (output tokens - 1)
 *   e2e                 request start to [DONE]
 * Percentiles interpolate linearly (numpy's default, as vLLM). Concurrency is vLLM's
 * --max-concurrency with an infinite request rate: `concurrency` clients, each sending its next
 * request as soon as the previous one ends.
 *
 *   npx tsx loadtest/runner.ts --url http://127.0.0.1:8000 [--scenario throughput|routing-balance]
 *       [--concurrency 1,4,16] [--requests 32] [--vocab 32000] [--hot-tokens 16] [--api-key KEY]
 */
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { completionBody, parseRouting, promptIds, routingDelta, SCENARIOS, type LayerBalance, type RoutingView, type Scenario, type ScenarioName } from './lib/scenarios.js';

export interface LoadConfig {
  readonly baseUrl: string;
  readonly model: string;
  readonly apiKey?: string | null;
  readonly concurrency: number;
  readonly requests: number;
  readonly scenario: Scenario;
  /** Prompt ids are drawn below this (the model's vocabulary size). */
  readonly vocabSize: number;
  readonly seed: number;
  /** Index of the run's first prompt (runs with different offsets send different prompts). @defaultValue 0 */
  readonly promptOffset?: number;
}

export interface RequestMetrics {
  readonly ok: boolean;
  readonly error: string | null;
  readonly ttftMs: number;
  readonly itlMs: readonly number[];
  readonly e2eMs: number;
  readonly outputTokens: number;
}

export interface Stat {
  readonly mean: number;
  readonly p50: number;
  readonly p99: number;
}

export interface LoadReport {
  readonly concurrency: number;
  readonly completed: number;
  readonly failed: number;
  readonly errors: readonly string[];
  readonly durationS: number;
  readonly outputTokens: number;
  readonly requestThroughput: number;
  readonly outputTokS: number;
  readonly ttftMs: Stat;
  readonly itlMs: Stat;
  readonly tpotMs: Stat;
  readonly e2eMs: Stat;
}

/** numpy.percentile with linear interpolation. */
export function quantile(xs: readonly number[], q: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const pos = (s.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.min(s.length - 1, lo + 1);
  return s[lo]! + (s[hi]! - s[lo]!) * (pos - lo);
}

function stat(xs: readonly number[]): Stat {
  return { mean: xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : NaN, p50: quantile(xs, 0.5), p99: quantile(xs, 0.99) };
}

/** One streamed completion; timings from the moment the request is sent. */
export async function streamCompletion(baseUrl: string, body: Record<string, unknown>, apiKey?: string | null): Promise<RequestMetrics> {
  const t0 = performance.now();
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (apiKey) headers['authorization'] = `Bearer ${apiKey}`;
  let ttft = 0;
  let last = 0;
  const itl: number[] = [];
  let outputTokens = 0;
  const fail = (error: string): RequestMetrics => ({ ok: false, error, ttftMs: 0, itlMs: [], e2eMs: performance.now() - t0, outputTokens: 0 });
  let res: Response;
  try {
    res = await fetch(`${baseUrl}/v1/completions`, { method: 'POST', headers, body: JSON.stringify(body) });
  } catch (err) {
    return fail((err as Error).message);
  }
  if (res.status !== 200 || !res.body) return fail(`HTTP ${res.status}: ${(await res.text()).slice(0, 200)}`);
  const decoder = new TextDecoder();
  let buf = '';
  for await (const part of res.body as unknown as AsyncIterable<Uint8Array>) {
    buf += decoder.decode(part, { stream: true });
    let end: number;
    while ((end = buf.indexOf('\n\n')) >= 0) {
      const event = buf.slice(0, end);
      buf = buf.slice(end + 2);
      if (!event.startsWith('data: ')) continue;
      const data = event.slice(6);
      if (data === '[DONE]') continue;
      const chunk = JSON.parse(data) as { error?: { message: string }; choices?: { text?: string }[]; usage?: { completion_tokens: number } };
      if (chunk.error) return fail(chunk.error.message);
      if (chunk.usage) outputTokens = chunk.usage.completion_tokens;
      if (chunk.choices?.[0]?.text) {
        const now = performance.now();
        if (ttft === 0) ttft = now - t0;
        else itl.push(now - last);
        last = now;
      }
    }
  }
  return { ok: true, error: null, ttftMs: ttft, itlMs: itl, e2eMs: performance.now() - t0, outputTokens };
}

/** The prompts a run sends, in order. */
export function runPrompts(cfg: Pick<LoadConfig, 'seed' | 'requests' | 'scenario' | 'vocabSize' | 'promptOffset'>): number[][] {
  const off = cfg.promptOffset ?? 0;
  return Array.from({ length: cfg.requests }, (_, i) => promptIds(cfg.seed, off + i, cfg.scenario.promptTokens, cfg.vocabSize, cfg.scenario.hotTokens));
}

export async function runLoad(cfg: LoadConfig): Promise<LoadReport> {
  const prompts = runPrompts(cfg);
  const results: RequestMetrics[] = [];
  let next = 0;
  const t0 = performance.now();
  const client = async () => {
    while (next < prompts.length) {
      const p = prompts[next++]!;
      results.push(await streamCompletion(cfg.baseUrl, completionBody(cfg.model, p, cfg.scenario.outputTokens, true), cfg.apiKey));
    }
  };
  await Promise.all(Array.from({ length: Math.min(cfg.concurrency, prompts.length) }, client));
  const durationS = (performance.now() - t0) / 1000;
  const ok = results.filter((r) => r.ok);
  const outputTokens = ok.reduce((s, r) => s + r.outputTokens, 0);
  return {
    concurrency: cfg.concurrency,
    completed: ok.length,
    failed: results.length - ok.length,
    errors: [...new Set(results.filter((r) => !r.ok).map((r) => r.error!))],
    durationS,
    outputTokens,
    requestThroughput: ok.length / durationS,
    outputTokS: outputTokens / durationS,
    ttftMs: stat(ok.map((r) => r.ttftMs)),
    itlMs: stat(ok.flatMap((r) => r.itlMs)),
    tpotMs: stat(ok.filter((r) => r.outputTokens > 1).map((r) => (r.e2eMs - r.ttftMs) / (r.outputTokens - 1))),
    e2eMs: stat(ok.map((r) => r.e2eMs)),
  };
}

export async function scrapeRouting(baseUrl: string): Promise<RoutingView> {
  return parseRouting(await (await fetch(`${baseUrl}/metrics`)).text());
}

/** A run of the routing-balance scenario: the load it puts on each MoE layer's experts and workers. */
export async function runRoutingBalance(cfg: LoadConfig): Promise<{ report: LoadReport; layers: LayerBalance[] }> {
  const before = await scrapeRouting(cfg.baseUrl);
  const report = await runLoad(cfg);
  return { report, layers: routingDelta(before, await scrapeRouting(cfg.baseUrl)) };
}

const f = (x: number, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : '-');

export function formatReports(reports: readonly LoadReport[]): string {
  const rows = [['concurrency', 'ok', 'failed', 'req/s', 'out tok/s', 'TTFT p50 ms', 'TTFT p99 ms', 'ITL p50 ms', 'ITL p99 ms', 'TPOT p50 ms', 'e2e p50 ms']];
  for (const r of reports) rows.push([String(r.concurrency), String(r.completed), String(r.failed), f(r.requestThroughput, 2), f(r.outputTokS), f(r.ttftMs.p50), f(r.ttftMs.p99), f(r.itlMs.p50), f(r.itlMs.p99), f(r.tpotMs.p50), f(r.e2eMs.p50)]);
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r) => r.map((c, i) => c.padStart(widths[i]!)).join('  ')).join('\n');
}

export function formatBalance(layers: readonly LayerBalance[]): string {
  return layers.map((l) => `layer ${l.layer}: worker balancedness ${f(l.workerBalancedness, 3)} ${JSON.stringify(l.workerRows)}; expert balancedness ${f(l.expertBalancedness, 3)} [${l.expertRows.join(', ')}]`).join('\n');
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      url: { type: 'string', default: 'http://127.0.0.1:8000' },
      model: { type: 'string' },
      'api-key': { type: 'string' },
      scenario: { type: 'string', default: 'throughput' },
      concurrency: { type: 'string', default: '1,4,16' },
      requests: { type: 'string' },
      vocab: { type: 'string', default: '256' },
      'hot-tokens': { type: 'string' },
      seed: { type: 'string', default: '0' },
    },
  });
  const name = values.scenario as ScenarioName;
  const base = SCENARIOS[name];
  if (!base) throw new Error(`--scenario must be one of ${Object.keys(SCENARIOS).join(', ')}`);
  const scenario = values['hot-tokens'] ? { ...base, hotTokens: Number(values['hot-tokens']) } : base;
  const apiKey = values['api-key'] ?? null;
  const model = values.model ?? ((await (await fetch(`${values.url}/v1/models`, { headers: apiKey ? { authorization: `Bearer ${apiKey}` } : {} })).json()) as { data: { id: string }[] }).data[0]!.id;
  const reports: LoadReport[] = [];
  for (const c of values.concurrency.split(',').map(Number)) {
    const cfg: LoadConfig = { baseUrl: values.url, model, apiKey, concurrency: c, requests: Number(values.requests ?? 4 * c), scenario, vocabSize: Number(values.vocab), seed: Number(values.seed), promptOffset: reports.length * 100_000 };
    if (name === 'routing-balance') {
      const { report, layers } = await runRoutingBalance(cfg);
      reports.push(report);
      process.stdout.write(`concurrency ${c}:\n${formatBalance(layers)}\n`);
    } else reports.push(await runLoad(cfg));
  }
  process.stdout.write(`${formatReports(reports)}\n`);
  for (const r of reports) for (const e of r.errors) process.stdout.write(`concurrency ${r.concurrency}: error: ${e}\n`);
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((err) => {
    process.stderr.write(`${(err as Error).stack ?? err}\n`);
    process.exitCode = 1;
  });
}
