/**
 * Writes safetensors files and sharded checkpoints byte-for-byte as Hugging Face does.
 *
 * tensor specs (name, dtype, shape) + a producer of each tensor's bytes -> `planShards` (split
 * by a max shard size, in the given order, as huggingface_hub's split_torch_state_dict_into_shards)
 * -> one file per shard (`model-0000i-of-0000n.safetensors`, or `model.safetensors` when there is
 * one) + `model.safetensors.index.json`.
 *
 * Streaming: the header needs only shapes, so it is written first and each tensor's bytes are
 * asked for afterwards, one tensor (or one chunk) at a time; a multi-GB checkpoint never sits in
 * memory. Within a file, tensors are laid out as the safetensors library does: by element size,
 * largest first, then by name; the header lists "__metadata__" first, then tensors in layout
 * order, compact JSON padded with spaces to a multiple of 8 bytes.
 *
 * Files are written to a temporary name and renamed, so a crash never leaves a file that looks
 * complete.
 */
import { closeSync, mkdirSync, openSync, readdirSync, renameSync, rmSync, unlinkSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { ServerError } from '../../../common/src/errors.js';
import { DTYPE_BYTES, type SafetensorsDtype } from './dtype.js';
import { INDEX_FILE, SINGLE_FILE } from './checkpoint.js';

export { f32ToBf16, f32ToF16 } from '../../../common/src/half.js';

export interface TensorSpec {
  readonly name: string;
  readonly dtype: SafetensorsDtype;
  /** Hugging Face order: [out, in] for Linear weights. */
  readonly shape: readonly number[];
}

export interface TensorData extends TensorSpec {
  /** Little-endian bytes, exactly product(shape) × dtype size. */
  readonly data: Uint8Array;
}

/**
 * Produces one tensor's bytes: all at once, or as chunks in order (a generator), which may reuse
 * one buffer between chunks: each chunk is written before the next is asked for.
 */
export type TensorProducer = (spec: TensorSpec) => Uint8Array | Iterable<Uint8Array>;

/** Called after each written chunk with bytes of tensor data written so far and in all. */
export type ProgressCallback = (bytesDone: number, bytesTotal: number) => void;

/** transformers writes {format: "pt"}; pass null to write no "__metadata__". */
export type SafetensorsMetadata = Readonly<Record<string, string>> | null;
const DEFAULT_METADATA: SafetensorsMetadata = Object.freeze({ format: 'pt' });

export function tensorByteLength(spec: TensorSpec): number {
  let n = DTYPE_BYTES[spec.dtype];
  for (const d of spec.shape) n *= d;
  return n;
}

/** The safetensors library's in-file order: larger elements first (keeps alignment), then by name. */
export function layoutOrder<T extends TensorSpec>(specs: readonly T[]): T[] {
  return [...specs].sort((a, b) => DTYPE_BYTES[b.dtype] - DTYPE_BYTES[a.dtype] || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/**
 * The 8-byte length prefix plus the padded JSON header, for tensors in the given (layout) order.
 * Built by string concatenation, not JSON.stringify of an object, so integer-like tensor names
 * cannot be reordered by JS property order.
 */
export function encodeHeader(ordered: readonly TensorSpec[], metadata: SafetensorsMetadata = DEFAULT_METADATA): Uint8Array {
  const parts: string[] = [];
  if (metadata) parts.push(`"__metadata__":${JSON.stringify(metadata)}`);
  let offset = 0;
  for (const t of ordered) {
    const end = offset + tensorByteLength(t);
    parts.push(`${JSON.stringify(t.name)}:{"dtype":"${t.dtype}","shape":${JSON.stringify(t.shape)},"data_offsets":[${offset},${end}]}`);
    offset = end;
  }
  const json = Buffer.from(`{${parts.join(',')}}`, 'utf8');
  const padded = Math.ceil(json.length / 8) * 8;
  const out = new Uint8Array(8 + padded);
  new DataView(out.buffer).setBigUint64(0, BigInt(padded), true); // u64 little-endian
  out.set(json, 8);
  out.fill(0x20, 8 + json.length); // spaces, as the safetensors library pads
  return out;
}

function writeAll(fd: number, bytes: Uint8Array): void {
  let done = 0;
  while (done < bytes.byteLength) done += writeSync(fd, bytes, done, bytes.byteLength - done);
}

/** Writes one safetensors file from in-memory tensors (small files, tests). */
export function writeSafetensors(path: string, tensors: readonly TensorData[], metadata: SafetensorsMetadata = DEFAULT_METADATA): void {
  const byName = new Map(tensors.map((t) => [t.name, t]));
  if (byName.size !== tensors.length) throw new ServerError('internal', `writeSafetensors(${path}): duplicate tensor names`);
  writeSafetensorsStream(path, tensors, (spec) => byName.get(spec.name)!.data, metadata);
}

/**
 * Writes one safetensors file, asking `produce` for each tensor's bytes in layout order.
 * `progress` receives the running count of tensor bytes written by this call.
 * Returns the number of tensor bytes written.
 */
export function writeSafetensorsStream(
  path: string,
  specs: readonly TensorSpec[],
  produce: TensorProducer,
  metadata: SafetensorsMetadata = DEFAULT_METADATA,
  progress?: (bytesWrittenHere: number) => void,
): number {
  const ordered = layoutOrder(specs);
  for (let i = 1; i < ordered.length; i++) {
    if (ordered[i]!.name === ordered[i - 1]!.name) throw new ServerError('internal', `${path}: tensor "${ordered[i]!.name}" appears twice`);
  }
  const tmp = `${path}.tmp-${process.pid}`;
  const fd = openSync(tmp, 'w');
  let written = 0;
  try {
    writeAll(fd, encodeHeader(ordered, metadata));
    for (const spec of ordered) {
      const expected = tensorByteLength(spec);
      const out = produce(spec);
      let got = 0;
      for (const chunk of out instanceof Uint8Array ? [out] : out) {
        got += chunk.byteLength;
        if (got > expected) break;
        writeAll(fd, chunk);
        written += chunk.byteLength;
        progress?.(written);
      }
      if (got !== expected) {
        throw new ServerError('internal', `${path}: producer gave ${got > expected ? 'more than' : got} bytes for tensor "${spec.name}", expected ${expected} (shape [${spec.shape.join(', ')}] × ${spec.dtype})`);
      }
    }
    closeSync(fd);
  } catch (err) {
    closeSync(fd);
    unlinkSync(tmp);
    throw err;
  }
  renameSync(tmp, path);
  return written;
}

export interface ShardPlan {
  /** File name inside the checkpoint folder. */
  readonly file: string;
  /** Tensors of this shard, in the order given to `planShards`. */
  readonly tensors: readonly TensorSpec[];
  readonly bytes: number;
}

/**
 * Splits tensors (in the given order, e.g. the model's parameter order) into shards of at most
 * `maxShardBytes` each, as huggingface_hub does: start a new shard when the next tensor would
 * tip the current one over; a tensor larger than the limit gets a shard of its own.
 */
export function planShards(specs: readonly TensorSpec[], maxShardBytes: number): ShardPlan[] {
  if (!(maxShardBytes > 0)) throw new ServerError('invalid_request', `maxShardBytes must be positive, got ${maxShardBytes}`, { param: 'maxShardBytes' });
  const groups: { tensors: TensorSpec[]; bytes: number }[] = [];
  let cur: { tensors: TensorSpec[]; bytes: number } | null = null;
  for (const spec of specs) {
    const size = tensorByteLength(spec);
    if (cur === null || (cur.tensors.length > 0 && cur.bytes + size > maxShardBytes)) {
      cur = { tensors: [], bytes: 0 };
      groups.push(cur);
    }
    cur.tensors.push(spec);
    cur.bytes += size;
  }
  const n = groups.length;
  const pad = (i: number) => String(i).padStart(5, '0');
  return groups.map((g, i) => ({ file: n === 1 ? SINGLE_FILE : `model-${pad(i + 1)}-of-${pad(n)}.safetensors`, tensors: g.tensors, bytes: g.bytes }));
}

/** `model.safetensors.index.json` text: as transformers writes it (json.dumps(indent=2, sort_keys=True) + "\n"). */
export function encodeIndex(shards: readonly ShardPlan[]): string {
  const entries: [string, string][] = [];
  let total = 0;
  for (const s of shards) {
    total += s.bytes;
    for (const t of s.tensors) entries.push([t.name, s.file]);
  }
  entries.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  const map = entries.map(([name, file]) => `    ${JSON.stringify(name)}: ${JSON.stringify(file)}`).join(',\n');
  return `{\n  "metadata": {\n    "total_size": ${total}\n  },\n  "weight_map": {\n${map}\n  }\n}\n`;
}

export interface ShardedWriteOptions {
  /** @defaultValue 1 GiB */
  readonly maxShardBytes?: number;
  readonly metadata?: SafetensorsMetadata;
  readonly onProgress?: ProgressCallback;
}

export interface ShardedWriteResult {
  /** File names written in `dir` (shards, then the index when there is one). */
  readonly files: readonly string[];
  /** Sum of tensor bytes (the index's metadata.total_size). */
  readonly totalSize: number;
}

export const DEFAULT_MAX_SHARD_BYTES = 1024 * 1024 * 1024;

const STALE_WEIGHTS = /^(model\.safetensors(\.index\.json)?|model-\d{5}-of-\d{5}\.safetensors)$/;

/**
 * Writes a checkpoint's weights into `dir`: one `model.safetensors`, or shards + index. Weight
 * files of an earlier checkpoint in `dir` are removed first: a stale index would otherwise win
 * over a new single file at load.
 */
export function writeShardedSafetensors(dir: string, specs: readonly TensorSpec[], produce: TensorProducer, options: ShardedWriteOptions = {}): ShardedWriteResult {
  const shards = planShards(specs, options.maxShardBytes ?? DEFAULT_MAX_SHARD_BYTES);
  mkdirSync(dir, { recursive: true });
  for (const f of readdirSync(dir)) if (STALE_WEIGHTS.test(f)) rmSync(join(dir, f));
  const total = shards.reduce((s, sh) => s + sh.bytes, 0);
  let before = 0;
  options.onProgress?.(0, total);
  for (const shard of shards) {
    const base = before;
    before += writeSafetensorsStream(join(dir, shard.file), shard.tensors, produce, options.metadata, (here) => options.onProgress?.(base + here, total));
  }
  const files = shards.map((s) => s.file);
  if (shards.length > 1) {
    writeFileSync(join(dir, INDEX_FILE), encodeIndex(shards));
    files.push(INDEX_FILE);
  }
  return { files, totalSize: total };
}
