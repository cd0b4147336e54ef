#!/usr/bin/env python3
"""Helpers for scripts/bench.sh: free ports, data sets, and the result table.

  bench_helper.py ports N                 N free loopback ports p with p+10000 free too (weed's gRPC offset)
  bench_helper.py small DIR N             N random files of 4 KiB-256 KiB (mean ~100 KiB) in nested dirs
  bench_helper.py tiny DIR N              a Galaxy-like job workdir of N random files of 0-2 KiB
  bench_helper.py big FILE MIB            one random file of MIB MiB
  bench_helper.py table RESULTS.tsv       markdown table from bench.sh's raw results (stdout)
"""
import os
import random
import socket
import statistics
import sys

KIB = 1024
MIB = 1024 * KIB


def free_ports(n):
    """Ports that are free now, each with port+10000 free too (weed binds gRPC there)."""
    held, ports = [], []
    rng = random.SystemRandom()
    tries = 0
    while len(ports) < n:
        tries += 1
        if tries > 5000:
            sys.exit("bench_helper: no free ports found")
        p = rng.randrange(20000, 50000)
        if p in ports or p + 10000 in ports or p - 10000 in ports:
            continue
        pair = []
        try:
            for q in (p, p + 10000):
                s = socket.socket()
                s.bind(("127.0.0.1", q))
                pair.append(s)
        except OSError:
            for s in pair:
                s.close()
            continue
        held += pair
        ports.append(p)
    for s in held:
        s.close()
    print(" ".join(map(str, ports)))


def write_random(path, size):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 16 * MIB)
            f.write(os.urandom(n))
            left -= n


