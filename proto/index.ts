/**
 * proto/: the gateway <-> expert-worker wire contract.
 *
 * Owns `expert.proto` (the ExpertWorker service: the Forward bidi stream, Info, Health, Stats;
 * every field documented there with unit, shape and dtype), its loading with
 * @grpc/proto-loader, the TypeScript shapes of its messages (camelCase, as proto-loader maps
 * them), the codec of the activation bytes (codec.ts), and the transport settings both ends share
 * (transport.ts: message limits, TLS, ErrorCode <-> gRPC status). The router (client side) and
 * the worker (server side) both import from here and nowhere else for the wire format.
 *
 * Data flow: hidden rows float32 [N, H] (gateway) -> ForwardRequest{hidden bytes, expert_ids,
 * weights} (router/src/dispatch.ts) -> worker (workers/src/server.ts) -> ForwardReply{output
 * bytes [n, H]} -> summed into the step's routed output (router).
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

export { bytesOf, DTYPE_BYTES, decodeRows, dtypeName, encodeRows, float32View, int32View, parseWireDtype, RowCodec, WIRE_DTYPE, type WireDtype } from './codec.js';
export * from './transport.js';

export const PROTO_PATH = path.join(path.dirname(fileURLToPath(import.meta.url)), 'expert.proto');

/** Fully qualified service name (used in logs and by grpc tooling). */
export const SERVICE_NAME = 'moeserve.expert.v1.ExpertWorker';

// ---------------------------------------------------------------- message shapes (proto-loader, camelCase)

export interface ForwardRequest {
  requestId: number;
  layer: number;
  numRows: number;
  topK: number;
  /** WIRE_DTYPE value. */
  dtype: number;
  /** [numRows, H] of dtype, little-endian. */
  hidden: Uint8Array;
  /** int32 LE [numRows, topK]; -1 = slot served elsewhere. */
  expertIds: Uint8Array;
  /** float32 LE [numRows, topK]. */
  weights: Uint8Array;
  step: number;
  /** Gateway wall clock at write, µs since the epoch. */
  sentAtUs: number;
}

export interface RequestStatus {
  code: number;
  errorCode: string;
  message: string;
}

export interface ForwardReply {
  requestId: number;
  numRows: number;
  dtype: number;
  /** [numRows, H] of dtype, little-endian. */
  output: Uint8Array;
  status: RequestStatus | null;
  computeUs: number;
  queueUs: number;
  /** Worker wall clock at arrival / at reply, µs since the epoch. */
  receivedAtUs: number;
  sentAtUs: number;
}

export interface LayerExperts {
  layer: number;
  experts: number[];
}

export interface InfoReply {
  workerId: string;
  architecture: string;
  hiddenSize: number;
  numLayers: number;
  nRoutedExperts: number;
  layers: LayerExperts[];
  dtypes: number[];
  device: string;
  requestedDevice: string;
  maxMessageBytes: number;
  configSha256: string;
  pid: number;
  checkpointBytesRead: number;
}

export const SERVING_STATUS = Object.freeze({ UNKNOWN: 0, SERVING: 1, NOT_SERVING: 2 });

export interface HealthReply {
  status: number;
  uptimeMs: number;
  queueDepth: number;
}

export interface ExpertRows {
  layer: number;
  expert: number;
  rows: number;
}

export interface StatsReply {
  requests: number;
  failed: number;
  rows: number;
  bytesIn: number;
  bytesOut: number;
  computeUs: number;
  expertRows: ExpertRows[];
  openStreams: number;
}

export interface LoadRequest {
  layers: LayerExperts[];
}

export interface LoadReply {
  layers: LayerExperts[];
  loadMs: number;
  checkpointBytesRead: number;
}

export type Empty = Record<string, never>;

// ---------------------------------------------------------------- service definition and client

type Unary<Req, Res> = (req: Req, metadata: grpc.Metadata, options: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res?: Res) => void) => grpc.ClientUnaryCall;

/** The generated client, typed. */
export interface ExpertWorkerClient extends grpc.Client {
  forward(metadata?: grpc.Metadata, options?: grpc.CallOptions): grpc.ClientDuplexStream<ForwardRequest, ForwardReply>;
  info: Unary<Empty, InfoReply>;
  health: Unary<Empty, HealthReply>;
  stats: Unary<Empty, StatsReply>;
  load: Unary<LoadRequest, LoadReply>;
}

/** Server-side handlers, typed. */
export interface ExpertWorkerHandlers extends grpc.UntypedServiceImplementation {
  forward: grpc.handleBidiStreamingCall<ForwardRequest, ForwardReply>;
  info: grpc.handleUnaryCall<Empty, InfoReply>;
  health: grpc.handleUnaryCall<Empty, HealthReply>;
  stats: grpc.handleUnaryCall<Empty, StatsReply>;
  load: grpc.handleUnaryCall<LoadRequest, LoadReply>;
}

interface Loaded {
  readonly service: grpc.ServiceDefinition;
  readonly Client: new (address: string, credentials: grpc.ChannelCredentials, options?: grpc.ChannelOptions) => ExpertWorkerClient;
}

let loaded: Loaded | null = null;

/**
 * Loads expert.proto once per process. uint64 fields decode as JS numbers (counters and ids stay
 * far below 2^53), enums as numbers, and `bytes` as Buffers viewing the received message (no copy).
 */
export function expertProto(): Loaded {
  if (loaded) return loaded;
  const def = protoLoader.loadSync(PROTO_PATH, { keepCase: false, longs: Number, enums: Number, defaults: true, oneofs: false });
  const pkg = grpc.loadPackageDefinition(def) as unknown as {
    moeserve: { expert: { v1: { ExpertWorker: grpc.ServiceClientConstructor } } };
  };
  const ctor = pkg.moeserve.expert.v1.ExpertWorker;
  loaded = Object.freeze({ service: ctor.service, Client: ctor as unknown as Loaded['Client'] });
  return loaded;
}
