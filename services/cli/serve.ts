/**
 * `moeserve serve`: the OpenAI-compatible server (flags in the spirit of vLLM's `vllm serve`).
 * Logs are pino JSON lines on stdout; SIGINT / SIGTERM drain and stop it.
 */
import path from 'node:path';
import { parseArgs } from 'node:util';
import { pino } from 'pino';
import { expertsOnWorkers, TOPOLOGY_FLAGS, TOPOLOGY_HELP, topologyFromFlags } from '../../router/index.js';
import { ServerError } from '../common/src/errors.js';
import { DEFAULT_KV_TIER } from '../kvcache/src/redis-tier.js';
import { DEFAULT_ENGINE_SIZING as SIZING } from '../gateway/src/engine/sizing.js';
import type { SerializedLoadOptions, SerializedTopology } from '../gateway/src/engine/thread-protocol.js';
import { DEFAULT_HTTP_OPTIONS as HTTP, defaultMaxWaiting, httpOptions, type HttpOptions } from '../gateway/src/http/options.js';
import { startServer, type RunningServer } from '../gateway/src/server.js';
import type { RuntimeOptions } from '../model/src/runtime/onnx.js';
import { DEMO_PRESET, ensureDemoModel } from './demo-model.js';
import type { MlaImpl } from '../model/src/graphs/attention.js';
import { runtimeFromFlags, RUNTIME_FLAGS } from './flags.js';

/** On SIGTERM, seconds requests in flight get to finish (this flag is the only owner). */
const SHUTDOWN_GRACE_S = 10;

const HELP = `usage: moeserve serve --model DIR [flags]   (or --demo: the built-in random-weight model)
  --model DIR                  Hugging Face checkpoint folder (config.json, safetensors, tokenizer files)
  --demo                       serve the built-in demo model (RANDOM weights, real Qwen3 tokenizer; generated once)
  --host H                     address to listen on (default 127.0.0.1)
  --port P                     TCP port (default 8000; 0 = any free port)
  --served-model-name NAME     the model name clients send (default: --model as given, or ${DEMO_PRESET})
  --api-key KEY                require "Authorization: Bearer KEY" (also $MOESERVE_API_KEY); /health and /metrics stay open
  --max-model-len N            longest prompt + output, tokens (default min(max_position_embeddings, ${SIZING.maxModelLenCap}))
  --max-num-seqs N             sequences decoding at once (default ${SIZING.maxNumSeqs})
  --max-num-batched-tokens N   tokens per engine step: decodes + prefill chunks (default ${SIZING.maxBatchedTokens})
  --max-waiting N              sequences that may wait for a seat; more gets 429 (default ${defaultMaxWaiting(1)} x max-num-seqs)
  --kv-cache-bytes N           KV-cache budget over all layers, e.g. 1GiB, 512MiB (default ${formatBytes(SIZING.kvCacheBytes)})
  --block-size N               tokens per KV block (default ${SIZING.blockSize})
  --no-enable-prefix-caching   recompute every prompt (prefix caching is on by default)
  --decode-past-bytes N        memory that keeps decoding sequences' past between steps, so each step copies one
                               new KV row per sequence instead of all (default ${formatBytes(SIZING.decodePastBytes)}; 0 = copy all)
  --kv-redis URL               shared KV tier in Redis (e.g. redis://127.0.0.1:6379): full blocks are written
                               there and prefixes missing from the pool are looked up before recomputing (off by default)
  --kv-redis-ttl S             lifetime of a block in the tier, seconds (default ${DEFAULT_KV_TIER.ttlMs / 1000})
  --kv-redis-max-bytes N       bytes this model may write to the tier per TTL window, e.g. 2GiB (default ${formatBytes(DEFAULT_KV_TIER.maxBytes)})
  --request-timeout S          per-request deadline in seconds, 0 = none (default ${HTTP.requestTimeoutMs / 1000})
  --shutdown-grace S           on SIGTERM, time requests in flight get to finish (default ${SHUTDOWN_GRACE_S})
  --headers-timeout S          time a client has to send a request's headers; slower gets 408 (default ${HTTP.headersTimeoutMs / 1000})
  --body-timeout S             time a client has to send a whole request, headers and body; slower gets 408 (default ${HTTP.bodyTimeoutMs / 1000})
  --log-prompts                log prompt text / ids (never logged otherwise)
  --log-level L                pino level: trace | debug | info | warn | error (default info)
  --device cpu|cuda[:N]        execution provider (default cpu; cuda falls back to cpu)
  --mla auto|absorbed|naive    MLA attention form: auto = whichever costs less per attention group
                               (absorbed for decodes, naive for a prompt's first chunk and long later
                               ones) (default ${RUNTIME_FLAGS.mla.default})
  --threads N                  ONNX Runtime intra-op threads, one pool per process (default ${RUNTIME_FLAGS.threads.default}: the cores)
  --quantization Q             weight format: none (fp32, exact to the checkpoint) | int8 (weight-only,
                               blocks of 32, quantized at load) (default ${RUNTIME_FLAGS.quantization.default})
expert workers (the output is the same as in one process):
${TOPOLOGY_HELP}`;

