/**
 * GraphBuilder: builds ONNX models in TypeScript (no Python anywhere), one small graph per
 * model unit (embedding, attention, MLP, experts, LM head). Values are named strings; each helper
 * appends nodes and returns the name of its output. Weights become initializers carrying raw
 * little-endian bytes (the machine and ONNX are both little-endian).
 *
 * Opset 17 (ai.onnx) + com.microsoft 1. Shapes use symbolic dims (strings) for batch/sequence axes.
 */
import { AT, Chunks, DT, type DataType, Msg } from './proto.js';

export type Dim = number | string;
export type AttrValue = number | string | number[] | { floats: number[] } | { float: number };

export const OPSET = 17;

interface ValueInfo {
  name: string;
  dtype: DataType;
  dims: Dim[] | null;
}

function u8(view: ArrayBufferView): Uint8Array {
  return new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
}

/** A node kept as data until toModel(), so an output can be renamed instead of copied. */
interface NodeRec {
  readonly opType: string;
  readonly inputs: string[];
  readonly outputs: string[];
  readonly name: string;
  readonly attrs: Msg[];
  readonly domain: string;
}

export class GraphBuilder {
  private readonly nodes: NodeRec[] = [];
  /** value name -> the node that produces it */
  private readonly producer = new Map<string, NodeRec>();
  /** values renamed by output(): later uses of the old name follow */
  private readonly renamed = new Map<string, string>();
  private readonly inits: Msg[] = [];
  private readonly inputs: ValueInfo[] = [];
  private readonly outputs: ValueInfo[] = [];
  private readonly initNames = new Set<string>();
  private counter = 0;
  private usesMicrosoft = false;

  constructor(readonly name: string) {}

  /** A fresh value name with a readable prefix. */
  fresh(prefix: string): string {
    return `${prefix}_${this.counter++}`;
  }

  input(name: string, dtype: DataType, dims: Dim[]): string {
    this.inputs.push({ name, dtype, dims });
    return name;
  }

  /**
   * Marks `value` as a graph output named `name`. A value a node produced is renamed (every use
   * follows): an Identity node would copy the tensor on every run. Graph inputs, initializers and
   * values already exposed under another name go through an Identity.
   */
  output(value: string, name: string = value, dtype: DataType = DT.FLOAT, dims: Dim[] | null = null): string {
    value = this.renamed.get(value) ?? value;
    if (value !== name) {
      const node = this.producer.get(value);
      if (node && !this.outputs.some((o) => o.name === value)) {
        for (const n of this.nodes) {
          for (let i = 0; i < n.inputs.length; i++) if (n.inputs[i] === value) n.inputs[i] = name;
          for (let i = 0; i < n.outputs.length; i++) if (n.outputs[i] === value) n.outputs[i] = name;
        }
        this.producer.delete(value);
        this.producer.set(name, node);
        this.renamed.set(value, name);
      } else {
        this.node('Identity', [value], {}, [name]);
      }
    }
    this.outputs.push({ name, dtype, dims });
    return name;
  }

  /** A weight or constant tensor; `data` is referenced, not copied, until the model is serialized. */
  initializer(name: string, dtype: DataType, dims: number[], data: ArrayBufferView): string {
    if (this.initNames.has(name)) return name;
    this.initNames.add(name);
    const t = new Msg();
    t.packedInts(1, dims).int(2, dtype).str(8, name).bytes(9, u8(data));
    this.inits.push(t);
    return name;
  }

  constF32(values: number[] | Float32Array, dims: number[] = [values.length]): string {
    return this.initializer(this.fresh('c'), DT.FLOAT, dims, values instanceof Float32Array ? values : Float32Array.from(values));
  }

  constI64(values: number[], dims: number[] = [values.length]): string {
    return this.initializer(this.fresh('ci'), DT.INT64, dims, BigInt64Array.from(values.map((v) => BigInt(v))));
  }

  /** Appends one node; returns its output names. */
  node(opType: string, inputs: string[], attrs: Record<string, AttrValue> = {}, outputs: string[] | number = 1, domain = ''): string[] {
    const outs = typeof outputs === 'number' ? Array.from({ length: outputs }, () => this.fresh(opType.toLowerCase())) : outputs;
    if (domain === 'com.microsoft') this.usesMicrosoft = true;
    const rec: NodeRec = { opType, inputs: inputs.map((i) => this.renamed.get(i) ?? i), outputs: [...outs], name: this.fresh(`n_${opType}`), attrs: Object.entries(attrs).map(([k, v]) => attribute(k, v)), domain };
    this.nodes.push(rec);
    for (const o of outs) this.producer.set(o, rec);
    return [...outs];
  }

  op(opType: string, inputs: string[], attrs: Record<string, AttrValue> = {}): string {
    return this.node(opType, inputs, attrs, 1)[0]!;
  }

  // ---- helpers (each returns the output value name)

