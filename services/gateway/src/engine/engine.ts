/**
 * Engine: continuous-batching generation over the paged KV cache. One `step()` = one forward
 * pass over every running sequence: decodes (one token each) plus prefill chunks of newly
 * admitted prompts, within a token budget, so long prompts never starve running decodes.
 *
 * Data flow: EngineRequest (token ids + sampling) -> SeqState (here) -> ForwardSeq rows
 * (DenseRunner) -> KV rows (services/kvcache) / routed rows (RoutedExperts) -> logits ->
 * sampler -> StepEvent (token id, logprobs, finish reason) back to the caller.
 *
 * The scheduler admits a waiting sequence only when the pool can hold its next chunk. When the
 * pool runs dry mid-decode, the newest running sequence is preempted: its blocks are freed and it
 * goes back to the front of the queue to be recomputed later (output unchanged) — never a
 * deadlock and never a silent truncation.
 */
import { ServerError, type ErrorCode } from '../../../common/src/errors.js';
import type { MoeModelConfig } from '../../../model/src/config.js';
import { createSamplerScratch, SequenceSampler, type SamplerScratch, type SamplingParams } from '../sampling/sampler.js';
import { logSumExp, topLogprobs, tokenLogprob } from '../sampling/logprobs.js';
import { NO_SEQUENCE, type KvCacheManager } from '../../../kvcache/src/manager.js';
import type { PrefixMatch } from '../../../kvcache/src/types.js';
import type { RoutedExperts } from '../../../../router/src/types.js';
import type { DenseRunner, ForwardResult, ForwardSeq } from './dense-runner.js';


/** Prompt tokens of Engine.warmUp's request. */
const WARMUP_PROMPT_TOKENS = 8;

export type FinishReason = 'stop' | 'length' | 'abort' | 'error';

export interface EngineRequest {
  readonly promptIds: readonly number[];
  readonly sampling: SamplingParams;
  /** New tokens at most. */
  readonly maxTokens: number;
  /** Stop when one of these is generated (the model's EOS ids unless ignoreEos). */
  readonly stopTokenIds: readonly number[];
  /** Generated tokens before stop tokens count (vLLM min_tokens). @defaultValue 0 */
  readonly minTokens?: number;
  /** Top-N logprobs for each generated token (0 = the sampled token's only); null = none. */
  readonly logprobs: number | null;
  /** Top-N logprobs at each prompt position (for echo); null = none. */
  readonly promptLogprobs: number | null;
  /** Keep the full logits of the last prompt position (CLI --json). */
  readonly captureLastPromptLogits?: boolean;
  /** Per-tenant prefix-cache salt (vLLM `cache_salt`): prefixes are shared only under the same salt. */
  readonly cacheSalt?: string | null;
  /**
   * Requests with the same key are samples of one prompt (OpenAI `n`): the first is prefilled,
   * the others are forked from it copy-on-write when its prompt is done (the prompt's KV blocks
   * shared, not recomputed), each then sampling on its own. @defaultValue none
   */
  readonly shareKey?: string | null;
}

export interface TokenLogprobs {
  readonly logprob: number;
  readonly topIds: Int32Array;
  readonly topLogprobs: Float32Array;
}

/** Per-sequence output of one step. */
export interface StepEvent {
  readonly seqId: number;
  /** The sampled token, or -1 when this step only advanced a prefill. */
  readonly tokenId: number;
  readonly logprobs: TokenLogprobs | null;
  /** For each prompt position 1..n-1 the logprob of the actual next token, and top-N (echo). */
  readonly promptLogprobs: TokenLogprobs[] | null;
  readonly lastPromptLogits: Float32Array | null;
  readonly finishReason: FinishReason | null;
  /**
   * Why the sequence ended; set exactly when finishReason is 'error' (experts_unavailable ->
   * HTTP 503; resource_exhausted when it can never fit in the KV cache).
   */
  readonly error?: { readonly code: ErrorCode; readonly message: string };
}

/**
 * Failures of the routed experts (a worker lost with no replica, a deadline missed): they end the
 * step's sequences with an error, and the engine goes on (a worker that comes back serves the next
 * step). Any other error from forward is a bug and propagates.
 */
