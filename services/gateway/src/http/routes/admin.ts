/**
 * Operator routes: POST /admin/rebalance (live EPLB rebalance of the expert workers) and the live
 * page, GET /dashboard with its feed GET /dashboard/data (JSON, polled by the page once a second).
 * All behind the API key when one is set (app.ts), except the charting library's files
 * (/dashboard/vendor/*.js: vega and vega-lite as npm ships them, served from node_modules, no CDN
 * and no build step).
 */
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance } from 'fastify';
import { ServerError } from '../../../../common/src/errors.js';
import type { AppContext } from '../context.js';
import { toJson } from '../json.js';
import { balance } from '../metrics.js';

const require = createRequire(import.meta.url);
const HERE = path.dirname(fileURLToPath(import.meta.url));

/** Vendor files the page loads, by route name -> [package, file in it] (read on first use). */
const VENDOR: Readonly<Record<string, readonly [string, string]>> = Object.freeze({
  'vega.min.js': ['vega', 'build/vega.min.js'],
  'vega-lite.min.js': ['vega-lite', 'build/vega-lite.min.js'],
});

/** A file of an installed package (its `exports` map does not list the UMD builds: walk up from its entry point). */
function packageFile(pkg: string, rel: string): string {
  let dir = path.dirname(require.resolve(pkg));
  for (;;) {
    const manifest = path.join(dir, 'package.json');
    if (fs.existsSync(manifest) && (JSON.parse(fs.readFileSync(manifest, 'utf8')) as { name?: string }).name === pkg) return path.join(dir, rel);
    const up = path.dirname(dir);
    if (up === dir) throw new ServerError('internal', `package ${pkg} not found`);
    dir = up;
  }
}
export const DASHBOARD_OPEN_ROUTES: readonly string[] = Object.keys(VENDOR).map((f) => `/dashboard/vendor/${f}`);

export function registerAdminRoutes(app: FastifyInstance, ctx: AppContext): void {
  app.post('/admin/rebalance', async (_req, reply) => {
    if (!ctx.engine.rebalance) throw new ServerError('invalid_request', 'rebalancing needs expert workers (--workers N or --worker-addrs)');
    const r = await ctx.engine.rebalance();
    return reply.type('application/json; charset=utf-8').send(
      toJson({
        applied: r.applied,
        reason: r.reason ?? null,
        trigger: r.trigger,
        apply_ms: Math.round(r.applyMs * 10) / 10,
        switch_ms: Math.round(r.switchMs * 10) / 10,
        experts_loaded: r.expertsLoaded,
        layers: r.layers.map((l) => ({ layer: l.layer, balancedness_before: l.before, balancedness_after: l.after })),
      }),
    );
  });

  let page: string | null = null;
  app.get('/dashboard', async (_req, reply) => {
    page ??= fs.readFileSync(path.join(HERE, '..', 'dashboard', 'dashboard.html'), 'utf8');
    return reply.type('text/html; charset=utf-8').header('cache-control', 'no-store').send(page);
  });

  const vendor = new Map<string, Buffer>();
  app.get<{ Params: { file: string } }>('/dashboard/vendor/:file', async (req, reply) => {
    const file = VENDOR[req.params.file];
    if (!file) throw new ServerError('not_found', `no vendor file ${req.params.file}`);
    let body = vendor.get(req.params.file);
    if (!body) vendor.set(req.params.file, (body = fs.readFileSync(packageFile(file[0], file[1]))));
    return reply.type('application/javascript; charset=utf-8').header('cache-control', 'max-age=3600').send(body);
  });

  app.get('/dashboard/data', async (_req, reply) => {
    const s = await ctx.metrics.engineStats();
    if (!s) throw new ServerError('internal', 'the engine did not answer in time');
    const r = s.routing;
    const m = ctx.metrics;
    return reply
      .type('application/json; charset=utf-8')
      .header('cache-control', 'no-store')
      .send(
        toJson({
          time: Date.now() / 1000,
          topology: r.topology,
          layers: r.layers,
          experts: r.expertRows[0]?.length ?? 0,
          workers: r.workers,
          expert_rows_window: r.windowExpertRows,
          expert_rows_total: r.expertRows,
          replicas: r.replicas,
          worker_load_window: r.windowWorkerLoad,
          worker_load_total: r.workerLoad,
          worker_messages_total: r.workerRows,
          balancedness_window: r.windowWorkerLoad.map((w) => balance(w)),
          balancedness_total: r.workerLoad.map((w) => balance(w)),
          kv: { blocks_used: s.kv.blocksUsed, blocks_cached_free: s.kv.blocksCachedFree, blocks_total: s.kv.blocksTotal },
          running: s.running,
          waiting: s.waiting,
          steps: s.steps,
          generated_tokens: m.generatedTokens,
          ttft_seconds_sum: m.ttftSecondsSum,
          ttft_count: m.ttftCount,
          rebalance: r.rebalance ? { rebalances: r.rebalance.rebalances, failures: r.rebalance.failures, running: r.rebalance.running, last_apply_ms: r.rebalance.lastApplyMs } : null,
          workers_status: s.experts?.workers.map((w) => ({ name: w.name, up: w.up })) ?? null,
        }),
      );
  });
}
