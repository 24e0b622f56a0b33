/**
 * The only module that imports onnxruntime-node.
 *
 * It lives in services/model (not services/gateway, as STYLE §12 sketches) because expert
 * workers run ONNX Runtime too and nothing in workers/ may import the gateway.
 *
 * - Execution provider from a frozen map: CUDA when asked and present, else CPU (the choice is
 *   logged once per process; a CUDA request that cannot be met is one warning naming the reason).
 * - Two bindings, one per process (only one libonnxruntime.so.1 can live in a process: the dynamic
 *   linker matches it by SONAME). The CPU one is package.json's onnxruntime-node. The GPU one is
 *   the pinned pair `npm run setup:cuda` installs (scripts/cuda/setup.mjs): onnxruntime-node
 *   CUDA_ORT_VERSION's binding with the CUDA provider of the same ORT version beside its
 *   libonnxruntime.so.1, where ORT looks for provider libraries. It is used when the first session
 *   of the process asks for CUDA and the pair's manifest checks out. Nothing native loads before
 *   the first session (onnxruntime-common, pure JS, provides Tensor).
 * - Device tensors: onnxruntime-node (1.29, 1.30) takes and returns CPU tensors only; the only
 *   device location it binds is WebGPU's 'gpu-buffer' (js/node/src/tensor_helper.cc), not CUDA.
 *   So on CUDA every run copies its inputs host -> device and its outputs device -> host; weights
 *   stay on the device (initializers). README "GPU nodes" estimates the cost.
 * - Runs are synchronous. onnxruntime-node's public run() only wraps the binding's synchronous
 *   run in a setImmediate hop and a promise (onnxruntime#19611): it blocks its thread either way,
 *   and the hop cost 30-60 µs a run here, ~25 runs per decoded token. So sessions call the
 *   binding directly, on the thread that owns them; callers keep that off any event loop that
 *   serves HTTP (the engine runs in a worker thread). A synchronous call also serializes the runs
 *   of a session by construction.
 * - Threads: one intra-op pool per process, shared by its sessions. The node binding creates ORT's
 *   environment without global pools, so each session would own a pool: ~25 runs a decode step,
 *   each waking its pool's sleeping threads at every parallel section (spinning pools instead hold
 *   the cores the next session needs: 2 spinning threads per session ran 6× slower than 1). The
 *   ort_env addon (native/ort_env.c, built at npm install) creates the environment first, with
 *   one pool of `intraOpThreads` threads; the binding's environment is then that one (a process
 *   singleton) and sessions run on it (session.use_per_session_threads = 0). The pool spins
 *   between runs where `poolSpinning` says so, the process running every unit of a step. Where the
 *   addon is not built, or a session asks for another thread count, the session gets its own
 *   pool, not spinning, as before.
 * - Outputs are the binding's own copies: it copies every output into a new JS buffer even when
 *   handed a preallocated tensor (measured), so preallocating would save nothing; none is offered.
 */
import fs from 'node:fs';
import { availableParallelism } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';
import { getEnvironmentData, setEnvironmentData } from 'node:worker_threads';
import type * as ort from 'onnxruntime-node';
import { ServerError } from '../../../common/src/errors.js';
import type { Quantization } from '../graphs/linear.js';

export type Device = 'cpu' | 'cuda';

export interface RuntimeOptions {
  /**
   * Requested device; CUDA falls back to CPU with one logged warning (fp32 and int8; fp16 weights
   * are refused on the CPU). @defaultValue 'cpu'
   */
  readonly device: Device;
  /** CUDA device index. @defaultValue 0 */
  readonly deviceId: number;
  /**
   * ORT intra-op threads: the size of the process's shared pool (set by its first session; a
   * session asking for another count gets a pool of its own).
   * @defaultValue the machine's cores (`os.availableParallelism()`)
   */
  readonly intraOpThreads: number;
  /**
   * Whether the process's shared pool spins between runs (its threads stay awake for the next
   * parallel section instead of being woken for each). Set by the process's first session. On in
   * a process that runs every unit of a step; off in one that waits on other processes (a gateway
   * with expert workers, the workers): a spinning pool would hold a core they need. loadModel
   * derives it from where its experts run when not given.
   * @defaultValue true
   */
  readonly poolSpinning?: boolean;
  /** Weight format of the linear projections (graphs/linear.ts). @defaultValue 'none' (fp32) */
  readonly quantization?: Quantization;
  /** Called once with the provider actually chosen. */
  readonly log?: (msg: string, level: 'info' | 'warn') => void;
}

/** The machine's cores: what `--threads` defaults to. */
export const DEFAULT_THREADS = availableParallelism();

