/**
 * One generation request from submission to its last token: the OpenAI request's prompts × n
 * become sequences in the engine (EngineClient.submit); each sequence's events become text.
 *
 *   SequenceSpec (prompt ids + EngineRequest) -> EngineClient.submit -> StepEvent per step
 *     -> ChoiceRun.accept: IncrementalDetokenizer (UTF-8-safe) -> StopChecker (stop strings
 *        across tokens, held back until safe) -> ChoiceDelta (final text + the step's tokens)
 *     -> RequestRun.onDelta (the route: an SSE chunk, or nothing until `done` for a JSON body)
 *
 * Cancellation: `cancel(err)` (client gone, deadline, shutdown) aborts every unfinished sequence
 * in the engine at once (its KV blocks are freed) and rejects `done`. A sequence that fails in
 * the engine (experts unavailable) fails the whole request the same way. A stop string ends its
 * sequence here: the engine is told to abort it.
 */
import { ServerError, toServerError, type ErrorCode } from '../../../common/src/errors.js';
import type { EngineRequest, StepEvent, TokenLogprobs } from '../engine/engine.js';
import { IncrementalDetokenizer } from '../tokenizer/detokenizer.js';
import { StopChecker } from '../tokenizer/stop.js';
import type { TextTokenizer } from '../tokenizer/tokenizer.js';
import type { EngineClient } from './engine-client.js';

export type ChoiceFinish = 'stop' | 'length';

export interface SequenceSpec {
  /** The choice's index in the response: promptIndex × n + i. */
  readonly index: number;
  readonly promptIndex: number;
  readonly request: EngineRequest;
}

/** Text and tokens that became final in one event of one choice. */
export interface ChoiceDelta {
  /** Text safe to send (never a partial character, never part of a stop string). */
  readonly text: string;
  /** The event's tokens: tokenIds[from, to) of the choice. */
  readonly from: number;
  readonly to: number;
  readonly finishReason: ChoiceFinish | null;
}

/** What a run reports for /metrics; times in seconds. */
export interface RunObserver {
  promptTokens(n: number): void;
  firstToken(seconds: number): void;
  interToken(seconds: number): void;
  generationToken(): void;
  sequenceFinished(reason: ChoiceFinish, e2eSeconds: number, ttftSeconds: number, tokens: number): void;
  requestFailed(code: ErrorCode): void;
}

export interface RunOptions {
  readonly stop: readonly string[];
  readonly includeStopStr: boolean;
  readonly skipSpecialTokens: boolean;
  /** Deadline from `startedAt`, ms; 0 = none. */
  readonly timeoutMs: number;
  /** performance.now() at the request's arrival (TTFT and e2e are measured from it). */
  readonly startedAt: number;
  readonly observer: RunObserver;
}

export class ChoiceRun {
  hostId = -1;
  readonly tokenIds: number[] = [];
  /** Per generated token (null when logprobs were not asked). */
  readonly tokenLogprobs: (TokenLogprobs | null)[] = [];
  /** Per generated token: its character offset in `text` (a held character counts at its completing token). */
  readonly offsets: number[] = [];
  /** Prompt positions 1..P-1 (echo with logprobs). */
  promptLogprobs: TokenLogprobs[] | null = null;
  finishReason: ChoiceFinish | null = null;
  /** The stop string or stop token id that ended the choice (vLLM `stop_reason`). */
  stopReason: string | number | null = null;
  firstTokenAt = 0;
  lastTokenAt = 0;
  private readonly detok: IncrementalDetokenizer;
  private readonly stopper: StopChecker;
  /** include_stop_str_in_output also keeps a stop token's text. */
  private readonly includeStopToken: boolean;

  constructor(
    readonly spec: SequenceSpec,
    tokenizer: TextTokenizer,
    opts: RunOptions,
  ) {
    this.detok = new IncrementalDetokenizer(tokenizer, spec.request.promptIds, { skipSpecialTokens: opts.skipSpecialTokens });
    this.stopper = new StopChecker(opts.stop, { includeStopString: opts.includeStopStr });
    this.includeStopToken = opts.includeStopStr;
  }

  get index(): number {
    return this.spec.index;
  }
  get promptIds(): readonly number[] {
    return this.spec.request.promptIds;
  }
  /** The choice's output text so far (final once finishReason is set). */
  get text(): string {
    return this.stopper.text;
  }

