/**
 * The only module that imports onnxruntime-node.
 *
 * It lives in services/model (not services/gateway, as STYLE §12 sketches) because expert
 * workers run ONNX Runtime too and nothing in workers/ may import the gateway.
 *
 * - Execution provider from a frozen map: CUDA when asked and present, else CPU (the choice is
 *   logged once per process).
 * - Runs are serialized per session (a promise chain): onnxruntime-node's run() executes
 *   synchronously on the calling thread after one setImmediate hop (onnxruntime#19611), so the
 *   caller must keep this off any event loop that serves HTTP (the engine runs in a worker thread).
 */
import * as ort from 'onnxruntime-node';
import { ServerError } from '../../../common/src/errors.js';

export type Device = 'cpu' | 'cuda';

export interface RuntimeOptions {
  /** Requested device; CUDA falls back to CPU with a logged warning. @defaultValue 'cpu' */
  readonly device: Device;
  /** CUDA device index. @defaultValue 0 */
  readonly deviceId: number;
  /** ORT intra-op threads per session; 1 measured fastest here for our sizes. @defaultValue 1 */
  readonly intraOpThreads: number;
  /** Called once with the provider actually chosen. */
  readonly log?: (msg: string, level: 'info' | 'warn') => void;
}

export const DEFAULT_RUNTIME: RuntimeOptions = Object.freeze({ device: 'cpu', deviceId: 0, intraOpThreads: 1 });

const PROVIDERS: Readonly<Record<Device, (o: RuntimeOptions) => ort.InferenceSession.ExecutionProviderConfig[]>> = Object.freeze({
  cpu: () => ['cpu'],
  cuda: (o) => [{ name: 'cuda', deviceId: o.deviceId } as ort.InferenceSession.ExecutionProviderConfig, 'cpu'],
});

let loggedChoice = false;

/** The device a request resolves to on this machine. */
export function resolveDevice(requested: Device): Device {
  if (requested === 'cuda') {
    const cuda = ort.listSupportedBackends().find((b) => b.name === 'cuda');
    // 'bundled: false' means the CUDA provider library must have been installed by the package's
    // install script (see README: GPU nodes); try it and fall back if session creation fails.
    if (!cuda) return 'cpu';
  }
  return requested;
}

export type Feed = ort.Tensor;

export function f32(data: Float32Array, dims: readonly number[]): ort.Tensor {
  return new ort.Tensor('float32', data, dims);
}

export function i64(data: BigInt64Array, dims: readonly number[]): ort.Tensor {
  return new ort.Tensor('int64', data, dims);
}

export interface OutputTensor {
  readonly data: Float32Array;
  readonly dims: readonly number[];
}

/** One ONNX Runtime session for one model unit (embedding, attention of a layer, experts, ...). */
export class OrtSession {
  private chain: Promise<unknown> = Promise.resolve();
  private constructor(
    readonly name: string,
    private readonly session: ort.InferenceSession,
    readonly device: Device,
  ) {}

  static async create(name: string, model: Uint8Array, opts: RuntimeOptions = DEFAULT_RUNTIME): Promise<OrtSession> {
    let device = resolveDevice(opts.device);
    const common: ort.InferenceSession.SessionOptions = {
      intraOpNumThreads: opts.intraOpThreads,
      interOpNumThreads: 1,
      graphOptimizationLevel: 'all',
      executionMode: 'sequential',
      logSeverityLevel: 3,
    };
    let session: ort.InferenceSession;
    try {
      session = await ort.InferenceSession.create(model, { ...common, executionProviders: PROVIDERS[device](opts) });
    } catch (err) {
      if (device !== 'cuda') throw new ServerError('internal', `ONNX Runtime rejected graph ${name}: ${(err as Error).message}`, { cause: err });
      device = 'cpu';
      session = await ort.InferenceSession.create(model, { ...common, executionProviders: PROVIDERS.cpu(opts) });
    }
    if (!loggedChoice) {
      loggedChoice = true;
      const msg = `onnxruntime ${ort.env.versions.common}: execution provider ${device}${opts.device !== device ? ` (requested ${opts.device}: not available, using cpu)` : ''}`;
      opts.log?.(msg, opts.device !== device ? 'warn' : 'info');
    }
    return new OrtSession(name, session, device);
  }

  get inputNames(): readonly string[] {
    return this.session.inputNames;
  }

  /** Runs the graph; outputs are float32 tensors (every moeserve graph outputs float32). */
  run(feeds: Record<string, ort.Tensor>, outputNames?: readonly string[]): Promise<Record<string, OutputTensor>> {
    const next = this.chain.then(async () => {
      const res = outputNames ? await this.session.run(feeds, outputNames) : await this.session.run(feeds);
      const out: Record<string, OutputTensor> = {};
      for (const k in res) {
        const t = res[k]!;
        out[k] = { data: t.data as Float32Array, dims: t.dims };
      }
      return out;
    });
    this.chain = next.catch(() => undefined);
    return next;
  }

  async release(): Promise<void> {
    await this.session.release();
  }
}