const ROUTED_FAILURES: ReadonlySet<ErrorCode> = new Set<ErrorCode>(['experts_unavailable', 'deadline_exceeded']);

/** The scheduler's own error end: a sequence the empty pool cannot hold (it never will). */
const NEVER_FITS = Object.freeze({ code: 'resource_exhausted' as const, message: 'the sequence cannot fit in the KV cache' });

/** Shared by every top-0 logprobs result: length 0, so nothing can be written through them. */
const NO_IDS = new Int32Array(0);
const NO_LOGPROBS = new Float32Array(0);

interface SeqState {
  readonly id: number;
  readonly req: EngineRequest;
  kvSeqId: number;
  /** prompt ++ generated tokens */
  readonly tokens: number[];
  readonly promptLen: number;
  /** Tokens whose KV rows are in the cache. */
  numComputed: number;
  generated: number;
  sampler: SequenceSampler;
  readonly stop: Set<number>;
  promptLogprobs: TokenLogprobs[] | null;
  readonly salt: string | null;
  readonly shareKey: string | null;
  /** Chain hashes of the prompt's full blocks, computed once (prefix caching). */
  hashes: Float64Array | undefined;
  /** In `running` (replaces an O(n) includes() per scheduled sequence). */
  isRunning: boolean;
  /** The step that last planned it, and its token count there (replace a per-step plan object and Set). */
  plannedAt: number;
  chunk: number;
  /** Its ForwardSeq, rewritten each step it runs (one object per sequence, not per step). */
  readonly fwd: { tokens: ArrayLike<number>; pastLen: number; kvSeqId: number; logits: ForwardSeq['logits'] };
  /** A decode's one token id (reused: a decode step allocates no token array). */
  readonly decodeToken: Int32Array;
  /** Its event for a step that only advanced a prefill (one frozen object per sequence). */
  readonly progress: StepEvent;
}

/** The engine's sizing, resolved (load.ts fills the defaults: DEFAULT_ENGINE_SIZING). */
export interface EngineOptions {
  /** Sequences decoding at once. */
  readonly maxNumSeqs: number;
  /** Tokens per step (prefill chunks + decodes). */
  readonly maxBatchedTokens: number;
  /** Longest prompt + output, tokens. */
  readonly maxModelLen: number;
  /** Reuse cached KV blocks of identical prefixes (chained block hashes). */
  readonly prefixCaching: boolean;
}

export class Engine {
  private readonly seqs = new Map<number, SeqState>();
  /** Admission order: waiting sequences (front = next). */
  private readonly waiting: SeqState[] = [];
  /** Running sequences in admission order (last = newest, preempted first). */
  private readonly running: SeqState[] = [];
  private nextId = 0;
  preemptions = 0;
  /** Sequences ended by the scheduler itself (they can never fit), reported by the next step. */
  private readonly failed: StepEvent[] = [];
  private readonly prefixCaching: boolean;
  /** Samples of one prompt (shareKey): the leader prefills, the followers wait to be forked. */
  private readonly groups = new Map<string, { leader: SeqState; followers: SeqState[] }>();
  /** One vocab-sized scratch for every sampler: sequences are sampled one at a time. */
  private readonly samplerScratch: SamplerScratch;
  // Per-step scratch, reused across steps (the step path allocates no arrays: avoid GC, as the KV
  // pool and gating do). `events` is what step() returns: valid until the next step().
  private readonly plan: SeqState[] = [];
  private readonly fwdSeqs: ForwardSeq[] = [];
  private readonly order: SeqState[] = [];
  private readonly events: StepEvent[] = [];
  private stepNo = 0;

  constructor(
    readonly cfg: MoeModelConfig,
    private readonly runner: DenseRunner,
    private readonly experts: RoutedExperts,
    private readonly kv: KvCacheManager,
    readonly opts: EngineOptions,
  ) {
    this.samplerScratch = createSamplerScratch(cfg.vocabSize);
    this.prefixCaching = opts.prefixCaching;
  }

  get numRunning(): number {
    return this.running.length;
  }
  get numWaiting(): number {
    return this.waiting.length;
  }
  hasWork(): boolean {
    return this.running.length + this.waiting.length > 0;
  }

