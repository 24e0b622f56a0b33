/**
 * Where graph builders get weights: anything that can read a Hugging Face tensor by name as
 * float32 (the lazy checkpoint reader, or an in-memory map in tests).
 */
export interface WeightSource {
  has(name: string): boolean;
  /** The tensor as float32 (F16/BF16 converted at load), row-major in its HF shape. */
  readF32(name: string): Float32Array;
}

/** An in-memory WeightSource (tests, synthetic weights). */
export class MapWeights implements WeightSource {
  constructor(private readonly map: ReadonlyMap<string, Float32Array>) {}
  has(name: string): boolean {
    return this.map.has(name);
  }
  readF32(name: string): Float32Array {
    const t = this.map.get(name);
    if (!t) throw new Error(`weight ${name} not found`);
    return t;
  }
}
