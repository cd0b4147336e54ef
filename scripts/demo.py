"""README command 1: a sample Galaxy job through stage → pod → collect on a local S3 + podman.

Galaxy 26.1.2's own Kubernetes runner writes the job script and the Job spec; ferry stages the job
to SeaweedFS on 127.0.0.1, `ferry inject` adds the init container and the sidecar, `podman kube
play` runs the pod (hostNetwork), and `ferry collect` brings the results back.
"""

import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests/pods"))
import galaxyjob  # noqa: E402
import podlib  # noqa: E402


def main():
    started = time.time()
    s3 = podlib.S3(tempfile.mkdtemp(prefix="ferry-demo-s3-"))
    base = Path(tempfile.mkdtemp(prefix="ferry-demo-"))
    try:
        files = base / "galaxy/files/000"
        files.mkdir(parents=True)
        src, out = files / "dataset_1.dat", files / "dataset_2.dat"
        src.write_text(">seq1\nacgtacgtnnacgt\n>seq2\nttgacca\n")
        print(f"S3: SeaweedFS at {s3.endpoint}; head node files under {base}")
        r = galaxyjob.run(s3, base, "1", f"grep -v '>' {src} | tr a-z A-Z > {out}; echo 'demo tool ran'",
                          inputs=[src], outputs=[out])
        for name, log in r.logs.items():
            print(f"--- podman logs {name}")
            print(log.rstrip())
        if r.play_rc != 0 or r.collect.returncode != 0:
            print(f"demo FAILED: play exit {r.play_rc}, collect: {r.collect and r.collect.stderr}")
            return 1
        print("--- collect")
        print(r.collect.stderr.rstrip())
        print("--- results on the head node")
        print(f"{out}: {out.read_text()!r}")
        print(f"tool_stdout: {(r.job_dir / 'outputs/tool_stdout').read_text()!r}")
        print(f"galaxy_1.ec: {(r.job_dir / 'galaxy_1.ec').read_text().strip()}")
        print(f"done.json: exit_code={r.done['exit_code']} reason={r.done['reason']} "
              f"files_uploaded={r.done['files_uploaded']} requests={r.done['requests']}")
        print(f"demo OK in {time.time() - started:.1f} s: stage → init → tool ‖ sidecar → collect")
        return 0
    finally:
        s3.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