function positiveInt(v: string | undefined, flag: string, min = 1): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) throw new ServerError('invalid_request', `${flag} must be an integer >= ${min}, got ${v}`);
  return n;
}

const BYTE_UNITS: Readonly<Record<string, number>> = Object.freeze({ '': 1, b: 1, k: 1e3, kb: 1e3, kib: 2 ** 10, m: 1e6, mb: 1e6, mib: 2 ** 20, g: 1e9, gb: 1e9, gib: 2 ** 30 });

/** bytes -> "1GiB" when a whole number of GiB / MiB, else the byte count (help text). */
function formatBytes(n: number): string {
  if (n % 2 ** 30 === 0) return `${n / 2 ** 30}GiB`;
  if (n % 2 ** 20 === 0) return `${n / 2 ** 20}MiB`;
  return String(n);
}

/** "1GiB" | "512MiB" | "1048576" -> bytes. */
export function parseBytes(v: string, flag: string): number {
  const m = /^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$/.exec(v);
  const unit = m ? BYTE_UNITS[m[2]!.toLowerCase()] : undefined;
  if (!m || unit === undefined) throw new ServerError('invalid_request', `${flag} must be a byte count like 1GiB, 512MiB or 1073741824, got ${v}`);
  return Math.floor(Number(m[1]) * unit);
}

/**
 * The flags. Engine sizing, HTTP and KV-tier flags have no parseArgs default: an absent flag is
 * undefined and the option's owner fills its default (the help text reads the same constants).
 */
const SERVE_FLAGS = {
  model: { type: 'string' },
  demo: { type: 'boolean', default: false },
  host: { type: 'string', default: '127.0.0.1' },
  port: { type: 'string', default: '8000' },
  'served-model-name': { type: 'string' },
  'api-key': { type: 'string' },
  'max-model-len': { type: 'string' },
  'max-num-seqs': { type: 'string' },
  'max-num-batched-tokens': { type: 'string' },
  'max-waiting': { type: 'string' },
  'kv-cache-bytes': { type: 'string' },
  'decode-past-bytes': { type: 'string' },
  'block-size': { type: 'string' },
  'no-enable-prefix-caching': { type: 'boolean', default: false },
  'kv-redis': { type: 'string' },
  'kv-redis-ttl': { type: 'string' },
  'kv-redis-max-bytes': { type: 'string' },
  'request-timeout': { type: 'string' },
  'shutdown-grace': { type: 'string', default: String(SHUTDOWN_GRACE_S) },
  'headers-timeout': { type: 'string' },
  'body-timeout': { type: 'string' },
  'log-prompts': { type: 'boolean', default: false },
  'log-level': { type: 'string', default: 'info' },
  help: { type: 'boolean', default: false },
  ...RUNTIME_FLAGS,
  ...TOPOLOGY_FLAGS,
} as const;

type ServeValues = ReturnType<typeof parseServeFlags>;

function parseServeFlags(argv: string[]) {
  return parseArgs({ args: argv, options: SERVE_FLAGS, strict: true }).values;
}

/** Seconds -> ms, or undefined when the flag is absent (the option's default applies). */
function secondsMs(v: string | undefined, flag: string, allowZero: boolean): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (allowZero ? !(n >= 0) : !(n > 0) || !Number.isFinite(n)) {
    throw new ServerError('invalid_request', allowZero ? `${flag} must be >= 0 seconds, got ${v}` : `${flag} must be a number of seconds > 0, got ${v}`);
  }
  return Math.round(n * 1000);
}

/** The object without its undefined fields (an absent flag must not override a default when spread). */
function defined<T extends object>(o: T): T {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T;
}

