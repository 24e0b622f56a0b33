/**
 * DecodePast: the decode group's past, kept between steps.
 *
 * Without it every decode step copies each sequence's whole past out of the KV pool, layer by
 * layer, although only one row per sequence is new: at batch 16 with 512-token prompts that copy
 * was 37 of a 226 ms mixtral-perf step. Here slot b of the decode group keeps its sequence's rows
 * where attention reads them (GQA: K [slots, g, Pcap, D] and V alike, head-major; MLA: rows
 * [slots, Pcap, E]; one pair of buffers per layer), and a step copies from the pool only the rows
 * a slot does not hold yet: normally the one row written the step before.
 *
 * A slot's rows are trusted while it holds the same incarnation of the same sequence
 * (KvStore.epoch: a new value on every create and rollback), its past has not shrunk, and the row
 * stride Pcap is unchanged. Pcap is the group's longest past rounded up to PAST_QUANTUM, so
 * attention runs over fewer than PAST_QUANTUM masked extra slots, and the stride changes (every
 * slot copied again) at most once per PAST_QUANTUM steps. Slots follow the group's order: a
 * sequence that moves to another slot (one before it left the group) is copied again in full.
 * Everything is bounded by a byte budget; a group that does not fit gathers as before.
 *
 * Letters: B sequences in the group, g KV heads, D / Dv key / value head dims, E cache row
 * elements, Pcap past slots per sequence.
 */
import type { KvLayout } from '../../../kvcache/src/layout.js';
import type { KvStore } from './dense-runner.js';

/** Past slots are allocated in multiples of this many rows. */
export const PAST_QUANTUM = 64;

function roundUp(n: number, q: number): number {
  return Math.ceil(n / q) * q;
}

export class DecodePast {
  private readonly numLayers: number;
  private readonly kElems: number;
  private readonly vElems: number;
  /** Per layer: GQA K [slots, g, Pcap, D] (MLA: rows [slots, Pcap, E]); GQA V [slots, g, Pcap, Dv] (MLA: unused). */
  private k: Float32Array[] = [];
  private v: Float32Array[] = [];
  /** Per layer: the first B slots of k and v, what attention is fed (rebuilt when B or the buffers change). */
  private kFeed: Float32Array[] = [];
  private vFeed: Float32Array[] = [];
  private fedSlots = -1;
  private slots = 0;
  private pcap = 0;
  private store: KvStore | null = null;
  // per slot: the sequence and incarnation whose rows [0, have) every layer holds
  private seq = new Int32Array(0);
  private epoch = new Float64Array(0);
  private have = new Int32Array(0);
  /** This step's first row to copy per slot. */
  private from = new Int32Array(0);

  constructor(
    private readonly layout: KvLayout,
    private readonly budgetBytes: number,
  ) {
    const gqa = layout.kind === 'gqa';
    this.numLayers = layout.numLayers;
    // elements per (slot, past row) in the first buffer and the second
    this.kElems = gqa ? layout.numKvHeads * layout.headDim : layout.elementsPerToken;
    this.vElems = gqa ? layout.numKvHeads * layout.vHeadDim : 0;
  }

  /**
   * Plans a step of the decode group: its B sequences' KV ids and past lengths, P the longest.
   * Returns the past slots attention reads (Pcap >= P), or -1 when nothing is staged (no past,
   * or over the budget): the caller then gathers from the pool itself.
   */
  prepare(kv: KvStore, B: number, seqIds: Int32Array, pastLens: Int32Array, P: number): number {
    if (P === 0) return -1;
    const pcap = roundUp(P, PAST_QUANTUM);
    if (this.bytesFor(B, pcap) > this.budgetBytes) {
      this.release();
      return -1;
    }
    if (kv !== this.store || B > this.slots || pcap > this.pcap || 2 * pcap <= this.pcap) {
      // a new stride or more slots: fresh buffers, every slot copied again; slots double as the
      // group grows (within the budget), so a growing group is not copied again at every arrival
      let slots = Math.max(B, this.slots);
      if (B > this.slots && this.slots > 0 && this.bytesFor(2 * this.slots, pcap) <= this.budgetBytes) slots = Math.max(B, 2 * this.slots);
      this.allocate(slots, pcap);
      this.store = kv;
    }
    for (let b = 0; b < B; b++) {
      const id = seqIds[b]!;
      const epoch = id >= 0 ? kv.epoch(id) : 0;
      const same = id >= 0 && this.seq[b] === id && this.epoch[b] === epoch && this.have[b]! <= pastLens[b]!;
      if (!same) {
        this.seq[b] = id;
        this.epoch[b] = epoch;
        this.have[b] = 0;
      }
      this.from[b] = this.have[b]!;
    }
    if (B !== this.fedSlots) {
      for (let l = 0; l < this.numLayers; l++) {
        this.kFeed[l] = this.k[l]!.subarray(0, B * this.pcap * this.kElems);
        this.vFeed[l] = this.v[l]!.subarray(0, B * this.pcap * this.vElems);
      }
      this.fedSlots = B;
    }
    return this.pcap;
  }

  /**
   * Copies the rows layer `layer` lacks for the group planned by prepare. Then kFeed(layer) and
   * vFeed(layer) are what attention reads: GQA K [B, g, Pcap, D] and V [B, g, Pcap, Dv]; MLA rows
   * [B, Pcap, E] (and nothing).
   */
  refresh(kv: KvStore, layer: number, B: number, seqIds: Int32Array, pastLens: Int32Array): void {
    if (this.layout.kind === 'gqa') kv.gatherHeads(layer, seqIds, B, pastLens, this.pcap, this.k[layer]!, this.v[layer]!, this.from);
    else kv.gather(layer, seqIds, B, pastLens, this.pcap, this.k[layer]!, this.from);
  }

  /** The planned group's first past buffer of `layer` (see refresh). */
  kFeedOf(layer: number): Float32Array {
    return this.kFeed[layer]!;
  }

  /** The planned group's second past buffer of `layer` (GQA V; empty for MLA). */
  vFeedOf(layer: number): Float32Array {
    return this.vFeed[layer]!;
  }

  /** After a forward pass that refreshed every layer: the slots hold their pasts. */
  commit(B: number, pastLens: Int32Array): void {
    for (let b = 0; b < B; b++) this.have[b] = pastLens[b]!;
  }

  /** Bytes held now. */
  get bytes(): number {
    return this.bytesFor(this.slots, this.pcap);
  }

  /** Bytes of buffers for `slots` slots of `rows` past rows, over all layers. */
  private bytesFor(slots: number, rows: number): number {
    return slots * rows * (this.kElems + this.vElems) * Float32Array.BYTES_PER_ELEMENT * this.numLayers;
  }

  private allocate(slots: number, pcap: number): void {
    this.release();
    for (let l = 0; l < this.numLayers; l++) {
      this.k.push(new Float32Array(slots * pcap * this.kElems));
      this.v.push(new Float32Array(slots * pcap * this.vElems));
    }
    this.slots = slots;
    this.pcap = pcap;
    this.fedSlots = -1;
    this.seq = new Int32Array(slots).fill(-1);
    this.epoch = new Float64Array(slots);
    this.have = new Int32Array(slots);
    this.from = new Int32Array(slots);
  }

  private release(): void {
    this.k = [];
    this.v = [];
    this.kFeed = [];
    this.vFeed = [];
    this.fedSlots = -1;
    this.slots = 0;
    this.pcap = 0;
    this.store = null;
  }
}
