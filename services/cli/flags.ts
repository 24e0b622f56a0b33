/**
 * Flags shared by commands, and their conversion into frozen option objects.
 */
import { ServerError } from '../common/src/errors.js';
import { MLA_IMPLS } from '../model/src/graphs/attention.js';
import { QUANTIZATIONS, type Quantization } from '../model/src/graphs/linear.js';
import { DEFAULT_RUNTIME, type Device, type RuntimeOptions } from '../model/src/runtime/onnx.js';

export const RUNTIME_FLAGS = {
  device: { type: 'string', default: DEFAULT_RUNTIME.device },
  mla: { type: 'string', default: 'auto' },
  threads: { type: 'string', default: String(DEFAULT_RUNTIME.intraOpThreads) },
  quantization: { type: 'string', default: DEFAULT_RUNTIME.quantization },
} as const;

export function runtimeFromFlags(values: { device?: string; mla?: string; threads?: string; quantization?: string }, log: RuntimeOptions['log']): RuntimeOptions {
  const device = (values.device ?? 'cpu').split(':');
  if (device[0] !== 'cpu' && device[0] !== 'cuda') throw new ServerError('invalid_request', `--device must be cpu or cuda[:N], got ${values.device}`);
  if (values.mla !== undefined && !(MLA_IMPLS as readonly string[]).includes(values.mla)) throw new ServerError('invalid_request', `--mla must be one of ${MLA_IMPLS.join(', ')}, got ${values.mla}`);
  const threads = Number(values.threads ?? DEFAULT_RUNTIME.intraOpThreads);
  if (!Number.isInteger(threads) || threads < 1) throw new ServerError('invalid_request', `--threads must be a positive integer, got ${values.threads}`);
  const quantization = (values.quantization ?? DEFAULT_RUNTIME.quantization) as Quantization;
  if (!QUANTIZATIONS.includes(quantization)) throw new ServerError('invalid_request', `--quantization must be one of ${QUANTIZATIONS.join(', ')}, got ${values.quantization}`);
  // fp16 weights are a CUDA format (graphs/linear.ts): refused up front on an explicit CPU run.
  if (quantization === 'fp16' && device[0] === 'cpu') throw new ServerError('invalid_request', `--quantization fp16 needs --device cuda (ONNX Runtime's CPU provider has no fp16 MatMul on x86); use none or int8 on the CPU`);
  return Object.freeze({ device: device[0] as Device, deviceId: device[1] ? Number(device[1]) : 0, intraOpThreads: threads, quantization, log });
}

/** "1,2,3" -> [1, 2, 3]; a clear error naming the flag otherwise. */
export function parseIntList(s: string, flag: string): number[] {
  const parts = s.split(',').map((x) => x.trim()).filter((x) => x.length > 0);
  const out = parts.map(Number);
  if (out.length === 0 || out.some((x) => !Number.isInteger(x) || x < 0)) throw new ServerError('invalid_request', `${flag} must be comma-separated non-negative integers, got "${s}"`);
  return out;
}

/** A progress bar on stderr: redrawn in place on a terminal, a line per quarter otherwise (logs). */
export function progressBar(label: string, stream: NodeJS.WriteStream = process.stderr): (done: number, total: number) => void {
  let last = -1;
  const tty = stream.isTTY === true;
  return (done, total) => {
    const pct = total > 0 ? Math.floor((done / total) * 100) : 100;
    const step = tty ? pct : Math.floor(pct / 25) * 25;
    if (step === last) return;
    last = step;
    const mib = `${(done / 2 ** 20).toFixed(0)}/${(total / 2 ** 20).toFixed(0)} MiB`;
    if (!tty) {
      stream.write(`${label} ${step}% ${mib}\n`);
      return;
    }
    const width = 30;
    const filled = Math.round((pct / 100) * width);
    stream.write(`\r${label} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${pct}% ${mib}`);
    if (done >= total) stream.write('\n');
  };
}