def gen_small(root, n):
    """n files, sizes triangular(4 KiB, 256 KiB, mode 47 KiB): mean ~102 KiB, so 2000 files ~200 MiB."""
    rng = random.Random(42)
    total = 0
    for i in range(n):
        size = int(rng.triangular(4 * KIB, 256 * KIB, 47 * KIB))
        # three levels: 10 x 5 directories, some files at the second level
        a, b = i % 10, (i // 10) % 5
        sub = f"d{a:02d}/e{b}" if i % 7 else f"d{a:02d}"
        write_random(os.path.join(root, sub, f"f{i:05d}.bin"), size)
        total += size
    print(f"small: {n} files, {total / MIB:.1f} MiB", file=sys.stderr)


def gen_tiny(root, n):
    """A Galaxy-like job working directory: scripts and configs at the top, many small files below."""
    rng = random.Random(7)
    top = ["tool_script.sh", "galaxy_1.sh", "galaxy_1.o", "galaxy_1.e", "galaxy_1.ec",
           "metadata/params.json", "metadata/outputs_populated", "configs/tmpabcd.json"]
    names = list(top)
    i = 0
    while len(names) < n:
        area = ("working", "working/tmp", "outputs", "metadata/results", "working/dataset_1_files")[i % 5]
        names.append(f"{area}/part{i // 5 // 200:03d}/file_{i:05d}.txt")
        i += 1
    total = 0
    for name in names[:n]:
        size = rng.randint(0, 2 * KIB)
        write_random(os.path.join(root, name), size)
        total += size
    print(f"tiny: {n} files, {total / MIB:.1f} MiB", file=sys.stderr)


def gen_big(path, mib):
    write_random(path, mib * MIB)
    print(f"big: 1 file, {mib} MiB", file=sys.stderr)


def table(path):
    """Input rows: set dir tool run secs rss_kb ok reqs. Output: the markdown table and the request lines."""
    rows = [line.rstrip("\n").split("\t") for line in open(path) if line.strip() and not line.startswith("#")]
    sets, tools, reqs = [], [], {}
    data = {}  # (set, dir, tool) -> list of (secs, rss, ok)
    phases = {}  # (set, dir) -> ferry (wall, transfer phase from its own log)
    cpus = {}  # (set, dir, tool) -> client CPU seconds (user + sys) per run
    labels = {}
    for r in rows:
        if r[0] == "label":
            labels[r[1]] = r[2]
            continue
        st, d, tool, _run, secs, rss, ok, req, cpu = r[:9]
        xfer = r[9] if len(r) > 9 else ""
        if tool == "ferry" and xfer and ok == "ok":
            phases.setdefault((st, d), []).append((float(secs), float(xfer)))
        if st not in sets:
            sets.append(st)
        if tool not in tools:
            tools.append(tool)
        data.setdefault((st, d, tool), []).append((float(secs), int(rss or 0), ok == "ok"))
        cpus.setdefault((st, d, tool), []).append(float(cpu or 0))
        if tool == "ferry" and req:
            reqs[(st, d)] = req

    def med(st, d, tool):
        v = data.get((st, d, tool), [])
        good = [s for s, _, ok in v if ok]
        if not v:
            return None, "–"
        if len(good) < len(v):
            return None, f"FAIL {len(v) - len(good)}/{len(v)}"
        m = statistics.median(good)
        return m, f"{m:.2f}"

    def rss(st, d, tool):
        v = [r for _, r, ok in data.get((st, d, tool), []) if ok]
        return f"{max(v) / 1024:.0f}" if v else "–"

    out = ["| data set | direction | ferry s | s5cmd s | rclone s | aws s | ferry/s5cmd | peak RSS ferry MiB | peak RSS s5cmd MiB |",
           "|---|---|---|---|---|---|---|---|---|"]
    for st in sets:
        for d in ("up", "down"):
            if not any((st, d, t) in data for t in tools):
                continue
            cells = {t: med(st, d, t) for t in ("ferry", "s5cmd", "rclone", "aws")}
            f, s = cells["ferry"][0], cells["s5cmd"][0]
            ratio = f"{f / s:.2f}" if f is not None and s else "–"
            out.append(f"| {labels.get(st, st)} | {d} | {cells['ferry'][1]} | {cells['s5cmd'][1]} | {cells['rclone'][1]} | "
                       f"{cells['aws'][1]} | {ratio} | {rss(st, d, 'ferry')} | {rss(st, d, 's5cmd')} |")
    print("\n".join(out))
    print()
    print("Client CPU seconds (user + sys, median; the server's CPU is not included):")
    print()
    print("| data set | direction | ferry | s5cmd | rclone | aws |")
    print("|---|---|---|---|---|---|")
    for st in sets:
        for d in ("up", "down"):
            if not any((st, d, t) in cpus for t in tools):
                continue
            c = [f"{statistics.median(cpus[(st, d, t)]):.2f}" if (st, d, t) in cpus else "–" for t in ("ferry", "s5cmd", "rclone", "aws")]
            print(f"| {labels.get(st, st).split(' (')[0]} | {d} | " + " | ".join(c) + " |")
    if phases:
        print()
        parts = []
        for (st, d), v in phases.items():
            w, x = statistics.median(a for a, _ in v), statistics.median(b for _, b in v)
            parts.append(f"{labels.get(st, st).split(' (')[0]} {d} {w:.2f}/{x:.2f}/{w - x:.2f}")
        print("ferry wall / transfer phase (its log) / rest, s, medians: " + "; ".join(parts)
              + ". The rest is the scan + CRC64 pass before uploading (stage), manifest + planning (init), start and exit.")
    if reqs:
        print()
        print("ferry S3 requests per job: " + "; ".join(f"{labels.get(st, st).split(' (')[0]} {d}: {q}" for (st, d), q in reqs.items()))


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "ports":
        free_ports(int(args[0]))
    elif cmd == "small":
        gen_small(args[0], int(args[1]))
    elif cmd == "tiny":
        gen_tiny(args[0], int(args[1]))
    elif cmd == "big":
        gen_big(args[0], int(args[1]))
    elif cmd == "table":
        table(args[0])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
