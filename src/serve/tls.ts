/** The server certificate and key for STARTTLS, read from a certificates directory. */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { HyperError } from '../errors.js';

/** File names in the directory (the layout nbdkit and qemu-nbd use for x509 credentials). */
export const SERVER_CERT_FILE = 'server-cert.pem';
export const SERVER_KEY_FILE = 'server-key.pem';

export interface TlsCredentials {
  cert: Buffer;
  key: Buffer;
  /** Refuse clients that do not upgrade to TLS before anything else. */
  require: boolean;
}

/**
 * Read server-cert.pem and server-key.pem (PEM) from `dir`; a missing or unreadable file is
 * an INVALID_ARGUMENT error naming the directory.
 */
export async function loadTlsCertificates(
  dir: string,
  options: { require?: boolean } = {},
): Promise<TlsCredentials> {
  try {
    return {
      cert: await readFile(join(dir, SERVER_CERT_FILE)),
      key: await readFile(join(dir, SERVER_KEY_FILE)),
      require: options.require === true,
    };
  } catch (e) {
    throw new HyperError(
      'invalid',
      'INVALID_ARGUMENT',
      `Cannot read the TLS certificate or key in ${dir}: ${(e as Error).message}`,
      {
        suggestion: `The directory must hold ${SERVER_CERT_FILE} and ${SERVER_KEY_FILE} (PEM).`,
        cause: e,
      },
    );
  }
}
