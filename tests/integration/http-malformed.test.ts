/**
 * What a hostile or broken HTTP client gets (issue 13, items 2-4), over raw `net` sockets to a
 * real server on loopback with short timeouts (headers 300 ms, whole request 600 ms):
 * - every malformed request (bad method, version, header bytes, line endings, Content-Length,
 *   chunk size, CL with TE, oversized headers or URL, an undecodable URL) is answered with a
 *   proper HTTP response whose body is OpenAI's `{error: {message, type, param, code}}`;
 * - a body shorter than its Content-Length, a chunk that never ends and headers that never end
 *   get 408 (`request_timeout`) within the limits, and the socket is closed;
 * - a client that drops mid-upload is logged as a client event (info), not a level-50 error.
 */
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from './http-helpers.js';

interface RawResponse {
  status: number;
  headers: Record<string, string>;
  body: any;
}

/** Sends raw bytes, reads until the server closes the socket (or `ms`), parses the responses. */
function raw(port: number, data: string | Buffer, opts: { ms?: number; end?: boolean } = {}): Promise<{ responses: RawResponse[]; closedAfterMs: number; text: string }> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const sock = net.connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`socket still open after ${opts.ms ?? 5000} ms; got: ${Buffer.concat(chunks).toString('latin1').slice(0, 300)}`));
    }, opts.ms ?? 5000);
    sock.on('data', (d) => chunks.push(d));
    sock.on('error', () => undefined); // a reset after the response is fine
    sock.on('close', () => {
      clearTimeout(timer);
      const text = Buffer.concat(chunks).toString('utf8');
      resolve({ responses: parseResponses(text), closedAfterMs: performance.now() - t0, text });
    });
    sock.write(data);
    if (opts.end) sock.end();
  });
}

function parseResponses(text: string): RawResponse[] {
  const out: RawResponse[] = [];
  let rest = text;
  while (rest.startsWith('HTTP/1.1 ')) {
    const headEnd = rest.indexOf('\r\n\r\n');
    if (headEnd < 0) break;
    const lines = rest.slice(0, headEnd).split('\r\n');
    const status = Number(lines[0]!.split(' ')[1]);
    const headers: Record<string, string> = {};
    for (const l of lines.slice(1)) {
      const i = l.indexOf(':');
      headers[l.slice(0, i).toLowerCase()] = l.slice(i + 1).trim();
    }
    const len = Number(headers['content-length'] ?? 0);
    const bodyBytes = Buffer.from(rest.slice(headEnd + 4), 'utf8').subarray(0, len);
    const bodyText = bodyBytes.toString('utf8');
    let body: unknown = bodyText;
    try {
      body = JSON.parse(bodyText);
    } catch {
      // not JSON: the assertion below shows it
    }
    out.push({ status, headers, body });
    rest = Buffer.from(rest.slice(headEnd + 4), 'utf8').subarray(len).toString('utf8');
  }
  return out;
}

function expectOpenAIError(r: RawResponse, status: number, code: string): void {
  expect(r.status, JSON.stringify(r.body)).toBe(status);
  expect(r.headers['content-type']).toMatch(/^application\/json/);
  expect(Object.keys(r.body)).toEqual(['error']);
  expect(Object.keys(r.body.error).sort()).toEqual(['code', 'message', 'param', 'type']);
  expect(r.body.error.code).toBe(code);
  expect(typeof r.body.error.message).toBe('string');
  expect(typeof r.body.error.type).toBe('string');
}

