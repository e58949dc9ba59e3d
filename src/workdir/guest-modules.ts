/**
 * The guest kernel modules a VM clone needs to mount the job's working directory over NFSv4.2
 * (Debian's cloud kernel 6.1 builds the NFS client as modules). Paths are under
 * lib/modules/<version>/kernel, without ".ko", in load order: each needs only the ones before it
 * (their `depends=` fields: nfsv4 needs sunrpc, nfs, dns_resolver; nfs needs sunrpc, fscache,
 * lockd; lockd needs grace; fscache needs netfs). The image builder appends them to its virtio
 * list, so the guest agent loads them at boot, before the template is checkpointed: clones start
 * with them loaded and pay nothing.
 *
 * Left out on purpose: nfsv3 and nfs_acl (we mount v4 only), auth_rpcgss and rpcsec_gss_krb5
 * (sec=sys), the pNFS layout drivers (the server offers no layouts). About 5.4 MB in all, most of
 * it nfsv4 (2.1 MB), sunrpc (1.5 MB) and nfs (1.1 MB).
 */
export const WORKDIR_GUEST_MODULES: readonly string[] = [
  'net/sunrpc/sunrpc',
  'fs/nfs_common/grace',
  'fs/lockd/lockd',
  'fs/netfs/netfs',
  'fs/fscache/fscache',
  'fs/nfs/nfs',
  'net/dns_resolver/dns_resolver',
  'fs/nfs/nfsv4',
];
