import { ServerError } from '../common/src/errors.js';

export async function serveCommand(_argv: string[], _env: NodeJS.ProcessEnv): Promise<void> {
  throw new ServerError('invalid_request', 'moeserve serve is not available yet');
}