function httpFromFlags(values: ServeValues, dir: string, env: NodeJS.ProcessEnv, maxNumSeqs: number): HttpOptions {
  return httpOptions(defined({
    servedModelName: values['served-model-name'] ?? (values.demo ? DEMO_PRESET : values.model ?? path.basename(dir)),
    apiKey: values['api-key'] ?? env.MOESERVE_API_KEY ?? null,
    maxWaiting: positiveInt(values['max-waiting'], '--max-waiting', 0) ?? defaultMaxWaiting(maxNumSeqs),
    requestTimeoutMs: secondsMs(values['request-timeout'], '--request-timeout', true),
    headersTimeoutMs: secondsMs(values['headers-timeout'], '--headers-timeout', false),
    bodyTimeoutMs: secondsMs(values['body-timeout'], '--body-timeout', false),
    logPrompts: values['log-prompts'],
  }));
}

function engineFromFlags(values: ServeValues, runtime: RuntimeOptions, experts: SerializedTopology, maxNumSeqs: number): SerializedLoadOptions {
  return {
    device: runtime.device,
    deviceId: runtime.deviceId,
    intraOpThreads: runtime.intraOpThreads,
    quantization: runtime.quantization,
    mlaImpl: (values.mla ?? RUNTIME_FLAGS.mla.default) as MlaImpl,
    maxModelLen: positiveInt(values['max-model-len'], '--max-model-len'),
    kvCacheBytes: values['kv-cache-bytes'] === undefined ? undefined : parseBytes(values['kv-cache-bytes'], '--kv-cache-bytes'),
    blockSize: positiveInt(values['block-size'], '--block-size'),
    maxNumSeqs,
    maxBatchedTokens: positiveInt(values['max-num-batched-tokens'], '--max-num-batched-tokens'),
    prefixCaching: !values['no-enable-prefix-caching'],
    decodePastBytes: values['decode-past-bytes'] === undefined ? undefined : parseBytes(values['decode-past-bytes'], '--decode-past-bytes'),
    experts: expertsOnWorkers(experts) ? experts : null,
    kvRedis: values['kv-redis']
      ? {
          url: values['kv-redis'],
          ttlMs: values['kv-redis-ttl'] === undefined ? undefined : positiveInt(values['kv-redis-ttl'], '--kv-redis-ttl')! * 1000,
          maxBytes: values['kv-redis-max-bytes'] === undefined ? undefined : parseBytes(values['kv-redis-max-bytes'], '--kv-redis-max-bytes'),
        }
      : null,
  };
}

/** SIGINT / SIGTERM: drain, stop, exit. */
function stopOnSignals(server: RunningServer, logger: pino.Logger): void {
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, 'stopping');
    void server.close().then(
      () => process.exit(0),
      (err) => {
        logger.error({ err }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.once('SIGINT', () => stop('SIGINT'));
  process.once('SIGTERM', () => stop('SIGTERM'));
}

export async function serveCommand(argv: string[], env: NodeJS.ProcessEnv): Promise<void> {
  const values = parseServeFlags(argv);
  if (values.help) {
    process.stdout.write(HELP);
    return;
  }
  const logger = pino({ name: 'moeserve', level: values['log-level'] });
  const dir = values.demo ? await ensureDemoModel(env, (msg) => logger.warn(msg)) : values.model;
  if (!dir) throw new ServerError('invalid_request', `--model DIR is required (or --demo)\n${HELP}`);

  const port = positiveInt(values.port, '--port', 0)!;
  if (port > 65535) throw new ServerError('invalid_request', `--port must be in [0, 65535], got ${port}`);
  const maxNumSeqs = positiveInt(values['max-num-seqs'], '--max-num-seqs') ?? SIZING.maxNumSeqs;
  const shutdownGraceMs = secondsMs(values['shutdown-grace'], '--shutdown-grace', true)!;
  const runtime = runtimeFromFlags(values, (msg, level) => logger[level](msg));
  const { modelDir: _dir, runtime: _rt, log: _log, ...experts } = topologyFromFlags(values, dir, runtime, (msg, level) => logger[level]({ component: 'router' }, msg));

  const server = await startServer(
    {
      modelDir: dir,
      host: values.host,
      port,
      http: httpFromFlags(values, dir, env, maxNumSeqs),
      engine: engineFromFlags(values, runtime, experts, maxNumSeqs),
      shutdownGraceMs,
      randomWeights: values.demo,
    },
    logger,
  );
  stopOnSignals(server, logger);
}
