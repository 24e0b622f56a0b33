/**
 * Stop strings for streamed output (OpenAI `stop`).
 *
 * Sits after the detokenizer: IncrementalDetokenizer.push -> final text delta ->
 * StopChecker.push -> text safe to send to the client. The checker finds the earliest occurrence
 * of any stop string — also one spanning several tokens or deltas — truncates the output there
 * (the stop string itself excluded, as OpenAI and vLLM do by default) and, until then, holds back
 * the longest tail of the text that could still be the beginning of a stop string, so no
 * character of a stop string is ever emitted.
 *
 * Per push the work is O(held + delta) per stop string: the held tail is shorter than the longest
 * stop string and everything before it was already searched and emitted.
 */

export interface StopCheckerOptions {
  /** Keep the matched stop string at the end of the output (vLLM include_stop_str_in_output). @defaultValue false */
  readonly includeStopString?: boolean;
}

/**
 * The earliest occurrence of any of `stops` in `text` at or after `from`: `{index, stop}`, or
 * null. At equal index the stop listed first wins.
 */
export function findEarliestStop(text: string, stops: readonly string[], from = 0): { index: number; stop: string } | null {
  let index = -1;
  let stop = '';
  for (const s of stops) {
    if (s.length === 0) continue;
    const i = text.indexOf(s, from);
    if (i >= 0 && (index < 0 || i < index)) {
      index = i;
      stop = s;
    }
  }
  return index < 0 ? null : { index, stop };
}

export class StopChecker {
  private readonly stops: readonly string[];
  private readonly includeStop: boolean;
  private pending = '';
  private released = '';
  private matchedStop: string | null = null;

  constructor(stops: readonly string[], opts: StopCheckerOptions = {}) {
    this.stops = Object.freeze(stops.filter((s) => s.length > 0));
    this.includeStop = opts.includeStopString ?? false;
  }

  /** True once a stop string was found; later pushes return ''. */
  get stopped(): boolean {
    return this.matchedStop !== null;
  }

  /** The stop string that ended the output, or null. */
  get matched(): string | null {
    return this.matchedStop;
  }

  /** Everything released so far; after a stop, the final (truncated) output text. */
  get text(): string {
    return this.released;
  }

  /** Characters currently held back because they could begin a stop string. */
  get heldLength(): number {
    return this.pending.length;
  }

  /**
   * Feeds newly final text; returns the part that is safe to emit now. When this delta completes
   * a stop string, returns the text up to it (or through it, with includeStopString), sets
   * `stopped`, and drops the rest.
   */
  push(delta: string): string {
    if (this.matchedStop !== null) return '';
    if (this.stops.length === 0) {
      this.released += delta;
      return delta;
    }
    const buf = this.pending + delta;
    const hit = findEarliestStop(buf, this.stops);
    if (hit !== null) {
      const out = buf.slice(0, this.includeStop ? hit.index + hit.stop.length : hit.index);
      this.pending = '';
      this.matchedStop = hit.stop;
      this.released += out;
      return out;
    }
    const hold = this.holdLength(buf);
    const out = buf.slice(0, buf.length - hold);
    this.pending = buf.slice(buf.length - hold);
    this.released += out;
    return out;
  }

  /** End of output without a stop string: releases the held tail. */
  flush(): string {
    if (this.matchedStop !== null) return '';
    const out = this.pending;
    this.pending = '';
    this.released += out;
    return out;
  }

  /** Length of the longest suffix of `buf` that is a proper prefix of some stop string. */
  private holdLength(buf: string): number {
    let best = 0;
    for (const s of this.stops) {
      for (let len = Math.min(s.length - 1, buf.length); len > best; len--) {
        // buf ends with s[0, len)? Compared in place: no substring allocation.
        const at = buf.length - len;
        let j = 0;
        while (j < len && buf.charCodeAt(at + j) === s.charCodeAt(j)) j++;
        if (j === len) {
          best = len;
          break;
        }
      }
    }
    return best;
  }
}
