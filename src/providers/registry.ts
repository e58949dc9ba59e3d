/**
 * Which providers exist and which one a ticket gets. Providers are loaded on demand, so that the
 * netns path never loads QEMU's code and a missing provider is one clear line, not a crash.
 */
import { UsageError } from '../common/errors.js';
import { hasHardwareVirtualization } from '../doctor/checks.js';
import { NetnsProvider } from './netns/provider.js';
import type { Provider, ProviderChoice, ProviderName } from './provider.js';

export const PROVIDERS: readonly ProviderName[] = ['netns', 'vm'];

export function parseProviderChoice(value: string | undefined): ProviderChoice {
  if (value === undefined || value === '') return 'auto';
  if (value === 'auto' || (PROVIDERS as readonly string[]).includes(value)) return value as ProviderChoice;
  throw new UsageError(`unknown provider ${JSON.stringify(value)}; use one of: auto, ${PROVIDERS.join(', ')}`);
}

/** auto: vm only where KVM has real hardware virtualization (TCG clones are slow); else netns. */
export function resolveProvider(choice: ProviderChoice): ProviderName {
  if (choice === 'auto') return hasHardwareVirtualization() ? 'vm' : 'netns';
  return parseProviderChoice(choice) as ProviderName;
}

export async function loadProvider(name: ProviderName, nativeDir: string): Promise<Provider> {
  switch (name) {
    case 'netns':
      return new NetnsProvider(nativeDir) as Provider;
    case 'vm': {
      const { VmProvider } = await import('./vm/provider.js');
      return new VmProvider(nativeDir) as Provider;
    }
  }
}

/** Removes the vm provider's cached templates (snowflock cleanup --templates); what it removed. */
export async function cleanupTemplates(): Promise<string[]> {
  const vm = await import('./vm/provider.js');
  return vm.cleanupTemplates();
}
