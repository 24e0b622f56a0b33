/**
 * `moeserve serve`: the OpenAI-compatible server (flags in the spirit of vLLM's `vllm serve`).
 * Logs are pino JSON lines on stdout; SIGINT / SIGTERM drain and stop it.
 */
import path from 'node:path';
import { parseArgs } from 'node:util';
import { pino } from 'pino';
import { TOPOLOGY_FLAGS, TOPOLOGY_HELP, topologyFromFlags } from '../../router/index.js';
import { ServerError } from '../common/src/errors.js';
import type { SerializedTopology } from '../gateway/src/engine/thread-protocol.js';
import { httpOptions } from '../gateway/src/http/options.js';
import { startServer } from '../gateway/src/server.js';
import { DEMO_PRESET, ensureDemoModel } from './demo-model.js';
import type { MlaImpl } from '../model/src/graphs/attention.js';
import { runtimeFromFlags, RUNTIME_FLAGS } from './flags.js';

const HELP = `usage: moeserve serve --model DIR [flags]   (or --demo: the built-in random-weight model)
  --model DIR                  Hugging Face checkpoint folder (config.json, safetensors, tokenizer files)
  --demo                       serve the built-in demo model (RANDOM weights, real Qwen3 tokenizer; generated once)
  --host H                     address to listen on (default 127.0.0.1)
  --port P                     TCP port (default 8000; 0 = any free port)
  --served-model-name NAME     the model name clients send (default: --model as given, or ${DEMO_PRESET})
  --api-key KEY                require "Authorization: Bearer KEY" (also $MOESERVE_API_KEY); /health and /metrics stay open
  --max-model-len N            longest prompt + output, tokens (default min(max_position_embeddings, 4096))
  --max-num-seqs N             sequences decoding at once (default 64)
  --max-num-batched-tokens N   tokens per engine step: decodes + prefill chunks (default 512)
  --max-waiting N              sequences that may wait for a seat; more gets 429 (default 4 x max-num-seqs)
  --kv-cache-bytes N           KV-cache budget over all layers, e.g. 1GiB, 512MiB (default 1GiB)
  --block-size N               tokens per KV block (default 16)
  --no-enable-prefix-caching   recompute every prompt (prefix caching is on by default)
  --kv-redis URL               shared KV tier in Redis (e.g. redis://127.0.0.1:6379): full blocks are written
                               there and prefixes missing from the pool are looked up before recomputing (off by default)
  --kv-redis-ttl S             lifetime of a block in the tier, seconds (default 3600)
  --kv-redis-max-bytes N       bytes this model may write to the tier per TTL window, e.g. 2GiB (default 1GiB)
  --request-timeout S          per-request deadline in seconds, 0 = none (default 0)
  --shutdown-grace S           on SIGTERM, time requests in flight get to finish (default 10)
  --headers-timeout S          time a client has to send a request's headers; slower gets 408 (default 30)
  --body-timeout S             time a client has to send a whole request, headers and body; slower gets 408 (default 60)
  --log-prompts                log prompt text / ids (never logged otherwise)
  --log-level L                pino level: trace | debug | info | warn | error (default info)
  --device cpu|cuda[:N]        execution provider (default cpu; cuda falls back to cpu)
  --mla auto|absorbed|naive    MLA attention form: auto = absorbed for decodes, naive for long prefill
                               chunks (default ${RUNTIME_FLAGS.mla.default})
  --threads N                  ONNX Runtime intra-op threads per session (default ${RUNTIME_FLAGS.threads.default}: the cores)
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

function positiveSeconds(v: string, flag: string): number {
  const n = Number(v);
  if (!(n > 0) || !Number.isFinite(n)) throw new ServerError('invalid_request', `${flag} must be a number of seconds > 0, got ${v}`);
  return n;
}

const BYTE_UNITS: Readonly<Record<string, number>> = Object.freeze({ '': 1, b: 1, k: 1e3, kb: 1e3, kib: 2 ** 10, m: 1e6, mb: 1e6, mib: 2 ** 20, g: 1e9, gb: 1e9, gib: 2 ** 30 });

/** "1GiB" | "512MiB" | "1048576" -> bytes. */
export function parseBytes(v: string, flag: string): number {
  const m = /^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$/.exec(v);
  const unit = m ? BYTE_UNITS[m[2]!.toLowerCase()] : undefined;
  if (!m || unit === undefined) throw new ServerError('invalid_request', `${flag} must be a byte count like 1GiB, 512MiB or 1073741824, got ${v}`);
  return Math.floor(Number(m[1]) * unit);
}

export async function serveCommand(argv: string[], env: NodeJS.ProcessEnv): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      model: { type: 'string' },
      demo: { type: 'boolean', default: false },
      host: { type: 'string', default: '127.0.0.1' },
      port: { type: 'string', default: '8000' },
      'served-model-name': { type: 'string' },
      'api-key': { type: 'string' },
      'max-model-len': { type: 'string' },
      'max-num-seqs': { type: 'string', default: '64' },
      'max-num-batched-tokens': { type: 'string', default: '512' },
      'max-waiting': { type: 'string' },
      'kv-cache-bytes': { type: 'string', default: '1GiB' },
      'block-size': { type: 'string', default: '16' },
      'no-enable-prefix-caching': { type: 'boolean', default: false },
      'kv-redis': { type: 'string' },
      'kv-redis-ttl': { type: 'string', default: '3600' },
      'kv-redis-max-bytes': { type: 'string', default: '1GiB' },
      'request-timeout': { type: 'string', default: '0' },
      'shutdown-grace': { type: 'string', default: '10' },
      'headers-timeout': { type: 'string', default: '30' },
      'body-timeout': { type: 'string', default: '60' },
      'log-prompts': { type: 'boolean', default: false },
      'log-level': { type: 'string', default: 'info' },
      help: { type: 'boolean', default: false },
      ...RUNTIME_FLAGS,
      ...TOPOLOGY_FLAGS,
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(HELP);
    return;
  }
  const logger = pino({ name: 'moeserve', level: values['log-level'] });
  let dir = values.model;
  if (values.demo) dir = await ensureDemoModel(env, (msg) => logger.warn(msg));
  if (!dir) throw new ServerError('invalid_request', `--model DIR is required (or --demo)\n${HELP}`);

  const port = positiveInt(values.port, '--port', 0)!;
  if (port > 65535) throw new ServerError('invalid_request', `--port must be in [0, 65535], got ${port}`);
  const maxNumSeqs = positiveInt(values['max-num-seqs'], '--max-num-seqs')!;
  const timeoutS = Number(values['request-timeout']);
  if (!(timeoutS >= 0)) throw new ServerError('invalid_request', `--request-timeout must be >= 0 seconds, got ${values['request-timeout']}`);
  const graceS = Number(values['shutdown-grace']);
  if (!(graceS >= 0)) throw new ServerError('invalid_request', `--shutdown-grace must be >= 0 seconds, got ${values['shutdown-grace']}`);

  const runtime = runtimeFromFlags(values, (msg, level) => logger[level](msg));
  const { modelDir: _dir, runtime: _rt, log: _log, ...topology } = topologyFromFlags(values, dir, runtime, (msg, level) => logger[level]({ component: 'router' }, msg));
  const experts: SerializedTopology = topology;

  const server = await startServer(
    {
      modelDir: dir,
      host: values.host,
      port,
      http: httpOptions({
        servedModelName: values['served-model-name'] ?? (values.demo ? DEMO_PRESET : values.model ?? path.basename(dir)),
        apiKey: values['api-key'] ?? env.MOESERVE_API_KEY ?? null,
        maxWaiting: positiveInt(values['max-waiting'], '--max-waiting', 0) ?? 4 * maxNumSeqs,
        requestTimeoutMs: timeoutS * 1000,
        headersTimeoutMs: Math.round(positiveSeconds(values['headers-timeout'], '--headers-timeout') * 1000),
        bodyTimeoutMs: Math.round(positiveSeconds(values['body-timeout'], '--body-timeout') * 1000),
        logPrompts: values['log-prompts'],
      }),
      engine: {
        device: runtime.device,
        deviceId: runtime.deviceId,
        intraOpThreads: runtime.intraOpThreads,
        quantization: runtime.quantization,
        mlaImpl: (values.mla ?? RUNTIME_FLAGS.mla.default) as MlaImpl,
        maxModelLen: positiveInt(values['max-model-len'], '--max-model-len'),
        kvCacheBytes: parseBytes(values['kv-cache-bytes'], '--kv-cache-bytes'),
        blockSize: positiveInt(values['block-size'], '--block-size'),
        maxNumSeqs,
        maxBatchedTokens: positiveInt(values['max-num-batched-tokens'], '--max-num-batched-tokens'),
        prefixCaching: !values['no-enable-prefix-caching'],
        experts: experts.workers > 0 || experts.workerAddrs ? experts : null,
        kvRedis: values['kv-redis']
          ? { url: values['kv-redis'], ttlMs: positiveInt(values['kv-redis-ttl'], '--kv-redis-ttl')! * 1000, maxBytes: parseBytes(values['kv-redis-max-bytes'], '--kv-redis-max-bytes') }
          : null,
      },
      shutdownGraceMs: graceS * 1000,
      randomWeights: values.demo,
    },
    logger,
  );

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
