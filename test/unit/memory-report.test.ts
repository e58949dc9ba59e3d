/**
 * readSettled (src/memory/report.ts): a job's memory figures are read from live helpers on
 * several hosts while the clones still run; the report takes them once two reads agree.
 */
import { expect } from 'chai';
import { readSettled, type MemoryFigures, type MemoryHostFigures } from '../../src/memory/report.js';

function figures(pagesFetched: number, dataPages: number): MemoryFigures {
  const host = { host: 'b', guestPages: 65536, pagesFetched, bytesReceived: pagesFetched * 4096 } as MemoryHostFigures;
  return { hosts: [host], servers: [{ address: '10.0.0.1:1', bytesSent: dataPages * 4096, multicastBytes: 0, dataBytes: dataPages * 4096, clients: 1, multicast: null }] };
}

describe('memory figures for the report', () => {
  it('are read again until two reads agree: a page sent and not yet counted is not reported', async () => {
    const reads = [figures(10, 12), figures(12, 12), figures(12, 12), figures(99, 99)];
    let n = 0;
    const got = await readSettled(async () => reads[n++]!);
    expect(n).to.equal(3);
    expect(got!.servers[0]!.dataBytes).to.equal(got!.hosts[0]!.pagesFetched * 4096);
  });

  it('take the last read when they never settle, within about a second, and nothing when there is no memory on demand', async () => {
    let n = 0;
    const t0 = performance.now();
    const got = await readSettled(async () => figures(++n, n));
    expect(performance.now() - t0).to.be.within(900, 5000);
    expect(got!.hosts[0]!.pagesFetched).to.equal(n);
    let asked = 0;
    expect(await readSettled(async () => (asked++, null))).to.equal(null);
    expect(asked).to.equal(1);
  });
});
