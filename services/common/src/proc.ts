/**
 * Small process and socket helpers every launcher shares (worker spawn, experiment runs, tests,
 * benchmarks): a free loopback port, and a child's output split into lines.
 */
import net from 'node:net';

/** A loopback port nothing listens on right now (the OS picks it; another process may race for it). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr !== null ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

/**
 * Calls onLine for each complete line of a text stream. A line longer than `maxPending` bytes
 * is cut (only its last maxPending characters are kept), so a child that never prints a newline
 * cannot grow the buffer without bound.
 */
export function onLines(stream: NodeJS.ReadableStream, onLine: (line: string) => void, maxPending = 65536): void {
  let buf = '';
  stream.setEncoding('utf8');
  stream.on('data', (d: string) => {
    buf += d;
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      onLine(buf.slice(0, nl));
      buf = buf.slice(nl + 1);
    }
    if (buf.length > maxPending) buf = buf.slice(-maxPending);
  });
}
