/**
 * The gateway's HTTP app: fastify with its pino logger, the OpenAI routes, the service routes,
 * and the one error edge. Testable in-process (`app.fastify.inject`) and on a real port
 * (server.ts listens).
 *
 *   onRequest: request id (X-Request-Id or a UUID; on every log line as reqId), API key
 *   routes:    POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /health,
 *              GET /metrics, POST /tokenize, POST /detokenize, GET /version
 *   errors:    any throwable -> ServerError (toHttpError) -> HTTP_ERRORS -> OpenAI error body;
 *              unknown routes -> 404 the same way; a URL fastify cannot decode (FST_ERR_BAD_URL)
 *              -> 400; below the app, what Node's HTTP parser rejects and slow clients (headers
 *              or body past their timeouts -> 408) get the same body, written on the socket
 *              (clientErrorHandler). Every response an OpenAI client can see has one shape.
 */
import { createHash, randomUUID, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import Fastify, { type FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import { ServerError } from '../../../common/src/errors.js';
import type { PromptEncoder } from '../tokenizer/thread.js';
import type { TextTokenizer } from '../tokenizer/tokenizer.js';
import { promptByteLimit, type AppContext } from './context.js';
import type { EngineClient, ModelFacts } from './engine-client.js';
import { clientErrorOf, errorBody, errorStatus, toHttpError, writeRawError } from './errors.js';
import { toJson } from './json.js';
import { ServerMetrics } from './metrics.js';
import type { HttpOptions } from './options.js';
import { chatHandler } from './routes/chat.js';
import { completionsHandler } from './routes/completions.js';
import { registerServiceRoutes } from './routes/service.js';
import { DASHBOARD_OPEN_ROUTES, registerAdminRoutes } from './routes/admin.js';

export interface AppDeps {
  readonly engine: EngineClient;
  readonly tokenizer: TextTokenizer;
  /** Prompt encoding off the event loop (the same tokenizer files in a thread). */
  readonly prompts: PromptEncoder;
  readonly model: ModelFacts;
  readonly options: HttpOptions;
  readonly logger: Logger;
}

export interface GatewayApp {
  readonly fastify: FastifyInstance;
  readonly metrics: ServerMetrics;
  /** Generation requests in flight. */
  readonly activeRequests: number;
  /** From now on new generation requests get 503 (shutdown). */
  drain(): void;
  /** Ends every request in flight with `err`; their sequences are aborted in the engine. */
  cancelAll(err: ServerError): void;
}

/** JSON bodies up to this size are parsed on the event loop (≈ 10 ms at most), bigger ones in the tokenizer thread. */
const INLINE_JSON_BYTES = 1 << 20;

/** Routes open without the API key (probes and scrapers), as in vLLM. */
const OPEN_ROUTES: ReadonlySet<string> = new Set(['/health', '/metrics', ...DASHBOARD_OPEN_ROUTES]);
/** A client's X-Request-Id is used only if it is this tame (it lands in logs and response ids). */
const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

function sha256(s: string): Buffer {
  return createHash('sha256').update(s).digest();
}

export function buildApp(deps: AppDeps): GatewayApp {
  const { options: opts, logger } = deps;
  const fastify = Fastify({
    loggerInstance: logger,
    bodyLimit: opts.bodyLimit,
    genReqId: (req: IncomingMessage) => {
      const h = req.headers['x-request-id'];
      return typeof h === 'string' && REQUEST_ID.test(h) ? h : randomUUID();
    },
    onProtoPoisoning: 'error',
    onConstructorPoisoning: 'error',
    // Requests that arrive while closing reach the routes, which answer 503 in the OpenAI shape.
    return503OnClosing: false,
    forceCloseConnections: 'idle',
    // Node's timers for slow clients (0 in fastify by default: a half-sent body was held forever).
    // Node checks them every connectionsCheckingInterval, so a timeout fires within that much late.
    requestTimeout: opts.bodyTimeoutMs,
    http: { headersTimeout: opts.headersTimeoutMs, connectionsCheckingInterval: Math.max(50, Math.min(1000, Math.floor(opts.headersTimeoutMs / 4))) },
    clientErrorHandler: (err: Error & { code?: unknown }, socket: Duplex) => {
      // A reset connection has nobody to answer (fastify and Node skip it too).
      if (err.code === 'ECONNRESET' || socket.destroyed) return;
      const { status, error } = clientErrorOf(err, opts);
      logger.info({ component: 'http', code: error.code, status, reason: error.message }, 'client error');
      writeRawError(socket, status, error);
    },
    frameworkErrors: (err: Error, req: { log: Logger }, reply: { code(n: number): { type(t: string): { send(b: string): void } } }) => {
      const e = new ServerError('invalid_request', (err as Error & { code?: string }).code === 'FST_ERR_BAD_URL' ? 'the request URL is not valid (a bad percent-encoding?)' : err.message);
      req.log.info({ code: e.code, reason: err.message }, 'request rejected');
      reply.code(errorStatus(e)).type('application/json; charset=utf-8').send(toJson(errorBody(e)));
    },
  } as Parameters<typeof Fastify>[0]) as unknown as FastifyInstance;

  const metrics = new ServerMetrics(opts.servedModelName, deps.engine, opts.statsTimeoutMs, (msg) => logger.warn({ component: 'metrics' }, msg));
  const ctx: AppContext = {
    engine: deps.engine,
    tokenizer: deps.tokenizer,
    prompts: deps.prompts,
    model: deps.model,
    maxPromptBytes: promptByteLimit(deps.model.maxModelLen, deps.tokenizer.maxTokenBytes),
    opts,
    metrics,
    runs: new Set(),
    draining: false,
  };

  const keyDigest = opts.apiKey !== null ? sha256(opts.apiKey) : null;
  fastify.addHook('onRequest', async (req, reply) => {
    reply.header('x-request-id', req.id);
    if (keyDigest === null) return;
    const path = req.url.split('?', 1)[0]!;
    if (OPEN_ROUTES.has(path)) return;
    const auth = req.headers.authorization;
    const given = typeof auth === 'string' && auth.startsWith('Bearer ') ? auth.slice(7) : null;
    // Compare digests: constant time, whatever the lengths.
    if (given === null || !timingSafeEqual(sha256(given), keyDigest)) throw new ServerError('unauthorized', given === null ? 'Missing API key (send Authorization: Bearer <key>).' : 'Invalid API key.');
  });

  fastify.setErrorHandler((err, req, reply) => {
    const e = toHttpError(err);
    const status = errorStatus(e);
    if (e.code === 'cancelled') req.log.info({ code: e.code, reason: e.message }, 'client went away');
    else if (status >= 500) req.log.error({ err: e, code: e.code }, 'request failed');
    else req.log.info({ code: e.code, param: e.param ?? null, reason: e.message }, 'request rejected');
    if (reply.sent || reply.raw.headersSent) return;
    return reply.code(status).type('application/json; charset=utf-8').send(toJson(errorBody(e)));
  });
  fastify.setNotFoundHandler((req, reply) => {
    const e = new ServerError('not_found', `Route ${req.method} ${req.url.split('?', 1)[0]} not found.`);
    req.log.info({ code: e.code }, 'request rejected');
    return reply.code(errorStatus(e)).type('application/json; charset=utf-8').send(toJson(errorBody(e)));
  });

  // JSON bodies: fastify's own parser (proto-poisoning checks) up to INLINE_JSON_BYTES; bigger
  // ones are decoded and parsed on the tokenizer thread, since UTF-8 decoding of a 16 MB
  // non-ASCII body alone holds the event loop 100-250 ms.
  const inlineJson = fastify.getDefaultJsonParser('error', 'error');
  fastify.removeContentTypeParser('application/json');
  fastify.addContentTypeParser('application/json', { parseAs: 'buffer' }, (req, body, done) => {
    const bytes = body as Buffer;
    // secure-json-parse (inside) takes a Buffer as well as a string.
    if (bytes.length <= INLINE_JSON_BYTES) return inlineJson(req, bytes as unknown as string, done);
    deps.prompts.parseJson(bytes).then(
      (v) => done(null, v),
      (err: Error) => done(err, undefined),
    );
  });

  fastify.post('/v1/completions', completionsHandler(ctx));
  fastify.post('/v1/chat/completions', chatHandler(ctx));
  registerServiceRoutes(fastify, ctx);
  registerAdminRoutes(fastify, ctx);

  return {
    fastify,
    metrics,
    get activeRequests() {
      return ctx.runs.size;
    },
    drain() {
      ctx.draining = true;
    },
    cancelAll(err) {
      for (const run of [...ctx.runs]) run.cancel(err);
    },
  };
}