export const DEFAULT_RUNTIME: RuntimeOptions = Object.freeze({ device: 'cpu', deviceId: 0, intraOpThreads: DEFAULT_THREADS, quantization: 'none' });

// ---------------------------------------------------------------- which binding

const localRequire = createRequire(import.meta.url);
/** onnxruntime-common (Tensor, env) as onnxruntime-node resolves it: pure JS, loads nothing native. */
const common = createRequire(localRequire.resolve('onnxruntime-node'))('onnxruntime-common') as Pick<typeof ort, 'Tensor' | 'env'>;

/** The ONNX Runtime version of the GPU pair: onnxruntime-node's binding and the CUDA provider. */
export const CUDA_ORT_VERSION = '1.29.0';
/** Where `npm run setup:cuda` installs the pair: <repo>/.cache/ort-cuda. */
export const DEFAULT_CUDA_RUNTIME_DIR = fileURLToPath(new URL('../../../../.cache/ort-cuda', import.meta.url));
/** The manifest setup:cuda writes after checking the pair's versions. */
export const CUDA_MANIFEST = 'ort-cuda.json';
const CUDA_DIR_KEY = 'moeserve:ort-cuda-dir';

/**
 * Process-wide: where the GPU pair is (main.ts calls it for MOESERVE_ORT_CUDA_DIR). Worker threads
 * started afterwards inherit it (worker_threads environment data); child processes get it from
 * their own main.ts. @defaultValue DEFAULT_CUDA_RUNTIME_DIR
 */
export function useCudaRuntimeDir(dir: string): void {
  setEnvironmentData(CUDA_DIR_KEY, path.resolve(dir));
}

export function cudaRuntimeDir(): string {
  const v = getEnvironmentData(CUDA_DIR_KEY);
  return typeof v === 'string' ? v : DEFAULT_CUDA_RUNTIME_DIR;
}

/** A binding package's native folder: its .node addon and libonnxruntime.so.1. */
function nativeDir(pkg: string): string {
  return path.join(pkg, 'bin/napi-v6', process.platform, process.arch);
}

interface CudaManifest {
  readonly ortVersion: string;
  /** Files beside the binding, by name: their byte sizes when checked. */
  readonly files: Readonly<Record<string, { readonly bytes: number }>>;
}

/** Why the GPU pair in `dir` cannot be used, or null when its manifest and files check out (stat only). */
export function cudaRuntimeProblem(dir: string = cudaRuntimeDir()): string | null {
  const manifestPath = path.join(dir, CUDA_MANIFEST);
  if (!fs.existsSync(manifestPath)) return `the CUDA provider is not installed (no ${manifestPath}; run npm run setup:cuda)`;
  let m: CudaManifest;
  try {
    m = JSON.parse(fs.readFileSync(manifestPath, 'utf8')) as CudaManifest;
  } catch (err) {
    return `${manifestPath} is unreadable (${(err as Error).message}); run npm run setup:cuda`;
  }
  if (m.ortVersion !== CUDA_ORT_VERSION) return `${manifestPath} pairs ONNX Runtime ${m.ortVersion}, this moeserve needs ${CUDA_ORT_VERSION}; run npm run setup:cuda`;
  const pkg = path.join(dir, 'node_modules/onnxruntime-node');
  const version = (JSON.parse(fs.readFileSync(path.join(pkg, 'package.json'), 'utf8')) as { version: string }).version;
  if (version !== CUDA_ORT_VERSION) return `${pkg} is onnxruntime-node ${version}, the CUDA provider is ${CUDA_ORT_VERSION}; run npm run setup:cuda`;
  const bin = nativeDir(pkg);
  for (const [name, { bytes }] of Object.entries(m.files)) {
    const st = fs.statSync(path.join(bin, name), { throwIfNoEntry: false });
    if (!st || st.size !== bytes) return `${path.join(bin, name)} is missing or changed since setup:cuda checked it; run npm run setup:cuda`;
  }
  return null;
}

interface LoadedBinding {
  readonly native: Binding;
  readonly version: string;
  /** Why CUDA cannot run in this process, or null while it may. */
  cudaProblem: string | null;
  /** The process's shared intra-op pool, or null (sessions own theirs: `poolProblem` says why). */
  readonly pool: ThreadPool | null;
  readonly poolProblem: string | null;
}

/** ONNX Runtime's process-wide intra-op pool (the ort_env addon). */
export interface ThreadPool {
  readonly threads: number;
  readonly spinning: boolean;
}

