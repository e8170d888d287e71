"""Training throughput of one process vs ``--strategy=multi_worker`` with two worker processes on this machine.

Runs ``python -m kws_quant.train`` on the synthetic task (float phase only, the same global batch and seed) as one
process, and as two workers on 127.0.0.1 (``TF_CONFIG`` per worker, free ports), and prints one markdown row per
setting: Keras' own time per step (median over the epochs after the first, which traces the step), steps per second,
the whole command's wall time, and the final training accuracy. Both settings run without XLA (TensorFlow has no
XLA collectives on CPU devices), so the ratio isolates the protocol's cost. Two workers on one machine share its
cores: this shows what the protocol costs, not a speed-up (that needs one machine per worker).

    python benchmarks/bench_distributed.py --epochs 5 --clips_per_keyword 120 --batch 64
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--clips_per_keyword", type=int, default=120)
    p.add_argument("--batch", type=int, default=64, help="global batch (split across the workers)")
    return p


if __name__ == "__main__":
    parser().parse_args()  # --help answers before TensorFlow is imported


from kws_quant.distributed import free_local_ports  # noqa: E402
STEP_TIME = re.compile(r"^\d+/\d+ - \S+ - (\d+(?:\.\d+)?)(ms|s)/step", re.MULTILINE)


def train_args(workdir: str, cache: str, a) -> list[str]:
    return [sys.executable, "-m", "kws_quant.train", f"--workdir={workdir}", "--verbose=2",
            f"--config.data.cache_dir={cache}", f"--config.data.synthetic.clips_per_keyword={a.clips_per_keyword}",
            f"--config.data.synthetic.unknown_clips={a.clips_per_keyword}",
            f"--config.data.synthetic.silence_clips={a.clips_per_keyword // 2}", f"--config.data.batch_size={a.batch}",
            f"--config.train.float_epochs={a.epochs}", "--config.train.jit_compile=False", "--config.qat.recipes=()",
            "--config.qat.ptq_recipes=()", "--config.report.enabled=False", "--config.export.enabled=False"]


def step_seconds(log: str) -> float:
    """Median of Keras' per-step time over the epochs after the first."""
    times = [float(v) / (1000 if unit == "ms" else 1) for v, unit in STEP_TIME.findall(log)]
    if len(times) < 2:
        raise RuntimeError(f"fewer than 2 epochs logged:\n{log[-2000:]}")
    return statistics.median(times[1:])


def run(commands: list[tuple[list[str], dict]]) -> tuple[list[str], float]:
    """Start the commands together, wait for all; their outputs and the wall time."""
    start = time.perf_counter()
    procs = [subprocess.Popen(c, cwd=ROOT, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for c, e in commands]
    try:
        outs = [p.communicate()[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outs):
        if p.returncode:
            raise RuntimeError(f"exit {p.returncode}:\n{out[-3000:]}")
    return outs, time.perf_counter() - start


def main(argv=None) -> None:
    a = parser().parse_args(argv)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
    env.pop("TF_CONFIG", None)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = os.path.join(tmp, "cache")
        outs, wall = run([(train_args(os.path.join(tmp, "one"), cache, a), env)])
        rows.append(("1 process", os.path.join(tmp, "one"), outs[0], wall))
        hosts = [f"127.0.0.1:{port}" for port in free_local_ports(2)]
        cmds = [([*train_args(os.path.join(tmp, "two"), cache, a), "--strategy=multi_worker"],
                 {**env, "TF_CONFIG": json.dumps({"cluster": {"worker": hosts},
                                                  "task": {"type": "worker", "index": i}})}) for i in range(2)]
        outs, wall = run(cmds)
        rows.append(("2 workers (127.0.0.1)", os.path.join(tmp, "two"), outs[0], wall))
        print(f"\n{a.epochs} epochs, global batch {a.batch}, {a.clips_per_keyword} synthetic clips per keyword, "
              f"{os.cpu_count()} CPU cores\n")
        print("| setting | s/step | steps/s | vs 1 process | command wall s | final train accuracy |")
        print("|---|---|---|---|---|---|")
        base = None
        for name, workdir, log, wall in rows:
            s = step_seconds(log)
            base = base or s
            with open(os.path.join(workdir, "metrics.json")) as f:
                acc = json.load(f)["float"]["history"]["accuracy"][-1]
            print(f"| {name} | {s:.3f} | {1 / s:.2f} | {base / s:.2f}x | {wall:.0f} | {acc:.4f} |")


if __name__ == "__main__":
    main()
