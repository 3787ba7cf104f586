"""Pipeline time with output on S3 at realistic latency: moto direct vs. through the latency proxy.

    python benchmarks/storage_latency_bench.py --records 1500 --latency-ms 25

Starts moto's S3 server and benchmarks/s3proxy.py on 127.0.0.1, writes a corpus of toy-translator
sentences, and runs the same ``--local`` pipeline (toy translator, saliency) into a fresh prefix twice:
straight to moto and through the proxy adding ``--latency-ms`` to every request. Prints both times and
their ratio (the target: at most 1.3x).
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int) -> None:
    for _ in range(200):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def run_once(corpus: Path, endpoint: str, prefix: str) -> float:
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "inseq_ray.cli", "attribute-dataset", "--local", "--quiet", "--no-report"]
    cmd += ["--input", str(corpus), "--output", prefix]
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, cwd=ROOT)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=1500)
    p.add_argument("--latency-ms", type=float, default=25.0)
    args = p.parse_args()
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    )  # fmt: skip
    from moto.server import ThreadedMotoServer

    moto_port, proxy_port = free_port(), free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=moto_port, verbose=False)
    moto.start()
    direct = f"http://127.0.0.1:{moto_port}"
    proxy = subprocess.Popen(
        [sys.executable, str(ROOT / "benchmarks" / "s3proxy.py"), "--listen", f"127.0.0.1:{proxy_port}",
         "--upstream", direct, "--latency-ms", str(args.latency_ms)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_port(proxy_port)
        import boto3

        boto3.client("s3", endpoint_url=direct, region_name="us-east-1").create_bucket(Bucket="bench")
        sys.path.insert(0, str(ROOT))
        from inseq_ray.toy.tasks import translation_pair

        corpus = Path(tempfile.mkdtemp()) / "corpus.txt"
        rng = random.Random(7)
        corpus.write_text("".join(translation_pair(rng)[0] + "\n" for _ in range(args.records)))
        t_direct = run_once(corpus, direct, "s3://bench/direct")
        t_latency = run_once(corpus, f"http://127.0.0.1:{proxy_port}", "s3://bench/latency")
    finally:
        proxy.terminate()
        moto.stop()
    print(f"{args.records} records, output on S3 (moto), --local, toy translator, saliency")
    print(f"direct:             {t_direct:6.1f} s  ({args.records / t_direct:6.1f} records/s)")
    print(f"+{args.latency_ms:.0f} ms per request: {t_latency:6.1f} s  ({args.records / t_latency:6.1f} records/s)")
    print(f"ratio: {t_latency / t_direct:.2f}x (target <= 1.3x)")


if __name__ == "__main__":
    main()
