/**
 * The one error type of moeserve, and the closed set of codes it carries.
 *
 * Every failure that crosses a boundary (HTTP, gRPC, BullMQ, CLI) is a `ServerError` with a
 * `code` from `ERROR_CODES`. Each edge maps codes through an exhaustive `Record<ErrorCode, ...>`
 * table (see `HTTP_ERRORS`, `GRPC_STATUS`), so adding a code is a compile error until every edge
 * says what it means there. Unknown throwables are converted once, at the edge, by `toServerError`.
 * Finish reasons (`stop` / `length` / `abort`) are values, not errors.
 */

export const ERROR_CODES = [
  'invalid_request', // a request field is wrong (HTTP 400)
  'context_length_exceeded', // prompt + max_tokens > max model length (HTTP 400)
  'invalid_token_id', // a token id outside the vocabulary (HTTP 400)
  'unauthorized', // missing or wrong API key (HTTP 401)
  'not_found', // unknown model or route (HTTP 404)
  'queue_full', // the waiting queue is at its bound (HTTP 429)
  'experts_unavailable', // no live worker holds an expert a row needs (HTTP 503)
  'deadline_exceeded', // an exchange ran past its deadline (retryable)
  'cancelled', // the client went away or the request was aborted
  'request_timeout', // the client did not send its headers or body in time (HTTP 408)
  'checkpoint_invalid', // a checkpoint file is malformed, truncated or inconsistent
  'config_unsupported', // a config.json field or architecture moeserve does not implement
  'bad_message', // a malformed cross-process message (wrong size, unknown layer or expert)
  'resource_exhausted', // the KV pool or a message limit cannot take the work
  'internal', // a bug: anything not classified above
] as const;

export type ErrorCode = (typeof ERROR_CODES)[number];

export interface ServerErrorOptions {
  /** The request parameter at fault, named as the API names it (OpenAI `error.param`). */
  param?: string;
  cause?: unknown;
}

export class ServerError extends Error {
  readonly code: ErrorCode;
  readonly param: string | undefined;
  constructor(code: ErrorCode, message: string, options: ServerErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: normalizeCause(options.cause) });
    this.name = this.constructor.name;
    this.code = code;
    this.param = options.param;
  }
}

function normalizeCause(cause: unknown): Error {
  return cause instanceof Error ? cause : new Error(String(cause));
}

/** Converts any throwable to a ServerError; call once, at a boundary. */
export function toServerError(err: unknown): ServerError {
  if (err instanceof ServerError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new ServerError('internal', message, { cause: err });
}

/** HTTP status and OpenAI `error.type` for every code. */
export const HTTP_ERRORS: Readonly<Record<ErrorCode, { status: number; type: string }>> = Object.freeze({
  invalid_request: { status: 400, type: 'invalid_request_error' },
  context_length_exceeded: { status: 400, type: 'invalid_request_error' },
  invalid_token_id: { status: 400, type: 'invalid_request_error' },
  unauthorized: { status: 401, type: 'authentication_error' },
  not_found: { status: 404, type: 'not_found_error' },
  queue_full: { status: 429, type: 'rate_limit_error' },
  experts_unavailable: { status: 503, type: 'service_unavailable_error' },
  deadline_exceeded: { status: 503, type: 'service_unavailable_error' },
  cancelled: { status: 499, type: 'cancelled_error' },
  request_timeout: { status: 408, type: 'invalid_request_error' },
  checkpoint_invalid: { status: 500, type: 'server_error' },
  config_unsupported: { status: 400, type: 'invalid_request_error' },
  bad_message: { status: 400, type: 'invalid_request_error' },
  resource_exhausted: { status: 503, type: 'service_unavailable_error' },
  internal: { status: 500, type: 'server_error' },
});

/** gRPC status codes (numeric, as @grpc/grpc-js `status`) for every code. */
export const GRPC_STATUS: Readonly<Record<ErrorCode, number>> = Object.freeze({
  invalid_request: 3, // INVALID_ARGUMENT
  context_length_exceeded: 3,
  invalid_token_id: 3,
  unauthorized: 16, // UNAUTHENTICATED
  not_found: 5, // NOT_FOUND
  queue_full: 8, // RESOURCE_EXHAUSTED
  experts_unavailable: 14, // UNAVAILABLE
  deadline_exceeded: 4, // DEADLINE_EXCEEDED
  cancelled: 1, // CANCELLED
  request_timeout: 4, // DEADLINE_EXCEEDED
  checkpoint_invalid: 9, // FAILED_PRECONDITION
  config_unsupported: 9,
  bad_message: 3,
  resource_exhausted: 8,
  internal: 13, // INTERNAL
});

/** Whether a retry (on another replica, or later) can succeed. */
export const RETRYABLE: Readonly<Record<ErrorCode, boolean>> = Object.freeze({
  invalid_request: false,
  context_length_exceeded: false,
  invalid_token_id: false,
  unauthorized: false,
  not_found: false,
  queue_full: true,
  experts_unavailable: true,
  deadline_exceeded: true,
  cancelled: false,
  request_timeout: true,
  checkpoint_invalid: false,
  config_unsupported: false,
  bad_message: false,
  resource_exhausted: true,
  internal: false,
});
