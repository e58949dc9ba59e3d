/**
 * Address math of the pool and the names of a ticket's resources (pure functions).
 */
import { expect } from 'chai';
import { UserError } from '../../src/common/errors.js';
import { bridgeName, cloneMac, cloneName, tableName, vethName } from '../../src/ticket/names.js';
import { cloneAddress, gatewayOf, overlaps, parsePool, subnets } from '../../src/network/pool.js';

describe('address pool', () => {
  it('splits a private range into /24s, gateway .1 and clone i at .10+i', () => {
    const pool = parsePool('10.213.0.0/16');
    const all = [...subnets(pool)];
    expect(all).to.have.length(256);
    expect(all[0]).to.equal('10.213.0.0/24');
    expect(all[255]).to.equal('10.213.255.0/24');
    expect(gatewayOf('10.213.4.0/24')).to.equal('10.213.4.1');
    expect(cloneAddress('10.213.4.0/24', 0)).to.equal('10.213.4.10');
    expect(cloneAddress('10.213.4.0/24', 243)).to.equal('10.213.4.253');
    expect(() => cloneAddress('10.213.4.0/24', 244)).to.throw(RangeError);
  });

  it('normalizes the pool and accepts every private range, also above 128.0.0.0', () => {
    expect(parsePool('10.213.7.9/16').cidr).to.equal('10.213.0.0/16');
    expect([...subnets(parsePool('192.168.5.0/24'))]).to.deep.equal(['192.168.5.0/24']);
    expect([...subnets(parsePool('172.16.0.0/23'))]).to.deep.equal(['172.16.0.0/24', '172.16.1.0/24']);
  });

  for (const bad of ['8.8.0.0/16', '172.32.0.0/16', '10.0.0.0/25', 'ten', '10.0.0.0', '10.300.0.0/16', '']) {
    it(`refuses the pool ${JSON.stringify(bad)} with one line`, () => {
      expect(() => parsePool(bad)).to.throw(UserError, /^address pool .* private IPv4 range/);
    });
  }

  it('tells overlapping ranges apart', () => {
    expect(overlaps('10.213.4.0/24', '10.213.0.0/16')).to.equal(true);
    expect(overlaps('10.213.4.0/24', '10.213.4.77/32')).to.equal(true);
    expect(overlaps('10.213.4.0/24', '10.213.5.0/24')).to.equal(false);
    expect(overlaps('192.168.1.0/24', '10.0.0.0/8')).to.equal(false);
  });
});

describe('resource names', () => {
  it('derives every name from the ticket id, within 15 characters', () => {
    expect(bridgeName('a1b2c3')).to.equal('sfa1b2c3');
    expect(tableName('a1b2c3')).to.equal('sf_a1b2c3');
    expect(vethName('a1b2c3', 243)).to.equal('sfa1b2c3v243');
    expect(vethName('a1b2c3', 243).length).to.be.at.most(15);
    expect(cloneName('a1b2c3', 5)).to.equal('sfa1b2c3-5');
  });

  it('gives locally administered unicast MACs, distinct per clone', () => {
    expect(cloneMac('a1b2c3', 0)).to.equal('02:a1:b2:c3:00:00');
    expect(cloneMac('a1b2c3', 243)).to.equal('02:a1:b2:c3:00:f3');
  });
});
