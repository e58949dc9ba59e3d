/**
 * Progress lines (launcher/cli/progress.ts) as a terminal and as a pipe receive them, driven by
 * real timed steps (src/common/log.ts): a pipe gets one line per finished slow step and nothing
 * for fast ones; a terminal gets one line redrawn in place while a slow step runs, erased at the end.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { expect } from 'chai';
import { logger, timed } from '../../src/common/log.js';
import { LINE_AFTER_MS, SHOW_AFTER_MS, showProgress, stepName } from '../../launcher/cli/progress.js';

const log = logger('test');

function target(isTTY: boolean) {
  const writes: string[] = [];
  return { writes, out: { isTTY, columns: 60, write: (t: string) => writes.push(t) } };
}

describe('progress lines', function () {
  this.timeout(20_000);

  it('in a pipe: one line per finished step that took long, none for quick ones, no redrawing', async () => {
    const { writes, out } = target(false);
    const stop = showProgress('sfmpirun', out);
    await timed(log, 'ticket abc123: network', () => sleep(10));
    await timed(log, 'ticket abc123: checkpoint', () => timed(log, 'guest image build', () => sleep(LINE_AFTER_MS + 100)));
    stop();
    expect(writes).to.have.length(2);
    expect(writes[0]).to.match(/^sfmpirun: guest image build: 1\.\d s\n$/);
    expect(writes[1]).to.match(/^sfmpirun: checkpoint: 1\.\d s\n$/);
    expect(writes.join('')).not.to.include('\r');
  });

  it('on a terminal: one line updated in place while a slow step runs, erased when the steps are over', async () => {
    const { writes, out } = target(true);
    const stop = showProgress('snowflock', out);
    await timed(log, 'ticket abc123: network', () => sleep(10));
    expect(writes, 'a quick step shows nothing').to.deep.equal([]);
    await timed(log, 'ticket abc123: checkpoint', () => timed(log, 'template boot', () => sleep(SHOW_AFTER_MS + 700)));
    stop();
    const draws = writes.filter((w) => w !== '\r\x1b[K');
    expect(draws.length, 'redrawn while it runs').to.be.greaterThan(1);
    expect(draws.some((d) => d.includes('checkpoint › template boot')), 'the step under way, inside its parent').to.equal(true);
    for (const d of draws) {
      expect(d).to.match(/^\r\x1b\[Ksnowflock: checkpoint( › template boot)? \(\d+\.\d s\)$/);
      expect(d.length - 4, 'fits the terminal').to.be.at.most(59);
    }
    expect(writes.at(-1), 'erased at the end').to.equal('\r\x1b[K');
    expect(writes.join('')).not.to.include('\n');
  });

  it('names steps without their ticket id', () => {
    expect(stepName('ticket 0a1b2c: 8 clones')).to.equal('8 clones');
    expect(stepName('guest image build')).to.equal('guest image build');
  });
});
