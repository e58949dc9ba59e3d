/**
 * Names of everything a ticket creates on the host, all derived from the ticket id (6 hex chars)
 * so that a name alone says which ticket owns it. Linux interface names have at most 15 chars.
 */

export const bridgeName = (ticketId: string): string => `sf${ticketId}`;
export const tableName = (ticketId: string): string => `sf_${ticketId}`;
/** The VXLAN device that joins the ticket's bridge to its other hosts (clusters spanning hosts). */
export const vxlanName = (ticketId: string): string => `sf${ticketId}x`;
/** Host side of netns clone i's veth; the clone side is always eth0. */
export const vethName = (ticketId: string, clone: number): string => `sf${ticketId}v${clone}`;
/** Tap of VM clone i on the ticket's bridge. */
export const tapName = (ticketId: string, clone: number): string => `sf${ticketId}t${clone}`;
/** Hostname of clone i, also the name of its network namespace (ip netns exec works with it). */
export const cloneName = (ticketId: string, clone: number): string => `sf${ticketId}-${clone}`;

/**
 * The device group of every link of the ticket on a host (its bridge, the host ends of its veths,
 * its taps, its tunnel), so that teardown deletes them all with one `ip link del group`: one batch in the kernel, one wait for RCU grace
 * periods, where deleting them by name waits once per device. High in the 32-bit range, away from
 * the small numbers an administrator would give groups (/etc/iproute2/group); the ticket id makes
 * it the ticket's own.
 */
export const linkGroup = (ticketId: string): number => 0x5f000000 + parseInt(ticketId, 16);

/** The host, as the ticket's clones know it (in their /etc/hosts). */
export const gatewayHostname = (ticketId: string): string => `sf${ticketId}-host`;

/** A locally administered unicast MAC: 02, the ticket id, then the clone number in two bytes. */
export function cloneMac(ticketId: string, clone: number): string {
  const hex = `02${ticketId}${clone.toString(16).padStart(4, '0')}`;
  return hex.match(/../g)!.join(':');
}
