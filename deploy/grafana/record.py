#!/usr/bin/env python3
"""Scrape drover /metrics endpoints every few seconds and keep the samples.

    deploy/grafana/record.py --seconds 180 --out /tmp/drover-scrapes.jsonl \
        drover-controller=http://10.213.1.11:9464/metrics ... \
        drover-agent=http://10.213.1.101:9465/metrics ...

Each line of the output is one scrape: {"t": unix seconds, "job": ..., "instance":
host:port, "samples": {"name{labels}": value}}. A target that does not answer
(a killed host) is recorded as {"up": 0}. render.py draws the dashboard from it.
Standard library only.
"""
import argparse
import json
import re
import sys
import time
import urllib.request

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$')


def parse(text):
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        if not m:
            raise ValueError(f"not a sample line: {line!r}")
        out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=180)
    ap.add_argument("--every", type=float, default=2)
    ap.add_argument("--out", required=True)
    ap.add_argument("targets", nargs="+", help="JOB=URL")
    args = ap.parse_args()
    targets = []
    for t in args.targets:
        job, _, url = t.partition("=")
        if not url.startswith("http://"):
            sys.exit(f"record.py: target {t!r} is not JOB=http://HOST:PORT/metrics")
        targets.append((job, url))
    end = time.time() + args.seconds
    with open(args.out, "w") as f:
        while time.time() < end:
            started = time.time()
            for job, url in targets:
                instance = url.split("/")[2]
                row = {"t": started, "job": job, "instance": instance}
                try:
                    with urllib.request.urlopen(url, timeout=2) as r:
                        row["samples"] = parse(r.read().decode())
                        row["up"] = 1
                except OSError:
                    row["up"] = 0
                f.write(json.dumps(row) + "\n")
            f.flush()
            time.sleep(max(0, args.every - (time.time() - started)))


if __name__ == "__main__":
    main()