  add(a: string, b: string): string {
    return this.op('Add', [a, b]);
  }
  sub(a: string, b: string): string {
    return this.op('Sub', [a, b]);
  }
  mul(a: string, b: string): string {
    return this.op('Mul', [a, b]);
  }
  matmul(a: string, b: string): string {
    return this.op('MatMul', [a, b]);
  }
  /** x [M, K] · W^T where W is stored [N, K] (a Hugging Face Linear weight), + bias [N]. */
  linear(x: string, weight: string, bias?: string): string {
    return this.op('Gemm', bias ? [x, weight, bias] : [x, weight], { transB: 1 });
  }
  reshape(x: string, shape: number[] | string): string {
    return this.op('Reshape', [x, typeof shape === 'string' ? shape : this.constI64(shape)]);
  }
  transpose(x: string, perm: number[]): string {
    return this.op('Transpose', [x], { perm });
  }
  /** Slice along one axis, [start, end). */
  slice(x: string, axis: number, start: number, end: number): string {
    return this.op('Slice', [x, this.constI64([start]), this.constI64([end]), this.constI64([axis])]);
  }
  concat(xs: string[], axis: number): string {
    return this.op('Concat', xs, { axis });
  }
  split(x: string, axis: number, sizes: number[]): string[] {
    return this.node('Split', [x, this.constI64(sizes)], { axis }, sizes.length);
  }
  unsqueeze(x: string, axes: number[]): string {
    return this.op('Unsqueeze', [x, this.constI64(axes)]);
  }
  softmax(x: string, axis = -1): string {
    return this.op('Softmax', [x], { axis });
  }
  sigmoid(x: string): string {
    return this.op('Sigmoid', [x]);
  }
  silu(x: string): string {
    return this.mul(x, this.sigmoid(x));
  }
  scale(x: string, s: number): string {
    return this.mul(x, this.constF32([s], []));
  }
  shape(x: string, start?: number, end?: number): string {
    const attrs: Record<string, AttrValue> = {};
    if (start !== undefined) attrs.start = start;
    if (end !== undefined) attrs.end = end;
    return this.op('Shape', [x], attrs);
  }

  /**
   * RMSNorm over the last axis, as transformers computes it in fp32:
   * x * 1/sqrt(mean(x²) + eps) * weight. Written in the Pow/ReduceMean/Add/Sqrt/Div pattern that
   * ONNX Runtime fuses into SimplifiedLayerNormalization.
   */
  rmsNorm(x: string, weight: string, eps: number): string {
    const sq = this.op('Pow', [x, this.constF32([2], [])]);
    const mean = this.op('ReduceMean', [sq], { axes: [-1], keepdims: 1 });
    const denom = this.op('Sqrt', [this.add(mean, this.constF32([eps], []))]);
    return this.mul(this.op('Div', [x, denom]), weight);
  }

  /** Serializes a complete ModelProto. */
  toModel(): Uint8Array {
    const g = new Msg();
    for (const n of this.nodes) {
      const m = new Msg();
      for (const i of n.inputs) m.str(1, i);
      for (const o of n.outputs) m.str(2, o);
      m.str(3, n.name).str(4, n.opType);
      for (const a of n.attrs) m.msg(5, a);
      if (n.domain) m.str(7, n.domain);
      g.msg(1, m);
    }
    g.str(2, this.name);
    for (const t of this.inits) g.msg(5, t);
    for (const i of this.inputs) g.msg(11, valueInfo(i));
    for (const o of this.outputs) g.msg(12, valueInfo(o));
    const m = new Msg();
    m.int(1, 8); // ir_version 8 (ONNX 1.13+, opset 17)
    m.str(2, 'moeserve');
    m.msg(7, g);
    m.msg(8, new Msg().str(1, '').int(2, OPSET));
    if (this.usesMicrosoft) m.msg(8, new Msg().str(1, 'com.microsoft').int(2, 1));
    const out = new Chunks().append(m.out);
    return out.concat();
  }
}

function attribute(name: string, v: AttrValue): Msg {
  const a = new Msg().str(1, name);
  if (typeof v === 'number') {
    if (!Number.isInteger(v)) throw new Error(`attribute ${name}: use {float: x} for non-integers`);
    a.int(3, v).int(20, AT.INT);
  } else if (typeof v === 'string') {
    a.str(4, v).int(20, AT.STRING);
  } else if (Array.isArray(v)) {
    a.packedInts(8, v).int(20, AT.INTS);
  } else if ('floats' in v) {
    a.packedFloats(7, v.floats).int(20, AT.FLOATS);
  } else {
    a.float(2, v.float).int(20, AT.FLOAT);
  }
  return a;
}

function valueInfo(v: ValueInfo): Msg {
  const tensorType = new Msg().int(1, v.dtype);
  if (v.dims) {
    const shape = new Msg();
    for (const d of v.dims) shape.msg(1, typeof d === 'number' ? new Msg().int(1, d) : new Msg().str(2, d));
    tensorType.msg(2, shape);
  }
  return new Msg().str(1, v.name).msg(2, new Msg().msg(1, tensorType));
}
