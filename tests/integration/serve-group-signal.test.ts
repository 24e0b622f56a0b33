/**
 * SIGTERM to the whole process group (issue 13, item 6): what Ctrl-C, `kill -TERM -PGID` and
 * systemd's group kill do. `moeserve serve --workers 2` runs in its own process group; with four
 * streams in flight the group gets SIGTERM. The gateway drains: every stream finishes normally
 * (finish_reason "length", [DONE], no error event), then the gateway stops its workers and exits 0.
 * Before, the workers shared the group, took the signal themselves, and every stream failed with
 * experts_unavailable within milliseconds.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { afterAll, describe, expect, it } from 'vitest';
import { BIN, REPO } from '../helpers/cli.js';
import { fixtureDir } from '../helpers/golden.js';

describe('serve under a process-group SIGTERM', () => {
  let child: ChildProcess | null = null;
  afterAll(() => {
    if (child && child.exitCode === null) process.kill(-child.pid!, 'SIGKILL');
  });

  it('drains the streams in flight, then stops its workers and exits 0', async () => {
    child = spawn(process.execPath, [BIN, 'serve', '--model', fixtureDir('mixtral-tiny'), '--port', '0', '--workers', '2', '--shutdown-grace', '60', '--kv-cache-bytes', '16MiB'], {
      cwd: REPO,
      detached: true, // its own process group, as a shell job or a systemd unit
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const exited = new Promise<number | null>((resolve) => child!.on('exit', (code) => resolve(code)));
    let log = '';
    child.stderr!.on('data', (d) => (log += d));
    const url = await new Promise<string>((resolve, reject) => {
      let buf = '';
      child!.stdout!.on('data', (d) => {
        buf += d;
        for (const line of buf.split('\n')) {
          if (!line.startsWith('{')) continue;
          try {
            const j = JSON.parse(line) as { msg?: string; url?: string };
            if (j.msg === 'moeserve is serving the OpenAI API' && j.url) resolve(j.url);
          } catch {
            // a partial line
          }
        }
      });
      void exited.then((code) => reject(new Error(`serve exited (${code}) before serving: ${log}`)));
    });

    const body = JSON.stringify({ model: fixtureDir('mixtral-tiny'), prompt: [1, 2, 3, 4, 5], max_tokens: 300, temperature: 0, ignore_eos: true, stream: true });
    const firstChunk: Promise<void>[] = [];
    const streams = Array.from({ length: 4 }, async (_, i) => {
      const res = await fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
      expect(res.status).toBe(200);
      let text = '';
      let first: () => void = () => undefined;
      firstChunk[i] = new Promise((r) => (first = r));
      const decoder = new TextDecoder();
      for await (const part of res.body as unknown as AsyncIterable<Uint8Array>) {
        text += decoder.decode(part, { stream: true });
        first();
      }
      return text;
    });
    while (firstChunk.length < 4) await new Promise((r) => setTimeout(r, 10));
    await Promise.all(firstChunk);
    const signalledAt = performance.now();
    process.kill(-child.pid!, 'SIGTERM');

    const texts = await Promise.all(streams);
    const drainMs = performance.now() - signalledAt;
    for (const text of texts) {
      const events = text.split('\n\n').filter((e) => e.startsWith('data: ')).map((e) => e.slice(6));
      expect(events[events.length - 1]).toBe('[DONE]');
      const chunks = events.slice(0, -1).map((e) => JSON.parse(e) as { error?: unknown; choices: { finish_reason: string | null }[] });
      expect(chunks.filter((c) => c.error), text.slice(-500)).toEqual([]);
      expect(chunks[chunks.length - 1]!.choices[0]!.finish_reason).toBe('length');
    }
    expect(await exited).toBe(0);
    console.log(`4 streams of 300 tokens drained ${drainMs.toFixed(0)} ms after the group SIGTERM; serve exited 0`);
  });
});
