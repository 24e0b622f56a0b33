/**
 * A Hugging Face checkpoint folder, opened lazily by tensor.
 *
 * folder (model.safetensors | model.safetensors.index.json + shards) -> `Checkpoint.open` (reads
 * and validates every header, keeps one fd per shard) -> `info` / `readF32` / `readRaw` (one
 * positioned read per tensor, of exactly its bytes) -> graph builders and expert workers.
 *
 * Laziness is the point: a worker that holds 8 of 256 experts reads only their bytes, and
 * `bytesRead` proves it. Nothing is memory-mapped and no file is read whole. Data is
 * little-endian; conversions view it through typed arrays, which is correct on little-endian
 * hosts only (checked once at open).
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { basename, dirname, isAbsolute, join, resolve } from 'node:path';
import { ServerError } from '../../../common/src/errors.js';
import { assertLittleEndianHost, decodeHalvesInPlace, DTYPE_BYTES, f64ToF32, FLOAT_DTYPES } from './dtype.js';
import { closeSafetensorsFile, openSafetensorsFile, readExact, type SafetensorsFile, type TensorInfo } from './safetensors.js';

export type { TensorInfo } from './safetensors.js';
export type { SafetensorsDtype } from './dtype.js';

export const SINGLE_FILE = 'model.safetensors';
export const INDEX_FILE = 'model.safetensors.index.json';

function invalid(message: string): never {
  throw new ServerError('checkpoint_invalid', message);
}

export class Checkpoint {
  /** Absolute path of the checkpoint folder. */
  readonly dir: string;
  /** Tensor bytes read so far (headers not counted). */
  get bytesRead(): number {
    return this.read;
  }
  /** The `__metadata__` of the first shard (HF writes {format: "pt"}). */
  get metadata(): Readonly<Record<string, string>> {
    return this.files[0]?.metadata ?? {};
  }

  private read = 0;
  private closed = false;

  private constructor(
    dir: string,
    private readonly files: readonly SafetensorsFile[],
    // name -> info, in a stable order (index order for sharded, header order otherwise)
    private readonly tensors: ReadonlyMap<string, TensorInfo>,
    private readonly fdByFile: ReadonlyMap<string, number>,
  ) {
    this.dir = dir;
  }

  /**
   * Opens `dir/model.safetensors.index.json` and its shards, else `dir/model.safetensors`
   * (a path to a single .safetensors file is accepted too). Reads headers only.
   */
  static open(dir: string): Checkpoint {
    assertLittleEndianHost();
    const abs = resolve(dir);
    if (existsSync(abs) && statSync(abs).isFile()) return Checkpoint.fromFiles(dirname(abs), [abs], null);
    const indexPath = join(abs, INDEX_FILE);
    if (existsSync(indexPath)) return Checkpoint.openSharded(abs, indexPath);
    const single = join(abs, SINGLE_FILE);
    if (existsSync(single)) return Checkpoint.fromFiles(abs, [single], null);
    return invalid(`${abs}: no ${SINGLE_FILE} or ${INDEX_FILE} in the checkpoint folder`);
  }

  private static openSharded(dir: string, indexPath: string): Checkpoint {
    let index: unknown;
    try {
      index = JSON.parse(readFileSync(indexPath, 'utf8'));
    } catch (err) {
      throw new ServerError('checkpoint_invalid', `${indexPath}: index is not valid JSON (${(err as Error).message})`, { cause: err });
    }
    const weightMap = typeof index === 'object' && index !== null && !Array.isArray(index) ? (index as Record<string, unknown>).weight_map : undefined;
    if (typeof weightMap !== 'object' || weightMap === null || Array.isArray(weightMap)) invalid(`${indexPath}: index must be an object with a "weight_map" object`);
    const map = weightMap as Record<string, unknown>;
    const shardNames: string[] = [];
    for (const [name, shard] of Object.entries(map)) {
      if (typeof shard !== 'string' || shard === '') invalid(`${indexPath}: weight_map["${name}"] must be a shard file name, got ${JSON.stringify(shard)}`);
      // a shard is a file beside the index: refuse paths that would reach outside the folder
      if (isAbsolute(shard) || basename(shard) !== shard || shard === '.' || shard === '..') {
        invalid(`${indexPath}: weight_map["${name}"] names "${shard}", which is not a plain file name in the checkpoint folder`);
      }
      if (!shardNames.includes(shard)) {
        if (!existsSync(join(dir, shard))) invalid(`${indexPath}: shard "${shard}" (holding tensor "${name}") does not exist in ${dir}`);
        shardNames.push(shard);
      }
    }
    if (shardNames.length === 0) invalid(`${indexPath}: weight_map is empty`);
    return Checkpoint.fromFiles(
      dir,
      shardNames.map((s) => join(dir, s)),
      new Map(Object.entries(map).map(([name, shard]) => [name, join(dir, shard as string)])),
    );
  }

  /** wanted: tensor -> shard path from the index, or null to expose every tensor of the files. */
  private static fromFiles(dir: string, paths: string[], wanted: Map<string, string> | null): Checkpoint {
    const files: SafetensorsFile[] = [];
    try {
      for (const p of paths) files.push(openSafetensorsFile(p));
      const tensors = new Map<string, TensorInfo>();
      const byPath = new Map(files.map((f) => [f.path, f]));
      if (wanted === null) {
        for (const f of files) for (const [name, info] of f.tensors) tensors.set(name, info);
      } else {
        // The index is the authority (as in transformers): a tensor it lists must be in its
        // shard; tensors a shard holds that the index does not list are not exposed.
        for (const [name, shard] of wanted) {
          const info = byPath.get(shard)!.tensors.get(name);
          if (!info) invalid(`${shard}: tensor "${name}" is listed in ${INDEX_FILE} but absent from this shard`);
          tensors.set(name, info);
        }
      }
      return new Checkpoint(dir, files, tensors, new Map(files.map((f) => [f.path, f.fd])));
    } catch (err) {
      for (const f of files) closeSafetensorsFile(f);
      throw err;
    }
  }

  /** Tensor names, in index (or header) order. */
  names(): string[] {
    return [...this.tensors.keys()];
  }

  has(name: string): boolean {
    return this.tensors.has(name);
  }

  info(name: string): TensorInfo {
    const info = this.tensors.get(name);
    if (!info) invalid(`${this.dir}: tensor "${name}" is not in the checkpoint`);
    return info;
  }

  /** The tensor's exact bytes (little-endian, its own dtype). */
  readRaw(name: string): Uint8Array<ArrayBuffer> {
    const info = this.info(name);
    const out = new Uint8Array(info.byteLength);
    this.readInto(info, out);
    return out;
  }

  /**
   * The tensor as float32: F32 as stored; F16, BF16 and F64 converted (ONNX Runtime's CPU
   * provider has no bf16 MatMul). Other dtypes throw: read them with `readRaw` (FP8 weights
   * need their block scales, `weight_scale_inv`, so a plain cast would be silently wrong).
   * Returns Float32Array [product(shape)], row-major in the tensor's HF shape.
   */
  readF32(name: string): Float32Array<ArrayBuffer> {
    const info = this.floatInfo(name);
    const out = new Float32Array(info.byteLength / DTYPE_BYTES[info.dtype]);
    this.decodeInto(info, out);
    return out;
  }

  /** As `readF32`, into a caller-owned buffer of exactly the tensor's element count (reuse across loads). */
  readF32Into<T extends Float32Array>(name: string, out: T): T {
    const info = this.floatInfo(name);
    const n = info.byteLength / DTYPE_BYTES[info.dtype];
    if (out.length !== n) throw new ServerError('internal', `readF32Into("${name}"): buffer holds ${out.length} elements, tensor has ${n}`);
    this.decodeInto(info, out);
    return out;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const f of this.files) closeSafetensorsFile(f);
  }

  private floatInfo(name: string): TensorInfo {
    const info = this.info(name);
    if (!FLOAT_DTYPES.includes(info.dtype)) {
      invalid(`${info.file}: tensor "${name}" is ${info.dtype}; readF32 converts ${FLOAT_DTYPES.join(', ')} only (use readRaw)`);
    }
    return info;
  }

  private decodeInto(info: TensorInfo, out: Float32Array): void {
    const bytes = new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
    switch (info.dtype) {
      case 'F32':
        this.readInto(info, bytes);
        return;
      case 'F16':
      case 'BF16':
        // read the halves into the upper half of `out`, then widen in place: no second buffer
        this.readInto(info, bytes.subarray(out.byteLength / 2));
        decodeHalvesInPlace(out, info.dtype);
        return;
      case 'F64': {
        const tmp = new Float64Array(out.length);
        this.readInto(info, new Uint8Array(tmp.buffer));
        f64ToF32(tmp, out);
        return;
      }
      default:
        throw new ServerError('internal', `decodeInto: ${info.dtype} is not a float dtype`);
    }
  }

  private readInto(info: TensorInfo, dst: Uint8Array): void {
    if (this.closed) throw new ServerError('internal', `${this.dir}: checkpoint is closed (reading "${info.name}")`);
    // header validation guarantees offset + byteLength <= file size at open; readExact also stops at EOF
    readExact(this.fdByFile.get(info.file)!, info.file, dst, info.offset, `tensor "${info.name}"`);
    this.read += dst.byteLength;
  }
}
