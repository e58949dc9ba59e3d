/** The benchmarks' SVG charts (benchmarks/lib/svg.ts): what they draw, and nothing broken in it. */
import { expect } from 'chai';
import { barChart, lineChart, tick } from '../../benchmarks/lib/svg.js';

describe('benchmark charts', () => {
  it('draws every series of a line chart with its legend, on log axes too, without NaN', () => {
    const svg = lineChart({
      title: 'T <&>',
      xLabel: 'x',
      yLabel: 'y',
      logX: true,
      series: [
        { name: 'a', points: [[1, 2], [8, 3], [32, 9]] },
        { name: 'goal', points: [[1, 2], [32, 2]], dashed: true },
      ],
    });
    expect(svg).to.match(/^<svg [^>]*xmlns="http:\/\/www.w3.org\/2000\/svg"/).and.match(/<\/svg>\n$/);
    expect(svg).to.include('T &lt;&amp;&gt;').and.include('>a</text>').and.include('>goal</text>').and.include('stroke-dasharray');
    expect(svg.match(/<path /g)).to.have.length(2);
    expect(svg).not.to.include('NaN').and.not.to.include('Infinity');
  });

  it('says when there is nothing to draw', () => {
    expect(lineChart({ title: 't', xLabel: 'x', yLabel: 'y', series: [] })).to.include('no data');
    expect(barChart({ title: 't', yLabel: 'y', groups: [], empty: 'not yet' })).to.include('not yet');
  });

  it('draws one bar per group and series', () => {
    const svg = barChart({ title: 't', yLabel: 'y', groups: [{ label: 'sfmpirun', bars: [{ name: 's', value: 3 }] }, { label: 'hydra', bars: [{ name: 's', value: 80 }] }] });
    expect(svg.match(/<rect x="[\d.]+" y="[\d.]+" width/g)).to.have.length(2 + 1 + 1); // two bars, the legend swatch, the frame
    expect(svg).not.to.include('NaN');
  });

  it('labels axes briefly', () => {
    expect([tick(0), tick(1024), tick(4 << 20), tick(0.25), tick(12.5), tick(1500)]).to.deep.equal(['0', '1K', '4M', '0.25', '12.5', '1500']);
  });
});