  /** One engine event (a token, maybe with a finish) -> the text that became final. */
  accept(ev: Pick<StepEvent, 'tokenId' | 'logprobs' | 'promptLogprobs' | 'finishReason'>): ChoiceDelta {
    const from = this.tokenIds.length;
    if (ev.promptLogprobs) this.promptLogprobs = ev.promptLogprobs;
    let text = '';
    if (ev.tokenId >= 0) {
      this.tokenIds.push(ev.tokenId);
      this.tokenLogprobs.push(ev.logprobs);
      const stopToken = ev.finishReason === 'stop';
      if (stopToken) this.stopReason = ev.tokenId;
      if (stopToken && !this.includeStopToken) {
        // A stop token (EOS, stop_token_ids) is not part of the text, as in vLLM.
        this.offsets.push(this.detok.text.length);
      } else {
        const delta = this.detok.push(ev.tokenId);
        this.offsets.push(this.detok.textOffsets[this.detok.textOffsets.length - 1]!);
        text = this.stopper.push(delta);
      }
    }
    if (!this.stopper.stopped && (ev.finishReason === 'stop' || ev.finishReason === 'length')) {
      text += this.stopper.push(this.detok.flush());
      if (!this.stopper.stopped) {
        text += this.stopper.flush();
        this.finishReason = ev.finishReason;
      }
    }
    if (this.stopper.stopped) {
      this.finishReason = 'stop';
      this.stopReason = this.stopper.matched;
    }
    return { text, from, to: this.tokenIds.length, finishReason: this.finishReason };
  }
}

const noop = () => undefined;

export class RequestRun {
  readonly choices: ChoiceRun[];
  /** Called for every event of every choice, in arrival order. */
  onDelta: (choice: ChoiceRun, delta: ChoiceDelta) => void = noop;
  /** Resolves when every choice finished; rejects with the ServerError that ended the request. */
  readonly done: Promise<void>;
  private resolve!: () => void;
  private reject!: (e: ServerError) => void;
  private settled = false;
  private remaining: number;
  private timer: NodeJS.Timeout | null = null;

  constructor(
    private readonly engine: EngineClient,
    tokenizer: TextTokenizer,
    specs: readonly SequenceSpec[],
    private readonly opts: RunOptions,
  ) {
    this.choices = specs.map((s) => new ChoiceRun(s, tokenizer, opts));
    this.remaining = this.choices.length;
    this.done = new Promise<void>((res, rej) => {
      this.resolve = res;
      this.reject = rej;
    });
    this.done.catch(noop); // observed by the route; never an unhandled rejection
  }

  get finished(): boolean {
    return this.settled;
  }

  /** Submits every sequence. Throws (after undoing what it submitted) if the engine refuses. */
  start(): void {
    try {
      for (const c of this.choices) {
        c.hostId = this.engine.submit(c.spec.request, (ev) => this.onEvent(c, ev), (e) => this.fail(e));
        this.opts.observer.promptTokens(c.promptIds.length);
      }
    } catch (err) {
      this.cancel(toServerError(err));
      throw err;
    }
    if (this.opts.timeoutMs > 0) {
      const left = Math.max(0, this.opts.startedAt + this.opts.timeoutMs - performance.now());
      this.timer = setTimeout(() => this.fail(new ServerError('deadline_exceeded', `the request ran past its ${this.opts.timeoutMs} ms deadline`)), Math.min(left, 2 ** 31 - 1));
    }
  }

  /** Ends the request: every unfinished sequence is aborted in the engine (KV freed at once). */
  cancel(err: ServerError): void {
    this.fail(err);
  }

  private fail(err: ServerError): void {
    if (this.settled) return;
    this.settle();
    for (const c of this.choices) if (c.finishReason === null && c.hostId >= 0) this.engine.abort(c.hostId);
    if (err.code !== 'cancelled') this.opts.observer.requestFailed(err.code);
    this.reject(err);
  }

  private settle(): void {
    this.settled = true;
    if (this.timer) clearTimeout(this.timer);
  }

  private onEvent(c: ChoiceRun, ev: StepEvent): void {
    if (this.settled) return;
    if (ev.finishReason === 'error' || ev.finishReason === 'abort') {
      // The engine sets the error (its code) on every 'error' end; an 'abort' end is a cancellation.
      this.fail(ev.error ? new ServerError(ev.error.code, ev.error.message) : new ServerError('cancelled', 'the sequence was aborted'));
      return;
    }
    const now = performance.now();
    const obs = this.opts.observer;
    if (ev.tokenId >= 0) {
      if (c.firstTokenAt === 0) {
        c.firstTokenAt = now;
        obs.firstToken((now - this.opts.startedAt) / 1000);
      } else obs.interToken((now - c.lastTokenAt) / 1000);
      c.lastTokenAt = now;
      obs.generationToken();
    }
    let delta: ChoiceDelta;
    try {
      delta = c.accept(ev);
    } catch (err) {
      this.fail(toServerError(err));
      return;
    }
    if (delta.finishReason !== null) {
      // A stop string ends the sequence here, before the engine does.
      if (ev.finishReason === null) this.engine.abort(c.hostId);
      this.remaining--;
      obs.sequenceFinished(delta.finishReason, (now - this.opts.startedAt) / 1000, ((c.firstTokenAt || now) - this.opts.startedAt) / 1000, c.tokenIds.length);
    }
    try {
      this.onDelta(c, delta);
    } catch (err) {
      this.fail(toServerError(err));
      return;
    }
    if (this.remaining === 0) {
      this.settle();
      this.resolve();
    }
  }
}
