/**
 * Experiment sweeps on BullMQ: one flow per sweep — a `report` parent whose children are one
 * `point` job per run — plus the experiment's records in plain Redis keys. Results live in Redis
 * and in `<outDir>/results.jsonl`; both hold every point exactly once, whatever crashed when.
 *
 * Redis keys (P = the key prefix, `moeserve` by default; ID = experiment id, no ':' in it):
 *   P:exp-points:*          BullMQ queue "exp-points" (its own keys: wait, active, ..., P:exp-points:<jobId>)
 *     job name  "point"
 *     job id    "<ID>-p<index>"              (deterministic: a resubmission cannot duplicate a run)
 *     data      { experimentId: string, pointId: string, index: number }
 *     opts      attempts = sweep.retry.attempts, backoff exponential from sweep.retry.backoffMs,
 *               ignoreDependencyOnFailure (a point that keeps failing lets the report run),
 *               removeOnComplete / removeOnFail { count: 1000 } (not `true`: see below)
 *     return    { status: "ok" | "failed" }
 *   P:exp-reports:*         BullMQ queue "exp-reports"
 *     job name  "report",  job id "<ID>-report",  data { experimentId: string }
 *     return    { reportPath: string }
 *   P:experiment:ID          string, JSON ExperimentMeta (the validated sweep, its points, outDir)
 *   P:experiment:ID:results  hash pointId -> JSON PointResult (status ok | failed, reason, measurement)
 *   P:experiment:ID:started  hash pointId -> JSON { host, pid, attempt, at } (status shows running points)
 *   P:experiment:ID:report   string, JSON { path, host, at } once the report job wrote it
 *   P:experiments            sorted set ID by creation time (ms)
 *
 * Exactly once: a point job first looks for its result in Redis, then in results.jsonl (a crash
 * between the file append and the Redis write), and only runs when neither has it. The JSONL line
 * is appended only if the file does not hold that point yet.
 *
 * Durability: a SIGKILLed experiment worker's active job is found stalled once its lock expires
 * (lockDuration) and goes back to wait; the processes of its run are killed by their watchdog
 * (processes.ts). Known quirk: `removeOnComplete: true` with `waitUntilFinished` fails
 * intermittently (the job hash is gone before the waiter reads it), hence `{ count: N }`.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { FlowProducer, Queue, UnrecoverableError, Worker, type ConnectionOptions, type Job } from 'bullmq';
import { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { runPoint, type PointMeasurement } from './run-point.js';
import { contentHash, expandPoints, type Point, type Sweep } from './sweep.js';

export const POINTS_QUEUE = 'exp-points';
export const REPORTS_QUEUE = 'exp-reports';
/** @defaultValue 'moeserve' */
export const DEFAULT_PREFIX = 'moeserve';
const KEEP_JOBS = { count: 1000 } as const;

export interface ExperimentMeta {
  readonly id: string;
  readonly name: string;
  readonly createdAt: string;
  readonly sweepFile: string | null;
  readonly sweepHash: string;
  readonly sweep: Sweep;
  readonly points: readonly Point[];
  /** Absolute folder of results.jsonl and the report. */
  readonly outDir: string;
}

export interface PointResult {
  readonly pointId: string;
  readonly index: number;
  readonly point: Point;
  readonly status: 'ok' | 'failed';
  readonly reason: string | null;
  /** Attempts made (1 = first try). */
  readonly attempts: number;
  readonly host: string;
  readonly finishedAt: string;
  readonly measurement: PointMeasurement | null;
}

export interface PointJobData {
  readonly experimentId: string;
  readonly pointId: string;
  readonly index: number;
}

export interface ReportJobData {
  readonly experimentId: string;
}

export interface QueueConnection {
  /** redis://host:port[/db] */
  readonly url: string;
  /** @defaultValue DEFAULT_PREFIX */
  readonly prefix?: string;
}

