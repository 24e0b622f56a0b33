/**
 * services/gateway owns the serving path of one model:
 * - src/http/      the OpenAI-compatible HTTP API (fastify): request validation, chat template,
 *                  SSE streaming, logprobs, errors (one edge), /metrics (prom-client)
 * - src/server.ts  assembles tokenizer + engine thread + HTTP app; lifecycle, graceful shutdown
 * - src/engine/    the continuous-batching engine (scheduler over the paged KV cache, dense
 *                  runner), run on its own thread by EngineHost
 * - src/sampling/  sampling params, per-sequence sampler, logprobs
 * - src/tokenizer/ text <-> ids, chat template, UTF-8-safe streaming detokenizer, stop strings
 *
 * Request flow: HTTP body -> requests.ts (validated params) -> tokenizer -> context.ts
 * (prompts × n -> EngineRequests, admission) -> EngineHost -> engine thread (steps) ->
 * generation.ts (events -> detokenized, stop-checked text) -> JSON or SSE.
 */
export { startServer, type RunningServer, type ServerOptions } from './src/server.js';
export { buildApp, type AppDeps, type GatewayApp } from './src/http/app.js';
export { httpOptions, DEFAULT_HTTP_OPTIONS, type HttpOptions } from './src/http/options.js';
export { EngineHost } from './src/engine/host.js';
export type { EngineClient, ModelFacts } from './src/http/engine-client.js';
