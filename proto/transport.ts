/**
 * gRPC transport settings shared by both ends of the ExpertWorker contract: message limits,
 * channel / server options, TLS credentials, and the one mapping between moeserve's ErrorCode and
 * gRPC status (both directions).
 *
 * Message limit: grpc-js refuses messages over 4 MiB by default; a prefill chunk of 512 rows of a
 * 7168-wide model in f32 is 14 MiB. Both ends raise the limit deliberately to the same configured
 * value, and the router splits any request over it into several requests (rows are independent).
 */
import fs from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { ERROR_CODES, GRPC_STATUS, ServerError, toServerError, type ErrorCode } from '../services/common/src/errors.js';

/** Default gRPC send/receive limit on both ends, bytes. @defaultValue 64 MiB */
export const DEFAULT_MAX_MESSAGE_BYTES = 64 * 2 ** 20;

/** Trailing-metadata key carrying moeserve's ErrorCode next to a stream-level gRPC status. */
export const ERROR_CODE_KEY = 'moeserve-error-code';

/** PEM material for TLS; `ca` present on a worker = mutual TLS (client certificates required). */
export interface TlsMaterial {
  /** This side's certificate chain (PEM). Optional for a gateway without mutual TLS. */
  readonly cert: Buffer | null;
  /** This side's private key (PEM). */
  readonly key: Buffer | null;
  /** Root certificate(s) that sign the peer's certificate (PEM). */
  readonly ca: Buffer | null;
}

export interface TlsPaths {
  readonly cert?: string | undefined;
  readonly key?: string | undefined;
  readonly ca?: string | undefined;
}

/** Reads --tls-cert/--tls-key/--tls-ca files; null when none is given. */
export function readTls(paths: TlsPaths): TlsMaterial | null {
  if (!paths.cert && !paths.key && !paths.ca) return null;
  if (!!paths.cert !== !!paths.key) throw new ServerError('invalid_request', '--tls-cert and --tls-key go together');
  const read = (p: string | undefined, flag: string) => {
    if (!p) return null;
    try {
      return fs.readFileSync(p);
    } catch (err) {
      throw new ServerError('invalid_request', `${flag} ${p}: ${(err as Error).message}`, { cause: err });
    }
  };
  return Object.freeze({ cert: read(paths.cert, '--tls-cert'), key: read(paths.key, '--tls-key'), ca: read(paths.ca, '--tls-ca') });
}

export function serverCredentials(tls: TlsMaterial | null): grpc.ServerCredentials {
  if (!tls) return grpc.ServerCredentials.createInsecure();
  if (!tls.cert || !tls.key) throw new ServerError('invalid_request', 'a TLS worker needs --tls-cert and --tls-key');
  // A CA on the worker means mutual TLS: the gateway must present a certificate it signed.
  return grpc.ServerCredentials.createSsl(tls.ca, [{ private_key: tls.key, cert_chain: tls.cert }], tls.ca !== null);
}

export function channelCredentials(tls: TlsMaterial | null): grpc.ChannelCredentials {
  if (!tls) return grpc.credentials.createInsecure();
  return grpc.credentials.createSsl(tls.ca, tls.key, tls.cert);
}

/** Server options: limits raised on purpose (see the header). */
export function serverOptions(maxMessageBytes: number): grpc.ServerOptions {
  return {
    'grpc.max_receive_message_length': maxMessageBytes,
    'grpc.max_send_message_length': maxMessageBytes,
    // Detect gateways that vanished without closing (remote nodes); loopback peers close cleanly.
    'grpc.keepalive_time_ms': 30_000,
    'grpc.keepalive_timeout_ms': 10_000,
    'grpc.keepalive_permit_without_calls': 1,
  };
}

export interface ChannelTuning {
  readonly maxMessageBytes: number;
  /** Channel-level reconnect backoff, ms (the router also probes on its own schedule). */
  readonly reconnectMinMs: number;
  readonly reconnectMaxMs: number;
}

export function channelOptions(t: ChannelTuning): grpc.ChannelOptions {
  return {
    'grpc.max_receive_message_length': t.maxMessageBytes,
    'grpc.max_send_message_length': t.maxMessageBytes,
    // The Forward stream is long-lived: retry buffering would keep every request we send.
    'grpc.enable_retries': 0,
    'grpc.initial_reconnect_backoff_ms': t.reconnectMinMs,
    'grpc.max_reconnect_backoff_ms': t.reconnectMaxMs,
    // Replies of long prefills are MiBs: a 64 KiB HTTP/2 window would stall on every window update.
    'grpc-node.flow_control_window': 16 * 2 ** 20,
    'grpc.keepalive_time_ms': 10_000,
    'grpc.keepalive_timeout_ms': 5_000,
    'grpc.keepalive_permit_without_calls': 1,
    // Each WorkerClient owns its connection (a restarted worker at the same address must not get
    // a subchannel shared with, and backed off by, another client).
    'grpc.use_local_subchannel_pool': 1,
  };
}

/** Wall clock, microseconds since the Unix epoch (the *_at_us tracing fields). */
export function wallClockUs(): number {
  return Math.round((performance.timeOrigin + performance.now()) * 1000);
}

// ---------------------------------------------------------------- ErrorCode <-> gRPC status

/** gRPC status -> ErrorCode, for peers that sent no moeserve code. */
const FROM_STATUS: Readonly<Record<number, ErrorCode>> = Object.freeze({
  1: 'cancelled',
  3: 'bad_message',
  4: 'deadline_exceeded',
  5: 'not_found',
  8: 'resource_exhausted',
  9: 'checkpoint_invalid',
  14: 'experts_unavailable',
  16: 'unauthorized',
});

function isErrorCode(s: unknown): s is ErrorCode {
  return typeof s === 'string' && (ERROR_CODES as readonly string[]).includes(s);
}

/** Our error -> the status a handler returns (code from GRPC_STATUS, moeserve code in metadata). */
export function toGrpcStatus(err: unknown): Partial<grpc.StatusObject> {
  const e = toServerError(err);
  const metadata = new grpc.Metadata();
  metadata.set(ERROR_CODE_KEY, e.code);
  return { code: GRPC_STATUS[e.code] as grpc.status, details: e.message, metadata };
}

/** A status (stream end, unary failure, or a ForwardReply's RequestStatus) -> ServerError. */
export function fromGrpcStatus(code: number, details: string, errorCode?: unknown, where = ''): ServerError {
  const c: ErrorCode = isErrorCode(errorCode) ? errorCode : (FROM_STATUS[code] ?? 'internal');
  const name = grpc.status[code] ?? String(code);
  return new ServerError(c, `${where}${where ? ': ' : ''}${name}: ${details}`);
}

/** grpc-js ServiceError (unary callback / stream 'error') -> ServerError. */
export function fromServiceError(err: grpc.ServiceError | Error, where = ''): ServerError {
  const se = err as Partial<grpc.ServiceError>;
  if (typeof se.code !== 'number') return toServerError(err);
  const md = se.metadata?.get(ERROR_CODE_KEY)[0];
  return fromGrpcStatus(se.code, se.details ?? err.message, typeof md === 'string' ? md : undefined, where);
}
