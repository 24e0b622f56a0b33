/**
 * The gateway server: tokenizer + engine thread (EngineHost) + HTTP app, listening.
 *
 *   startServer: initTokenizer -> initEngine (thread: model, KV pool, expert topology)
 *                -> tokenizer thread (big prompts are encoded there) -> checkKvCapacity
 *                -> initApp -> listen
 *   close():     drain (new requests 503) -> wait up to shutdownGraceMs for requests in flight
 *                -> cancel the rest (their sequences aborted, KV freed) -> close HTTP -> stop the
 *                engine thread (which stops its expert workers)
 */
import type { Logger } from 'pino';
import { ServerError } from '../../common/src/errors.js';
import { EngineHost } from './engine/host.js';
import type { SerializedLoadOptions } from './engine/thread-protocol.js';
import { buildApp, type GatewayApp } from './http/app.js';
import type { ModelFacts } from './http/engine-client.js';
import type { HttpOptions } from './http/options.js';
import { PromptEncoder } from './tokenizer/thread.js';
import { TextTokenizer } from './tokenizer/tokenizer.js';

export interface ServerOptions {
  /** Hugging Face checkpoint folder (config.json, safetensors, tokenizer files). */
  readonly modelDir: string;
  /** Address to listen on. @defaultValue '127.0.0.1' */
  readonly host: string;
  /** TCP port; 0 = any free port (see RunningServer.port). @defaultValue 8000 */
  readonly port: number;
  readonly http: HttpOptions;
  /** The engine thread's load options (runtime, KV budget, batch limits, expert topology). */
  readonly engine: SerializedLoadOptions;
  /** How long close() lets requests in flight finish before cancelling them, ms. @defaultValue 10000 */
  readonly shutdownGraceMs: number;
  /** The weights are random (the built-in demo model): said loudly in the logs. @defaultValue false */
  readonly randomWeights?: boolean;
}

export interface RunningServer {
  /** http://host:port */
  readonly url: string;
  readonly port: number;
  readonly app: GatewayApp;
  readonly engine: EngineHost;
  close(): Promise<void>;
}

export async function startServer(o: ServerOptions, logger: Logger): Promise<RunningServer> {
  const tokenizer = TextTokenizer.fromDir(o.modelDir);
  const engine = await initEngine(o, logger);
  let app: GatewayApp;
  let prompts: PromptEncoder | null = null;
  try {
    prompts = await PromptEncoder.start(o.modelDir, tokenizer);
    checkKvCapacity(engine);
    const model: ModelFacts = Object.freeze({
      vocabSize: engine.cfg.vocabSize,
      maxModelLen: engine.maxModelLen,
      maxNumSeqs: engine.maxNumSeqs,
      eosTokenIds: Object.freeze([...new Set([...tokenizer.eosTokenIds, ...engine.cfg.eosTokenIds])]),
      created: Math.floor(Date.now() / 1000),
    });
    if (tokenizer.vocabSize > model.vocabSize) logger.warn({ tokenizerVocab: tokenizer.vocabSize, modelVocab: model.vocabSize }, 'the tokenizer knows more ids than the model has logits; ids past the model vocabulary are refused');
    app = buildApp({ engine, tokenizer, prompts, model, options: o.http, logger });
    await app.fastify.listen({ host: o.host, port: o.port });
  } catch (err) {
    await prompts?.close();
    await engine.close();
    throw err;
  }
  const encoder = prompts;
  const address = app.fastify.server.address();
  const port = typeof address === 'object' && address !== null ? address.port : o.port;
  const url = `http://${o.host.includes(':') ? `[${o.host}]` : o.host}:${port}`;
  const kv = engine.kvAtStart;
  logger.info(
    {
      url,
      model: o.http.servedModelName,
      maxModelLen: engine.maxModelLen,
      maxNumSeqs: engine.maxNumSeqs,
      maxWaiting: o.http.maxWaiting,
      kvCacheTokens: kv.tokensCapacity,
      kvBytesPerToken: kv.bytesPerToken,
      experts: engine.topology,
      auth: o.http.apiKey !== null,
    },
    'moeserve is serving the OpenAI API',
  );
  if (o.randomWeights) logger.warn({ model: o.http.servedModelName }, 'this model has RANDOM weights (the built-in demo): its output is meaningless text');

  let closing: Promise<void> | null = null;
  const close = () => (closing ??= shutdown(app, engine, o.shutdownGraceMs, logger).finally(() => encoder.close()));
  return { url, port, app, engine, close };
}

async function initEngine(o: ServerOptions, logger: Logger): Promise<EngineHost> {
  const log = logger.child({ component: 'engine' });
  return EngineHost.start(o.modelDir, o.engine, {
    onFatal: (msg) => log.error({ reason: msg }, 'engine failed; requests in flight ended with an error, /health reports it'),
    onLog: (msg, level) => log[level](msg),
  });
}

/** Like vLLM: the KV cache must hold at least one sequence of max-model-len tokens. */
function checkKvCapacity(engine: EngineHost): void {
  const kv = engine.kvAtStart;
  if (kv.tokensCapacity < engine.maxModelLen) {
    throw new ServerError(
      'config_unsupported',
      `the KV cache holds ${kv.tokensCapacity} tokens (${kv.bytesTotal} bytes at ${kv.bytesPerToken} bytes/token), fewer than --max-model-len ${engine.maxModelLen}; raise --kv-cache-bytes or lower --max-model-len`,
    );
  }
}

async function shutdown(app: GatewayApp, engine: EngineHost, graceMs: number, logger: Logger): Promise<void> {
  app.drain();
  const deadline = performance.now() + graceMs;
  if (app.activeRequests > 0) logger.info({ requests: app.activeRequests, graceMs }, 'shutting down: waiting for requests in flight');
  while (app.activeRequests > 0 && performance.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  if (app.activeRequests > 0) {
    logger.warn({ requests: app.activeRequests }, 'shutting down: cancelling requests still in flight');
    app.cancelAll(new ServerError('resource_exhausted', 'the server is shutting down'));
  }
  await app.fastify.close();
  await engine.close();
  logger.info('moeserve stopped');
}
