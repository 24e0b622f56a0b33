/**
 * The HTTP edge of the one error type: every throwable that reaches a route's end becomes a
 * ServerError once (`toHttpError`), then goes out through the exhaustive HTTP_ERRORS table as
 * OpenAI's error body:
 *
 *   {"error": {"message": "...", "type": "invalid_request_error", "param": "max_tokens", "code": "context_length_exceeded"}}
 *
 * Fastify's own client errors (malformed JSON, a body over the limit, a wrong content type) are
 * `invalid_request`; anything unclassified is `internal` (500, logged with its stack).
 */
import { HTTP_ERRORS, ServerError, toServerError, type ErrorCode } from '../../../common/src/errors.js';

// Type aliases (not interfaces) for response shapes: they must be assignable to JsonValue.
export type OpenAIErrorBody = {
  readonly error: {
    readonly message: string;
    readonly type: string;
    readonly param: string | null;
    readonly code: ErrorCode;
  };
};

/** Fastify errors carry `code` ('FST_ERR_CTP_INVALID_JSON_BODY'...) and a 4xx `statusCode`. */
interface FastifyLikeError {
  readonly code?: unknown;
  readonly statusCode?: unknown;
  readonly message: string;
}

const FASTIFY_MESSAGES: Readonly<Record<string, string>> = Object.freeze({
  FST_ERR_CTP_INVALID_JSON_BODY: 'the request body is not valid JSON (or holds a __proto__ / constructor key)',
  FST_ERR_CTP_BODY_TOO_LARGE: 'the request body is larger than the server accepts',
  FST_ERR_CTP_INVALID_MEDIA_TYPE: 'the request body must be JSON (Content-Type: application/json)',
  FST_ERR_CTP_EMPTY_JSON_BODY: 'the request body is empty; send a JSON object',
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: 'the request body length does not match its Content-Length',
});

/** Any throwable that reached a route's end -> one ServerError. */
export function toHttpError(err: unknown): ServerError {
  if (err instanceof ServerError) return err;
  if (err instanceof Error) {
    const e = err as Error & FastifyLikeError;
    const status = typeof e.statusCode === 'number' ? e.statusCode : 0;
    if (typeof e.code === 'string' && e.code.startsWith('FST_') && status >= 400 && status < 500) {
      if (status === 404) return new ServerError('not_found', e.message);
      return new ServerError('invalid_request', FASTIFY_MESSAGES[e.code] ?? e.message, { cause: err });
    }
    // No parser detail: V8's JSON messages quote the input, which may be prompt text (and get logged).
    if (err instanceof SyntaxError) return new ServerError('invalid_request', 'the request body is not valid JSON', { cause: err });
  }
  return toServerError(err);
}

export function errorStatus(e: ServerError): number {
  return HTTP_ERRORS[e.code].status;
}

export function errorBody(e: ServerError): OpenAIErrorBody {
  return { error: { message: e.message, type: HTTP_ERRORS[e.code].type, param: e.param ?? null, code: e.code } };
}
