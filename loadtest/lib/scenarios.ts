/**
 * The load scenarios, as plain data and pure functions: imported by the k6 scripts (k6/*.ts,
 * run by k6) and by the Node runner (runner.ts, run by node and by `npm run bench:serve`), so
 * both send the same requests. Nothing here may import Node or k6 modules.
 *
 *   throughput       fixed-length random token-id prompts, fixed output length (ignore_eos):
 *                    request throughput, output tokens/s, TTFT, inter-token latency
 *   routing-balance  the same traffic (or a skewed variant: prompts drawn from a few hot
 *                    tokens), with the per-expert / per-worker rows read from /metrics before
 *                    and after: the MoE layers' load balance under this traffic
 */

export type ScenarioName = 'throughput' | 'routing-balance';

export interface Scenario {
  readonly name: ScenarioName;
  /** Prompt length, tokens. */
  readonly promptTokens: number;
  /** Output length, tokens (ignore_eos: always exactly this many). */
  readonly outputTokens: number;
  /** Prompts drawn from this many distinct token ids; 0 = the whole vocabulary. */
  readonly hotTokens: number;
}

export const SCENARIOS: Readonly<Record<ScenarioName, Scenario>> = Object.freeze({
  throughput: Object.freeze({ name: 'throughput', promptTokens: 64, outputTokens: 64, hotTokens: 0 }),
  'routing-balance': Object.freeze({ name: 'routing-balance', promptTokens: 64, outputTokens: 32, hotTokens: 0 }),
});

/** Token ids below this are left out of random prompts (BOS / EOS / PAD live there in most vocabularies). */
const FIRST_ID = 3;

/**
 * Deterministic prompt `index` of a run: `len` token ids in [3, vocabSize), from a 32-bit LCG
 * seeded by (seed, index). With hotTokens > 0 the ids come from that many fixed ids only.
 */
export function promptIds(seed: number, index: number, len: number, vocabSize: number, hotTokens = 0): number[] {
  let s = (Math.imul(seed ^ 0x9e3779b9, 0x85ebca6b) + Math.imul(index + 1, 0xc2b2ae35)) >>> 0;
  const span = vocabSize - FIRST_ID;
  const out: number[] = [];
  for (let i = 0; i < len; i++) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    const r = s >>> 8;
    out.push(FIRST_ID + (hotTokens > 0 ? ((r % hotTokens) * 7919) % span : r % span));
  }
  return out;
}

/** The /v1/completions body of one scenario request. */
export function completionBody(model: string, prompt: readonly number[], outputTokens: number, stream: boolean): Record<string, unknown> {
  const body: Record<string, unknown> = { model, prompt, max_tokens: outputTokens, temperature: 0, ignore_eos: true, stream };
  if (stream) body['stream_options'] = { include_usage: true };
  return body;
}

/** Routed rows read from /metrics: per MoE layer, per expert and per worker. */
export interface RoutingView {
  /** layer -> expert -> rows */
  readonly experts: Record<string, Record<string, number>>;
  /** layer -> worker -> token rows (messages: a token once per worker holding any of its experts) */
  readonly workers: Record<string, Record<string, number>>;
  /** layer -> worker -> (token, expert) rows computed (the load EPLB balances); empty from servers without it */
  readonly workerLoad: Record<string, Record<string, number>>;
}

const SERIES = /^moeserve:(expert|worker|worker_expert)_rows_total\{([^}]*)\} ([0-9.e+-]+)$/;

/** Parses the moeserve:expert_rows_total / worker_rows_total series of a /metrics text. */
export function parseRouting(metricsText: string): RoutingView {
  const experts: Record<string, Record<string, number>> = {};
  const workers: Record<string, Record<string, number>> = {};
  const workerLoad: Record<string, Record<string, number>> = {};
  for (const line of metricsText.split('\n')) {
    const m = SERIES.exec(line);
    if (!m) continue;
    const labels: Record<string, string> = {};
    for (const kv of m[2]!.split(',')) {
      const eq = kv.indexOf('=');
      labels[kv.slice(0, eq)] = kv.slice(eq + 2, -1);
    }
    const layer = labels['layer']!;
    const v = Number(m[3]);
    if (m[1] === 'expert') (experts[layer] ??= {})[labels['expert']!] = v;
    else if (m[1] === 'worker') (workers[layer] ??= {})[labels['worker']!] = v;
    else (workerLoad[layer] ??= {})[labels['worker']!] = v;
  }
  return { experts, workers, workerLoad };
}

export interface LayerBalance {
  readonly layer: string;
  /** Rows per expert / per worker during the run (after - before). */
  readonly expertRows: number[];
  readonly workerRows: Record<string, number>;
  /** (token, expert) rows per worker during the run (its load). */
  readonly workerLoad: Record<string, number>;
  /** mean / max (token, expert) rows per worker (1 = even): the load balance (token rows where the server has no load series). */
  readonly workerBalancedness: number;
  /** mean / max token rows (messages) per worker. */
  readonly messageBalancedness: number;
  /** mean / max rows per expert. */
  readonly expertBalancedness: number;
}

function meanOverMax(xs: number[]): number {
  const max = Math.max(0, ...xs);
  return max > 0 ? xs.reduce((a, b) => a + b, 0) / xs.length / max : 1;
}

/** The load a run added, per MoE layer. */
export function routingDelta(before: RoutingView, after: RoutingView): LayerBalance[] {
  return Object.keys(after.experts)
    .sort((a, b) => Number(a) - Number(b))
    .map((layer) => {
      const e = after.experts[layer]!;
      const expertRows = Object.keys(e)
        .sort((a, b) => Number(a) - Number(b))
        .map((x) => e[x]! - (before.experts[layer]?.[x] ?? 0));
      const w = after.workers[layer] ?? {};
      const workerRows: Record<string, number> = {};
      for (const name of Object.keys(w)) workerRows[name] = w[name]! - (before.workers[layer]?.[name] ?? 0);
      const wl = after.workerLoad?.[layer] ?? {};
      const workerLoad: Record<string, number> = {};
      for (const name of Object.keys(wl)) workerLoad[name] = wl[name]! - (before.workerLoad?.[layer]?.[name] ?? 0);
      const load = Object.keys(workerLoad).length > 0 ? Object.values(workerLoad) : Object.values(workerRows);
      return { layer, expertRows, workerRows, workerLoad, workerBalancedness: meanOverMax(load), messageBalancedness: meanOverMax(Object.values(workerRows)), expertBalancedness: meanOverMax(expertRows) };
    });
}