function connection(url: string): ConnectionOptions {
  const u = new URL(url);
  if (u.protocol !== 'redis:' && u.protocol !== 'rediss:') throw new Error(`--redis must be a redis:// URL, got ${url}`);
  return {
    host: u.hostname || '127.0.0.1',
    port: u.port ? Number(u.port) : 6379,
    db: u.pathname.length > 1 ? Number(u.pathname.slice(1)) : 0,
    username: u.username || undefined,
    password: u.password ? decodeURIComponent(u.password) : undefined,
    tls: u.protocol === 'rediss:' ? {} : undefined,
    // BullMQ workers need blocking commands without a retry limit.
    maxRetriesPerRequest: null,
  };
}

/** The experiment's plain Redis keys (see the header). */
export class ExperimentStore {
  readonly redis: Redis;
  readonly prefix: string;
  constructor(conn: QueueConnection) {
    this.prefix = conn.prefix ?? DEFAULT_PREFIX;
    this.redis = new Redis({ ...(connection(conn.url) as object), lazyConnect: false, maxRetriesPerRequest: 3 });
    // Errors surface through the commands' rejections; without a listener ioredis logs them.
    this.redis.on('error', () => undefined);
  }
  private key(id: string, part = ''): string {
    return `${this.prefix}:experiment:${id}${part ? `:${part}` : ''}`;
  }
  async meta(id: string): Promise<ExperimentMeta | null> {
    const s = await this.redis.get(this.key(id));
    return s ? (JSON.parse(s) as ExperimentMeta) : null;
  }
  async saveMeta(m: ExperimentMeta): Promise<void> {
    await this.redis.multi().set(this.key(m.id), JSON.stringify(m)).zadd(`${this.prefix}:experiments`, Date.parse(m.createdAt), m.id).exec();
  }
  async results(id: string): Promise<PointResult[]> {
    const h = await this.redis.hgetall(this.key(id, 'results'));
    return Object.values(h)
      .map((s) => JSON.parse(s) as PointResult)
      .sort((a, b) => a.index - b.index);
  }
  async result(id: string, pointId: string): Promise<PointResult | null> {
    const s = await this.redis.hget(this.key(id, 'results'), pointId);
    return s ? (JSON.parse(s) as PointResult) : null;
  }
  async saveResult(id: string, r: PointResult): Promise<void> {
    await this.redis.multi().hset(this.key(id, 'results'), r.pointId, JSON.stringify(r)).hdel(this.key(id, 'started'), r.pointId).exec();
  }
  async markStarted(id: string, pointId: string, attempt: number): Promise<void> {
    await this.redis.hset(this.key(id, 'started'), pointId, JSON.stringify({ host: os.hostname(), pid: process.pid, attempt, at: new Date().toISOString() }));
  }
  async started(id: string): Promise<Record<string, { host: string; pid: number; attempt: number; at: string }>> {
    const h = await this.redis.hgetall(this.key(id, 'started'));
    return Object.fromEntries(Object.entries(h).map(([k, v]) => [k, JSON.parse(v)]));
  }
  async saveReport(id: string, reportPath: string): Promise<void> {
    await this.redis.set(this.key(id, 'report'), JSON.stringify({ path: reportPath, host: os.hostname(), at: new Date().toISOString() }));
  }
  async report(id: string): Promise<{ path: string; host: string; at: string } | null> {
    const s = await this.redis.get(this.key(id, 'report'));
    return s ? JSON.parse(s) : null;
  }
  async list(): Promise<string[]> {
    return this.redis.zrange(`${this.prefix}:experiments`, 0, -1);
  }
  async close(): Promise<void> {
    await this.redis.quit().catch(() => this.redis.disconnect());
  }
}

// ---------------------------------------------------------------- results.jsonl

export function resultsFile(outDir: string): string {
  return path.join(outDir, 'results.jsonl');
}

/** Results in the JSONL file, last line per point winning (a torn last line is skipped). */
export function readJsonl(outDir: string): Map<string, PointResult> {
  const out = new Map<string, PointResult>();
  let text: string;
  try {
    text = fs.readFileSync(resultsFile(outDir), 'utf8');
  } catch {
    return out;
  }
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    try {
      const r = JSON.parse(line) as PointResult;
      out.set(r.pointId, r);
    } catch {
      // A line cut short by a crash mid-write: that point runs again.
    }
  }
  return out;
}

