/**
 * `moeserve experiment <submit|worker|status|report|list>`: sweeps over expert counts, top-k,
 * workers and placement, queued on BullMQ (services/queue/), each point a real run.
 *
 *   moeserve experiment submit SWEEP.(yaml|json) --redis URL [--out DIR]
 *   moeserve experiment worker --redis URL [--concurrency 1] [--cache-dir DIR] [--lock-ms 30000] [--exit-after ID]
 *   moeserve experiment status ID --redis URL [--watch]
 *   moeserve experiment report ID --redis URL [--out DIR]
 *   moeserve experiment list --redis URL
 */
import fs from 'node:fs';
import { parseArgs } from 'node:util';
import pino from 'pino';
import { ServerError } from '../common/src/errors.js';
import { completeResults, experimentStatus, ExperimentStore, jobCounts, startExperimentWorker, submitSweep, type ExperimentStatus } from '../queue/src/experiment-queue.js';
import { removeStaleNamespaces } from '../queue/src/netns.js';
import { writeReport } from '../queue/src/report.js';
import { parseSweepText, validateSweep } from '../queue/src/sweep.js';

const HELP = `usage: moeserve experiment <command> [flags]
  submit SWEEP      validate a sweep file (YAML or JSON) and queue one job per point, then the report
  worker            run queued points one at a time on this machine (one worker per node)
  status ID         progress of an experiment (--watch: a progress bar until the report is written)
  report ID         (re)write report.md, points.csv and the plots from the results stored so far
  list              experiment ids, oldest first
flags:
  --redis URL       redis://host:port (required; also $MOESERVE_REDIS)
  --prefix P        Redis key prefix (default moeserve)
  --out DIR         submit: experiment folder (default sweep's "out", else ~/.cache/moeserve/experiments/ID);
                    report: where to write the report (default the experiment folder)
  --concurrency N   worker: runs at once on this machine (default 1: the runs measure the machine)
  --cache-dir DIR   worker: checkpoint cache (default ~/.cache/moeserve/models/experiments)
  --lock-ms N       worker: BullMQ job lock; a killed worker's point is retried after about this long (default 30000)
  --exit-after ID   worker: exit once experiment ID's report is written
  --watch           status: redraw until the report is written (default when stdout is a terminal)
  --log-level L     pino level (default info)
see experiments/example-sweep.yaml and README.md ("Experiments")`;

function bad(msg: string): never {
  throw new ServerError('invalid_request', `${msg}\n${HELP}`);
}

export async function experimentCommand(argv: string[], env: NodeJS.ProcessEnv): Promise<void> {
  try {
    await experiment(argv, env);
  } catch (err) {
    // ioredis gives up on a command after its retries: say which server, not the retry count.
    if (!(err instanceof ServerError) && err instanceof Error && /max retries per request|ECONNREFUSED|ENOTFOUND|getaddrinfo/.test(err.message)) {
      throw new ServerError('invalid_request', `cannot reach Redis at ${argv.includes('--redis') ? argv[argv.indexOf('--redis') + 1] : env.MOESERVE_REDIS} (--redis): ${err.message}`, { param: 'redis', cause: err });
    }
    throw err;
  }
}

