/**
 * `moeserve worker`: an expert worker process. Loads only the experts named by --experts (lazy
 * checkpoint reads), serves the ExpertWorker gRPC contract (proto/expert.proto), and prints one
 * ready line on stdout once it accepts connections:
 *
 *   MOESERVE_WORKER_READY {"address":"127.0.0.1:40123","port":40123,"pid":4242,"experts":"0-3"}
 *
 * (the gateway's local topology waits for it). Logs are pino JSON lines on stderr.
 */
import { parseArgs } from 'node:util';
import { pino } from 'pino';
import { DEFAULT_MAX_MESSAGE_BYTES, readTls } from '../../proto/index.js';
import { defaultWorkerId, READY_PREFIX, startWorker } from '../../workers/src/main.js';
import { ServerError } from '../common/src/errors.js';
import { runtimeFromFlags, RUNTIME_FLAGS } from './flags.js';

const HELP = `usage: moeserve worker --model DIR [--experts SPEC] [--port P | --socket PATH] [flags]
  --model DIR              Hugging Face checkpoint folder (the gateway's)
  --experts SPEC           experts held: all | 0-3,6 (every MoE layer) | i/N (contiguous share i of N)
                           | 1:0-3;2:4-7 (per layer) (default all)
  --port P                 TCP port (0 = any free port, printed on the ready line) (default 0)
  --host H                 address to listen on (default 127.0.0.1; 0.0.0.0 for other nodes)
  --socket PATH            listen on a Unix socket instead of TCP
  --device cpu|cuda[:N]    execution provider (cuda falls back to cpu with a warning) (default cpu)
  --threads N              ONNX Runtime intra-op threads, one pool per process (default ${RUNTIME_FLAGS.threads.default}: the cores)
  --quantization Q         weight format of the experts: none (fp32) | int8 (default ${RUNTIME_FLAGS.quantization.default})
  --max-message-bytes N    gRPC send/receive limit (default ${DEFAULT_MAX_MESSAGE_BYTES})
  --tls-cert F --tls-key F serve TLS with this certificate and key (PEM)
  --tls-ca F               require client certificates signed by this CA (mutual TLS)
  --id NAME                worker name reported by Info (default host:pid)
  --log-level L            pino level (default info)
  --exit-with-stdin        exit when stdin closes (set by a parent gateway: no orphans)
`;

export async function workerCommand(argv: string[], _env: NodeJS.ProcessEnv): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      model: { type: 'string' },
      experts: { type: 'string', default: 'all' },
      port: { type: 'string', default: '0' },
      host: { type: 'string', default: '127.0.0.1' },
      socket: { type: 'string' },
      device: RUNTIME_FLAGS.device,
      threads: RUNTIME_FLAGS.threads,
      quantization: RUNTIME_FLAGS.quantization,
      'max-message-bytes': { type: 'string', default: String(DEFAULT_MAX_MESSAGE_BYTES) },
      'tls-cert': { type: 'string' },
      'tls-key': { type: 'string' },
      'tls-ca': { type: 'string' },
      id: { type: 'string' },
      'log-level': { type: 'string', default: 'info' },
      'exit-with-stdin': { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(HELP);
    return;
  }
  if (!values.model) throw new ServerError('invalid_request', `--model DIR is required\n${HELP}`);
  const port = Number(values.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new ServerError('invalid_request', `--port must be an integer in [0, 65535], got ${values.port}`);
  const maxMessageBytes = Number(values['max-message-bytes']);
  if (!Number.isInteger(maxMessageBytes) || maxMessageBytes < 1024) throw new ServerError('invalid_request', `--max-message-bytes must be an integer >= 1024, got ${values['max-message-bytes']}`);
  const workerId = values.id ?? defaultWorkerId();
  const log = pino({ name: 'moeserve-worker', level: values['log-level'], base: { workerId } }, pino.destination({ fd: 2, sync: true }));
  const runtime = runtimeFromFlags(values, (msg, level) => log[level](msg));
  const listen = values.socket ? `unix:${values.socket}` : `${values.host}:${port}`;

  const worker = await startWorker(
    {
      modelDir: values.model,
      experts: values.experts,
      listen,
      runtime,
      requestedDevice: values.device,
      maxMessageBytes,
      tls: readTls({ cert: values['tls-cert'], key: values['tls-key'], ca: values['tls-ca'] }),
      workerId,
    },
    log,
  );
  process.stdout.write(`${READY_PREFIX}${JSON.stringify({ address: worker.address, port: worker.port, pid: process.pid, experts: worker.expertsSpec, bytesRead: worker.bytesRead })}\n`);

  let stopping = false;
  const stop = (why: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ why }, 'expert worker stopping');
    void worker.close().finally(() => process.exit(0));
  };
  process.once('SIGTERM', () => stop('SIGTERM'));
  process.once('SIGINT', () => stop('SIGINT'));
  if (values['exit-with-stdin']) {
    process.stdin.on('end', () => stop('stdin closed (parent gone)'));
    process.stdin.on('error', () => stop('stdin error (parent gone)'));
    process.stdin.resume();
  }
  // Returning is fine: the gRPC server's listening socket keeps the process serving.
}
