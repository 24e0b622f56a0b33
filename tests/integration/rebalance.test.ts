/**
 * Live EPLB rebalancing on real parts: a gateway (engine thread, real ONNX Runtime) with 2 local
 * expert workers (child processes, real gRPC) over the mixtral-tiny golden fixture, an API key.
 * - greedy completions give the same text before, during (8 streams in flight while POST
 *   /admin/rebalance loads new experts and switches) and after a rebalance; none fails;
 * - the rebalance adds replicas (2 spare slots: 2 experts on both workers), /metrics shows it;
 * - GET /dashboard in headless Chromium (puppeteer-core): it loads behind the key, shows every
 *   layer's experts as heat-map cells, and its heat map changes after traffic.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_TOPOLOGY } from '../../router/index.js';
import { moeLayers } from '../../services/model/src/config.js';
import { readModelConfig } from '../../services/model/src/model-dir.js';
import { fixtureDir } from '../helpers/golden.js';
import { post, startTestServer, type TestServer } from './http-helpers.js';

const KEY = 'rebalance-key';
const AUTH = { authorization: `Bearer ${KEY}` };
const CHROMIUM = '/usr/bin/chromium';
const MOE_LAYERS = moeLayers(readModelConfig(fixtureDir('mixtral-tiny')));
const { modelDir: _m, runtime: _r, log: _l, ...TOPO } = { ...DEFAULT_TOPOLOGY, modelDir: '', runtime: null, log: null };

describe('live rebalance over 2 local workers (mixtral-tiny)', () => {
  let t: TestServer;
  beforeAll(async () => {
    t = await startTestServer({ http: { apiKey: KEY }, engine: { experts: { ...TOPO, workers: 2 } } });
  }, 120_000);
  afterAll(async () => t?.close());

  const complete = async (prompt: string, maxTokens: number) => {
    const r = await t.client.completions.create({ model: t.model, prompt, max_tokens: maxTokens, temperature: 0, ignore_eos: true } as never);
    return r.choices[0]!.text;
  };
  const PROMPTS = ['The quick brown fox', 'Experts in parallel', 'Once upon a time', 'Load balancing is', 'Hello', 'A B C D E F', 'moeserve routes tokens', 'zzz'];

  it('greedy outputs are identical before, during and after a rebalance; the page shows it', async () => {
    // The page, opened before any traffic.
    const puppeteer = (await import('puppeteer-core')).default;
    const browser = await puppeteer.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox', '--disable-gpu'] });
    try {
      const page = await browser.newPage();
      await page.setViewport({ width: 1280, height: 900 });
      const pageErrors: string[] = [];
      page.on('pageerror', (e) => pageErrors.push(String(e)));
      page.on('console', (m) => m.type() === 'error' && pageErrors.push(m.text()));
      expect((await fetch(`${t.url}/dashboard`)).status).toBe(401);
      expect((await fetch(`${t.url}/dashboard/data`)).status).toBe(401);
      await page.setExtraHTTPHeaders(AUTH);
      const res = await page.goto(`${t.url}/dashboard`, { waitUntil: 'load' });
      expect(res!.status()).toBe(200);
      // Page-side code as strings: this project's TypeScript has no DOM types.
      await page.waitForFunction('window.__dashboard.updates >= 1', { timeout: 20_000 }).catch(async (err) => {
        throw new Error(`${String(err)}; page errors: ${pageErrors.join(' | ')}; state: ${JSON.stringify(await page.evaluate('window.__dashboard'))}`);
      });
      const first = (await page.evaluate(`({ ...window.__dashboard, cells: document.querySelectorAll('#heat g.mark-rect.role-mark path').length, heat: document.querySelector('#heat svg').outerHTML })`)) as { error: string | null; layers: number[]; experts: number; cells: number; totalRows: number; heat: string };
      expect(first.error).toBeNull();
      expect(first.layers).toEqual(MOE_LAYERS);
      expect(first.experts).toBe(8);
      expect(first.cells).toBe(MOE_LAYERS.length * 8); // every layer's experts
      expect(first.totalRows).toBe(0);

      const before = await Promise.all(PROMPTS.map((p) => complete(p, 24)));
      // During: 8 requests in flight while the rebalance loads and switches.
      const during = PROMPTS.map((p) => complete(p, 24));
      const reb = await post(`${t.url}/admin/rebalance`, {}, AUTH);
      expect(reb.status).toBe(200);
      expect(reb.body.applied).toBe(true);
      expect(reb.body.layers.map((l: { layer: number }) => l.layer)).toEqual(MOE_LAYERS);
      for (const l of reb.body.layers) expect(l.balancedness_after).toBeGreaterThanOrEqual(l.balancedness_before);
      expect(await Promise.all(during)).toEqual(before);
      const after = await Promise.all(PROMPTS.map((p) => complete(p, 24)));
      expect(after).toEqual(before);
      expect((await post(`${t.url}/admin/rebalance`, {})).status).toBe(401);

      const metrics = await (await fetch(`${t.url}/metrics`)).text();
      expect(metrics).toMatch(/^moeserve:rebalances_total\{model_name="mixtral-tiny"\} 1$/m);
      expect(metrics).toMatch(/^moeserve:worker_expert_rows_total\{layer="0",worker="w0",model_name="mixtral-tiny"\} \d+$/m);
      expect(metrics).not.toMatch(/^moeserve:request_failure_total\{/m);
      // 2 spare slots on 2 workers: exactly two experts per layer are replicated.
      for (const layer of MOE_LAYERS) {
        const reps = [...metrics.matchAll(new RegExp(`^moeserve:expert_replicas\\{layer="${layer}",expert="\\d+",model_name="mixtral-tiny"\\} (\\d+)$`, 'gm'))].map((m) => Number(m[1]));
        expect(reps.length).toBe(8);
        expect(reps.filter((r) => r === 2).length).toBe(2);
      }

      // The page changed after traffic.
      await page.waitForFunction('window.__dashboard.totalRows > 0', { timeout: 20_000 });
      await page.waitForFunction(`document.querySelector('#heat svg').outerHTML !== ${JSON.stringify(first.heat)}`, { timeout: 20_000 });
      const shot = path.join('.cache', 'dashboard.png');
      fs.mkdirSync('.cache', { recursive: true });
      await page.screenshot({ path: shot, fullPage: true });
    } finally {
      await browser.close();
    }
  }, 180_000);
});