async function experiment(argv: string[], env: NodeJS.ProcessEnv): Promise<void> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      redis: { type: 'string' },
      prefix: { type: 'string' },
      out: { type: 'string' },
      concurrency: { type: 'string', default: '1' },
      'cache-dir': { type: 'string' },
      'lock-ms': { type: 'string', default: '30000' },
      'exit-after': { type: 'string' },
      watch: { type: 'boolean' },
      'log-level': { type: 'string', default: 'info' },
      help: { type: 'boolean', default: false },
    },
    strict: true,
  });
  const [sub, arg, ...extra] = positionals;
  if (values.help || sub === undefined) {
    process.stdout.write(`${HELP}\n`);
    return;
  }
  if (extra.length > 0) bad(`unexpected arguments: ${extra.join(' ')}`);
  const url = values.redis ?? env.MOESERVE_REDIS;
  const conn = () => {
    if (!url) bad('--redis URL is required');
    return { url: url!, prefix: values.prefix };
  };
  const positiveInt = (v: string, flag: string) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) bad(`${flag} must be a positive integer, got ${v}`);
    return n;
  };

  switch (sub) {
    case 'submit': {
      if (!arg) bad('submit needs a sweep file');
      let text: string;
      try {
        text = fs.readFileSync(arg!, 'utf8');
      } catch (err) {
        throw new ServerError('invalid_request', `cannot read sweep file ${arg}: ${(err as Error).message}`);
      }
      const sweep = validateSweep(parseSweepText(text, arg));
      const meta = await submitSweep({ ...conn(), sweep, sweepFile: arg!, outDir: values.out ?? null });
      process.stdout.write(`${meta.id}\n`);
      process.stderr.write(`queued ${meta.points.length} runs of "${meta.name}" (then the report); results in ${meta.outDir}\n  moeserve experiment worker --redis ${url}\n  moeserve experiment status ${meta.id} --redis ${url}\n`);
      return;
    }
    case 'worker': {
      if (arg) bad(`worker takes no positional argument, got ${arg}`);
      const log = pino({ name: 'moeserve-experiment', level: values['log-level'] }, pino.destination({ fd: 2, sync: true }));
      const stale = await removeStaleNamespaces();
      if (stale.length) log.warn({ namespaces: stale }, 'removed network namespaces left by a killed run');
      const exitAfter = values['exit-after'] ?? null;
      let resolveDone!: () => void;
      const done = new Promise<void>((r) => (resolveDone = r));
      const worker = startExperimentWorker({
        ...conn(),
        log,
        cacheDir: values['cache-dir'],
        concurrency: positiveInt(values.concurrency, '--concurrency'),
        lockDurationMs: positiveInt(values['lock-ms'], '--lock-ms'),
        writeReport,
        onEvent: (e) => {
          if (e.kind === 'point' && e.result) log.info({ experimentId: e.experimentId, pointId: e.result.pointId, status: e.result.status, reason: e.result.reason ?? undefined }, 'point recorded');
          if (e.kind === 'report') process.stdout.write(`report ${e.experimentId}: ${e.reportPath}\n`);
          if (e.kind === 'report' && e.experimentId === exitAfter) resolveDone();
        },
      });
      if (exitAfter) {
        // The report may already exist (written before this worker started).
        const st = await experimentStatus(conn(), exitAfter);
        if (!st) bad(`--exit-after: no experiment ${exitAfter}`);
        if (st!.report) resolveDone();
      }
      log.info({ redis: url, exitAfter }, 'experiment worker ready');
      const stop = new Promise<void>((r) => {
        process.once('SIGINT', () => r());
        process.once('SIGTERM', () => r());
      });
      await Promise.race([done, stop]);
      await worker.close();
      return;
    }
    case 'status': {
      if (!arg) bad('status needs an experiment id');
      const watch = values.watch ?? process.stdout.isTTY === true;
      const tty = process.stdout.isTTY === true;
      const t0 = Date.now();
      // Bounded: a watch ends when the report is written, or after 24 h.
      for (;;) {
        const st = await experimentStatus(conn(), arg!);
        if (!st) throw new ServerError('not_found', `no experiment ${arg} in ${url}`);
        if (!watch) {
          const counts = await jobCounts(conn()).catch(() => null);
          process.stdout.write(`${formatStatus(st)}\n${counts ? `jobs (all experiments): ${JSON.stringify(counts)}\n` : ''}`);
          return;
        }
        process.stdout.write(tty ? `\r\x1b[K${progressLine(st)}` : `${progressLine(st)}\n`);
        if (st.report || Date.now() - t0 > 86_400_000) {
          process.stdout.write(`\n${formatStatus(st)}\n`);
          return;
        }
        await new Promise((r) => setTimeout(r, tty ? 1000 : 10_000));
      }
    }
    case 'report': {
      if (!arg) bad('report needs an experiment id');
      const store = new ExperimentStore(conn());
      try {
        const meta = await store.meta(arg!);
        if (!meta) throw new ServerError('not_found', `no experiment ${arg} in ${url}`);
        const file = await writeReport(meta, await completeResults(store, meta), values.out ?? meta.outDir);
        process.stdout.write(`${file}\n`);
      } finally {
        await store.close();
      }
      return;
    }
    case 'list': {
      const store = new ExperimentStore(conn());
      try {
        for (const id of await store.list()) process.stdout.write(`${id}\n`);
      } finally {
        await store.close();
      }
      return;
    }
    default:
      bad(`unknown experiment command "${sub}"`);
  }
}

/** "[#########.........] 6/18 runs (1 failed) ETA 2m10s". */
export function progressLine(st: ExperimentStatus, width = 30): string {
  const done = st.ok + st.failed;
  const filled = st.total > 0 ? Math.round((done / st.total) * width) : width;
  const eta = st.report ? 'report written' : st.etaS === null ? 'ETA –' : `ETA ${Math.floor(st.etaS / 60)}m${String(Math.round(st.etaS % 60)).padStart(2, '0')}s`;
  return `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${done}/${st.total} runs${st.failed ? ` (${st.failed} failed)` : ''} ${eta}`;
}

export function formatStatus(st: ExperimentStatus): string {
  return [
    `experiment ${st.meta.id} "${st.meta.name}" created ${st.meta.createdAt}`,
    `  runs: ${st.total} total, ${st.ok} ok, ${st.failed} failed, ${st.total - st.ok - st.failed} to go${st.running.length ? ` (running: ${st.running.join(', ')})` : ''}`,
    `  folder: ${st.meta.outDir}`,
    `  report: ${st.report ? `${st.report.path} (${st.report.at}, ${st.report.host})` : 'not yet'}`,
    `  ${progressLine(st)}`,
  ].join('\n');
}
