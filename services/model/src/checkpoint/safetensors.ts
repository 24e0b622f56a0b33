/**
 * One safetensors file: its header, parsed and validated, and bounded reads of its bytes.
 *
 * On-disk layout (https://github.com/huggingface/safetensors#format):
 *   [0, 8)          u64 little-endian N: header length in bytes
 *   [8, 8+N)        UTF-8 JSON: {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__"?: {str: str}}
 *   [8+N, EOF)      data section; data_offsets are relative to its start (8+N)
 *
 * Owns: `openSafetensorsFile` (reads the 8-byte prefix and the header only, never tensor data)
 * and `readExact` (a positioned read that never goes past what the file holds). The header is
 * untrusted input: every field is checked before it is used, so a corrupt or hostile header ends
 * in one ServerError('checkpoint_invalid') naming the file (and the tensor), never in a read past
 * the end of the file, a huge allocation or a crash.
 */
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { ServerError } from '../../../common/src/errors.js';
import { DTYPE_BYTES, SAFETENSORS_DTYPES, isSafetensorsDtype, type SafetensorsDtype } from './dtype.js';

/** Where one tensor's bytes are, resolved to an absolute position in an open file. */
export interface TensorInfo {
  readonly name: string;
  readonly dtype: SafetensorsDtype;
  /** Hugging Face order: [out, in] for Linear weights. */
  readonly shape: readonly number[];
  /** Absolute path of the file holding the tensor. */
  readonly file: string;
  /** Absolute byte offset of the tensor's first byte in `file`. */
  readonly offset: number;
  readonly byteLength: number;
}

/** A header larger than this is refused before it is read (real headers are well under 10 MB). */
export const MAX_HEADER_BYTES = 100 * 1024 * 1024;

/** The largest single readSync call; Node caps one read at 2 GiB - 1. */
const MAX_READ_CHUNK = 1 << 30;

export interface SafetensorsFile {
  readonly path: string;
  readonly fd: number;
  readonly size: number;
  /** Absolute offset of the data section (8 + header length). */
  readonly dataStart: number;
  readonly metadata: Readonly<Record<string, string>>;
  /** Tensors in header order. */
  readonly tensors: ReadonlyMap<string, TensorInfo>;
}

function invalid(path: string, what: string): never {
  throw new ServerError('checkpoint_invalid', `${path}: ${what}`);
}

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const isCount = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;

/**
 * Reads exactly `dst.byteLength` bytes at `position`; throws if the file ends first.
 * Loops because one readSync may return fewer bytes than asked (and is capped at 2 GiB).
 */
export function readExact(fd: number, path: string, dst: Uint8Array, position: number, what: string): void {
  let done = 0;
  while (done < dst.byteLength) {
    const want = Math.min(dst.byteLength - done, MAX_READ_CHUNK);
    const got = readSync(fd, dst, done, want, position + done);
    if (got === 0) invalid(path, `file ended after ${position + done} bytes while reading ${what} (${dst.byteLength} bytes at offset ${position}); was it truncated after opening?`);
    done += got;
  }
}

/**
 * Opens one safetensors file and validates its header; the returned fd stays open until
 * `closeSafetensorsFile`. Reads 8 + N bytes, nothing else.
 */
export function openSafetensorsFile(path: string): SafetensorsFile {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (err) {
    throw new ServerError('checkpoint_invalid', `${path}: cannot open safetensors file (${(err as Error).message})`, { cause: err });
  }
  try {
    return parseOpened(path, fd);
  } catch (err) {
    closeSync(fd);
    throw err;
  }
}

export function closeSafetensorsFile(file: SafetensorsFile): void {
  closeSync(file.fd);
}

