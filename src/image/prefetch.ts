/**
 * Setup step: fetches the guest kernel into the cache and makes the per-installation SSH keys, so
 * that the first VM job needs no network. Run: `node dist/src/image/prefetch.js` (or via tsx).
 */
import { guestKernel } from './kernel.js';
import { sshKeys } from './ssh-keys.js';
import { isUserError } from '../common/errors.js';

try {
  const k = await guestKernel();
  await sshKeys();
  console.log(`snowflock: guest kernel ${k.version} ready`);
} catch (e) {
  if (isUserError(e)) {
    console.error(`snowflock: ${e.message}`);
    process.exit(e.exitCode);
  }
  throw e;
}
