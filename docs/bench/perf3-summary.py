#!/usr/bin/env python3
"""perf3-summary.py FILE A B [DIVISOR]: medians per tag of cpu, wall, hwm, p50, p99 and
the median of pairwise ratios B/A (runs alternate A B A B ...)."""
import re, sys, statistics as st
path, a, b = sys.argv[1:4]
div = float(sys.argv[4]) if len(sys.argv) > 4 else 1.0
rows = {a: [], b: []}
for line in open(path):
    f = line.split()
    if len(f) < 3 or f[0] not in rows: continue
    d = dict(kv.split('=', 1) for kv in f if '=' in kv)
    m50 = re.search(r'p50 ([\d.]+) ms', line); m99 = re.search(r'p99 ([\d.]+) ms', line)
    rows[f[0]].append(dict(cpu=float(d['cpu']), wall=float(d['wall']), hwm=float(d['hwm']) / 1024,
                           p50=float(m50.group(1)) if m50 else 0, p99=float(m99.group(1)) if m99 else 0,
                           ok=d['status'] == '0'))
for k in ('cpu', 'wall', 'hwm', 'p50', 'p99'):
    ma = st.median(r[k] for r in rows[a]); mb = st.median(r[k] for r in rows[b])
    ratios = [y[k] / x[k] for x, y in zip(rows[a], rows[b]) if x[k]]
    scale = f"  per-unit ns: {ma/div*1e9:.0f} -> {mb/div*1e9:.0f}" if k == 'cpu' and div != 1 else ''
    print(f"{k:5} {a}={ma:.3f} {b}={mb:.3f} ratio-median={st.median(ratios):.3f} (n={len(ratios)}){scale}")
print("all ok:", all(r['ok'] for r in rows[a] + rows[b]))
