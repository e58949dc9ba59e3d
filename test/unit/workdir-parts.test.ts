/**
 * The shared working directory's parts that need no VM and no root: which directories are
 * exported (and which are refused), the server's configuration, the guest's mount command, the NFS
 * NULL call on the wire, and the guest kernel modules the image must carry (they exist in the
 * cached guest kernel, dependencies first).
 */
import { expect } from 'chai';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { settings } from '../../src/common/config.js';
import { UsageError } from '../../src/common/errors.js';
import { WORKDIR_GUEST_MODULES } from '../../src/workdir/guest-modules.js';
import { guestMountArgv, nfsMountOptions } from '../../src/workdir/mount.js';
import { isSuccessReply, nullCall } from '../../src/workdir/probe.js';
import { exportsFor, ganeshaConfig } from '../../src/workdir/server.js';

describe('shared working directory parts', () => {
  let tmp: string;
  before(() => {
    tmp = mkdtempSync(join(tmpdir(), 'sf-workdir-parts-'));
    mkdirSync(join(tmp, 'a/b'), { recursive: true });
    mkdirSync(join(tmp, 'c'));
    symlinkSync(join(tmp, 'c'), join(tmp, 'link'));
  });
  after(() => rmSync(tmp, { recursive: true, force: true }));

  it('exports each directory once, none inside another, under the path the job named', () => {
    const e = exportsFor([join(tmp, 'a/b'), join(tmp, 'a'), join(tmp, 'a'), join(tmp, 'link')]);
    expect(e).to.deep.equal([
      { path: join(tmp, 'a'), pseudo: join(tmp, 'a') },
      { path: join(tmp, 'c'), pseudo: join(tmp, 'link') },
    ]);
  });

  it('refuses /, missing directories and paths the configuration cannot quote, in one line', () => {
    expect(() => exportsFor(['/'])).to.throw(UsageError, /cannot share \/ with VM clones/);
    expect(() => exportsFor([join(tmp, 'nope')])).to.throw(UsageError, /is not a directory/);
    const bad = join(tmp, 'quo"te');
    mkdirSync(bad);
    expect(() => exportsFor([bad])).to.throw(UsageError, /quote/);
  });

  it("refuses directories that would hide the guest's own system, allows directories below most of them", () => {
    for (const d of ['/usr', '/usr/lib', '/tmp', '/etc', '/etc/ssh', '/proc/self', '/dev', '/var']) {
      expect(() => exportsFor([d]), d).to.throw(UsageError, /would hide the guest's own/);
    }
    // A link to a system directory is refused as well: what counts is what it would hide.
    symlinkSync('/usr/bin', join(tmp, 'bin-link'));
    expect(() => exportsFor([join(tmp, 'bin-link')])).to.throw(UsageError, /would hide/);
    for (const d of ['/usr/share', '/var/tmp', '/root', tmp]) expect(exportsFor([d]).map((e) => e.pseudo), d).to.deep.equal([d]);
  });

  it('configures ganesha for NFSv4 on the gateway only, the clones only, no grace period', () => {
    const conf = ganeshaConfig({ gateway: '10.9.8.1', port: 2049, clients: ['10.9.8.10', '10.9.8.11'], exports: [{ path: '/x', pseudo: '/y' }], dir: '/s' });
    expect(conf).to.match(/Bind_addr = 10\.9\.8\.1;/);
    expect(conf).to.match(/NFS_CORE_PARAM \{[^}]*Protocols = 4;/);
    expect(conf).to.match(/Enable_NLM = false;[\s\S]*Enable_RQUOTA = false;[\s\S]*Enable_UDP = false;/);
    expect(conf).to.match(/Graceless = true;/);
    expect(conf).to.match(/Path = "\/x";\s+Pseudo = "\/y";/);
    expect(conf).to.match(/Access_Type = None;[\s\S]*CLIENT \{ Clients = 10\.9\.8\.10, 10\.9\.8\.11; Access_Type = RW; \}/);
    expect(conf).to.match(/RecoveryRoot = "\/s\/recovery";/);
    expect(() => ganeshaConfig({ gateway: '10.9.8.1', port: 2049, clients: [], exports: [], dir: '/s' })).to.throw(/addresses of the clones/);
  });

  it('mounts with the kernel text options and passes paths as arguments, never as script text', () => {
    expect(nfsMountOptions({ server: '10.9.8.1', port: 2049 })).to.equal('vers=4.2,proto=tcp,port=2049,addr=10.9.8.1,hard,timeo=600,retrans=2');
    expect(nfsMountOptions({ server: '10.9.8.1', port: 2049 }, { soft: true, timeo: 100, retrans: 3 })).to.include(',soft,softerr,timeo=100,retrans=3');
    const argv = guestMountArgv({ server: '10.9.8.1', port: 2049, dirs: ["/w/it's $(here)"] });
    expect(argv.slice(0, 2)).to.deep.equal(['/bin/sh', '-c']);
    expect(argv[2]).to.not.include('here');
    expect(argv.slice(3)).to.deep.equal(['sf-mount', nfsMountOptions({ server: '10.9.8.1', port: 2049 }), '10.9.8.1', "/w/it's $(here)"]);
    expect(() => guestMountArgv({ server: '10.9.8.1', port: 2049, dirs: ['relative'] })).to.throw(/absolute/);
  });

  it('encodes an NFS NULL call and recognises its accepted reply', () => {
    const call = nullCall(0x01020304);
    expect(call.readUInt32BE(0)).to.equal(0x80000028);
    expect(call.readUInt32BE(4)).to.equal(0x01020304);
    expect([12, 16, 20, 24].map((o) => call.readUInt32BE(o))).to.deep.equal([2, 100003, 4, 0]);
    const reply = Buffer.alloc(28);
    reply.writeUInt32BE(0x80000018, 0);
    reply.writeUInt32BE(0x01020304, 4);
    reply.writeUInt32BE(1, 8);
    expect(isSuccessReply(reply, 0x01020304)).to.equal(true);
    expect(isSuccessReply(reply, 7)).to.equal(false);
    reply.writeUInt32BE(1, 24); // PROG_UNAVAIL
    expect(isSuccessReply(reply, 0x01020304)).to.equal(false);
  });

  it('lists guest modules that exist in the guest kernel, each after what it depends on', () => {
    const root = join(settings().cacheDir, 'kernel');
    const version = readdirSync(root).sort().reverse()[0];
    if (!version) throw new Error('no guest kernel in .cache/kernel; run npm run setup (it fetches it)');
    const dir = join(root, version, 'lib', 'modules', version, 'kernel');
    const names = WORKDIR_GUEST_MODULES.map((m) => m.split('/').pop()!);
    WORKDIR_GUEST_MODULES.forEach((m, i) => {
      const text = readFileSync(join(dir, `${m}.ko`)).toString('latin1');
      const deps = /depends=([\w,-]*)/.exec(text)?.[1]?.split(',').filter(Boolean) ?? [];
      for (const d of deps) expect(names.indexOf(d), `${m} needs ${d} loaded before it`).to.be.within(0, i - 1);
    });
  });
});
