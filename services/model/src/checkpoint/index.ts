/**
 * checkpoint/: Hugging Face safetensors checkpoints, read lazily by tensor and written by streaming.
 *
 * - dtype.ts: safetensors dtypes and the F16/BF16/F64 <-> F32 conversions (tight loops).
 * - safetensors.ts: one file's header, validated as untrusted input; bounded positioned reads.
 * - checkpoint.ts: `Checkpoint` over a folder (single file, or index + shards); `bytesRead`.
 * - writer.ts: safetensors files and sharded checkpoints, byte for byte as Hugging Face writes them.
 * - random.ts: seeded per-tensor random weights for make-checkpoint.
 */
export { Checkpoint, INDEX_FILE, SINGLE_FILE, type SafetensorsDtype, type TensorInfo } from './checkpoint.js';
export { DTYPE_BYTES, SAFETENSORS_DTYPES } from './dtype.js';
export { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from '../../../common/src/half.js';
export {
  DEFAULT_MAX_SHARD_BYTES,
  planShards,
  writeSafetensors,
  writeSafetensorsStream,
  writeShardedSafetensors,
  type ProgressCallback,
  type ShardPlan,
  type TensorData,
  type TensorProducer,
  type TensorSpec,
} from './writer.js';