/** Where scripts/build-native.mjs builds the ort_env addon (native/ort_env.c). */
export const ORT_ENV_ADDON = fileURLToPath(new URL('../../../../.cache/native/ort_env.node', import.meta.url));

/**
 * Creates ORT's environment with one shared pool before the binding loads (ort_env.c says how).
 * Called by each thread that loads the binding; the first call of the process decides the pool.
 */
function createPool(threads: number, spinning: boolean): { pool: ThreadPool | null; problem: string | null } {
  if (!fs.existsSync(ORT_ENV_ADDON)) return { pool: null, problem: `the ort_env addon is not built (${ORT_ENV_ADDON}; npm run build:native)` };
  const lib = path.join(nativeDir(path.dirname(localRequire.resolve('onnxruntime-node/package.json'))), 'libonnxruntime.so.1');
  try {
    const addon = { exports: {} } as NodeJS.Module;
    process.dlopen(addon, ORT_ENV_ADDON);
    const pool = (addon.exports as { initEnv(lib: string, threads: number, spinning: boolean): ThreadPool }).initEnv(lib, threads, spinning);
    return { pool, problem: null };
  } catch (err) {
    return { pool: null, problem: `the ort_env addon failed: ${(err as Error).message}` };
  }
}

let loaded: LoadedBinding | null = null;

/** Loads the binding on the first session: the GPU pair if that session asks for CUDA and it checks out. */
function binding(wantCuda: boolean, opts: RuntimeOptions): LoadedBinding {
  if (loaded) return loaded;
  const problem = wantCuda ? cudaRuntimeProblem() : 'this process loaded the CPU onnxruntime-node first (a CPU session came first)';
  if (problem === null) {
    const pkg = path.join(cudaRuntimeDir(), 'node_modules/onnxruntime-node/package.json');
    const native = createRequire(pkg)('./dist/binding.js') as Binding;
    // ORT's own logger at 'fatal' for the GPU pair: a provider that cannot start (no CUDA
    // libraries, no GPU) is then our one warning with the reason (cudaLoadReason), not also an
    // ORT error line on stderr. Failures still reach us as exceptions with ORT's message.
    (createRequire(pkg)('onnxruntime-common') as Pick<typeof ort, 'env'>).env.logLevel = 'fatal'; // read by initOrt()
    loaded = { native, version: CUDA_ORT_VERSION, cudaProblem: null, pool: null, poolProblem: "the GPU pair keeps ONNX Runtime's own environment" };
  } else {
    // onnxruntime-node declares no `exports` map, so its dist files are reachable; the version is
    // pinned in package.json because this reaches past the public API.
    const { pool, problem: poolProblem } = createPool(opts.intraOpThreads, opts.poolSpinning ?? true);
    loaded = { native: localRequire('onnxruntime-node/dist/binding.js') as Binding, version: common.env.versions.common, cudaProblem: problem, pool, poolProblem };
  }
  return loaded;
}

const PROVIDERS: Readonly<Record<Device, (o: RuntimeOptions) => ort.InferenceSession.ExecutionProviderConfig[]>> = Object.freeze({
  cpu: () => ['cpu'],
  cuda: (o) => [{ name: 'cuda', deviceId: o.deviceId } as ort.InferenceSession.ExecutionProviderConfig, 'cpu'],
});

/** What was logged about the provider in this process: the choice once, a fallback warning once. */
let logged: 'nothing' | 'choice' | 'warning' = 'nothing';

/** The device a request resolves to in this process (loads the binding if no session did). */
export function resolveDevice(requested: Device, opts: RuntimeOptions = DEFAULT_RUNTIME): Device {
  return requested === 'cuda' && binding(true, opts).cudaProblem === null ? 'cuda' : 'cpu';
}

function fp16Refused(why: string | null): ServerError {
  return new ServerError(
    'invalid_request',
    `--quantization fp16 needs the CUDA provider: ONNX Runtime's CPU provider has no fp16 MatMul on x86${why ? `, and CUDA is unavailable here: ${why}` : ''}; use --quantization none or int8 on the CPU`,
  );
}

export type Feed = ort.Tensor;

export function f32(data: Float32Array, dims: readonly number[]): ort.Tensor {
  return new common.Tensor('float32', data, dims);
}

export function i64(data: BigInt64Array, dims: readonly number[]): ort.Tensor {
  return new common.Tensor('int64', data, dims);
}

export interface OutputTensor {
  readonly data: Float32Array;
  readonly dims: readonly number[];
}

/** Which outputs to compute, by name (null: the binding allocates them). */
type Fetches = Record<string, null>;

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
  /** Initializes ORT once per thread (binding.initOrtOnce must never run twice: Node asserts). */
  initOrt(): void;
}

