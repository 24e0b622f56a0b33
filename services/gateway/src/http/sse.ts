/**
 * Server-sent events for streamed completions: `data: <json>\n\n` per chunk, `data: [DONE]\n\n`
 * at the end (OpenAI's framing). The reply is hijacked from fastify when the first chunk is
 * ready, so a request that fails before producing anything still gets a plain JSON error with
 * its real status (a 503 when the experts are unavailable); after that, an error is one
 * `data: {"error": ...}` event before [DONE], as vLLM does.
 */
import type { ServerResponse } from 'node:http';
import type { FastifyReply } from 'fastify';
import { errorBody, toHttpError } from './errors.js';
import type { ChoiceDelta, ChoiceRun, RequestRun } from './generation.js';
import { toJson, type JsonValue } from './json.js';

export class SseWriter {
  private readonly raw: ServerResponse;

  constructor(reply: FastifyReply) {
    reply.hijack();
    this.raw = reply.raw;
    this.raw.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache',
      connection: 'keep-alive',
      'x-accel-buffering': 'no', // proxies (nginx) must not buffer the stream
      'x-request-id': reply.request.id,
    });
  }

  get closed(): boolean {
    return this.raw.destroyed || this.raw.writableEnded;
  }

  /** One event; dropped once the client is gone (the run is being cancelled then). */
  send(json: string): void {
    if (!this.closed) this.raw.write(`data: ${json}\n\n`);
  }

  end(): void {
    if (this.closed) return;
    this.raw.write('data: [DONE]\n\n');
    this.raw.end();
  }
}

/**
 * Streams a run: `chunksOf` turns each delta into zero or more chunks; `tail` gives the chunks
 * after the last delta (the usage chunk). Nothing is written before the first chunk, so an error
 * before it propagates to the route's error handler as a normal JSON response.
 */
export async function streamRun(
  reply: FastifyReply,
  run: RequestRun,
  chunksOf: (choice: ChoiceRun, delta: ChoiceDelta) => readonly JsonValue[],
  tail: () => readonly JsonValue[],
): Promise<void> {
  let sse: SseWriter | null = null;
  run.onDelta = (c, d) => {
    const chunks = chunksOf(c, d);
    if (chunks.length === 0) return;
    sse ??= new SseWriter(reply);
    for (const ch of chunks) sse.send(toJson(ch));
  };
  try {
    await run.done;
  } catch (err) {
    if (sse === null) throw err;
    const e = toHttpError(err);
    if (e.code !== 'cancelled') (sse as SseWriter).send(toJson(errorBody(e)));
    (sse as SseWriter).end();
    return;
  }
  const writer: SseWriter = sse ?? new SseWriter(reply);
  for (const ch of tail()) writer.send(toJson(ch));
  writer.end();
}