  /**
   * Queues a request; returns its sequence id: `id` when the caller gives one (the gateway's
   * request id, carried unchanged to events; a caller gives ids always or never), else the
   * engine's next. Validation errors are thrown here, never in step().
   */
  add(req: EngineRequest, id: number = this.nextId++): number {
    const V = this.cfg.vocabSize;
    if (req.promptIds.length === 0) throw new ServerError('invalid_request', 'the prompt is empty', { param: 'prompt' });
    for (const id of req.promptIds) {
      if (!Number.isInteger(id) || id < 0 || id >= V) throw new ServerError('invalid_token_id', `token id ${id} is outside the vocabulary [0, ${V})`, { param: 'prompt' });
    }
    const total = req.promptIds.length + req.maxTokens;
    if (total > this.opts.maxModelLen) {
      throw new ServerError('context_length_exceeded', `This model's maximum context length is ${this.opts.maxModelLen} tokens. However, you requested ${total} tokens (${req.promptIds.length} in the messages, ${req.maxTokens} in the completion).`, { param: 'max_tokens' });
    }
    if (this.seqs.has(id)) throw new ServerError('internal', `sequence id ${id} is in use`);
    const s: SeqState = {
      id,
      req,
      kvSeqId: -1,
      tokens: [...req.promptIds],
      promptLen: req.promptIds.length,
      numComputed: 0,
      generated: 0,
      sampler: new SequenceSampler(req.sampling, V, req.promptIds, this.samplerScratch),
      stop: new Set(req.stopTokenIds),
      promptLogprobs: req.promptLogprobs !== null ? [] : null,
      salt: req.cacheSalt ?? null,
      shareKey: req.shareKey ?? null,
      hashes: undefined,
      isRunning: false,
      plannedAt: -1,
      chunk: 0,
      fwd: { tokens: NO_IDS, pastLen: 0, kvSeqId: -1, logits: 'none' },
      decodeToken: new Int32Array(1),
      progress: Object.freeze({ seqId: id, tokenId: -1, logprobs: null, promptLogprobs: null, lastPromptLogits: null, finishReason: null }),
    };
    this.seqs.set(id, s);
    if (s.shareKey !== null) {
      const group = this.groups.get(s.shareKey);
      if (group) {
        group.followers.push(s); // forked from the leader when its prompt is done
        return id;
      }
      this.groups.set(s.shareKey, { leader: s, followers: [] });
    }
    this.waiting.push(s);
    return id;
  }

  /**
   * Runs every unit once before the first request: a short prompt, then one more token, through
   * the runner without the KV cache (nothing is stored, scheduled, counted or cached; routed
   * experts see the rows like any other, workers included). The first client request then pays
   * less of the first runs' costs: on dsv2-perf its TTFT went from 436/517 to 356/367 ms (the
   * next ones 198–274 ms). Running it through the scheduler and the KV cache, or with a 64- or
   * 256-token prompt, gained no more; what is left was not found. Without a past, MLA runs its
   * naive graph both times: the absorbed decode graph's first run stays with the first decode.
   * Returns the wall time in ms.
   */
  async warmUp(promptLen = WARMUP_PROMPT_TOKENS): Promise<number> {
    const t0 = performance.now();
    const V = this.cfg.vocabSize;
    const prompt = Array.from({ length: Math.max(1, Math.min(promptLen, this.runner.maxPositions)) }, (_, i) => i % V);
    await this.runner.forward([{ tokens: prompt, pastLen: 0, kvSeqId: -1, logits: 'last' }], null, this.experts);
    await this.runner.forward([{ tokens: [prompt.length % V], pastLen: 0, kvSeqId: -1, logits: 'last' }], null, this.experts);
    return performance.now() - t0;
  }

  /** Ends a sequence now and frees its KV blocks. */
  abort(seqId: number): boolean {
    const s = this.seqs.get(seqId);
    if (!s) return false;
    this.release(s);
    return true;
  }

  private release(s: SeqState): void {
    if (s.kvSeqId >= 0) this.kv.freeSequence(s.kvSeqId);
    s.kvSeqId = -1;
    this.seqs.delete(s.id);
    remove(this.waiting, s);
    this.leaveRunning(s);
    this.dissolveGroup(s);
  }

