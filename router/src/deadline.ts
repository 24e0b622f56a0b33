/**
 * Deadline helpers (pure). A deadline is an absolute time in ms on the performance.now() clock;
 * timers are set from it with the setTimeout limit handled: Node clamps delays above 2^31-1 ms
 * to 1 ms (a "24.8 days" deadline would fire at once), so longer waits are capped, not clamped.
 */

/** Largest delay setTimeout honours, ms. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

export function deadlineAfter(ms: number, now = performance.now()): number {
  return now + Math.max(0, ms);
}

/** Milliseconds left until the deadline (0 when passed), capped at MAX_TIMER_MS. */
export function timeLeft(deadline: number, now = performance.now()): number {
  return Math.min(MAX_TIMER_MS, Math.max(0, deadline - now));
}

/** A Date for grpc-js CallOptions.deadline from a performance.now() deadline. */
export function grpcDeadline(deadline: number, now = performance.now()): Date {
  return new Date(Date.now() + Math.max(0, deadline - now));
}

/** Exponential backoff: min · 2^attempt, capped (attempt 0 = min). */
export function backoffMs(attempt: number, minMs: number, maxMs: number): number {
  return Math.min(maxMs, minMs * 2 ** Math.min(attempt, 30));
}
