/**
 * The only module that imports onnxruntime-node.
 *
 * It lives in services/model (not services/gateway, as STYLE §12 sketches) because expert
 * workers run ONNX Runtime too and nothing in workers/ may import the gateway.
 *
 * - Execution provider from a frozen map: CUDA when asked and present, else CPU (the choice is
 *   logged once per process).
 * - Runs are synchronous. onnxruntime-node's public run() only wraps the binding's synchronous
 *   run in a setImmediate hop and a promise (onnxruntime#19611): it blocks its thread either way,
 *   and the hop cost 30-60 µs a run here, ~25 runs per decoded token. So sessions call the
 *   binding directly, on the thread that owns them; callers keep that off any event loop that
 *   serves HTTP (the engine runs in a worker thread). A synchronous call also serializes the runs
 *   of a session by construction.
 * - Threads: every session gets `intraOpThreads` (default: the machine's cores) with spinning
 *   off. The node binding has no global thread pool, so each session owns one; a pool that spins
 *   after its run holds a core the next session's run needs (measured before this: 2 spinning
 *   threads per session ran 6× slower than 1 thread).
 * - Outputs can be written into caller-owned tensors (`Fetches`), so steady-state steps allocate
 *   no output buffers.
 */
import { availableParallelism } from 'node:os';
import { createRequire } from 'node:module';
import * as ort from 'onnxruntime-node';
import { ServerError } from '../../../common/src/errors.js';
import type { Quantization } from '../graphs/linear.js';

export type Device = 'cpu' | 'cuda';

export interface RuntimeOptions {
  /** Requested device; CUDA falls back to CPU with a logged warning. @defaultValue 'cpu' */
  readonly device: Device;
  /** CUDA device index. @defaultValue 0 */
  readonly deviceId: number;
  /**
   * ORT intra-op threads per session (pools do not spin, so sessions do not fight over cores).
   * @defaultValue the machine's cores (`os.availableParallelism()`)
   */
  readonly intraOpThreads: number;
  /** Weight format of the linear projections (graphs/linear.ts). @defaultValue 'none' (fp32) */
  readonly quantization?: Quantization;
  /** Called once with the provider actually chosen. */
  readonly log?: (msg: string, level: 'info' | 'warn') => void;
}

/** The machine's cores: what `--threads` defaults to. */
export const DEFAULT_THREADS = availableParallelism();

export const DEFAULT_RUNTIME: RuntimeOptions = Object.freeze({ device: 'cpu', deviceId: 0, intraOpThreads: DEFAULT_THREADS, quantization: 'none' });

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

/**
 * Which outputs to compute: a name -> null (ORT allocates the output) or a float32 tensor of the
 * output's exact shape that ORT writes into (no allocation; its `data` holds the result).
 */
export type Fetches = Record<string, ort.Tensor | null>;

// ---------------------------------------------------------------- the native binding

/** The binding's session object (onnxruntime-node/dist/binding.js): load, synchronous run. */
interface BindingSession {
  loadModel(buffer: ArrayBufferLike, byteOffset: number, byteLength: number, options: ort.InferenceSession.SessionOptions): void;
  run(feeds: Record<string, ort.Tensor>, fetches: Fetches, options: Record<string, unknown>): Record<string, ort.Tensor>;
  readonly inputMetadata: readonly { readonly name: string }[];
  readonly outputMetadata: readonly { readonly name: string }[];
  dispose(): void;
}

interface Binding {
  readonly binding: { InferenceSession: new () => BindingSession };
  initOrt(): void;
}

// onnxruntime-node declares no `exports` map, so its dist files are reachable; the version is
// pinned in package.json because this reaches past the public API.
const native = createRequire(import.meta.url)('onnxruntime-node/dist/binding.js') as Binding;
const NO_RUN_OPTIONS = Object.freeze({});

/** One ONNX Runtime session for one model unit (embedding, attention of a layer, experts, ...). */
export class OrtSession {
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
  private constructor(
    readonly name: string,
    private readonly session: BindingSession,
    readonly device: Device,
  ) {
    this.inputNames = session.inputMetadata.map((m) => m.name);
    this.outputNames = session.outputMetadata.map((m) => m.name);
  }

  static async create(name: string, model: Uint8Array, opts: RuntimeOptions = DEFAULT_RUNTIME): Promise<OrtSession> {
    let device = resolveDevice(opts.device);
    const common: ort.InferenceSession.SessionOptions = {
      intraOpNumThreads: opts.intraOpThreads,
      interOpNumThreads: 1,
      graphOptimizationLevel: 'all',
      executionMode: 'sequential',
      logSeverityLevel: 3,
      extra: { session: { intra_op: { allow_spinning: '0' }, inter_op: { allow_spinning: '0' } } },
    };
    native.initOrt();
    const load = (providers: ort.InferenceSession.ExecutionProviderConfig[]): BindingSession => {
      const s = new native.binding.InferenceSession();
      s.loadModel(model.buffer, model.byteOffset, model.byteLength, { ...common, executionProviders: providers });
      return s;
    };
    let session: BindingSession;
    try {
      session = load(PROVIDERS[device](opts));
    } catch (err) {
      if (device !== 'cuda') throw new ServerError('internal', `ONNX Runtime rejected graph ${name}: ${(err as Error).message}`, { cause: err });
      device = 'cpu';
      session = load(PROVIDERS.cpu(opts));
    }
    if (!loggedChoice) {
      loggedChoice = true;
      const msg = `onnxruntime ${ort.env.versions.common}: execution provider ${device}${opts.device !== device ? ` (requested ${opts.device}: not available, using cpu)` : ''}, ${opts.intraOpThreads} threads per session`;
      opts.log?.(msg, opts.device !== device ? 'warn' : 'info');
    }
    return new OrtSession(name, session, device);
  }

  /**
   * Runs the graph synchronously on this thread. `fetches`: output names (ORT allocates them), or
   * a Fetches map with caller-owned tensors to write into. Every moeserve graph outputs float32.
   */
  run(feeds: Record<string, ort.Tensor>, fetches: readonly string[] | Fetches): Record<string, OutputTensor> {
    let f: Fetches;
    if (Array.isArray(fetches)) {
      f = {};
      for (const n of fetches as readonly string[]) f[n] = null;
    } else {
      f = fetches as Fetches;
    }
    const res = this.session.run(feeds, f, NO_RUN_OPTIONS);
    const out: Record<string, OutputTensor> = {};
    for (const k in res) {
      const given = f[k];
      // A caller-owned tensor was written in place; the binding returns a new wrapper of a copy.
      out[k] = given ? { data: given.data as Float32Array, dims: given.dims } : { data: res[k]!.data as Float32Array, dims: res[k]!.dims };
    }
    return out;
  }

  async release(): Promise<void> {
    this.session.dispose();
  }
}
