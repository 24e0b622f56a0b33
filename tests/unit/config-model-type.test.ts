/**
 * config.json's model_type (issue 13, item 7). transformers' AutoConfig builds the config, and
 * AutoModelForCausalLM the model, from model_type: a config without one is refused there
 * ("Unrecognized model ... Should have a `model_type` key", unless the folder's name contains a
 * model type), and one naming another family loads another model. moeserve refuses both, as
 * config_unsupported naming the field, instead of accepting them silently.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseModelConfig } from '../../services/model/src/config.js';
import { expectServerError } from '../helpers/errors.js';
import { fixtureDir } from '../helpers/golden.js';

const config = (): Record<string, unknown> => JSON.parse(readFileSync(join(fixtureDir('mixtral-tiny'), 'config.json'), 'utf8'));

describe('config.json model_type', () => {
  it('the golden configs carry theirs and parse', () => {
    for (const f of ['mixtral-tiny', 'qwen2-moe-tiny', 'deepseek-v2-tiny'] as const) {
      expect(() => parseModelConfig(JSON.parse(readFileSync(join(fixtureDir(f), 'config.json'), 'utf8')))).not.toThrow();
    }
  });

  it('BAD CALL - a config without model_type is config_unsupported, naming the expected value', () => {
    const c = config();
    delete c['model_type'];
    expectServerError(() => parseModelConfig(c), 'config_unsupported', /no "model_type"/, /MixtralForCausalLM it is "mixtral"/);
  });

  it('BAD CALL - a model_type of another family is config_unsupported', () => {
    expectServerError(() => parseModelConfig({ ...config(), model_type: 'qwen2_moe' }), 'config_unsupported', /"model_type" "qwen2_moe" does not match architectures "MixtralForCausalLM" \("mixtral"\)/);
  });
});
