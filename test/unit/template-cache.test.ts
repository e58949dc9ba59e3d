/**
 * The VM template cache stays bounded (templates hold guest RAM in tmpfs): the least recently used
 * go first, a template used in the last half hour stays. Real directories in a temporary root.
 */
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, utimesSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { logger } from '../../src/common/log.js';
import { evictTemplates, MAX_TEMPLATES } from '../../src/providers/vm/checkpoint.js';

describe('VM template cache', () => {
  let root: string;
  const before = process.env.SNOWFLOCK_TEMPLATE_ROOT;

  beforeEach(() => {
    root = mkdtempSync(join(tmpdir(), 'sf-tplcache-'));
    process.env.SNOWFLOCK_TEMPLATE_ROOT = root;
  });
  afterEach(() => {
    if (before === undefined) delete process.env.SNOWFLOCK_TEMPLATE_ROOT;
    else process.env.SNOWFLOCK_TEMPLATE_ROOT = before;
    rmSync(root, { recursive: true, force: true });
  });

  function template(name: string, hoursAgo: number): string {
    const dir = join(root, `snowflock-tpl-${name}`);
    mkdirSync(dir);
    const t = new Date(Date.now() - hoursAgo * 3600_000);
    utimesSync(dir, t, t);
    return dir;
  }

  it('removes the least recently used beyond the bound and keeps one used just now', () => {
    const old = Array.from({ length: MAX_TEMPLATES + 2 }, (_, i) => template(`${i}a`, 20 - i));
    const recent = template('ff', 0);
    const build = join(root, 'snowflock-tpl-ee.build-1'); // a build in progress is not a template
    mkdirSync(build);
    evictTemplates(1, logger('test'));
    const left = readdirSync(root).filter((n) => !n.includes('.build-'));
    expect(left.length).to.equal(MAX_TEMPLATES - 1);
    expect(existsSync(recent), 'the template used just now').to.equal(true);
    expect(existsSync(old[0]!), 'the least recently used').to.equal(false);
    expect(existsSync(old[old.length - 1]!), 'the most recently used of the old ones').to.equal(true);
    expect(existsSync(build)).to.equal(true);
  });

  it('leaves a cache within the bound alone', () => {
    for (let i = 0; i < 3; i++) template(`${i}b`, 5);
    evictTemplates(1, logger('test'));
    expect(readdirSync(root).length).to.equal(3);
  });
});
