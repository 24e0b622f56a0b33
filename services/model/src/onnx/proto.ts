/**
 * A minimal protobuf writer for the subset of onnx.proto that moeserve's graph builder emits
 * (ModelProto, GraphProto, NodeProto, AttributeProto, TensorProto, ValueInfoProto). Field numbers
 * are onnx.proto's (https://github.com/onnx/onnx/blob/main/onnx/onnx.proto).
 *
 * Messages are built as trees of byte chunks so that multi-megabyte weight buffers (TensorProto
 * raw_data) are referenced, not copied, until the single final concatenation.
 */

/** A length-known sequence of byte chunks: an encoded message or field. */
export class Chunks {
  readonly parts: Uint8Array[] = [];
  length = 0;
  push(b: Uint8Array): this {
    this.parts.push(b);
    this.length += b.byteLength;
    return this;
  }
  append(c: Chunks): this {
    for (const p of c.parts) this.parts.push(p);
    this.length += c.length;
    return this;
  }
  concat(): Uint8Array {
    const out = new Uint8Array(this.length);
    let off = 0;
    for (const p of this.parts) {
      out.set(p, off);
      off += p.byteLength;
    }
    return out;
  }
}

const utf8 = new TextEncoder();

function varint(value: number | bigint): Uint8Array {
  let v = BigInt.asUintN(64, BigInt(value));
  const bytes: number[] = [];
  do {
    let b = Number(v & 0x7fn);
    v >>= 7n;
    if (v !== 0n) b |= 0x80;
    bytes.push(b);
  } while (v !== 0n);
  return Uint8Array.from(bytes);
}

const WIRE_VARINT = 0;
const WIRE_FIXED32 = 5;
const WIRE_LEN = 2;

function tag(field: number, wire: number): Uint8Array {
  return varint((field << 3) | wire);
}

/** Builder for one protobuf message. */
export class Msg {
  readonly out = new Chunks();
  int(field: number, value: number | bigint): this {
    this.out.push(tag(field, WIRE_VARINT)).push(varint(value));
    return this;
  }
  float(field: number, value: number): this {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setFloat32(0, value, true);
    this.out.push(tag(field, WIRE_FIXED32)).push(b);
    return this;
  }
  bytes(field: number, value: Uint8Array): this {
    this.out.push(tag(field, WIRE_LEN)).push(varint(value.byteLength)).push(value);
    return this;
  }
  str(field: number, value: string): this {
    return this.bytes(field, utf8.encode(value));
  }
  msg(field: number, m: Msg): this {
    this.out.push(tag(field, WIRE_LEN)).push(varint(m.out.length)).append(m.out);
    return this;
  }
  /** Packed repeated varints (int64 lists). */
  packedInts(field: number, values: readonly (number | bigint)[]): this {
    const body = new Chunks();
    for (const v of values) body.push(varint(v));
    this.out.push(tag(field, WIRE_LEN)).push(varint(body.length)).append(body);
    return this;
  }
  /** Packed repeated floats. */
  packedFloats(field: number, values: readonly number[]): this {
    const b = new Uint8Array(values.length * 4);
    const dv = new DataView(b.buffer);
    values.forEach((v, i) => dv.setFloat32(i * 4, v, true));
    this.out.push(tag(field, WIRE_LEN)).push(varint(b.byteLength)).push(b);
    return this;
  }
}

/** onnx.TensorProto.DataType */
export const DT = {
  FLOAT: 1,
  UINT8: 2,
  INT8: 3,
  INT32: 6,
  INT64: 7,
  BOOL: 9,
  FLOAT16: 10,
  BFLOAT16: 16,
} as const;
export type DataType = (typeof DT)[keyof typeof DT];

/** onnx.AttributeProto.AttributeType */
export const AT = { FLOAT: 1, INT: 2, STRING: 3, TENSOR: 4, FLOATS: 6, INTS: 7 } as const;