  /** A leader leaving before its prompt is done: its followers queue as sequences of their own. */
  private dissolveGroup(s: SeqState): void {
    if (s.shareKey === null) return;
    const group = this.groups.get(s.shareKey);
    if (!group) return;
    if (group.leader === s) {
      this.groups.delete(s.shareKey);
      this.waiting.unshift(...group.followers.filter((f) => this.seqs.has(f.id)));
    } else remove(group.followers, s);
  }

  /**
   * The leader of a group just finished its prompt: fork every follower from it (its prompt KV
   * shared copy-on-write) and sample their first tokens from the same logits. A follower that
   * cannot be forked now (no seat, or no block for the partial last block) queues on its own; it
   * will find the prompt's full blocks in the prefix cache.
   */
  private forkFollowers(leader: SeqState, logits: Float32Array, events: StepEvent[]): void {
    const group = this.groups.get(leader.shareKey!);
    if (!group || group.leader !== leader) return;
    this.groups.delete(leader.shareKey!);
    for (const f of group.followers) {
      if (!this.seqs.has(f.id)) continue; // aborted while it waited
      const child = this.running.length < this.opts.maxNumSeqs ? this.kv.forkSequence(leader.kvSeqId) : NO_SEQUENCE;
      if (child === NO_SEQUENCE) {
        this.waiting.push(f);
        continue;
      }
      f.kvSeqId = child;
      f.numComputed = this.kv.numTokens(child);
      f.promptLogprobs = leader.promptLogprobs;
      this.enterRunning(f);
      const ev = this.sampleNext(f, logits);
      events.push(ev);
      if (ev.finishReason) this.release(f);
    }
  }

  /** Frees a running sequence's blocks and puts it back at the front of the queue. */
  private preempt(s: SeqState): void {
    if (s.kvSeqId >= 0) this.kv.freeSequence(s.kvSeqId);
    s.kvSeqId = -1;
    s.numComputed = 0;
    // Prompt logprobs were already delivered; recomputation needs none.
    this.leaveRunning(s);
    this.waiting.unshift(s);
    this.preemptions++;
  }

  private enterRunning(s: SeqState): void {
    this.running.push(s);
    s.isRunning = true;
  }

  private leaveRunning(s: SeqState): void {
    if (!s.isRunning) return;
    remove(this.running, s);
    s.isRunning = false;
  }