describe('malformed HTTP gets the OpenAI error shape', () => {
  let t: TestServer;
  let port: number;
  beforeAll(async () => {
    t = await startTestServer({ captureLogs: true, http: { headersTimeoutMs: 300, bodyTimeoutMs: 600 } });
    port = t.server.port;
  });
  afterAll(async () => t?.close());

  const post = (headers: string, body = '') => `POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n${headers}\r\n${body}`;

  it.each([
    ['method P@ST', 'P@ST /v1/completions HTTP/1.1\r\nHost: x\r\n\r\n'],
    ['version HTTP/9.9', 'GET /health HTTP/9.9\r\nHost: x\r\n\r\n'],
    ['a NUL in a header', 'GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\u0000b\r\n\r\n'],
    ['LF-only line endings', 'GET /health HTTP/1.1\nHost: x\n\n'],
    ['a garbage request line', '\u0001\u0002garbage\r\n\r\n'],
    ['a negative Content-Length', post('Content-Length: -1\r\n', '{}')],
    ['a Content-Length past 2^64', post('Content-Length: 99999999999999999999999\r\n', '{}')],
    ['Content-Length with Transfer-Encoding', post('Content-Length: 2\r\nTransfer-Encoding: chunked\r\n', '0\r\n\r\n')],
    ['a chunk size that is not hex', post('Transfer-Encoding: chunked\r\n', 'zz\r\n{}\r\n0\r\n\r\n')],
  ])('EXPECTED FAILURE - %s -> 400 invalid_request', async (_name, req) => {
    const r = await raw(port, req);
    expect(r.responses.length, r.text).toBe(1);
    expectOpenAIError(r.responses[0]!, 400, 'invalid_request');
  });

  it('EXPECTED FAILURE - a 64 KB header and a 100 KB URL -> 431', async () => {
    for (const req of [`GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(64 * 1024)}\r\n\r\n`, `GET /v1/models?q=${'a'.repeat(100 * 1024)} HTTP/1.1\r\nHost: x\r\n\r\n`]) {
      const r = await raw(port, req);
      expect(r.responses.length, r.text.slice(0, 200)).toBe(1);
      expectOpenAIError(r.responses[0]!, 431, 'invalid_request');
    }
  });

  it('EXPECTED FAILURE - an undecodable URL (FST_ERR_BAD_URL) -> 400', async () => {
    const r = await raw(port, post('Content-Length: 2\r\nConnection: close\r\n', '{}').replace('/v1/completions', '/v1/%ZZcompletions'));
    expectOpenAIError(r.responses[0]!, 400, 'invalid_request');
    expect(r.responses[0]!.body.error.message).toMatch(/URL/);
  });

  it('EXPECTED FAILURE - a body longer than its Content-Length: the extra bytes are a malformed next request, answered in the OpenAI shape', async () => {
    const r = await raw(port, post('Content-Length: 2\r\n', '{}xx garbage after the body'));
    // The garbage is parsed as a pipelined request; if it arrives before the first response is
    // written, Node answers it alone and closes the connection (the first response would be cut).
    expect(r.responses.length, r.text).toBeGreaterThanOrEqual(1);
    for (const res of r.responses) expectOpenAIError(res, 400, 'invalid_request');
    expect(r.responses[r.responses.length - 1]!.body.error.message).toMatch(/malformed HTTP request/);
  });

  it('EXPECTED FAILURE - a body shorter than its Content-Length -> 408 after the body timeout, socket closed', async () => {
    const r = await raw(port, post('Content-Length: 100\r\n', '{"prompt": 1,'), { ms: 3000 });
    expect(r.responses.length, r.text).toBe(1);
    expectOpenAIError(r.responses[0]!, 408, 'request_timeout');
    expect(r.closedAfterMs).toBeGreaterThanOrEqual(550);
    expect(r.closedAfterMs).toBeLessThan(2000);
  });

  it('EXPECTED FAILURE - a chunk of size FFFFFFFFFFFFFFFF that never ends -> 400 or 408, socket closed', async () => {
    const r = await raw(port, post('Transfer-Encoding: chunked\r\n', 'FFFFFFFFFFFFFFFF\r\n{"prompt":'), { ms: 3000 });
    expect(r.responses.length, r.text).toBe(1);
    const res = r.responses[0]!;
    expectOpenAIError(res, res.status, res.status === 408 ? 'request_timeout' : 'invalid_request');
    expect([400, 408]).toContain(res.status);
  });

  it('EXPECTED FAILURE - headers that never end -> 408 after the headers timeout', async () => {
    const r = await raw(port, 'POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n', { ms: 3000 });
    expect(r.responses.length, r.text).toBe(1);
    expectOpenAIError(r.responses[0]!, 408, 'request_timeout');
    expect(r.closedAfterMs).toBeLessThan(2000);
  });

  it('a client that drops mid-upload is a client event in the logs, not a server error', async () => {
    const from = t.logs.length;
    await new Promise<void>((resolve) => {
      const sock = net.connect(port, '127.0.0.1', () => {
        sock.write(post('Content-Length: 100\r\n', '{"prompt": "hel'));
        setTimeout(() => {
          sock.destroy();
          resolve();
        }, 100);
      });
    });
    const deadline = Date.now() + 3000;
    const gone = () => t.logs.slice(from).map((l) => JSON.parse(l) as { level: number; msg: string; code?: string });
    while (!gone().some((l) => l.msg === 'client went away') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    const lines = gone();
    expect(lines.find((l) => l.msg === 'client went away'), JSON.stringify(lines)).toMatchObject({ level: 30, code: 'cancelled' });
    expect(lines.filter((l) => l.level >= 50), JSON.stringify(lines)).toEqual([]);
  });
});