function appendJsonl(outDir: string, r: PointResult): void {
  fs.mkdirSync(outDir, { recursive: true });
  if (readJsonl(outDir).has(r.pointId)) return;
  const file = resultsFile(outDir);
  // A torn last line (crash mid-append) must not glue onto this one.
  let prefix = '';
  try {
    const st = fs.statSync(file);
    if (st.size > 0) {
      const fd = fs.openSync(file, 'r');
      const b = Buffer.alloc(1);
      fs.readSync(fd, b, 0, 1, st.size - 1);
      fs.closeSync(fd);
      if (b[0] !== 0x0a) prefix = '\n';
    }
  } catch {
    // no file yet
  }
  fs.appendFileSync(file, `${prefix}${JSON.stringify(r)}\n`);
}

async function persist(store: ExperimentStore, meta: ExperimentMeta, r: PointResult): Promise<void> {
  appendJsonl(meta.outDir, r);
  await store.saveResult(meta.id, r);
}

// ---------------------------------------------------------------- submit

export interface SubmitOptions extends QueueConnection {
  readonly sweep: Sweep;
  readonly sweepFile: string | null;
  /** Overrides sweep.out. */
  readonly outDir?: string | null;
  /** Root of default experiment folders. @defaultValue ~/.cache/moeserve/experiments */
  readonly experimentsRoot?: string;
}

export function defaultCacheRoot(): string {
  return path.join(os.homedir(), '.cache', 'moeserve');
}

function slug(s: string): string {
  return s.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-+|-+$/g, '').slice(0, 40) || 'sweep';
}

/** Queues a sweep: its meta, then one flow (report <- points). Returns the experiment. */
export async function submitSweep(o: SubmitOptions): Promise<ExperimentMeta> {
  const id = `${slug(o.sweep.name)}-${Date.now().toString(36)}${randomBytes(2).toString('hex')}`;
  const outDir = path.resolve(o.outDir ?? (o.sweep.out ? path.resolve(o.sweepFile ? path.dirname(o.sweepFile) : '.', o.sweep.out, id) : path.join(o.experimentsRoot ?? path.join(defaultCacheRoot(), 'experiments'), id)));
  const meta: ExperimentMeta = { id, name: o.sweep.name, createdAt: new Date().toISOString(), sweepFile: o.sweepFile ? path.resolve(o.sweepFile) : null, sweepHash: contentHash(o.sweep), sweep: o.sweep, points: expandPoints(o.sweep), outDir };
  fs.mkdirSync(outDir, { recursive: true });
  fs.writeFileSync(path.join(outDir, 'experiment.json'), `${JSON.stringify(meta, null, 2)}\n`);
  const prefix = o.prefix ?? DEFAULT_PREFIX;
  const store = new ExperimentStore(o);
  const flow = new FlowProducer({ connection: connection(o.url), prefix });
  try {
    await store.saveMeta(meta);
    await flow.add({
      name: 'report',
      queueName: REPORTS_QUEUE,
      data: { experimentId: id } satisfies ReportJobData,
      opts: { jobId: `${id}-report`, attempts: 2, backoff: { type: 'fixed', delay: 1000 }, removeOnComplete: KEEP_JOBS, removeOnFail: KEEP_JOBS },
      children: meta.points.map((p) => ({
        name: 'point',
        queueName: POINTS_QUEUE,
        data: { experimentId: id, pointId: p.id, index: p.index } satisfies PointJobData,
        opts: {
          jobId: `${id}-p${p.index}`,
          attempts: o.sweep.retry.attempts,
          backoff: { type: 'exponential', delay: o.sweep.retry.backoffMs },
          ignoreDependencyOnFailure: true,
          removeOnComplete: KEEP_JOBS,
          removeOnFail: KEEP_JOBS,
          // Lower numbers first: the report's order, and a restarted worker resumes in order.
          priority: p.index + 1,
        },
      })),
    });
  } finally {
    await flow.close();
    await store.close();
  }
  return meta;
}

// ---------------------------------------------------------------- worker

