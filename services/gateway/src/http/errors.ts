/**
 * The HTTP edge of the one error type: every throwable that reaches a route's end becomes a
 * ServerError once (`toHttpError`), then goes out through the exhaustive HTTP_ERRORS table as
 * OpenAI's error body:
 *
 *   {"error": {"message": "...", "type": "invalid_request_error", "param": "max_tokens", "code": "context_length_exceeded"}}
 *
 * Fastify's own client errors (malformed JSON, a body over the limit, a wrong content type) are
 * `invalid_request`; a client that went away mid-upload is `cancelled` (its doing, not a server
 * fault); anything unclassified is `internal` (500, logged with its stack).
 *
 * Below the app, Node's HTTP parser rejects what is not HTTP (a bad method or version, a NUL in a
 * header, a bad chunk size, CL with TE, headers over the size limit) and times out slow clients;
 * `rawClientError` answers those on the socket in the same OpenAI shape (fastify would write its
 * own `{"error","message","statusCode"}`).
 */
import { STATUS_CODES } from 'node:http';
import type { Duplex } from 'node:stream';
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

/** Node's IncomingMessage error when the connection closes before the body has arrived. */
function isUploadAborted(err: Error & FastifyLikeError): boolean {
  return err.code === 'ECONNRESET' && err.message === 'aborted';
}

/** Any throwable that reached a route's end -> one ServerError. */
export function toHttpError(err: unknown): ServerError {
  if (err instanceof ServerError) return err;
  if (err instanceof Error) {
    const e = err as Error & FastifyLikeError;
    if (isUploadAborted(e)) return new ServerError('cancelled', 'the client closed the connection before its request body arrived', { cause: err });
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

/** What Node's HTTP parser and timers report on 'clientError', and the answer each gets. */
export function clientErrorOf(err: Error & { code?: unknown; reason?: unknown }, limits: { headersTimeoutMs: number; bodyTimeoutMs: number }): { status: number; error: ServerError } {
  const code = typeof err.code === 'string' ? err.code : '';
  if (code === 'ERR_HTTP_REQUEST_TIMEOUT') {
    return {
      status: 408,
      error: new ServerError('request_timeout', `the request did not arrive in time (headers within ${limits.headersTimeoutMs} ms, the whole request within ${limits.bodyTimeoutMs} ms)`),
    };
  }
  if (code === 'HPE_HEADER_OVERFLOW') return { status: 431, error: new ServerError('invalid_request', 'the request line and headers are larger than the server accepts') };
  // llhttp's reason ("Invalid method encountered", "Content-Length can't be present with Transfer-Encoding", ...) names no request data.
  const reason = code.startsWith('HPE_') && typeof err.reason === 'string' ? err.reason : err.message;
  return { status: 400, error: new ServerError('invalid_request', `malformed HTTP request: ${reason}${code ? ` (${code})` : ''}`) };
}

/**
 * Answers a client error on the raw socket (there is no request object), then closes it. As Node
 * does by default, nothing is written when a response to this socket has already begun: the bytes
 * would corrupt it.
 */
export function writeRawError(socket: Duplex & { _httpMessage?: { headersSent?: boolean } | null }, status: number, e: ServerError): void {
  if (!socket.writable || socket._httpMessage?.headersSent) {
    socket.destroy();
    return;
  }
  const body = JSON.stringify(errorBody(e));
  socket.end(
    `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? 'Error'}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
  );
  // end() flushes, then closes; a peer that never reads must not keep the socket.
  setTimeout(() => socket.destroy(), 1000).unref();
}
