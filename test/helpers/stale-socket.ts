/**
 * A unix socket file left behind by a server that was killed (kill -9 removes nothing):
 * the file is there, and nothing accepts connections on it.
 */
import { spawn } from 'node:child_process';

export async function leaveStaleSocket(path: string): Promise<void> {
  const child = spawn(process.execPath, [
    '-e',
    `require('net').createServer().listen(${JSON.stringify(path)}, () => console.log('up'))`,
  ]);
  await new Promise<void>((resolve) => child.stdout.once('data', () => resolve()));
  child.kill('SIGKILL');
  await new Promise((r) => child.once('exit', r));
}