export interface ExperimentWorkerOptions extends QueueConnection {
  readonly log: Logger;
  /** Checkpoint cache. @defaultValue ~/.cache/moeserve/models/experiments */
  readonly cacheDir?: string;
  /** Runs at once on this machine (the runs measure the machine). @defaultValue 1 */
  readonly concurrency?: number;
  /** BullMQ job lock, ms: a killed worker's job is retried after about this long. @defaultValue 30000 */
  readonly lockDurationMs?: number;
  /** Called after each point and after the report (progress display). */
  readonly onEvent?: (e: { kind: 'point' | 'report'; experimentId: string; result?: PointResult; reportPath?: string }) => void;
  /** Writes the report (report.ts), injected to keep this module free of plotting. */
  readonly writeReport: (meta: ExperimentMeta, results: readonly PointResult[], outDir: string) => Promise<string>;
}

export interface ExperimentWorker {
  close(): Promise<void>;
}

/** A file lock per machine slot, so runs of several worker processes on one host do not overlap. */
async function machineSlot(concurrency: number, signal: { closed: boolean }): Promise<() => void> {
  const dir = path.join(os.tmpdir(), 'moeserve-experiment-locks');
  fs.mkdirSync(dir, { recursive: true });
  for (;;) {
    for (let i = 0; i < concurrency; i++) {
      const file = path.join(dir, `slot-${i}`);
      try {
        fs.writeFileSync(file, String(process.pid), { flag: 'wx' });
        return () => fs.rmSync(file, { force: true });
      } catch {
        const pid = Number(fs.readFileSync(file, 'utf8').trim() || '0');
        let alive = pid === process.pid;
        try {
          if (pid > 0 && pid !== process.pid) {
            process.kill(pid, 0);
            alive = true;
          }
        } catch (err) {
          alive = (err as NodeJS.ErrnoException).code === 'EPERM';
        }
        if (!alive) fs.rmSync(file, { force: true });
      }
    }
    if (signal.closed) throw new Error('worker closing');
    await new Promise((r) => setTimeout(r, 500));
  }
}

export function startExperimentWorker(o: ExperimentWorkerOptions): ExperimentWorker {
  const prefix = o.prefix ?? DEFAULT_PREFIX;
  const store = new ExperimentStore(o);
  const cacheDir = o.cacheDir ?? path.join(defaultCacheRoot(), 'models', 'experiments');
  const lockDuration = o.lockDurationMs ?? 30_000;
  const concurrency = o.concurrency ?? 1;
  const state = { closed: false };

  const pointWorker = new Worker<PointJobData, { status: string }>(
    POINTS_QUEUE,
    async (job: Job<PointJobData>) => {
      const { experimentId, pointId } = job.data;
      const log = o.log.child({ jobId: job.id, experimentId, pointId });
      const meta = await store.meta(experimentId);
      if (!meta) throw new UnrecoverableError(`experiment ${experimentId} not found in Redis`);
      const point = meta.points.find((p) => p.id === pointId);
      if (!point) throw new UnrecoverableError(`experiment ${experimentId} has no point ${pointId}`);
      const done = (await store.result(experimentId, pointId)) ?? readJsonl(meta.outDir).get(pointId) ?? null;
      if (done) {
        // Ran before a crash: record it where it is missing, never run it twice.
        await persist(store, meta, done);
        log.info({ status: done.status }, 'point already recorded');
        return { status: done.status };
      }
      const attempt = job.attemptsMade + 1;
      await store.markStarted(experimentId, pointId, attempt);
      const release = await machineSlot(concurrency, state);
      let result: PointResult;
      try {
        log.info({ attempt }, 'point run');
        const m = await runPoint(meta.sweep, point, { cacheDir, log });
        result = { pointId, index: point.index, point, status: 'ok', reason: null, attempts: attempt, host: os.hostname(), finishedAt: new Date().toISOString(), measurement: m };
      } catch (err) {
        const reason = (err as Error).message;
        const final = err instanceof UnrecoverableError || attempt >= (job.opts.attempts ?? 1);
        log.warn({ attempt, final, reason }, 'point failed');
        if (!final) throw err;
        result = { pointId, index: point.index, point, status: 'failed', reason, attempts: attempt, host: os.hostname(), finishedAt: new Date().toISOString(), measurement: null };
        await persist(store, meta, result);
        o.onEvent?.({ kind: 'point', experimentId, result });
        throw new UnrecoverableError(reason);
      } finally {
        release();
      }
      await persist(store, meta, result);
      o.onEvent?.({ kind: 'point', experimentId, result });
      return { status: result.status };
    },
    { connection: connection(o.url), prefix, concurrency, lockDuration, stalledInterval: lockDuration, maxStalledCount: 3 },
  );

  const reportWorker = new Worker<ReportJobData, { reportPath: string }>(
    REPORTS_QUEUE,
    async (job: Job<ReportJobData>) => {
      const { experimentId } = job.data;
      const meta = await store.meta(experimentId);
      if (!meta) throw new UnrecoverableError(`experiment ${experimentId} not found in Redis`);
      const results = await completeResults(store, meta, await job.getIgnoredChildrenFailures().catch(() => ({})));
      const reportPath = await o.writeReport(meta, results, meta.outDir);
      await store.saveReport(experimentId, reportPath);
      o.log.info({ jobId: job.id, experimentId, reportPath }, 'report written');
      o.onEvent?.({ kind: 'report', experimentId, reportPath });
      return { reportPath };
    },
    { connection: connection(o.url), prefix, concurrency: 1, lockDuration, stalledInterval: lockDuration, maxStalledCount: 3 },
  );
  for (const w of [pointWorker, reportWorker]) w.on('error', (err) => o.log.error({ err: err.message }, 'queue error'));

  return {
    async close() {
      state.closed = true;
      await Promise.all([pointWorker.close(), reportWorker.close()]);
      await store.close();
    },
  };
}

