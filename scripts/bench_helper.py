#!/usr/bin/env python3
"""Helpers for scripts/bench.sh: free ports, data sets, and the result table.

  bench_helper.py ports N                 N free loopback ports p with p+10000 free too (weed's gRPC offset)
  bench_helper.py small DIR N             N random files of 4 KiB-256 KiB (mean ~100 KiB) in nested dirs
  bench_helper.py tiny DIR N              a Galaxy-like job workdir of N random files of 0-2 KiB
  bench_helper.py big FILE MIB            one random file of MIB MiB
  bench_helper.py workdir DIR N           N random files of 1-64 KiB in nested dirs (a job's workdir)
  bench_helper.py table RESULTS.tsv       markdown table from bench.sh's raw results (stdout)
  bench_helper.py setreqs RESULTS.tsv DONE.json   the sidecar's request counts into the last row
  bench_helper.py readme README.md LATEST.md      rewrite the README's benchmark block
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


def gen_workdir(root, n):
    """n random files of 1-64 KiB (uniform) in nested directories, like a job's working directory."""
    rng = random.Random(14)
    total = 0
    for i in range(n):
        size = rng.randint(1 * KIB, 64 * KIB)
        sub = f"d{i % 10:02d}/e{(i // 10) % 5}" if i % 7 else f"d{i % 10:02d}"
        write_random(os.path.join(root, sub, f"f{i:05d}.dat"), size)
        total += size
    print(f"workdir: {n} files, {total / MIB:.1f} MiB", file=sys.stderr)


# row -> (A, B, what is compared, target ratio A/B, how the target is phrased)
ROWS = {
    "wd_down": ("ferry", "s5cmd", "`ferry init` vs `s5cmd cp` of the workdir (ferry: packed)", 0.5, "init ≤ 0.5× s5cmd, 3000 small files"),
    "wd_up": ("ferry", "s5cmd", "`ferry stage` vs `s5cmd cp` upload of the workdir (ferry: packed)", None, "(no target; stage is the head's side)"),
    "sidecar_up": ("sidecar", "s5cmd", "`ferry sidecar` vs `s5cmd cp` upload of the workdir the job wrote", 0.5, "sidecar upload ≤ 0.5× s5cmd, 3000 files"),
    "big_down": ("ferry", "s5cmd", "`ferry init` vs `s5cmd cp` of one big file", 1.0, "init ≤ 1.0× s5cmd, one big file"),
    "restage_cold": ("big", "one_kib", "re-stage of a job whose input S3 holds: big input vs 1 KiB input, page cache dropped", 1.2, "re-stage ≤ 1.2× a 1 KiB one, cold"),
}


def table(path):
    """Input rows: row tool run secs cpu files ok reqs. Run 0 is the warm-up pair and is not counted."""
    rows = [line.rstrip("\n").split("\t") for line in open(path) if line.strip()]
    runs = {}  # (row, tool) -> {run: (secs, cpu, files, ok, reqs)}
    for r in rows:
        row, tool, run, secs, cpu, files, ok = r[:7]
        reqs = r[7] if len(r) > 7 else ""
        runs.setdefault((row, tool), {})[int(run)] = (float(secs), float(cpu), int(files), ok == "ok", reqs)
    out = ["| comparison (A vs B) | A s | B s | A/B (median of pairs) | target | verdict | A CPU ms/file | B CPU ms/file | A requests |",
           "|---|---|---|---|---|---|---|---|---|"]
    for row, (a, b, what, target, phrase) in ROWS.items():
        ra, rb = runs.get((row, a), {}), runs.get((row, b), {})
        measured = sorted(k for k in ra if k > 0 and k in rb)
        if not measured:
            continue
        if not all(ra[k][3] and rb[k][3] for k in measured):
            out.append(f"| {what} | FAIL | FAIL | – | {phrase} | a run failed | – | – | – |")
            continue
        ma = statistics.median(ra[k][0] for k in measured)
        mb = statistics.median(rb[k][0] for k in measured)
        ratio = statistics.median(ra[k][0] / rb[k][0] for k in measured)
        cpu = lambda r: statistics.median(r[k][1] / max(r[k][2], 1) for k in measured) * 1000
        if target is None:
            verdict = "–"
        elif ratio <= target:
            verdict = "met"
        else:
            verdict = f"missed by {(ratio / target - 1) * 100:.0f} %"
        reqs = ra[measured[-1]][4] or "–"
        tgt = phrase if target is None else f"≤ {target:g}"
        out.append(f"| {what} | {ma:.2f} | {mb:.2f} | {ratio:.2f} | {tgt} | {verdict} | {cpu(ra):.2f} | {cpu(rb):.2f} | {reqs} |")
    print("\n".join(out))


def setreqs(path, done):
    """Puts the request counts of a sidecar's done.json into the last result row."""
    import json
    r = json.load(open(done))["requests"]
    reqs = " ".join(f"{k}={r[k]}" for k in ("get", "put", "head", "multipart") if k in r)
    lines = open(path).read().splitlines()
    cells = lines[-1].split("\t")
    cells = cells[:7] + [reqs]
    lines[-1] = "\t".join(cells)
    open(path, "w").write("\n".join(lines) + "\n")


def readme(path, latest):
    """Replaces the text between the benchmark markers of the README with the latest report."""
    text = open(path).read()
    begin, end = "<!-- bench:begin (scripts/bench.sh rewrites this block) -->", "<!-- bench:end -->"
    if begin not in text or end not in text:
        sys.exit(f"bench_helper: no benchmark markers in {path}")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    body = open(latest).read().strip()
    open(path, "w").write(f"{head}{begin}\n{body}\n{end}{tail}")


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
    elif cmd == "workdir":
        gen_workdir(args[0], int(args[1]))
    elif cmd == "table":
        table(args[0])
    elif cmd == "setreqs":
        setreqs(args[0], args[1])
    elif cmd == "readme":
        readme(args[0], args[1])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
