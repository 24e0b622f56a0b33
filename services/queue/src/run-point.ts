/**
 * One point of a sweep, run for real:
 *
 *   checkpoint (cached make-checkpoint) -> [namespaces + shaped veth pairs, or loopback]
 *   -> expert workers (`moeserve worker`, one per node, experts from the point's placement)
 *   -> gateway (`moeserve serve --worker-addrs ...`) -> warm-up requests (not measured)
 *   -> counters before (worker Stats, /metrics, veth bytes) -> the load runner (loadtest/runner.ts)
 *   -> counters after -> stop every process and delete the namespaces (also on failure).
 *
 * The workers are always started here (not by `serve --workers N`) so that the same code runs on
 * loopback and across namespaces, and so that their Stats (payload bytes, compute time, pairs per
 * layer) can be read directly. A start that fails throws a plain Error (BullMQ retries it with
 * backoff); input that can never run (bad placement, bad overrides) throws UnrecoverableError.
 */
import os from 'node:os';
import { UnrecoverableError } from 'bullmq';
import type { Logger } from 'pino';
import { runLoad, type LoadReport } from '../../../loadtest/runner.js';
import { basePlacement, expertsOf, parseReplicate, replicate } from '../../../router/src/placement.js';
import { checkpointFor, readModelShape, type ModelShape } from './checkpoint-cache.js';
import { linkCounters, setupNamespaces, type NetnsSetup } from './netns.js';
import { balancedness, counterDelta, routingFromSamples, scrapeMetrics, workerStats, type MetricSamples, type WorkerCounters } from './probe.js';
import { startGateway, startWatchdog, startWorker, stopProc, type Proc, type StartedGateway, type StartedWorker, type Watchdog } from './processes.js';
import type { Point, Sweep } from './sweep.js';

export interface WorkerMeasurement extends WorkerCounters {
  readonly worker: string;
  readonly experts: string;
  /** Root-side veth bytes (IP packets, headers included); null on loopback. */
  readonly linkTx: number | null;
  readonly linkRx: number | null;
}

export interface LayerBalanceRow {
  readonly layer: string;
  /** (token, expert) pairs per worker (or per expert with 0/1 workers). */
  readonly load: readonly number[];
  /** mean / max of `load`. */
  readonly balancedness: number;
  /** mean / max rows per expert (from /metrics; null when the scrape failed). */
  readonly expertBalancedness: number | null;
}

/** What one run measured (JSON-serializable: stored in Redis and in results.jsonl). */
export interface PointMeasurement {
  readonly host: string;
  readonly network: { readonly mode: 'loopback' | 'netns'; readonly bandwidthMbit: number; readonly fallbackReason: string | null };
  readonly model: ModelShape & { readonly dir: string; readonly made: boolean };
  readonly load: Omit<LoadReport, 'errors'> & { readonly errors: readonly string[] };
  /** Tokens that went through the MoE layers: requests x (prompt + output - 1). */
  readonly processedTokens: number;
  readonly workers: readonly WorkerMeasurement[];
  /** Worker Stats payload bytes, both directions, summed over workers. */
  readonly payloadBytes: number;
  /** veth bytes both directions summed (netns only). */
  readonly linkBytes: number | null;
  /** Estimated decode+prefill steps: max over workers of Forward requests / MoE layers. */
  readonly steps: number;
  readonly layers: readonly LayerBalanceRow[];
  /** Errors reading /metrics (the run goes on without them). */
  readonly metricsError: string | null;
  readonly startS: number;
  readonly wallS: number;
}

export interface RunContext {
  readonly cacheDir: string;
  readonly log: Logger;
}

/** The `--experts` list of each worker for a point (placement + replication), as serve would place them. */
export function workerExpertLists(p: Pick<Point, 'workers' | 'placement' | 'replicate'>, experts: number): string[] {
  try {
    const homes = replicate(basePlacement(p.placement, experts, p.workers), parseReplicate(p.replicate === 'none' ? '' : p.replicate, experts, p.workers), p.workers);
    return Array.from({ length: p.workers }, (_, w) => expertsOf(homes, w).join(','));
  } catch (err) {
    throw new UnrecoverableError(`placement ${p.placement} / replicate ${p.replicate} for ${experts} experts on ${p.workers} workers: ${(err as Error).message}`);
  }
}