  /**
   * One forward pass over the scheduled sequences; returns one event per scheduled sequence. The
   * returned array is reused by the next step() (read it, or copy it, before calling again).
   */
  async step(): Promise<readonly StepEvent[]> {
    const events = this.events;
    events.length = 0;
    const plan = this.schedule();
    if (this.failed.length > 0) {
      for (let i = 0; i < this.failed.length; i++) events.push(this.failed[i]!);
      this.failed.length = 0;
      return events;
    }
    if (plan.length === 0) return events;
    const fwd = this.fwdSeqs;
    fwd.length = 0;
    for (let i = 0; i < plan.length; i++) {
      const s = plan[i]!;
      const n = s.chunk;
      const f = s.fwd;
      const finishesPrompt = s.numComputed + n >= s.tokens.length;
      // prompt logprobs are computed once, on the first pass (not again after a preemption)
      const wantAll = s.req.promptLogprobs !== null && s.generated === 0 && s.numComputed < s.promptLen;
      if (n === 1) {
        s.decodeToken[0] = s.tokens[s.numComputed]!;
        f.tokens = s.decodeToken;
      } else f.tokens = s.tokens.slice(s.numComputed, s.numComputed + n); // a prefill chunk: one copy per chunk
      f.pastLen = s.numComputed;
      f.kvSeqId = s.kvSeqId;
      f.logits = wantAll ? 'all' : finishesPrompt ? 'last' : 'none';
      fwd.push(f);
    }
    let res: ForwardResult;
    try {
      res = await this.runner.forward(fwd, this.kv, this.experts);
    } catch (err) {
      if (!(err instanceof ServerError) || !ROUTED_FAILURES.has(err.code)) throw err;
      // KV rows this step wrote past numComputed belong to these sequences and are freed with them.
      const error = { code: err.code, message: err.message };
      for (let i = 0; i < plan.length; i++) {
        const s = plan[i]!;
        this.release(s);
        events.push({ seqId: s.id, tokenId: -1, logprobs: null, promptLogprobs: null, lastPromptLogits: null, finishReason: 'error', error });
      }
      return events;
    }
    const V = this.cfg.vocabSize;
    for (let i = 0; i < plan.length; i++) {
      const s = plan[i]!;
      const n = s.chunk;
      const f = s.fwd;
      const start = s.numComputed;
      s.numComputed += n;
      this.kv.advance(s.kvSeqId, n);
      // Newly filled blocks become findable by later requests (and by this one after a preemption).
      if (this.prefixCaching) this.kv.commitFullBlocks(s.kvSeqId, s.tokens, s.salt);
      if (f.logits === 'none') {
        events.push(s.progress);
        continue;
      }
      const row0 = res.logitRow[i]!;
      const lastRow = f.logits === 'all' ? row0 + n - 1 : row0;
      // prompt logprobs: position p predicts token p+1
      if (f.logits === 'all' && s.promptLogprobs) {
        for (let t = 0; t < n; t++) {
          const pos = start + t;
          if (pos + 1 >= s.promptLen) break;
          s.promptLogprobs.push(this.logprobsOf(res.logits.subarray((row0 + t) * V, (row0 + t + 1) * V), s.tokens[pos + 1]!, s.req.promptLogprobs!));
        }
      }
      if (s.numComputed < s.tokens.length) {
        events.push(s.progress);
        continue;
      }
      const logits = res.logits.subarray(lastRow * V, (lastRow + 1) * V);
      const firstToken = s.generated === 0;
      const ev = this.sampleNext(s, logits);
      // Followers fork from the leader's KV before the leader can be released (it may finish now).
      if (firstToken && s.shareKey !== null) this.forkFollowers(s, logits, events);
      events.push(ev);
      if (ev.finishReason) this.release(s);
    }
    return events;
  }

  /** Samples the sequence's next token from `logits` [V]; releases it when it finishes. */
  private sampleNext(s: SeqState, logits: Float32Array): StepEvent {
    const firstToken = s.generated === 0;
    const captured = firstToken && s.req.captureLastPromptLogits ? logits.slice() : null;
    const tokenId = s.sampler.sample(logits);
    const lp = s.req.logprobs !== null ? this.logprobsOf(logits, tokenId, s.req.logprobs) : null;
    s.sampler.accept(tokenId);
    s.tokens.push(tokenId);
    s.generated++;
    let finish: FinishReason | null = null;
    if (s.stop.has(tokenId) && s.generated > (s.req.minTokens ?? 0)) finish = 'stop';
    else if (s.generated >= s.req.maxTokens || s.tokens.length >= this.opts.maxModelLen) finish = 'length';
    const promptLogprobs = firstToken && s.promptLogprobs ? s.promptLogprobs : null;
    return { seqId: s.id, tokenId, logprobs: lp, promptLogprobs, lastPromptLogits: captured, finishReason: finish };
  }

  /**
   * The token's logprob and the top-N: one log-sum-exp pass shared by both (an O(V) pass each
   * otherwise). The arrays are the event's own (they leave the thread with it); with N = 0 all
   * events share one pair of empty arrays.
   */
  private logprobsOf(logits: Float32Array, tokenId: number, topN: number): TokenLogprobs {
    const lse = logSumExp(logits);
    if (topN <= 0) return { logprob: tokenLogprob(logits, tokenId, lse), topIds: NO_IDS, topLogprobs: NO_LOGPROBS };
    const ids = new Int32Array(topN);
    const lps = new Float32Array(topN);
    topLogprobs(logits, topN, ids, lps, lse);
    return { logprob: tokenLogprob(logits, tokenId, lse), topIds: ids, topLogprobs: lps };
  }

