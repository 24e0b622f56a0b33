/**
 * DecodePast (the decode group's past kept between steps) against its oracle, a full gather from
 * the KV pool of the same step, on a real KvCacheManager in both layouts: it hands attention the
 * same rows, copies only the rows a slot lacks, and copies a slot again in full when its sequence
 * changed (another sequence, an id freed and reused, a rollback) or the row stride grew.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parseModelConfig } from '../../services/model/src/config.js';
import { kvLayoutFor } from '../../services/kvcache/src/layout.js';
import { KvCacheManager } from '../../services/kvcache/src/manager.js';
import { BlockPool } from '../../services/kvcache/src/pool.js';
import { DecodePast, PAST_QUANTUM } from '../../services/gateway/src/engine/decode-past.js';
import type { KvStore } from '../../services/gateway/src/engine/dense-runner.js';

const BLOCK_SIZE = 16;

/** The KV manager, counting the rows each gather copies. */
class CountingStore implements KvStore {
  rowsCopied = 0;
  constructor(readonly kv: KvCacheManager) {}
  get rowElements(): number {
    return this.kv.rowElements;
  }
  private count(numSeqs: number, lengths: Int32Array, from?: Int32Array | null): void {
    for (let b = 0; b < numSeqs; b++) this.rowsCopied += lengths[b]! - (from ? from[b]! : 0);
  }
  gather(layer: number, seqIds: Int32Array, numSeqs: number, lengths: Int32Array, maxLen: number, out: Float32Array, from?: Int32Array | null): void {
    this.count(numSeqs, lengths, from);
    this.kv.gather(layer, seqIds, numSeqs, lengths, maxLen, out, from);
  }
  gatherHeads(layer: number, seqIds: Int32Array, numSeqs: number, lengths: Int32Array, maxLen: number, outK: Float32Array, outV: Float32Array, from?: Int32Array | null): void {
    this.count(numSeqs, lengths, from);
    this.kv.gatherHeads(layer, seqIds, numSeqs, lengths, maxLen, outK, outV, from);
  }
  writeRows(layer: number, seqId: number, startPos: number, src: Float32Array, srcRow: number, numRows: number): void {
    this.kv.writeRows(layer, seqId, startPos, src, srcRow, numRows);
  }
  epoch(seqId: number): number {
    return this.kv.epoch(seqId);
  }
}