export async function runPoint(sweep: Sweep, p: Point, ctx: RunContext): Promise<PointMeasurement> {
  const t0 = performance.now();
  const ckpt = await checkpointFor(sweep.model, p, ctx.cacheDir);
  const shape = readModelShape(ckpt.dir);
  const lists = p.workers > 0 ? workerExpertLists(p, shape.experts) : [];
  const startMs = sweep.serve.startTimeoutS * 1000;
  const procs: Proc[] = [];
  let netns: NetnsSetup | null = null;
  let fallbackReason: string | null = null;
  const watchdog: Watchdog = startWatchdog();
  try {
    if (sweep.network.mode === 'netns') {
      try {
        netns = await setupNamespaces(p.workers, sweep.network.bandwidthMbit);
        for (const l of netns.links) watchdog.namespace(l.namespace);
      } catch (err) {
        fallbackReason = (err as Error).message;
        ctx.log.warn({ reason: fallbackReason }, 'network namespaces unavailable: workers on loopback');
      }
    }
    const settled = await Promise.allSettled(
      lists.map((experts, i) => {
        const link = netns?.links[i];
        return startWorker({ modelDir: ckpt.dir, experts, host: link ? link.workerAddr : '127.0.0.1', namespace: link ? link.namespace : null, threads: sweep.serve.threads, id: `w${i}`, timeoutMs: startMs, onSpawn: watchdog.pid });
      }),
    );
    // Keep every worker that did start, so `finally` stops it even when another one failed.
    const workers: StartedWorker[] = settled.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
    procs.push(...workers);
    const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
    const args = ['--threads', String(sweep.serve.threads), '--max-num-seqs', String(sweep.serve.maxNumSeqs)];
    if (workers.length > 0) args.push('--worker-addrs', workers.map((w) => w.address).join(','), '--wire-dtype', p.wireDtype);
    const gateway: StartedGateway = await startGateway({ modelDir: ckpt.dir, args, timeoutMs: startMs, onSpawn: watchdog.pid });
    procs.push(gateway);

    const model = (await (await fetch(`${gateway.url}/v1/models`)).json()) as { data: { id: string }[] };
    const scenario = { name: sweep.load.scenario, promptTokens: sweep.load.promptTokens, outputTokens: sweep.load.outputTokens, hotTokens: sweep.load.hotTokens } as const;
    const base = { baseUrl: gateway.url, model: model.data[0]!.id, scenario, vocabSize: shape.vocabSize, seed: sweep.load.seed };
    if (sweep.load.warmupRequests > 0) {
      const warm = await runLoad({ ...base, concurrency: Math.min(sweep.load.concurrency, sweep.load.warmupRequests), requests: sweep.load.warmupRequests, promptOffset: 1_000_000 });
      if (warm.completed === 0) throw new Error(`warm-up failed: ${warm.errors.join('; ')}: gateway: ${gateway.tail()}`);
    }

    const snap = async () => ({
      stats: await Promise.all(workers.map((w) => workerStats(w.address))),
      links: netns ? netns.links.map((l) => linkCounters(l.hostIf)) : null,
    });
    let metricsError: string | null = null;
    const scrape = async (): Promise<MetricSamples | null> => {
      try {
        return await scrapeMetrics(gateway.url);
      } catch (err) {
        metricsError = (err as Error).message;
        return null;
      }
    };
    const before = await snap();
    const metricsBefore = await scrape();
    const runStart = performance.now();
    let timer: NodeJS.Timeout | undefined;
    const report = await Promise.race([
      runLoad({ ...base, concurrency: sweep.load.concurrency, requests: sweep.load.requests, promptOffset: 0 }),
      new Promise<never>((_, rej) => (timer = setTimeout(() => rej(new Error(`load did not finish within ${sweep.serve.runTimeoutS} s`)), sweep.serve.runTimeoutS * 1000))),
    ]).finally(() => clearTimeout(timer));
    if (report.completed === 0) throw new Error(`every request failed: ${report.errors.join('; ')}: gateway: ${gateway.tail()}`);
    const after = await snap();
    const metricsAfter = await scrape();
    ctx.log.debug({ loadS: (performance.now() - runStart) / 1000 }, 'load done');

    const measured: WorkerMeasurement[] = workers.map((w, i) => {
      const d = counterDelta(after.stats[i]!, before.stats[i]!);
      const lt = after.links && before.links ? after.links[i]!.tx - before.links[i]!.tx : null;
      const lr = after.links && before.links ? after.links[i]!.rx - before.links[i]!.rx : null;
      return { ...d, worker: `w${i}`, experts: lists[i]!, linkTx: lt, linkRx: lr };
    });
    const routing = metricsAfter ? routingFromSamples(metricsAfter, metricsBefore) : null;
    const layerIds = measured.length > 0 ? [...new Set(measured.flatMap((w) => Object.keys(w.pairsPerLayer)))] : Object.keys(routing?.experts ?? {});
    const layers: LayerBalanceRow[] = layerIds
      .sort((a, b) => Number(a) - Number(b))
      .map((layer) => {
        const expertRows = routing?.experts[layer] ? Object.values(routing.experts[layer]!) : null;
        const load = measured.length > 0 ? measured.map((w) => w.pairsPerLayer[layer] ?? 0) : (expertRows ?? []);
        return { layer, load, balancedness: balancedness(load), expertBalancedness: expertRows ? balancedness(expertRows) : null };
      });
    const processedTokens = report.completed * (sweep.load.promptTokens + sweep.load.outputTokens - 1);
    const linkBytes = netns ? measured.reduce((a, w) => a + (w.linkTx ?? 0) + (w.linkRx ?? 0), 0) : null;
    return {
      host: os.hostname(),
      network: { mode: netns ? 'netns' : 'loopback', bandwidthMbit: netns ? sweep.network.bandwidthMbit : 0, fallbackReason },
      model: { ...shape, dir: ckpt.dir, made: ckpt.made },
      load: { ...report, errors: report.errors.slice(0, 5) },
      processedTokens,
      workers: measured,
      payloadBytes: measured.reduce((a, w) => a + w.bytesIn + w.bytesOut, 0),
      linkBytes,
      steps: shape.moeLayers > 0 ? Math.max(0, ...measured.map((w) => w.requests)) / shape.moeLayers : 0,
      layers,
      metricsError,
      startS: (runStart - t0) / 1000,
      wallS: (performance.now() - t0) / 1000,
    };
  } finally {
    // Gateway first (it stops calling the workers), then the workers, then the namespaces.
    for (const proc of [...procs].reverse()) await stopProc(proc).catch(() => undefined);
    await netns?.teardown();
    watchdog.disarm();
  }
}
