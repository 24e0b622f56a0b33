/**
 * One big prompt must not freeze the gateway (issue 13, item 1). A real server on loopback
 * (mixtral-tiny: max-model-len 4096, longest token 9 bytes, so no prompt over
 * 4096 × 9 × 4 = 147,456 bytes can fit):
 * - a prompt over that bound is refused by its byte length, before any tokenizer work (a 2 MB chat
 *   message answers in well under a second, as context_length_exceeded naming `messages`);
 * - prompts under the bound but costly to encode (140 KB: ~200-400 ms of tokenizer work each) are
 *   encoded on the tokenizer thread: while two of them run, the server's event loop, /health and
 *   another client's stream are delayed less than 100 ms beyond what the same measures show with
 *   no big prompt (on a shared 2-core machine that baseline alone reaches ~100 ms).
 * - a 16 MB JSON body (the issue's 8,388,608 x "é") is decoded and parsed on the tokenizer thread.
 * The server runs in this process, so `monitorEventLoopDelay` measures its event loop directly.
 */
import { execFile } from 'node:child_process';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TextTokenizer } from '../../services/gateway/src/tokenizer/tokenizer.js';
import { fixtureDir, loadExpected } from '../helpers/golden.js';
import { expectApiError, post, startTestServer, type TestServer } from './http-helpers.js';

const LEN7 = loadExpected('mixtral-tiny').prompts.len7.input_ids;

