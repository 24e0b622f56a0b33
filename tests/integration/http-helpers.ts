/**
 * Real servers on loopback for the HTTP tests: startServer (engine thread, real ONNX Runtime) on
 * port 0 over a golden fixture, the official `openai` client pointed at it, and small helpers to
 * read /metrics and to wait for a condition with a bound (never a sleep as an assertion).
 */
import { Writable } from 'node:stream';
import OpenAI, { APIError } from 'openai';
import { expect } from 'vitest';
import { pino } from 'pino';
import type { SerializedLoadOptions } from '../../services/gateway/src/engine/thread-protocol.js';
import { httpOptions, type HttpOptions } from '../../services/gateway/src/http/options.js';
import { startServer, type RunningServer } from '../../services/gateway/src/server.js';
import { fixtureDir, type FixtureName } from '../helpers/golden.js';

export interface TestServer {
  readonly server: RunningServer;
  readonly url: string;
  /** The official client; no retries (a 429 or 503 must reach the test). */
  readonly client: OpenAI;
  readonly model: string;
  /** Every pino line the server wrote (only when captureLogs). */
  readonly logs: string[];
  close(): Promise<void>;
}

export interface TestServerOptions {
  readonly fixture?: FixtureName;
  readonly http?: Partial<Omit<HttpOptions, 'servedModelName'>>;
  readonly engine?: Partial<SerializedLoadOptions>;
  readonly captureLogs?: boolean;
}

export async function startTestServer(o: TestServerOptions = {}): Promise<TestServer> {
  const fixture = o.fixture ?? 'mixtral-tiny';
  const logs: string[] = [];
  const sink = new Writable({
    write(chunk, _enc, cb) {
      for (const line of String(chunk).split('\n')) if (line) logs.push(line);
      cb();
    },
  });
  const logger = pino({ level: o.captureLogs ? 'info' : 'silent' }, sink);
  const server = await startServer(
    {
      modelDir: fixtureDir(fixture),
      host: '127.0.0.1',
      port: 0,
      http: httpOptions({ servedModelName: fixture, ...o.http }),
      engine: { device: 'cpu', deviceId: 0, intraOpThreads: 1, mlaImpl: 'absorbed', kvCacheBytes: 16 << 20, blockSize: 16, maxNumSeqs: 64, ...o.engine },
      shutdownGraceMs: 500,
    },
    logger,
  );
  const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: o.http?.apiKey ?? 'unused', maxRetries: 0, timeout: 60_000 });
  return { server, url: server.url, client, model: fixture, logs, close: () => server.close() };
}

/** POST JSON (or raw text) with fetch; the parsed body and status. */
export async function post(url: string, body: unknown, headers: Record<string, string> = {}): Promise<{ status: number; body: any; headers: Headers }> {
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await res.text();
  let parsed: unknown = text;
  try {
    parsed = JSON.parse(text);
  } catch {
    // not JSON (SSE or empty)
  }
  return { status: res.status, body: parsed, headers: res.headers };
}

/** The value of one series of /metrics (labels: a subset to match), or undefined. */
export async function metric(url: string, name: string, labels: Record<string, string> = {}): Promise<number | undefined> {
  const text = await (await fetch(`${url}/metrics`)).text();
  return parseMetric(text, name, labels);
}

export function parseMetric(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    const ok = Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`));
    if (ok) return Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return undefined;
}

/** Polls `cond` until it holds; fails with `what` after timeoutMs. */
export async function waitFor(what: string, cond: () => Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Runs `fn`, expects an OpenAI APIError with this status and error fields. */
export async function expectApiError(fn: () => Promise<unknown>, status: number, fields: { code: string; param?: string | null; type?: string; message?: RegExp }): Promise<APIError> {
  let caught: unknown;
  try {
    await fn();
  } catch (err) {
    caught = err;
  }
  expect(caught, 'EXPECTED FAILURE - the call succeeded').toBeInstanceOf(APIError);
  const e = caught as APIError;
  expect(e.status).toBe(status);
  expect(e.code).toBe(fields.code);
  if (fields.param !== undefined) expect(e.param).toBe(fields.param);
  if (fields.type) expect(e.type).toBe(fields.type);
  if (fields.message) expect(e.message).toMatch(fields.message);
  return e;
}