/**
 * Every point of the experiment, once: its stored result, or a failed entry saying why there is
 * none (a job BullMQ failed without our record, e.g. stalled too often; or not run yet).
 */
export async function completeResults(store: ExperimentStore, meta: ExperimentMeta, failures: Record<string, string> = {}): Promise<PointResult[]> {
  const stored = new Map((await store.results(meta.id)).map((r) => [r.pointId, r]));
  for (const [pid, r] of readJsonl(meta.outDir)) if (!stored.has(pid)) stored.set(pid, r);
  const reasons = new Map<string, string>();
  for (const [key, reason] of Object.entries(failures)) {
    const m = /-p(\d+)$/.exec(key);
    if (m) reasons.set(String(Number(m[1])), reason);
  }
  return meta.points.map(
    (p) =>
      stored.get(p.id) ?? { pointId: p.id, index: p.index, point: p, status: 'failed', reason: reasons.get(String(p.index)) ?? 'no result (not run yet)', attempts: 0, host: '', finishedAt: '', measurement: null },
  );
}

// ---------------------------------------------------------------- status

export interface ExperimentStatus {
  readonly meta: ExperimentMeta;
  readonly total: number;
  readonly ok: number;
  readonly failed: number;
  readonly running: readonly string[];
  /** Seconds, from the mean wall time of the points done; null before the first. */
  readonly etaS: number | null;
  readonly report: { path: string; host: string; at: string } | null;
}

export async function experimentStatus(conn: QueueConnection, id: string): Promise<ExperimentStatus | null> {
  const store = new ExperimentStore(conn);
  try {
    const meta = await store.meta(id);
    if (!meta) return null;
    const results = await store.results(id);
    const started = await store.started(id);
    const ok = results.filter((r) => r.status === 'ok');
    const walls = ok.map((r) => r.measurement?.wallS ?? 0).filter((x) => x > 0);
    const remaining = meta.points.length - results.length;
    return {
      meta,
      total: meta.points.length,
      ok: ok.length,
      failed: results.length - ok.length,
      running: Object.keys(started).filter((p) => !results.some((r) => r.pointId === p)),
      etaS: walls.length ? (walls.reduce((a, b) => a + b, 0) / walls.length) * remaining : null,
      report: await store.report(id),
    };
  } finally {
    await store.close();
  }
}

/** Every point's job counts by state (for `status --jobs`). */
export async function jobCounts(conn: QueueConnection): Promise<Record<string, number>> {
  const q = new Queue(POINTS_QUEUE, { connection: connection(conn.url), prefix: conn.prefix ?? DEFAULT_PREFIX });
  try {
    return await q.getJobCounts('wait', 'prioritized', 'active', 'delayed', 'completed', 'failed', 'waiting-children');
  } finally {
    await q.close();
  }
}