describe('a big prompt does not hold up other requests', () => {
  let t: TestServer;
  beforeAll(async () => {
    t = await startTestServer();
  });
  afterAll(async () => t?.close());

  it('EXPECTED FAILURE - a prompt longer than any max-model-len prompt can be is refused before tokenizing', async () => {
    const content = 'é'.repeat(1_000_000); // 2,000,000 bytes
    const t0 = performance.now();
    await expectApiError(() => t.client.chat.completions.create({ model: t.model, messages: [{ role: 'user', content }], max_tokens: 1 }), 400, {
      code: 'context_length_exceeded',
      param: 'messages',
      message: /maximum context length is 4096 tokens.*2000000 bytes/,
    });
    await expectApiError(() => t.client.completions.create({ model: t.model, prompt: ['hi', content], max_tokens: 1 }), 400, { code: 'context_length_exceeded', param: 'prompt' });
    const r = await post(`${t.url}/tokenize`, { prompt: content });
    expect(r.status).toBe(400);
    expect(r.body.error.code).toBe('context_length_exceeded');
    // Tokenizing 2 MB here takes ~5 s; a byte count takes microseconds.
    expect(performance.now() - t0).toBeLessThan(1500);
  });

  it('big prompts are encoded off the event loop: a stream and /health are held up less than 100 ms more than with no big prompt', async () => {
    const streamReq = { model: t.model, prompt: LEN7, max_tokens: 4000, temperature: 0, ignore_eos: true, stream: true } as OpenAI.CompletionCreateParamsStreaming;
    const stream = await t.client.completions.create(streamReq);
    const chunkTimes: number[] = [];
    let stop = false;
    const reading = (async () => {
      for await (const _ of stream) {
        chunkTimes.push(performance.now());
        if (stop) break;
      }
    })();
    while (chunkTimes.length < 5) await new Promise((r) => setTimeout(r, 5));

    /** Event-loop delay, /health latency and stream gaps while `work` runs. */
    const measure = async (work: () => Promise<unknown>) => {
      const loop = monitorEventLoopDelay({ resolution: 10 });
      loop.enable();
      const health: number[] = [];
      let probing = true;
      const probes = (async () => {
        while (probing) {
          const t0 = performance.now();
          const res = await fetch(`${t.url}/health`);
          expect(res.status).toBe(200);
          health.push(performance.now() - t0);
          await new Promise((r) => setTimeout(r, 10));
        }
      })();
      const t0 = performance.now();
      await work();
      const t1 = performance.now();
      probing = false;
      await probes;
      loop.disable();
      const during = chunkTimes.filter((x) => x >= t0 && x <= t1);
      let gap = 0;
      for (let i = 1; i < during.length; i++) gap = Math.max(gap, during[i]! - during[i - 1]!);
      return { ms: t1 - t0, loop: loop.max / 1e6, health: Math.max(...health), gap, chunks: during.length };
    };
    const content = 'é'.repeat(70_000); // 140,000 bytes: under the byte bound, 140,000 tokens
    const f = (m: Awaited<ReturnType<typeof measure>>) => `loop delay max ${m.loop.toFixed(1)} ms, /health max ${m.health.toFixed(1)} ms, stream max gap ${m.gap.toFixed(1)} ms (${m.chunks} chunks)`;
    // On a shared machine a stray 100-200 ms stall (a GC pause, a preempted thread) can hit any
    // one measurement, so up to 3 rounds are measured and the best counts. Encoding on the loop
    // would stall every round: one 140 KB prompt holds it 200 ms (1-2 s on a loaded machine).
    let ok = false;
    for (let round = 1; round <= 3 && !ok; round++) {
      // The machine's own noise (other processes, the engine and tokenizer threads taking cores).
      const base = await measure(() => new Promise((r) => setTimeout(r, 500)));
      const big = await measure(() =>
        Promise.all(
          Array.from({ length: 2 }, () =>
            expectApiError(() => t.client.chat.completions.create({ model: t.model, messages: [{ role: 'user', content }], max_tokens: 1 }), 400, {
              code: 'context_length_exceeded',
              param: 'messages',
              message: /maximum context length is 4096 tokens.*\(1400\d\d in the prompt/,
            }),
          ),
        ),
      );
      console.log(`round ${round}: no big prompt: ${f(base)}\n         2 x 140 KB prompts (${big.ms.toFixed(0)} ms): ${f(big)}`);
      expect(big.chunks).toBeGreaterThan(5);
      ok = big.loop < base.loop + 100 && big.health < base.health + 100 && big.gap < base.gap + 100;
    }
    stop = true;
    await reading;
    expect(ok, 'in every round a big prompt held up the loop, /health or the stream 100 ms beyond the noise').toBe(true);
  });

  it('a 16 MB body is decoded off the event loop: the loop never stalls 100 ms; the thread refuses __proto__ too', async () => {
    // The issue's probe: 8,388,608 x "é", 16 MB of UTF-8 (decoding it takes 100-250 ms). Sent from
    // a child process: building and sending 16 MB here would stall this (the server's) loop.
    const script = `const b = JSON.stringify({ model: ${JSON.stringify(t.model)}, messages: [{ role: 'user', content: 'é'.repeat(8388608) }], max_tokens: 1 });
      setTimeout(() => fetch(${JSON.stringify(`${t.url}/v1/chat/completions`)}, { method: 'POST', headers: { 'content-type': 'application/json' }, body: b }).then(async (r) => console.log(r.status, (await r.json()).error.code)), 300);`;
    let best = Infinity;
    // As above: the best of up to 3 rounds, against stray stalls of a shared machine.
    for (let round = 1; round <= 3 && best >= 100; round++) {
      const sent = new Promise<string>((resolve, reject) => execFile(process.execPath, ['-e', script], (err, stdout) => (err ? reject(err) : resolve(stdout.trim()))));
      await new Promise((r) => setTimeout(r, 250)); // the child starts and builds its body
      const loop = monitorEventLoopDelay({ resolution: 10 });
      loop.enable();
      const t0 = performance.now();
      expect(await sent).toBe('400 context_length_exceeded');
      loop.disable();
      console.log(`round ${round}: 16 MB chat body refused ${(performance.now() - t0).toFixed(0)} ms after the loop watch started; event loop delay max ${(loop.max / 1e6).toFixed(1)} ms`);
      best = Math.min(best, loop.max / 1e6);
    }
    expect(best).toBeLessThan(100);
    // The thread's parser refuses prototype poisoning as fastify's does.
    const poisoned = `{"model": "${t.model}", "prompt": "${'x'.repeat(1_100_000)}", "__proto__": {"admin": true}}`;
    const r = await post(`${t.url}/v1/completions`, poisoned);
    expect(r.status).toBe(400);
    expect(r.body.error).toMatchObject({ code: 'invalid_request', message: expect.stringMatching(/__proto__/) });
  });

  it('prompts encoded in the thread give the same ids as inline', async () => {
    const small = 'The expert router sends each token to';
    const large = `${small} `.repeat(400); // ~15 KB: above the inline threshold
    for (const prompt of [small, large]) {
      const r = await post(`${t.url}/tokenize`, { prompt });
      expect(r.status).toBe(200);
      expect(r.body.tokens).toEqual(TextTokenizer.fromDir(fixtureDir('mixtral-tiny')).encode(prompt));
    }
  });
});
