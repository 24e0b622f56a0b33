/**
 * What every route of the app shares, and the steps both generation endpoints take between a
 * parsed request and its response: model check, prompts × n -> engine requests (context-length
 * check, stop ids, per-choice seeds), admission (the waiting-queue bound -> 429), start, and the
 * wiring of client disconnects to cancellation.
 */
import type { FastifyReply, FastifyRequest } from 'fastify';
import { ServerError } from '../../../common/src/errors.js';
import type { EngineRequest } from '../engine/engine.js';
import type { PromptEncoder } from '../tokenizer/thread.js';
import type { TextTokenizer } from '../tokenizer/tokenizer.js';
import type { EngineClient, ModelFacts } from './engine-client.js';
import { invalid, unknownFields, type Body } from './fields.js';
import { RequestRun, type SequenceSpec } from './generation.js';
import type { ServerMetrics } from './metrics.js';
import type { HttpOptions } from './options.js';
import { checkContext, type GenerationParams } from './requests.js';

export interface AppContext {
  readonly engine: EngineClient;
  readonly tokenizer: TextTokenizer;
  /** Prompt text -> ids off the event loop (see tokenizer/thread.ts). */
  readonly prompts: PromptEncoder;
  readonly model: ModelFacts;
  /** Longest prompt text that could fit in max-model-len, UTF-8 bytes (see `promptByteLimit`). */
  readonly maxPromptBytes: number;
  readonly opts: HttpOptions;
  readonly metrics: ServerMetrics;
  /** Generation requests in flight (cancelled together at shutdown). */
  readonly runs: Set<RequestRun>;
  draining: boolean;
}

/** A prompt as token ids, with its text when the client sent text (echo returns it). */
export interface Prompt {
  readonly ids: readonly number[];
  readonly text: string | null;
}

/**
 * Slack on the tokenizer's bytes-per-token bound for normalizers that shrink text: NFC (Qwen,
 * DeepSeek) composes at most 3 code points into one (Hangul L+V+T jamo: 9 bytes -> 3), NFKC maps
 * a fullwidth letter (3 bytes) to ASCII (1 byte).
 */
const NORMALIZER_SLACK = 4;

/**
 * The byte length above which a prompt text cannot fit in max-model-len: every token stands for
 * at most `maxTokenBytes` bytes of (normalized) text, so B bytes are at least
 * B / (maxTokenBytes × slack) tokens. Checked before any template rendering or tokenization, so a
 * huge prompt costs a byte count, not seconds of tokenizer work.
 */
export function promptByteLimit(maxModelLen: number, maxTokenBytes: number): number {
  return maxModelLen * maxTokenBytes * NORMALIZER_SLACK;
}

/** Refuses a prompt text (or conversation) of `bytes` UTF-8 bytes that cannot fit, naming `param`. */
export function checkPromptBytes(ctx: AppContext, bytes: number, param: string): void {
  if (bytes <= ctx.maxPromptBytes) return;
  throw new ServerError(
    'context_length_exceeded',
    `This model's maximum context length is ${ctx.model.maxModelLen} tokens. However, your prompt is ${bytes} bytes long, more than any prompt of ${ctx.model.maxModelLen} tokens can be (${ctx.maxPromptBytes} bytes). Please reduce the length of the prompt.`,
    { param },
  );
}

export function logUnknownFields(req: FastifyRequest, body: Body, known: ReadonlySet<string>): void {
  const unknown = unknownFields(body, known);
  if (unknown.length > 0) req.log.warn({ ignoredFields: unknown }, 'request fields not supported by this endpoint were ignored');
}

export function checkAccepting(ctx: AppContext): void {
  if (ctx.draining) throw new ServerError('resource_exhausted', 'the server is shutting down');
  if (!ctx.engine.healthy) throw new ServerError('internal', 'the engine is down');
}

export function checkModel(ctx: AppContext, model: string | null): void {
  if (model !== null && model !== ctx.opts.servedModelName) {
    throw new ServerError('not_found', `The model \`${model}\` does not exist. This server serves \`${ctx.opts.servedModelName}\`.`, { param: 'model' });
  }
}

/** Distinguishes the share keys of concurrent requests. */
let shareCounter = 0;

/**
 * Prompts × n -> one engine sequence each, in response order (choice index = prompt × n + i).
 * With a seed, choice i samples with seed + i (vLLM's rule): reproducible, and not n copies.
 */