  /**
   * The cached prefix a waiting sequence can start from. None when prefix caching is off or the
   * request needs logits at prompt positions (echo logprobs, CLI --json): matched positions are
   * never recomputed, so they would have none (vLLM skips the cache for prompt logprobs too).
   */
  private matchFor(s: SeqState): PrefixMatch {
    const needsPromptLogits = s.generated === 0 && (s.req.promptLogprobs !== null || s.req.captureLastPromptLogits === true);
    if (!this.prefixCaching || needsPromptLogits) return this.kv.matchPrefix(s.tokens, 0, s.salt);
    s.hashes = this.kv.prefixHashes(s.tokens, s.tokens.length, s.salt, s.hashes);
    return this.kv.matchPrefix(s.tokens, s.tokens.length, s.salt, s.hashes);
  }

  /**
   * Picks this step's sequences (each with its `chunk` of tokens) and makes sure their KV slots
   * exist. Returns the reused plan array; allocates nothing (admission's prefix match aside).
   */
  private schedule(): readonly SeqState[] {
    let budget = this.opts.maxBatchedTokens;
    const step = ++this.stepNo;
    const plan = this.plan;
    plan.length = 0;
    // 1. running sequences in admission order, decodes before prefill chunks; a snapshot, since
    //    preemption edits `running` while we go
    const order = this.order;
    order.length = 0;
    const running = this.running;
    for (let i = 0; i < running.length; i++) if (isDecode(running[i]!)) order.push(running[i]!);
    for (let i = 0; i < running.length; i++) if (!isDecode(running[i]!)) order.push(running[i]!);
    for (let o = 0; o < order.length; o++) {
      const s = order[o]!;
      if (budget <= 0) break;
      if (!s.isRunning) continue; // preempted for an older sequence
      const n = Math.min(s.tokens.length - s.numComputed, budget);
      let ok = this.kv.ensureCapacity(s.kvSeqId, s.numComputed + n);
      while (!ok) {
        // Preempt the newest running sequence that is not already in this step.
        let victim: SeqState | undefined;
        for (let i = running.length - 1; i >= 0; i--) {
          const c = running[i]!;
          if (c !== s && c.plannedAt !== step) {
            victim = c;
            break;
          }
        }
        if (!victim) break;
        this.preempt(victim);
        ok = this.kv.ensureCapacity(s.kvSeqId, s.numComputed + n);
      }
      if (!ok) {
        this.preempt(s);
        continue;
      }
      s.plannedAt = step;
      s.chunk = n;
      plan.push(s);
      budget -= n;
    }
    order.length = 0; // hold no references between steps
    // 2. admit waiting sequences while budget, seats and blocks allow
    while (budget > 0 && this.waiting.length > 0 && running.length < this.opts.maxNumSeqs) {
      const s = this.waiting[0]!;
      const len = s.tokens.length;
      const match = this.matchFor(s);
      const n = Math.min(len - match.numTokens, budget);
      const kvSeqId = this.kv.createSequenceWithPrefix(match, match.numTokens + n);
      if (kvSeqId === NO_SEQUENCE) break;
      // The manager's count is authoritative: a match can only shrink between match and admission.
      s.numComputed = this.kv.numTokens(kvSeqId);
      const chunk = Math.min(len - s.numComputed, budget);
      if (!this.kv.ensureCapacity(kvSeqId, s.numComputed + chunk)) {
        this.kv.freeSequence(kvSeqId);
        s.numComputed = 0;
        break;
      }
      this.waiting.shift();
      s.kvSeqId = kvSeqId;
      this.enterRunning(s);
      s.plannedAt = step;
      s.chunk = chunk;
      plan.push(s);
      budget -= chunk;
    }
    if (plan.length === 0 && this.waiting.length > 0 && running.length === 0) {
      // Nothing runs and the head of the queue cannot fit in an empty pool: it never will.
      const s = this.waiting[0]!;
      this.release(s);
      this.failed.push({ seqId: s.id, tokenId: -1, logprobs: null, promptLogprobs: null, lastPromptLogits: null, finishReason: 'error', error: NEVER_FITS });
    }
    return plan;
  }
}

function isDecode(s: SeqState): boolean {
  return s.numComputed === s.tokens.length - 1;
}

/** Removes x from arr in place (Array.splice would allocate the removed-elements array). */
function remove<T>(arr: T[], x: T): void {
  const i = arr.indexOf(x);
  if (i < 0) return;
  for (let j = i + 1; j < arr.length; j++) arr[j - 1] = arr[j]!;
  arr.pop();
}
