/**
 * The topology's command-line surface, shared by `moeserve generate` and `moeserve serve`:
 * flag definitions (node:util parseArgs) and their conversion into frozen TopologyOptions.
 */
import { ServerError } from '../../services/common/src/errors.js';
import type { RuntimeOptions } from '../../services/model/src/runtime/onnx.js';
import { DEFAULT_MAX_MESSAGE_BYTES, parseWireDtype } from '../../proto/index.js';
import { DEFAULT_TOPOLOGY, type TopologyOptions } from './topology.js';
import { DEFAULT_REBALANCE } from './rebalance.js';
import { DEFAULT_DISPATCH, type LogFn } from './types.js';

export const TOPOLOGY_FLAGS = {
  workers: { type: 'string', default: '0' },
  'worker-addrs': { type: 'string' },
  placement: { type: 'string', default: 'contiguous' },
  replicate: { type: 'string' },
  'worker-transport': { type: 'string', default: 'unix' },
  'expert-deadline-ms': { type: 'string', default: String(DEFAULT_DISPATCH.deadlineMs) },
  'wire-dtype': { type: 'string', default: 'f32' },
  'max-message-bytes': { type: 'string', default: String(DEFAULT_MAX_MESSAGE_BYTES) },
  'tls-cert': { type: 'string' },
  'tls-key': { type: 'string' },
  'tls-ca': { type: 'string' },
  'eplb-spare-slots': { type: 'string' },
  'rebalance-threshold': { type: 'string' },
  'rebalance-steps': { type: 'string' },
  'load-window-steps': { type: 'string' },
} as const;

export const TOPOLOGY_HELP = `  --workers N            start N local expert workers (child processes); 0 = experts in-process (default 0)
  --worker-addrs LIST    use running workers: host:port or unix:/path, comma-separated
  --placement P          contiguous | round-robin | explicit "0-2;3-5;6,7" (default contiguous)
  --replicate R          all | N | expert:count,... (hot experts on several workers)
  --worker-transport T   unix | tcp for local workers (default unix)
  --expert-deadline-ms N deadline of every gateway<->worker exchange (default ${DEFAULT_DISPATCH.deadlineMs})
  --wire-dtype D         f32 | f16 | bf16 activations on the wire (default f32; others change numerics)
  --max-message-bytes N  gRPC message limit; larger requests are chunked (default ${DEFAULT_MAX_MESSAGE_BYTES})
  --tls-cert F --tls-key F --tls-ca F   TLS to workers (cert/key: client certificate for mutual TLS)
  --eplb-spare-slots N   live rebalancing (POST /admin/rebalance): redundant expert slots per MoE layer
                         for replicas of hot experts (default: one per worker)
  --rebalance-threshold B  rebalance by itself when balancedness (mean / max (token, expert) rows per
                         worker over the load window) stays below B, in (0, 1] (default 0: off)
  --rebalance-steps N    ... for N consecutive steps (default ${DEFAULT_REBALANCE.autoSteps})
  --load-window-steps N  steps in the sliding window of routed load (default 64)
`;

export interface TopologyFlagValues {
  workers?: string;
  'worker-addrs'?: string;
  placement?: string;
  replicate?: string;
  'worker-transport'?: string;
  'expert-deadline-ms'?: string;
  'wire-dtype'?: string;
  'max-message-bytes'?: string;
  'tls-cert'?: string;
  'tls-key'?: string;
  'tls-ca'?: string;
  'eplb-spare-slots'?: string;
  'rebalance-threshold'?: string;
  'rebalance-steps'?: string;
  'load-window-steps'?: string;
}

function int(v: string | undefined, flag: string, min: number, fallback: number): number {
  if (v === undefined) return fallback;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) throw new ServerError('invalid_request', `${flag} must be an integer >= ${min}, got ${v}`, { param: flag });
  return n;
}

function threshold(v: string | undefined): number {
  if (v === undefined) return DEFAULT_REBALANCE.autoThreshold;
  const n = Number(v);
  if (!(n >= 0 && n <= 1)) throw new ServerError('invalid_request', `--rebalance-threshold must be in [0, 1] (0 = off), got ${v}`, { param: '--rebalance-threshold' });
  return n;
}

export function topologyFromFlags(values: TopologyFlagValues, modelDir: string, runtime: RuntimeOptions, log: LogFn): TopologyOptions {
  const transport = values['worker-transport'] ?? 'unix';
  if (transport !== 'unix' && transport !== 'tcp') throw new ServerError('invalid_request', `--worker-transport must be unix or tcp, got ${transport}`);
  const addrs = values['worker-addrs']?.split(',').map((a) => a.trim()).filter((a) => a !== '') ?? null;
  const tls = values['tls-cert'] || values['tls-key'] || values['tls-ca'] ? { cert: values['tls-cert'], key: values['tls-key'], ca: values['tls-ca'] } : null;
  return Object.freeze({
    ...DEFAULT_TOPOLOGY,
    modelDir,
    runtime,
    log,
    workers: int(values.workers, '--workers', 0, 0),
    workerAddrs: addrs && addrs.length > 0 ? addrs : null,
    placement: values.placement ?? 'contiguous',
    replicate: values.replicate ?? null,
    transport,
    tls,
    rebalance: Object.freeze({
      ...DEFAULT_REBALANCE,
      spareSlots: values['eplb-spare-slots'] === undefined ? null : int(values['eplb-spare-slots'], '--eplb-spare-slots', 0, 0),
      autoThreshold: threshold(values['rebalance-threshold']),
      autoSteps: int(values['rebalance-steps'], '--rebalance-steps', 1, DEFAULT_REBALANCE.autoSteps),
    }),
    loadWindowSteps: int(values['load-window-steps'], '--load-window-steps', 1, 64),
    dispatch: Object.freeze({
      ...DEFAULT_DISPATCH,
      deadlineMs: int(values['expert-deadline-ms'], '--expert-deadline-ms', 1, DEFAULT_DISPATCH.deadlineMs),
      wireDtype: parseWireDtype(values['wire-dtype'] ?? 'f32'),
      maxMessageBytes: int(values['max-message-bytes'], '--max-message-bytes', 4096, DEFAULT_MAX_MESSAGE_BYTES),
    }),
  });
}