export function buildSpecs(ctx: AppContext, p: GenerationParams, prompts: readonly Prompt[], promptLogprobs: number | null, promptParam: string): SequenceSpec[] {
  const { maxModelLen } = ctx.model;
  const stops = new Set<number>(p.ignoreEos ? [] : ctx.model.eosTokenIds);
  for (const id of p.stopTokenIds) stops.add(id);
  const stopTokenIds = [...stops];
  const specs: SequenceSpec[] = [];
  const requestKey = ++shareCounter;
  prompts.forEach((prompt, promptIndex) => {
    const len = prompt.ids.length;
    if (len === 0) throw invalid(promptParam, 'is empty (it encodes to no tokens)');
    const maxTokens = p.maxTokens ?? maxModelLen - len;
    checkContext(len, Math.max(1, maxTokens), maxModelLen, p.maxTokensParam, promptParam);
    for (let i = 0; i < p.n; i++) {
      const sampling = p.sampling.seed !== null && i > 0 ? Object.freeze({ ...p.sampling, seed: p.sampling.seed + i }) : p.sampling;
      const request: EngineRequest = {
        promptIds: prompt.ids,
        sampling,
        maxTokens,
        stopTokenIds,
        minTokens: p.minTokens,
        logprobs: p.logprobs,
        promptLogprobs,
        cacheSalt: p.cacheSalt,
        // the n samples of a prompt share its KV blocks (prefilled once, forked copy-on-write)
        shareKey: p.n > 1 ? `${requestKey}:${promptIndex}` : null,
      };
      specs.push({ index: promptIndex * p.n + i, promptIndex, request });
    }
  });
  return specs;
}

/**
 * Admission and start. The waiting queue is bounded: a request is refused (429) when its
 * sequences, beyond the free seats, would push the queue past max-waiting; a request that could
 * never fit (more sequences than seats + queue) is a 400.
 */
export function startRun(ctx: AppContext, req: FastifyRequest, reply: FastifyReply, specs: readonly SequenceSpec[], p: GenerationParams, startedAt: number): RequestRun {
  const { maxNumSeqs } = ctx.model;
  const { maxWaiting } = ctx.opts;
  if (specs.length > maxNumSeqs + maxWaiting) {
    throw invalid('n', `asks for ${specs.length} sequences (prompts × n); this server takes at most ${maxNumSeqs + maxWaiting} per request`);
  }
  const queued = ctx.engine.numQueued;
  const free = Math.max(0, maxNumSeqs - ctx.engine.numRunning);
  if (queued + specs.length - free > maxWaiting) {
    throw new ServerError('queue_full', `The server is at capacity (${queued} sequences waiting, limit ${maxWaiting}). Retry later.`);
  }
  const run = new RequestRun(ctx.engine, ctx.tokenizer, specs, {
    stop: p.stop,
    includeStopStr: p.includeStopStrInOutput,
    skipSpecialTokens: p.skipSpecialTokens,
    timeoutMs: ctx.opts.requestTimeoutMs,
    startedAt,
    observer: ctx.metrics,
  });
  run.start();
  ctx.runs.add(run);
  run.done.then(
    () => ctx.runs.delete(run),
    () => ctx.runs.delete(run),
  );
  // The response's 'close' before it finished = the client went away: abort its sequences now.
  reply.raw.on('close', () => {
    if (!reply.raw.writableFinished) run.cancel(new ServerError('cancelled', 'the client closed the connection'));
  });
  return run;
}

export type Usage = {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
};

/** Prompt tokens once per prompt (not per choice), completion tokens over all choices. */
export function usageOf(prompts: readonly Prompt[], run: RequestRun): Usage {
  const prompt = prompts.reduce((s, p) => s + p.ids.length, 0);
  const completion = run.choices.reduce((s, c) => s + c.tokenIds.length, 0);
  return { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion };
}

/** One summary line per request (no text, ever). */
export function logFinished(req: FastifyRequest, run: RequestRun, usage: Usage, startedAt: number): void {
  const first = run.choices.reduce((m, c) => (c.firstTokenAt > 0 && (m === 0 || c.firstTokenAt < m) ? c.firstTokenAt : m), 0);
  req.log.info(
    {
      choices: run.choices.length,
      promptTokens: usage.prompt_tokens,
      completionTokens: usage.completion_tokens,
      finishReasons: run.choices.map((c) => c.finishReason),
      ttftMs: first > 0 ? Math.round((first - startedAt) * 10) / 10 : null,
      e2eMs: Math.round((performance.now() - startedAt) * 10) / 10,
    },
    'generation finished',
  );
}
