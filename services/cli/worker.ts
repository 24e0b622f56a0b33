import { ServerError } from '../common/src/errors.js';

export async function workerCommand(_argv: string[], _env: NodeJS.ProcessEnv): Promise<void> {
  throw new ServerError('invalid_request', 'moeserve worker is not available yet');
}
