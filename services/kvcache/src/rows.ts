/**
 * Row copies between one layer's pool storage and flat buffers: the loops of the KV manager's
 * data path over a block table and the segments of a block (layout.ts "Blocks"). Nothing here
 * validates; KvCacheManager checks every argument before it calls in. Every copy goes through
 * copyElements (copy.ts), so nothing here allocates beyond its views.
 */
import { copyElements } from './copy.js';

/** How a pool's blocks hold rows: the manager's flat copy of its layout's segments. */
export interface BlockRows {
  readonly blockSize: number;
  readonly elementsPerToken: number;
  /** blockSize · elementsPerToken */
  readonly blockElements: number;
  /**
   * Segment s of a row is row elements [segRow[s], segRow[s] + segLen[s]); a block stores it at
   * blockSize · segRow[s] + slot · segLen[s].
   */
  readonly segRow: Int32Array;
  readonly segLen: Int32Array;
  /** One segment: blocks hold plain rows. */
  readonly rowMajor: boolean;
}

/**
 * Copies rows startPos..startPos+numRows of a block table between pool storage and a flat
 * buffer of rows (buf from element bufOff): into the pool when toPool, else out of it. Row-major
 * blocks (one segment): one copy per run of physically consecutive blocks, one branch per run
 * (not per element). Segment-major blocks (GQA heads): one copy per row and segment.
 */
export function copyRuns(r: BlockRows, storage: Float32Array, table: Int32Array, startPos: number, numRows: number, buf: Float32Array, bufOff: number, toPool: boolean): void {
  const bs = r.blockSize;
  const ept = r.elementsPerToken;
  if (!r.rowMajor) {
    // segment-major blocks: each row is one copy per segment
    const { blockElements, segRow, segLen } = r;
    for (let i = 0; i < numRows; i++) {
      const pos = startPos + i;
      const bi = (pos / bs) | 0;
      const slot = pos - bi * bs;
      const base = table[bi] * blockElements;
      const row = bufOff + i * ept;
      for (let sg = 0; sg < segRow.length; sg++) {
        const d = segLen[sg];
        const at = base + bs * segRow[sg] + slot * d;
        if (toPool) copyElements(storage, at, buf, row + segRow[sg], d);
        else copyElements(buf, row + segRow[sg], storage, at, d);
      }
    }
    return;
  }
  let pos = startPos;
  let remaining = numRows;
  while (remaining > 0) {
    let bi = (pos / bs) | 0;
    const slot = pos - bi * bs;
    const first = table[bi];
    let rows = bs - slot;
    // extend over physically consecutive blocks: one copy per contiguous run
    while (rows < remaining && table[bi + 1] === table[bi] + 1) {
      bi++;
      rows += bs;
    }
    if (rows > remaining) rows = remaining;
    const len = rows * ept;
    const poolOff = (first * bs + slot) * ept;
    if (toPool) copyElements(storage, poolOff, buf, bufOff, len);
    else copyElements(buf, bufOff, storage, poolOff, len);
    pos += rows;
    bufOff += len;
    remaining -= rows;
  }
}

/**
 * One sequence of a head-major gather (GQA blocks: g K segments, then g V segments): rows
 * start..len of K head h go to outK[b, h, start..len, :], of V head h to outV[b, h, ...];
 * maxLen is the outputs' row stride. One copy per (block, segment); the first block may be
 * entered mid-way.
 */
export function copyHeads(r: BlockRows, storage: Float32Array, table: Int32Array, b: number, g: number, start: number, len: number, maxLen: number, outK: Float32Array, outV: Float32Array): void {
  const bs = r.blockSize;
  const { blockElements, segRow, segLen } = r;
  for (let pos = start; pos < len; ) {
    const i = (pos / bs) | 0;
    const slot = pos - i * bs;
    const rows = len - pos < bs - slot ? len - pos : bs - slot;
    const base = table[i] * blockElements;
    for (let sg = 0; sg < 2 * g; sg++) {
      const d = segLen[sg];
      const out = sg < g ? outK : outV;
      const head = sg < g ? sg : sg - g;
      copyElements(out, ((b * g + head) * maxLen + pos) * d, storage, base + bs * segRow[sg] + slot * d, rows * d);
    }
    pos += rows;
  }
}
