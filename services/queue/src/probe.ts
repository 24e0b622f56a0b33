/**
 * What a run measures besides the load runner's latencies:
 *   - each expert worker's counters (ExpertWorker.Stats over gRPC: requests, rows, payload bytes
 *     in/out, compute µs, (layer, expert) pairs), read before and after the measured load;
 *   - the gateway's /metrics (Prometheus text): per-layer rows per expert and per worker, and any
 *     moeserve:* counter, read before and after (a scrape that fails is recorded, not fatal).
 */
import * as grpc from '@grpc/grpc-js';
import { channelCredentials, expertProto, type StatsReply } from '../../../proto/index.js';

export interface WorkerCounters {
  readonly requests: number;
  readonly rows: number;
  /** Protobuf payload bytes (framing excluded). */
  readonly bytesIn: number;
  readonly bytesOut: number;
  readonly computeUs: number;
  /** layer -> (token, expert) pairs computed. */
  readonly pairsPerLayer: Record<string, number>;
}

/** One Stats call (deadline `timeoutMs`). */
export function workerStats(address: string, timeoutMs = 5000): Promise<WorkerCounters> {
  const { Client } = expertProto();
  const client = new Client(address, channelCredentials(null));
  return new Promise<WorkerCounters>((resolve, reject) => {
    client.stats({}, new grpc.Metadata(), { deadline: Date.now() + timeoutMs }, (err, res?: StatsReply) => {
      client.close();
      if (err || !res) return reject(new Error(`Stats of worker ${address}: ${err?.message ?? 'no reply'}`));
      const pairsPerLayer: Record<string, number> = {};
      for (const r of res.expertRows) pairsPerLayer[String(r.layer)] = (pairsPerLayer[String(r.layer)] ?? 0) + Number(r.rows);
      resolve({ requests: Number(res.requests), rows: Number(res.rows), bytesIn: Number(res.bytesIn), bytesOut: Number(res.bytesOut), computeUs: Number(res.computeUs), pairsPerLayer });
    });
  });
}

export function counterDelta(after: WorkerCounters, before: WorkerCounters): WorkerCounters {
  const pairsPerLayer: Record<string, number> = {};
  for (const [l, v] of Object.entries(after.pairsPerLayer)) pairsPerLayer[l] = v - (before.pairsPerLayer[l] ?? 0);
  return {
    requests: after.requests - before.requests,
    rows: after.rows - before.rows,
    bytesIn: after.bytesIn - before.bytesIn,
    bytesOut: after.bytesOut - before.bytesOut,
    computeUs: after.computeUs - before.computeUs,
    pairsPerLayer,
  };
}

/** Prometheus samples: `name{labels}` -> value, only moeserve:* series without histogram buckets. */
export type MetricSamples = Record<string, number>;

export async function scrapeMetrics(url: string, timeoutMs = 5000): Promise<MetricSamples> {
  const res = await fetch(`${url}/metrics`, { signal: AbortSignal.timeout(timeoutMs) });
  const text = await res.text();
  if (res.status !== 200) throw new Error(`/metrics answered ${res.status}`);
  return parseSamples(text);
}

const SAMPLE = /^(moeserve:[a-zA-Z0-9_:]+)(\{[^}]*\})? ([-+0-9.eE]+|NaN|[+-]Inf)$/;

export function parseSamples(text: string): MetricSamples {
  const out: MetricSamples = {};
  for (const line of text.split('\n')) {
    const m = SAMPLE.exec(line);
    if (!m || m[1]!.endsWith('_bucket')) continue;
    // model_name is on every series: drop it, keep the other labels in order.
    const labels = (m[2] ?? '').replace(/,?model_name="[^"]*"/, '').replace(/^\{,/, '{');
    out[`${m[1]}${labels === '{}' ? '' : labels}`] = Number(m[3]);
  }
  return out;
}

/** Per MoE layer from /metrics deltas: rows per expert and per worker (moeserve:expert_rows_total / worker_rows_total). */
export function routingFromSamples(after: MetricSamples, before: MetricSamples | null): { experts: Record<string, Record<string, number>>; workers: Record<string, Record<string, number>> } {
  const experts: Record<string, Record<string, number>> = {};
  const workers: Record<string, Record<string, number>> = {};
  for (const [key, v] of Object.entries(after)) {
    const m = /^moeserve:(expert|worker)_rows_total\{(.*)\}$/.exec(key);
    if (!m) continue;
    const labels = Object.fromEntries([...m[2]!.matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1]!, x[2]!]));
    const d = v - (before?.[key] ?? 0);
    if (m[1] === 'expert') (experts[labels['layer']!] ??= {})[labels['expert']!] = d;
    else (workers[labels['layer']!] ??= {})[labels['worker']!] = d;
  }
  return { experts, workers };
}

/** mean / max (1 = even; 1 when nothing was counted). */
export function balancedness(xs: readonly number[]): number {
  const max = Math.max(0, ...xs);
  return max > 0 ? xs.reduce((a, b) => a + b, 0) / xs.length / max : 1;
}
