/**
 * Malformed checkpoints: one small bad file per validation rule, each failing with
 * ServerError('checkpoint_invalid') naming the file (and the tensor where there is one).
 * None may crash, allocate what the header claims, or read past the end of the file.
 */
import { randomUUID } from 'node:crypto';
import { mkdirSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ServerError } from '../../services/common/src/errors.js';
import { Checkpoint } from '../../services/model/src/checkpoint/checkpoint.js';
import { writeSafetensors } from '../../services/model/src/checkpoint/writer.js';

let dir: string;
beforeEach(() => {
  dir = join(tmpdir(), `moeserve-bad-${randomUUID()}`);
  mkdirSync(dir, { recursive: true });
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

/** A safetensors file from a header (object or raw text) and data bytes; `headerLength` lies when given. */
function rawFile(name: string, header: unknown, data: Uint8Array = new Uint8Array(0), headerLength?: bigint): string {
  const text = typeof header === 'string' ? Buffer.from(header, 'utf8') : Buffer.from(JSON.stringify(header), 'utf8');
  return rawBytes(name, text, data, headerLength);
}

function rawBytes(name: string, headerBytes: Uint8Array, data: Uint8Array, headerLength?: bigint): string {
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(headerLength ?? BigInt(headerBytes.length));
  const path = join(dir, name);
  writeFileSync(path, Buffer.concat([prefix, headerBytes, data]));
  return path;
}

const f32 = (n: number) => new Uint8Array(4 * n);
const entry = (dtype: unknown, shape: unknown, offsets: unknown) => ({ dtype, shape, data_offsets: offsets });

/** Asserts Checkpoint.open(dir) fails as checkpoint_invalid with every pattern in its message. */
function expectInvalid(...patterns: (string | RegExp)[]): void {
  let caught: unknown;
  try {
    Checkpoint.open(dir).close();
  } catch (e) {
    caught = e;
  }
  expect(caught).toBeInstanceOf(ServerError);
  expect((caught as ServerError).code).toBe('checkpoint_invalid');
  for (const p of patterns) expect((caught as ServerError).message).toMatch(p);
}

const SINGLE = () => join(dir, 'model.safetensors');

describe('malformed safetensors files', () => {
  it('BAD CALL - file shorter than 8 bytes', () => {
    writeFileSync(SINGLE(), Buffer.from([1, 2, 3]));
    expectInvalid(SINGLE(), /3 bytes, shorter than the 8-byte/);
  });

  it('BAD CALL - header length 0', () => {
    rawBytes('model.safetensors', new Uint8Array(0), new Uint8Array(16), 0n);
    expectInvalid(SINGLE(), /header length is 0/);
  });

  it('BAD CALL - header length over 100 MB (refused before any allocation)', () => {
    rawFile('model.safetensors', {}, new Uint8Array(0), 2n ** 63n);
    expectInvalid(SINGLE(), /header length 9223372036854775808 exceeds the 104857600-byte limit/);
  });

  it('BAD CALL - header length past end of file', () => {
    rawFile('model.safetensors', { a: entry('F32', [1], [0, 4]) }, f32(1), 4096n);
    expectInvalid(SINGLE(), /header length 4096 runs past the end of the file \(\d+ bytes\)/);
  });

  it('BAD CALL - header is not valid UTF-8', () => {
    rawBytes('model.safetensors', Buffer.from([0x7b, 0xff, 0xfe, 0x7d]), new Uint8Array(0));
    expectInvalid(SINGLE(), /not valid UTF-8 JSON/);
  });

  it('BAD CALL - header is not JSON', () => {
    rawFile('model.safetensors', '{"a": {"dtype": "F32",');
    expectInvalid(SINGLE(), /not valid UTF-8 JSON/);
  });

  it.each([
    ['an array', '[1, 2]'],
    ['a number', '42'],
    ['null', 'null'],
  ])('BAD CALL - header is %s, not an object', (_label, text) => {
    rawFile('model.safetensors', text);
    expectInvalid(SINGLE(), /header must be a JSON object/);
  });

  it('BAD CALL - __metadata__ is not a map of strings', () => {
    rawFile('model.safetensors', { __metadata__: { format: 1 } });
    expectInvalid(SINGLE(), /"__metadata__" must be an object of string values/);
  });

  it.each([
    ['entry is not an object', [1, 2], /entry must be an object/],
    ['dtype missing', { shape: [1], data_offsets: [0, 4] }, /"dtype" must be a string, got undefined/],
    ['dtype not a string', entry(7, [1], [0, 4]), /"dtype" must be a string, got 7/],
    ['shape missing', { dtype: 'F32', data_offsets: [0, 4] }, /"shape" must be a list of non-negative integers/],
    ['negative dim', entry('F32', [-1], [0, 4]), /"shape" must be a list of non-negative integers, got \[-1\]/],
    ['non-integer dim', entry('F32', [1.5], [0, 4]), /"shape" must be a list of non-negative integers, got \[1.5\]/],
    ['dim as a string', entry('F32', ['1'], [0, 4]), /"shape" must be a list/],
    ['data_offsets missing', { dtype: 'F32', shape: [1] }, /"data_offsets" must be \[begin, end\]/],
    ['data_offsets of length 3', entry('F32', [1], [0, 4, 8]), /"data_offsets" must be \[begin, end\]/],
    ['negative data_offsets', entry('F32', [1], [-4, 0]), /"data_offsets" must be \[begin, end\] of non-negative integers/],
    ['data_offsets ending before they begin', entry('F32', [0], [4, 0]), /data_offsets \[4, 0\] end before they begin/],
  ])('BAD CALL - tensor entry with wrong JSON shape: %s', (_label, bad, pattern) => {
    rawFile('model.safetensors', { 'model.norm.weight': bad }, f32(2));
    expectInvalid(SINGLE(), /tensor "model\.norm\.weight"/, pattern);
  });

  it('BAD CALL - unknown dtype lists the known ones', () => {
    rawFile('model.safetensors', { 'lm_head.weight': entry('F128', [1], [0, 16]) }, new Uint8Array(16));
    expectInvalid(SINGLE(), /tensor "lm_head\.weight": unknown dtype "F128" \(known: F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL, F8_E4M3, F8_E5M2\)/);
  });

  it('BAD CALL - shape × dtype size differs from the data_offsets range', () => {
    rawFile('model.safetensors', { 'model.embed_tokens.weight': entry('BF16', [4, 2], [0, 32]) }, f32(8));
    expectInvalid(SINGLE(), /tensor "model\.embed_tokens\.weight": shape \[4, 2\] × BF16 is 16 bytes but data_offsets \[0, 32\] hold 32/);
  });

  it('BAD CALL - shape whose byte size overflows a safe integer', () => {
    rawFile('model.safetensors', { big: entry('F64', [2 ** 40, 2 ** 20], [0, 8]) }, f32(2));
    expectInvalid(SINGLE(), /tensor "big": shape \[1099511627776, 1048576\] × F64/);
  });

  it('BAD CALL - offsets past the data section (truncated file)', () => {
    rawFile('model.safetensors', { a: entry('F32', [4], [0, 16]), b: entry('F32', [4], [16, 32]) }, f32(6));
    expectInvalid(SINGLE(), /tensor "b": data_offsets \[16, 32\] run past the end of the data section \(24 bytes; file truncated\?\)/);
  });

  it('BAD CALL - overlapping tensors', () => {
    rawFile('model.safetensors', { a: entry('F32', [4], [0, 16]), b: entry('F32', [4], [8, 24]) }, f32(6));
    expectInvalid(SINGLE(), /tensors "a" \[0, 16\] and "b" \[8, 24\] overlap/);
  });

  it('EXPECTED - zero-size tensors and gaps between tensors are accepted', () => {
    rawFile('model.safetensors', { empty: entry('F32', [0, 3], [4, 4]), a: entry('F32', [1], [0, 4]), b: entry('F32', [1], [8, 12]) }, f32(3));
    const ckpt = Checkpoint.open(dir);
    expect(ckpt.readF32('empty').length).toBe(0);
    expect(ckpt.info('b').offset).toBe(ckpt.info('a').offset + 8);
    ckpt.close();
  });

  it('BAD CALL - a file truncated after opening fails on read instead of returning short data', () => {
    writeSafetensors(SINGLE(), [
      { name: 'a', dtype: 'F32', shape: [4], data: f32(4) },
      { name: 'b', dtype: 'F32', shape: [4], data: f32(4) },
    ]);
    const ckpt = Checkpoint.open(dir);
    try {
      truncateSync(SINGLE(), ckpt.info('b').offset + 6);
      expect(() => ckpt.readF32('b')).toThrow(ServerError);
      expect(() => ckpt.readF32('b')).toThrow(/model\.safetensors: file ended after \d+ bytes while reading tensor "b"/);
      expect(ckpt.readF32('a').length).toBe(4);
    } finally {
      ckpt.close();
    }
  });

  it('BAD CALL - a folder with no weights', () => {
    expectInvalid(dir, /no model\.safetensors or model\.safetensors\.index\.json/);
  });
});

describe('malformed sharded checkpoints', () => {
  const INDEX = () => join(dir, 'model.safetensors.index.json');
  const writeIndex = (index: unknown) => writeFileSync(INDEX(), typeof index === 'string' ? index : JSON.stringify(index));
  const shard = (file: string, names: string[]) =>
    writeSafetensors(
      join(dir, file),
      names.map((name) => ({ name, dtype: 'F32' as const, shape: [2], data: f32(2) })),
    );

  it('BAD CALL - index is not JSON', () => {
    writeIndex('{"weight_map": ');
    expectInvalid(INDEX(), /index is not valid JSON/);
  });

  it.each([
    ['an array', [1]],
    ['an object without weight_map', { metadata: { total_size: 0 } }],
    ['weight_map as a list', { weight_map: ['a'] }],
  ])('BAD CALL - index is %s', (_label, index) => {
    writeIndex(index);
    expectInvalid(INDEX(), /index must be an object with a "weight_map" object/);
  });

  it('BAD CALL - weight_map value is not a file name', () => {
    writeIndex({ weight_map: { 'model.norm.weight': 3 } });
    expectInvalid(INDEX(), /weight_map\["model\.norm\.weight"\] must be a shard file name, got 3/);
  });

  it('BAD CALL - weight_map reaches outside the folder', () => {
    writeIndex({ weight_map: { 'model.norm.weight': '../model-00001-of-00001.safetensors' } });
    expectInvalid(INDEX(), /not a plain file name in the checkpoint folder/);
  });

  it('BAD CALL - empty weight_map', () => {
    writeIndex({ weight_map: {} });
    expectInvalid(INDEX(), /weight_map is empty/);
  });

  it('BAD CALL - weight_map names a missing shard file', () => {
    shard('model-00001-of-00002.safetensors', ['a']);
    writeIndex({ metadata: { total_size: 16 }, weight_map: { a: 'model-00001-of-00002.safetensors', b: 'model-00002-of-00002.safetensors' } });
    expectInvalid(INDEX(), /shard "model-00002-of-00002\.safetensors" \(holding tensor "b"\) does not exist/);
  });

  it('BAD CALL - a tensor listed in the index is absent from its shard', () => {
    shard('model-00001-of-00002.safetensors', ['a']);
    shard('model-00002-of-00002.safetensors', ['b']);
    writeIndex({ weight_map: { a: 'model-00001-of-00002.safetensors', b: 'model-00001-of-00002.safetensors' } });
    expectInvalid(/model-00001-of-00002\.safetensors: tensor "b" is listed in model\.safetensors\.index\.json but absent from this shard/);
  });

  it('BAD CALL - a malformed shard is named, not the index', () => {
    shard('model-00001-of-00002.safetensors', ['a']);
    rawFile('model-00002-of-00002.safetensors', { b: entry('F32', [2], [0, 8]) }, f32(1));
    writeIndex({ weight_map: { a: 'model-00001-of-00002.safetensors', b: 'model-00002-of-00002.safetensors' } });
    expectInvalid(join(dir, 'model-00002-of-00002.safetensors'), /tensor "b": data_offsets \[0, 8\] run past/);
  });

  it('EXPECTED - the index is the authority: a shard tensor it does not list is not exposed', () => {
    shard('model-00001-of-00001.safetensors', ['a', 'extra']);
    writeIndex({ weight_map: { a: 'model-00001-of-00001.safetensors' } });
    const ckpt = Checkpoint.open(dir);
    expect(ckpt.names()).toEqual(['a']);
    ckpt.close();
  });
});