/**
 * Why the CUDA provider library cannot load: the dynamic loader's own words ("libcublasLt.so.13:
 * cannot open shared object file"), which ORT reduces to "Failed to load shared library". Called
 * only after a failure. A library that does load is not a Node addon, so Node then says it did
 * not self-register: the provider itself loads, and ORT's message is the reason.
 */
function cudaLoadReason(ortMessage: string): string {
  const lib = path.join(nativeDir(path.join(cudaRuntimeDir(), 'node_modules/onnxruntime-node')), 'libonnxruntime_providers_cuda.so');
  try {
    process.dlopen({ exports: {} } as NodeJS.Module, lib);
  } catch (err) {
    const m = (err as Error).message;
    if (!/self-register/.test(m)) return `the CUDA provider cannot load (${m.replace(`${lib}: `, '')})`;
  }
  return `the CUDA provider failed to start: ${ortMessage.split('\n')[0]}`;
}

const NO_RUN_OPTIONS = Object.freeze({});
/** Session config: run on the process's shared pool. */
const SHARED_POOL = Object.freeze({ session: { use_per_session_threads: '0' } });
/** Session config: a pool of its own that sleeps between runs (it would hold cores other sessions need). */
const OWN_POOL = Object.freeze({ session: { intra_op: { allow_spinning: '0' }, inter_op: { allow_spinning: '0' } } });

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
    const b = binding(opts.device === 'cuda', opts);
    let device: Device = opts.device === 'cuda' && b.cudaProblem === null ? 'cuda' : 'cpu';
    const fallback = () => (opts.device === 'cuda' ? b.cudaProblem : null);
    if (device === 'cpu' && opts.quantization === 'fp16') throw fp16Refused(fallback());
    const shared = b.pool !== null && b.pool.threads === opts.intraOpThreads;
    const common: ort.InferenceSession.SessionOptions = {
      intraOpNumThreads: opts.intraOpThreads,
      interOpNumThreads: 1,
      graphOptimizationLevel: 'all',
      executionMode: 'sequential',
      logSeverityLevel: 3,
      extra: shared ? SHARED_POOL : OWN_POOL,
    };
    b.native.initOrt();
    const load = (providers: ort.InferenceSession.ExecutionProviderConfig[]): BindingSession => {
      const s = new b.native.binding.InferenceSession();
      s.loadModel(model.buffer, model.byteOffset, model.byteLength, { ...common, executionProviders: providers });
      return s;
    };
    let session: BindingSession;
    try {
      session = load(PROVIDERS[device](opts));
    } catch (err) {
      if (device !== 'cuda') throw new ServerError('internal', `ONNX Runtime rejected graph ${name}: ${(err as Error).message}`, { cause: err });
      // The provider library, the CUDA libraries or the GPU itself is missing: every later session
      // of this process goes straight to the CPU instead of failing the same way again.
      b.cudaProblem = cudaLoadReason((err as Error).message);
      device = 'cpu';
      if (opts.quantization === 'fp16') throw fp16Refused(b.cudaProblem);
      session = load(PROVIDERS.cpu(opts));
    }
    const why = fallback();
    if (logged === 'nothing' || (why !== null && logged !== 'warning')) {
      logged = why !== null ? 'warning' : 'choice';
      const threads = shared ? `one pool of ${opts.intraOpThreads} threads for the process${b.pool!.spinning ? ', spinning between runs' : ''}` : `${opts.intraOpThreads} threads per session${b.poolProblem ? ` (${b.poolProblem})` : ''}`;
      const msg =
        why !== null
          ? `onnxruntime ${b.version}: --device cuda requested but ${why}; running on cpu, ${threads}`
          : `onnxruntime ${b.version}: execution provider ${device}${device === 'cuda' ? ` (device ${opts.deviceId})` : ''}, ${threads}`;
      opts.log?.(msg, why !== null ? 'warn' : 'info');
    }
    return new OrtSession(name, session, device);
  }

  /** Runs the graph synchronously on this thread; every moeserve graph outputs float32. */
  run(feeds: Record<string, ort.Tensor>, outputNames: readonly string[]): Record<string, OutputTensor> {
    const fetches: Fetches = {};
    for (const n of outputNames) fetches[n] = null;
    const res = this.session.run(feeds, fetches, NO_RUN_OPTIONS);
    const out: Record<string, OutputTensor> = {};
    for (const k in res) out[k] = { data: res[k]!.data as Float32Array, dims: res[k]!.dims };
    return out;
  }

  async release(): Promise<void> {
    this.session.dispose();
  }
}