describe.each(['mixtral-tiny', 'deepseek-v2-tiny'])('DecodePast (%s layout)', (fixture) => {
  const cfg = parseModelConfig(JSON.parse(readFileSync(new URL(`../fixtures/golden/${fixture}/config.json`, import.meta.url), 'utf8')));
  const layout = kvLayoutFor(cfg);
  const E = layout.elementsPerToken;
  const L = layout.numLayers;

  function setup(budgetBytes = 2 ** 26) {
    const kv = new KvCacheManager(new BlockPool(layout, 256, BLOCK_SIZE));
    const store = new CountingStore(kv);
    let incarnation = 0;
    const tag = new Map<number, number>(); // seq id -> the incarnation its rows carry
    const value = (t: number, layer: number, pos: number, e: number) => t * 1e6 + layer * 1e4 + pos * 10 + (e % 10) + e / 1000;
    /** Writes rows [from, to) of seq in every layer and commits them. */
    const write = (seq: number, from: number, to: number) => {
      expect(kv.ensureCapacity(seq, to)).toBe(true);
      const src = new Float32Array((to - from) * E);
      for (let l = 0; l < L; l++) {
        for (let p = from; p < to; p++) for (let e = 0; e < E; e++) src[(p - from) * E + e] = value(tag.get(seq)!, l, p, e);
        kv.writeRows(l, seq, from, src, 0, to - from);
      }
      kv.setNumTokens(seq, to);
    };
    const create = (len: number) => {
      const seq = kv.createSequence();
      tag.set(seq, ++incarnation);
      write(seq, 0, len);
      return seq;
    };
    const retag = (seq: number) => tag.set(seq, ++incarnation);
    return { kv, store, past: new DecodePast(layout, budgetBytes), create, write, retag };
  }

  /** One decode step of the group: what DecodePast hands attention equals a full gather, layer by layer. */
  function step(past: DecodePast, store: CountingStore, seqs: number[], lens: number[]): number {
    const ids = Int32Array.from(seqs);
    const pastLens = Int32Array.from(lens);
    const B = seqs.length;
    const P = Math.max(...lens);
    const slots = past.prepare(store, B, ids, pastLens, P);
    expect(slots).toBe(Math.ceil(P / PAST_QUANTUM) * PAST_QUANTUM);
    for (let l = 0; l < L; l++) {
      past.refresh(store, l, B, ids, pastLens);
      const [k, v] = [past.kFeedOf(l), past.vFeedOf(l)];
      if (layout.kind === 'gqa') {
        const { numKvHeads: g, headDim: D } = layout;
        const wantK = new Float32Array(B * g * slots * D);
        const wantV = new Float32Array(B * g * slots * D);
        store.kv.gatherHeads(l, ids, B, pastLens, slots, wantK, wantV);
        expect(k.length).toBe(wantK.length);
        for (let b = 0; b < B; b++) {
          for (let h = 0; h < g; h++) {
            const at = (b * g + h) * slots * D;
            const n = lens[b]! * D;
            expect(Array.from(k.subarray(at, at + n)), `layer ${l} slot ${b} K head ${h}`).toEqual(Array.from(wantK.subarray(at, at + n)));
            expect(Array.from(v.subarray(at, at + n)), `layer ${l} slot ${b} V head ${h}`).toEqual(Array.from(wantV.subarray(at, at + n)));
          }
        }
      } else {
        const want = new Float32Array(B * slots * E);
        store.kv.gather(l, ids, B, pastLens, slots, want);
        expect(k.length).toBe(want.length);
        for (let b = 0; b < B; b++) {
          const at = b * slots * E;
          expect(Array.from(k.subarray(at, at + lens[b]! * E)), `layer ${l} slot ${b}`).toEqual(Array.from(want.subarray(at, at + lens[b]! * E)));
        }
      }
      // what attention must never see: a NaN or an infinity in a masked slot
      expect(k.every(Number.isFinite) && v.every(Number.isFinite)).toBe(true);
    }
    past.commit(B, pastLens);
    return slots;
  }

  it('copies only the new rows while the group keeps its sequences, and again in full what changed', () => {
    const { store, past, create, write, retag, kv } = setup();
    const x = create(5);
    const y = create(70);
    const copied = () => {
      const n = store.rowsCopied / L;
      store.rowsCopied = 0;
      return n;
    };
    expect(step(past, store, [x, y], [5, 70])).toBe(128);
    expect(copied()).toBe(75); // first step: everything
    write(x, 5, 6);
    write(y, 70, 71);
    step(past, store, [x, y], [6, 71]);
    expect(copied()).toBe(2); // one row each

    // y leaves; z joins in its slot: z is copied in full, x gets its one row
    const z = create(100);
    write(x, 6, 7);
    step(past, store, [x, z], [7, 100]);
    expect(copied()).toBe(1 + 100);

    // the group reorders: both slots change sequence
    write(x, 7, 8);
    write(z, 100, 101);
    step(past, store, [z, x], [101, 8]);
    expect(copied()).toBe(101 + 8);

    // z's id is freed and created again (same id, other rows, no shorter than before)
    kv.freeSequence(z);
    const z2 = create(110);
    expect(z2).toBe(z);
    write(x, 8, 9);
    step(past, store, [z2, x], [110, 9]);
    expect(copied()).toBe(110 + 1);

    // x rolls back to 4 tokens and writes other rows there
    kv.setNumTokens(x, 4);
    retag(x);
    write(x, 4, 9);
    write(z2, 110, 111);
    step(past, store, [z2, x], [111, 9]);
    expect(copied()).toBe(1 + 9);

    // the longest past crosses the slot stride (128 -> 192): every slot copied again
    write(x, 9, 130);
    expect(step(past, store, [z2, x], [111, 130])).toBe(192);
    expect(copied()).toBe(111 + 130);
    // more sequences than slots: new buffers (twice the slots), all copied
    const w = create(3);
    step(past, store, [z2, x, w], [111, 130, 3]);
    expect(copied()).toBe(111 + 130 + 3);
    // a fourth fits the doubled slots: only it is copied
    const u = create(2);
    step(past, store, [z2, x, w, u], [111, 130, 3, 2]);
    expect(copied()).toBe(2);
    const t = create(1);
    step(past, store, [z2, x, w, u, t], [111, 130, 3, 2, 1]);
    expect(copied()).toBe(111 + 130 + 3 + 2 + 1);
    // the longest past falls to half the stride or less (192 -> 64): every slot copied again
    step(past, store, [w, u], [3, 2]);
    expect(copied()).toBe(3 + 2);
  });

  it('stages nothing without a past or beyond its byte budget (the caller gathers)', () => {
    const { store, create } = setup();
    const small = new DecodePast(layout, PAST_QUANTUM * E * 4 * L); // one slot of 64 rows
    const a = create(10);
    const b = create(10);
    expect(small.prepare(store, 1, Int32Array.of(a), Int32Array.of(10), 10)).toBe(PAST_QUANTUM);
    expect(small.prepare(store, 2, Int32Array.of(a, b), Int32Array.of(10, 10), 10)).toBe(-1);
    expect(small.prepare(store, 1, Int32Array.of(a), Int32Array.of(0), 0)).toBe(-1);
    expect(small.bytes).toBe(0);
  });
});
