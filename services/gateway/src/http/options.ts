/**
 * The HTTP edge's options: validated once at boot, frozen, passed down explicitly.
 */
import { ServerError } from '../../../common/src/errors.js';
import { DEFAULT_ENGINE_SIZING } from '../engine/sizing.js';

export interface HttpOptions {
  /** The name clients send as `model` and GET /v1/models lists. */
  readonly servedModelName: string;
  /** Bearer key required on every route but GET /health and GET /metrics; null = open. @defaultValue null */
  readonly apiKey: string | null;
  /**
   * Sequences (prompts × n) that may wait for a seat beyond the running ones; a request that
   * would push the waiting queue past it gets 429. The one rule: `defaultMaxWaiting(maxNumSeqs)`,
   * 4 waiting per seat. @defaultValue defaultMaxWaiting(DEFAULT_ENGINE_SIZING.maxNumSeqs) = 256
   */
  readonly maxWaiting: number;
  /** Deadline of one generation request from arrival to its last token, ms; 0 = none. @defaultValue 0 */
  readonly requestTimeoutMs: number;
  /** Log prompt text / token ids and chat messages (info level). Off: never logged. @defaultValue false */
  readonly logPrompts: boolean;
  /** Largest request body, bytes. @defaultValue 32 MiB */
  readonly bodyLimit: number;
  /**
   * Time a client has to send a request's headers, from its first byte, ms; slower gets 408 and
   * the connection is closed. @defaultValue 30000
   */
  readonly headersTimeoutMs: number;
  /**
   * Time a client has to send a whole request (headers and body), from its first byte, ms; slower
   * (a body shorter than its Content-Length, a chunk that never ends) gets 408 and the connection
   * is closed. Not a limit on the response: streams run as long as they generate. Must be >=
   * headersTimeoutMs. @defaultValue 60000
   */
  readonly bodyTimeoutMs: number;
  /** How long /metrics waits for the engine's stats before serving the last values, ms. @defaultValue 2000 */
  readonly statsTimeoutMs: number;
}

/** Waiting sequences allowed per seat of the engine (max-num-seqs). */
const WAITING_PER_SEAT = 4;

/** The waiting-queue bound for an engine of `maxNumSeqs` seats (the default of `maxWaiting`). */
export function defaultMaxWaiting(maxNumSeqs: number): number {
  return WAITING_PER_SEAT * maxNumSeqs;
}

export const DEFAULT_HTTP_OPTIONS: Omit<HttpOptions, 'servedModelName'> = Object.freeze({
  apiKey: null,
  maxWaiting: defaultMaxWaiting(DEFAULT_ENGINE_SIZING.maxNumSeqs),
  requestTimeoutMs: 0,
  logPrompts: false,
  bodyLimit: 32 * 2 ** 20,
  headersTimeoutMs: 30_000,
  bodyTimeoutMs: 60_000,
  statsTimeoutMs: 2000,
});

/** Fills defaults, checks values, freezes. */
export function httpOptions(o: Partial<HttpOptions> & { servedModelName: string }): HttpOptions {
  const out: HttpOptions = { ...DEFAULT_HTTP_OPTIONS, ...o };
  const bad = (name: string, v: unknown) => new ServerError('invalid_request', `${name} is invalid: ${JSON.stringify(v)}`, { param: name });
  if (out.servedModelName.length === 0) throw bad('servedModelName', out.servedModelName);
  if (out.apiKey !== null && out.apiKey.length === 0) throw bad('apiKey', '(empty)');
  if (!Number.isInteger(out.maxWaiting) || out.maxWaiting < 0) throw bad('maxWaiting', out.maxWaiting);
  if (!Number.isFinite(out.requestTimeoutMs) || out.requestTimeoutMs < 0) throw bad('requestTimeoutMs', out.requestTimeoutMs);
  if (!Number.isInteger(out.bodyLimit) || out.bodyLimit < 1024) throw bad('bodyLimit', out.bodyLimit);
  if (!Number.isInteger(out.headersTimeoutMs) || out.headersTimeoutMs < 1) throw bad('headersTimeoutMs', out.headersTimeoutMs);
  if (!Number.isInteger(out.bodyTimeoutMs) || out.bodyTimeoutMs < out.headersTimeoutMs) throw bad('bodyTimeoutMs (must be >= headersTimeoutMs)', out.bodyTimeoutMs);
  if (!Number.isFinite(out.statsTimeoutMs) || out.statsTimeoutMs <= 0) throw bad('statsTimeoutMs', out.statsTimeoutMs);
  return Object.freeze(out);
}