function parseOpened(path: string, fd: number): SafetensorsFile {
  const size = fstatSync(fd).size;
  if (size < 8) invalid(path, `file is ${size} bytes, shorter than the 8-byte safetensors header length`);

  const prefix = new Uint8Array(8);
  readExact(fd, path, prefix, 0, 'the header length');
  const n64 = new DataView(prefix.buffer).getBigUint64(0, true); // u64 little-endian
  if (n64 === 0n) invalid(path, 'header length is 0');
  if (n64 > BigInt(MAX_HEADER_BYTES)) invalid(path, `header length ${n64} exceeds the ${MAX_HEADER_BYTES}-byte limit`);
  const headerLength = Number(n64);
  if (8 + headerLength > size) invalid(path, `header length ${headerLength} runs past the end of the file (${size} bytes)`);

  const headerBytes = new Uint8Array(headerLength);
  readExact(fd, path, headerBytes, 8, 'the header');
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(headerBytes));
  } catch (err) {
    throw new ServerError('checkpoint_invalid', `${path}: header is not valid UTF-8 JSON (${(err as Error).message})`, { cause: err });
  }
  if (!isRecord(header)) invalid(path, `header must be a JSON object, got ${Array.isArray(header) ? 'an array' : JSON.stringify(header)}`);

  const dataStart = 8 + headerLength;
  const dataLength = size - dataStart;
  let metadata: Record<string, string> = {};
  const tensors = new Map<string, TensorInfo>();
  // [begin, end, name] per tensor with bytes, to check overlaps once all are known
  const ranges: [number, number, string][] = [];

  for (const [name, entry] of Object.entries(header)) {
    if (name === '__metadata__') {
      if (!isRecord(entry) || Object.values(entry).some((v) => typeof v !== 'string')) invalid(path, '"__metadata__" must be an object of string values');
      metadata = entry as Record<string, string>;
      continue;
    }
    const where = `tensor "${name}"`;
    if (!isRecord(entry)) invalid(path, `${where}: entry must be an object with dtype, shape and data_offsets`);
    const { dtype, shape, data_offsets: offsets } = entry;
    if (typeof dtype !== 'string') invalid(path, `${where}: "dtype" must be a string, got ${JSON.stringify(dtype)}`);
    if (!Array.isArray(shape) || !shape.every(isCount)) invalid(path, `${where}: "shape" must be a list of non-negative integers, got ${JSON.stringify(shape)}`);
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isCount)) {
      invalid(path, `${where}: "data_offsets" must be [begin, end] of non-negative integers, got ${JSON.stringify(offsets)}`);
    }
    if (!isSafetensorsDtype(dtype)) invalid(path, `${where}: unknown dtype "${dtype}" (known: ${SAFETENSORS_DTYPES.join(', ')})`);
    const [begin, end] = offsets as [number, number];
    if (end < begin) invalid(path, `${where}: data_offsets [${begin}, ${end}] end before they begin`);

    let elements = 1;
    for (const d of shape as number[]) elements *= d;
    const expected = elements * DTYPE_BYTES[dtype];
    if (!Number.isSafeInteger(expected) || expected !== end - begin) {
      invalid(path, `${where}: shape [${(shape as number[]).join(', ')}] × ${dtype} is ${expected} bytes but data_offsets [${begin}, ${end}] hold ${end - begin}`);
    }
    if (end > dataLength) {
      invalid(path, `${where}: data_offsets [${begin}, ${end}] run past the end of the data section (${dataLength} bytes; file truncated?)`);
    }
    tensors.set(name, Object.freeze({ name, dtype, shape: Object.freeze([...(shape as number[])]), file: path, offset: dataStart + begin, byteLength: end - begin }));
    if (end > begin) ranges.push([begin, end, name]);
  }

  ranges.sort((a, b) => a[0] - b[0]);
  for (let i = 1; i < ranges.length; i++) {
    const prev = ranges[i - 1]!;
    const cur = ranges[i]!;
    if (cur[0] < prev[1]) invalid(path, `tensors "${prev[2]}" [${prev[0]}, ${prev[1]}] and "${cur[2]}" [${cur[0]}, ${cur[1]}] overlap`);
  }
  return { path, fd, size, dataStart, metadata: Object.freeze(metadata), tensors };
}
