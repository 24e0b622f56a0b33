/**
 * Checkpoint reader, writer and dtype conversions against the golden fixtures (real HF on-disk
 * files): names, shapes, dtypes and offsets match the headers read independently here; values
 * match bytes read independently; reads are lazy (bytesRead); the writer reproduces the fixture
 * files byte for byte; BF16/F16 encode -> decode is exact against an independent rounding oracle.
 */
import { randomUUID } from 'node:crypto';
import { mkdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { ServerError } from '../../services/common/src/errors.js';
import { Checkpoint } from '../../services/model/src/checkpoint/checkpoint.js';
import { bf16ToF32, f16ToF32, f32BitsToBf16Bits, f32BitsToF16Bits, f32ToBf16, f32ToF16 } from '../../services/common/src/half.js';
import { encodeIndex, planShards, writeSafetensors, writeShardedSafetensors, type TensorSpec } from '../../services/model/src/checkpoint/writer.js';
import { parseModelConfig } from '../../services/model/src/config.js';
import { expectedTensors } from '../../services/model/src/weights.js';

const GOLDEN = join(import.meta.dirname, '../fixtures/golden');
const FIXTURES = ['mixtral-tiny', 'qwen2-moe-tiny', 'deepseek-v2-tiny'] as const;

interface RawEntry {
  dtype: string;
  shape: number[];
  data_offsets: [number, number];
}

/** Parses a safetensors header with Buffer reads, independently of the code under test. */
function readHeader(path: string): { dataStart: number; entries: Record<string, RawEntry> } {
  const buf = readFileSync(path);
  const n = Number(buf.readBigUInt64LE(0));
  const json = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<string, RawEntry>;
  delete json.__metadata__;
  return { dataStart: 8 + n, entries: json };
}

function shardFiles(fixture: string): string[] {
  return fixture === 'deepseek-v2-tiny' ? ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors'] : ['model.safetensors'];
}

let tmp: string | null = null;
function tempDir(): string {
  tmp = join(tmpdir(), `moeserve-ckpt-${randomUUID()}`);
  mkdirSync(tmp, { recursive: true });
  return tmp;
}
afterEach(() => {
  if (tmp) rmSync(tmp, { recursive: true, force: true });
  tmp = null;
});

describe('Checkpoint on the golden fixtures', () => {
  it.each(FIXTURES)('%s: names, dtypes, shapes and offsets match its headers', (fixture) => {
    const dir = join(GOLDEN, fixture);
    const ckpt = Checkpoint.open(dir);
    try {
      const expected = new Map<string, { file: string; offset: number; entry: RawEntry }>();
      for (const f of shardFiles(fixture)) {
        const { dataStart, entries } = readHeader(join(dir, f));
        for (const [name, entry] of Object.entries(entries)) expected.set(name, { file: join(dir, f), offset: dataStart + entry.data_offsets[0], entry });
      }
      expect(ckpt.names().sort()).toEqual([...expected.keys()].sort());
      for (const [name, e] of expected) {
        const info = ckpt.info(name);
        expect(info).toEqual({
          name,
          dtype: e.entry.dtype,
          shape: e.entry.shape,
          file: e.file,
          offset: e.offset,
          byteLength: e.entry.data_offsets[1] - e.entry.data_offsets[0],
        });
        expect(ckpt.has(name)).toBe(true);
      }
      expect(ckpt.has('model.layers.99.mlp.gate.weight')).toBe(false);
      expect(ckpt.bytesRead).toBe(0); // opening reads headers only
    } finally {
      ckpt.close();
    }
  });

  it('readF32 and readRaw of a known tensor equal the bytes read independently', () => {
    const path = join(GOLDEN, 'mixtral-tiny/model.safetensors');
    const name = 'model.layers.1.block_sparse_moe.gate.weight';
    const { dataStart, entries } = readHeader(path);
    const [begin, end] = entries[name]!.data_offsets;
    const bytes = readFileSync(path).subarray(dataStart + begin, dataStart + end);
    const ckpt = Checkpoint.open(join(GOLDEN, 'mixtral-tiny'));
    try {
      const values = ckpt.readF32(name); // [8, 64]
      expect(values.length).toBe(8 * 64);
      for (let i = 0; i < values.length; i++) expect(values[i]).toBe(bytes.readFloatLE(i * 4));
      expect(Buffer.from(ckpt.readRaw(name)).equals(bytes)).toBe(true);
      const reused = new Float32Array(8 * 64);
      expect(ckpt.readF32Into(name, reused)).toBe(reused);
      expect(reused).toEqual(values);
    } finally {
      ckpt.close();
    }
  });

  it('the sharded fixture resolves each tensor to its shard through the index', () => {
    const dir = join(GOLDEN, 'deepseek-v2-tiny');
    const index = JSON.parse(readFileSync(join(dir, 'model.safetensors.index.json'), 'utf8')) as { weight_map: Record<string, string> };
    const ckpt = Checkpoint.open(dir);
    try {
      expect(ckpt.dir).toBe(dir);
      expect(ckpt.names()).toEqual(Object.keys(index.weight_map));
      for (const [name, shard] of Object.entries(index.weight_map)) expect(ckpt.info(name).file).toBe(join(dir, shard));
      // layer 1 is split across the shards
      expect(ckpt.info('model.layers.1.mlp.experts.13.down_proj.weight').file).toMatch(/00001-of-00002/);
      expect(ckpt.info('model.layers.1.mlp.experts.15.down_proj.weight').file).toMatch(/00002-of-00002/);
      const head = ckpt.readF32('lm_head.weight'); // [512, 64] from shard 2
      const embed = ckpt.readF32('model.embed_tokens.weight'); // [512, 64] from shard 1
      expect(head.length).toBe(512 * 64);
      expect(embed.length).toBe(512 * 64);
      expect(ckpt.bytesRead).toBe(2 * 512 * 64 * 4);
    } finally {
      ckpt.close();
    }
  });

  it('bytesRead after reading one expert is exactly that expert (laziness)', () => {
    const ckpt = Checkpoint.open(join(GOLDEN, 'deepseek-v2-tiny'));
    try {
      for (const p of ['gate_proj', 'up_proj', 'down_proj']) ckpt.readF32(`model.layers.2.mlp.experts.5.${p}.weight`);
      // moe_intermediate 32, hidden 64, F32: three [32, 64] / [64, 32] matrices
      expect(ckpt.bytesRead).toBe(3 * 32 * 64 * 4);
    } finally {
      ckpt.close();
    }
  });

  it('BAD CALL - info of an absent tensor names the tensor and the folder', () => {
    const ckpt = Checkpoint.open(join(GOLDEN, 'mixtral-tiny'));
    try {
      expect(() => ckpt.info('model.layers.0.mlp.experts.0.gate_proj.weight')).toThrow(ServerError);
      expect(() => ckpt.readF32('nope.weight')).toThrow(/"nope\.weight" is not in the checkpoint/);
      expect(() => ckpt.readF32('nope.weight')).toThrow(join(GOLDEN, 'mixtral-tiny'));
    } finally {
      ckpt.close();
    }
  });

  it('BAD CALL - reading after close is an error, not a read on a stale fd', () => {
    const ckpt = Checkpoint.open(join(GOLDEN, 'mixtral-tiny'));
    ckpt.close();
    ckpt.close(); // idempotent
    expect(() => ckpt.readF32('model.norm.weight')).toThrow(/closed/);
  });
});

describe('safetensors writer', () => {
  it('rewrites the single-file fixtures byte for byte', () => {
    const out = tempDir();
    for (const fixture of ['mixtral-tiny', 'qwen2-moe-tiny']) {
      const ckpt = Checkpoint.open(join(GOLDEN, fixture));
      const tensors = ckpt.names().map((n) => ({ ...ckpt.info(n), data: ckpt.readRaw(n) }));
      ckpt.close();
      writeSafetensors(join(out, `${fixture}.safetensors`), tensors);
      expect(readFileSync(join(out, `${fixture}.safetensors`)).equals(readFileSync(join(GOLDEN, fixture, 'model.safetensors')))).toBe(true);
    }
  });

  it('rewrites the sharded fixture (shards and index) byte for byte, streaming tensor by tensor', () => {
    const dir = join(GOLDEN, 'deepseek-v2-tiny');
    const cfg = parseModelConfig(JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')));
    const ckpt = Checkpoint.open(dir);
    try {
      // the manifest is in HF parameter order; 722304 bytes is the fixture's larger shard
      const specs: TensorSpec[] = expectedTensors(cfg).map((t) => ({ name: t.name, dtype: 'F32', shape: t.shape }));
      const shards = planShards(specs, 722304);
      expect(encodeIndex(shards)).toBe(readFileSync(join(dir, 'model.safetensors.index.json'), 'utf8'));
      const out = tempDir();
      let last = [0, 0];
      const result = writeShardedSafetensors(out, specs, (spec) => ckpt.readRaw(spec.name), { maxShardBytes: 722304, onProgress: (d, t) => (last = [d, t]) });
      expect(result.files).toEqual(['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors', 'model.safetensors.index.json']);
      expect(result.totalSize).toBe(1439872);
      expect(last).toEqual([1439872, 1439872]);
      for (const f of result.files) expect(readFileSync(join(out, f)).equals(readFileSync(join(dir, f)))).toBe(true);
    } finally {
      ckpt.close();
    }
  });

  it('pads the header with spaces to a multiple of 8 and writes a single shard as model.safetensors', () => {
    const out = tempDir();
    const data = new Uint8Array(new Float32Array([1, 2, 3]).buffer);
    const r = writeShardedSafetensors(out, [{ name: 'a', dtype: 'F32', shape: [3] }], () => data);
    expect(r.files).toEqual(['model.safetensors']);
    const buf = readFileSync(join(out, 'model.safetensors'));
    const n = Number(buf.readBigUInt64LE(0));
    const json = '{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}}';
    expect(n % 8).toBe(0);
    expect(buf.subarray(8, 8 + n).toString('utf8')).toBe(json.padEnd(n, ' '));
    expect(buf.length).toBe(8 + n + 12);
  });

  it('BAD CALL - a producer giving the wrong byte count fails and leaves no file', () => {
    const out = tempDir();
    expect(() => writeShardedSafetensors(out, [{ name: 'a', dtype: 'F32', shape: [3] }], () => new Uint8Array(8))).toThrow(/8 bytes for tensor "a", expected 12/);
    expect(() => Checkpoint.open(out)).toThrow(/no model\.safetensors/);
  });
});

// ---------------------------------------------------------------- dtype

const f32Bits = (x: number) => new Uint32Array(new Float32Array([x]).buffer)[0]!;

/** Independent oracle: round a double to `bits` significant bits, nearest-even, with a subnormal floor and an overflow threshold. */
function roundToFormat(x: number, bits: number, minExp: number, overflowAt: number): number {
  if (!Number.isFinite(x) || x === 0) return x;
  const ax = Math.abs(x);
  if (ax >= overflowAt) return Math.sign(x) * Infinity;
  const e = Math.max(Math.floor(Math.log2(ax)), minExp);
  const ulp = 2 ** (e - (bits - 1));
  const q = ax / ulp;
  const fl = Math.floor(q);
  const r = q - fl > 0.5 || (q - fl === 0.5 && fl % 2 === 1) ? fl + 1 : fl;
  const v = r * ulp;
  return v === 0 ? (x < 0 ? -0 : 0) : Math.sign(x) * v;
}
// bf16: 8 significant bits, min normal exponent -126, overflow at (2 - 2^-8) · 2^127
const bf16Round = (x: number) => roundToFormat(Math.fround(x), 8, -126, (2 - 2 ** -8) * 2 ** 127);
// f16: 11 significant bits, min normal exponent -14, overflow at 65520
const f16Round = (x: number) => roundToFormat(Math.fround(x), 11, -14, 65520);

/** Deterministic values spanning many magnitudes (LCG, not Math.random). */
function spread(n: number): Float32Array {
  const out = new Float32Array(n);
  let s = 12345;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    const mant = s / 2 ** 32;
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    const exp = (s % 60) - 40; // 2^-40 .. 2^19
    const sign = s & 1 ? -1 : 1;
    // every fourth value is an exact tie: halfway between two bf16 values, two f16 values,
    // or two f16 subnormals, where round-to-nearest-even differs from rounding half up
    const k = s >>> 20;
    const tie = i % 16 === 3 ? (1 + (k % 128) / 128 + 1 / 256) * 2 ** exp : i % 16 === 7 ? (1 + (k % 1024) / 1024 + 1 / 2048) * 2 ** (exp % 15) : i % 16 === 11 ? ((k % 1024) + 0.5) * 2 ** -24 : i % 16 === 15 ? (1 + (k % 128) / 128 + 1 / 256) : 0;
    out[i] = sign * (tie || (1 + mant) * 2 ** exp);
  }
  return out;
}

describe('dtype conversions', () => {
  it.each([
    ['+0', 0, 0x0000],
    ['-0', -0, 0x8000],
    ['1', 1, 0x3f80],
    ['-2.5', -2.5, 0xc020],
    ['+inf', Infinity, 0x7f80],
    ['-inf', -Infinity, 0xff80],
    ['1 + 2^-8 (tie, rounds down to even)', 1 + 2 ** -8, 0x3f80],
    ['1 + 3·2^-8 (tie, rounds up to even)', 1 + 3 * 2 ** -8, 0x3f82],
    ['largest f32 (rounds to inf)', 3.4028234663852886e38, 0x7f80],
    ['smallest f32 subnormal (kept)', 2 ** -149, 0x0000],
    ['2^-133 (bf16 subnormal)', 2 ** -133, 0x0001],
  ])('bf16 encode %s', (_label, x, bits) => {
    expect(f32BitsToBf16Bits(f32Bits(x))).toBe(bits);
  });

  it.each([
    ['+0', 0, 0x0000],
    ['-0', -0, 0x8000],
    ['1', 1, 0x3c00],
    ['-2', -2, 0xc000],
    ['65504 (largest f16)', 65504, 0x7bff],
    ['65519 (rounds to 65504)', 65519, 0x7bff],
    ['65520 (rounds to inf)', 65520, 0x7c00],
    ['+inf', Infinity, 0x7c00],
    ['-inf', -Infinity, 0xfc00],
    ['2^-14 (smallest normal)', 2 ** -14, 0x0400],
    ['2^-24 (smallest subnormal)', 2 ** -24, 0x0001],
    ['2^-25 (tie, rounds to 0)', 2 ** -25, 0x0000],
    ['3·2^-25 (tie, rounds to 2·2^-24)', 3 * 2 ** -25, 0x0002],
    ['1.5·2^-24 + ε', 1.5 * 2 ** -24 + 2 ** -40, 0x0002],
    ['2^-14 - 2^-25 (subnormal rounds up to the smallest normal)', 2 ** -14 - 2 ** -25, 0x0400],
  ])('f16 encode %s', (_label, x, bits) => {
    expect(f32BitsToF16Bits(f32Bits(x))).toBe(bits);
  });

  it('NaN stays NaN both ways', () => {
    const nan = new Float32Array([NaN, -NaN]);
    expect(Number.isNaN(bf16ToF32(f32ToBf16(nan))[0])).toBe(true);
    expect(Number.isNaN(f16ToF32(f32ToF16(nan))[0])).toBe(true);
    // a NaN whose payload sits in the low bits must not round to inf
    const lowNan = new Float32Array(new Uint32Array([0x7f800001]).buffer);
    expect(f32ToBf16(lowNan)[0]! & 0x7f).not.toBe(0);
    expect(f32ToF16(lowNan)[0]! & 0x3ff).not.toBe(0);
  });

  it('every bf16 and f16 bit pattern decodes and re-encodes to itself', () => {
    const all = new Uint16Array(65536).map((_, i) => i);
    const viaBf16 = f32ToBf16(bf16ToF32(all));
    const viaF16 = f32ToF16(f16ToF32(all));
    for (let h = 0; h < 65536; h++) {
      const bfNan = (h & 0x7f80) === 0x7f80 && (h & 0x7f) !== 0;
      const hNan = (h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0;
      if (!bfNan && viaBf16[h] !== h) throw new Error(`bf16 ${h.toString(16)} -> ${viaBf16[h]!.toString(16)}`);
      if (!hNan && viaF16[h] !== h) throw new Error(`f16 ${h.toString(16)} -> ${viaF16[h]!.toString(16)}`);
    }
    // f16 decode values are exact: subnormal, normal, inf
    expect(f16ToF32(new Uint16Array([0x0001, 0x03ff, 0x3555, 0x7c00, 0xfc00, 0x8000]))).toEqual(
      new Float32Array([2 ** -24, 1023 * 2 ** -24, 0.333251953125, Infinity, -Infinity, -0]),
    );
  });

  it('random values round to nearest even, as the independent oracle does', () => {
    const xs = spread(20000);
    const bf = bf16ToF32(f32ToBf16(xs));
    const hf = f16ToF32(f32ToF16(xs));
    for (let i = 0; i < xs.length; i++) {
      if (!Object.is(bf[i], bf16Round(xs[i]!))) throw new Error(`bf16(${xs[i]}) = ${bf[i]}, oracle ${bf16Round(xs[i]!)}`);
      if (!Object.is(hf[i], f16Round(xs[i]!))) throw new Error(`f16(${xs[i]}) = ${hf[i]}, oracle ${f16Round(xs[i]!)}`);
    }
  });

  it('a checkpoint written as BF16 / F16 / F64 loads as F32 values equal to the rounded originals', () => {
    const out = tempDir();
    const xs = spread(1000).map((x) => x / 1024); // [1000], mostly within f16 range
    const f64 = new Float64Array(xs.length).map((_, i) => xs[i]! + 1e-12);
    writeSafetensors(join(out, 'model.safetensors'), [
      { name: 'bf16', dtype: 'BF16', shape: [10, 100], data: new Uint8Array(f32ToBf16(xs).buffer) },
      { name: 'f16', dtype: 'F16', shape: [10, 100], data: new Uint8Array(f32ToF16(xs).buffer) },
      { name: 'f64', dtype: 'F64', shape: [1000], data: new Uint8Array(f64.buffer) },
      { name: 'ids', dtype: 'I32', shape: [2], data: new Uint8Array(new Int32Array([7, -1]).buffer) },
    ]);
    const ckpt = Checkpoint.open(out);
    try {
      const bf = ckpt.readF32('bf16');
      const hf = ckpt.readF32('f16');
      const d = ckpt.readF32('f64');
      for (let i = 0; i < xs.length; i++) {
        expect(bf[i]).toBe(bf16Round(xs[i]!));
        expect(hf[i]).toBe(f16Round(xs[i]!));
        expect(d[i]).toBe(Math.fround(f64[i]!));
      }
      expect(ckpt.bytesRead).toBe(1000 * 2 + 1000 * 2 + 1000 * 8);
      expect(new Int32Array(ckpt.readRaw('ids').buffer)).toEqual(new Int32Array([7, -1]));
      expect(() => ckpt.readF32('ids')).toThrow(/"ids" is I32; readF32 converts F64, F32, F16, BF16 only/);
    } finally {
      ckpt.close();
    }
  });
});
