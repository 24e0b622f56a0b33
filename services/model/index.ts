/**
 * services/model — everything about a checkpoint and its math, shared by gateway and workers:
 * opening a model folder (src/model-dir.ts: config + checkpoint + the one model fingerprint),
 * config.json -> MoeModelConfig (src/config.ts, frozen, per-architecture semantics of
 * transformers), which experts a shard holds (src/experts-spec.ts, `--experts SPEC`), Hugging Face tensor names (src/names.ts) and the weight manifest (src/weights.ts),
 * the lazy strict safetensors reader and HF-exact writer (src/checkpoint/), make-checkpoint presets,
 * ONNX graphs built in TypeScript for each unit — attention (GQA, MLA naive/absorbed), MLPs,
 * shared and routed experts, embedding, LM head (src/graphs/, src/onnx/) — and the only module that
 * imports onnxruntime-node (src/runtime/onnx.ts), with the C addon that gives ONNX Runtime one
 * thread pool per process (native/ort_env.c, built by scripts/build-native.mjs at npm install).
 */
export { allExperts, moeLayers, parseModelConfig, SUPPORTED_ARCHITECTURES, type MoeModelConfig } from './src/config.js';
export { modelFingerprint, openModelDir, readModelConfig, type ModelDir } from './src/model-dir.js';
export { contiguousShare, formatExpertsSpec, formatIdList, parseExpertsSpec, parseIdList } from './src/experts-spec.js';
export { Checkpoint } from './src/checkpoint/checkpoint.js';
export { expectedTensors, validateCheckpoint } from './src/weights.js';
export { makeCheckpoint, PRESET_NAMES } from './src/make-checkpoint.js';
