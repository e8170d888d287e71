"""Every benchmark script's documented options run: --help, then one tiny configuration per option."""
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.subprocess, pytest.mark.slow]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = sorted(n for n in os.listdir(os.path.join(ROOT, "benchmarks")) if n.startswith("bench_"))


def bench(name, *args, timeout=600):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, os.path.join("benchmarks", name), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.mark.parametrize("name", BENCHMARKS)
def test_help(name):
    out = bench(name, "--help")
    assert out.returncode == 0 and "usage" in out.stdout.lower(), out.stderr[-2000:]


def test_qat_step_xla_with_breakdown():
    """--jit on used to crash with KeyError: 'float' (its ratio baseline, the non-XLA float step, is not measured
    then). --jit off builds the same three models with jit_compile=False; the tiny run of the zoo and training tests
    cover that path."""
    out = bench("bench_qat_step.py", "--batch", "4", "--rounds", "1", "--steps", "1", "--jit", "on", "--breakdown",
                "--groups", "kernel")  # one breakdown model: each costs an XLA compilation
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| tanh4 stage 2")]
    assert len(rows) == 1 and rows[0].count("|") == 6
    assert [line.split("|")[1].strip() for line in out.stdout.splitlines() if line.startswith("| only")] == \
        ["only kernel, XLA"]


def test_rnnt_loss_tiny():
    out = bench("bench_rnnt_loss.py", "--batch", "2", "--frames", "12", "--labels", "4", "--vocab", "6", "--reps",
                "1", "--warmup", "1")
    assert out.returncode == 0, out.stderr[-3000:]


def test_stream_scan_tiny():
    out = bench("bench_stream_scan.py", "--minutes", "0.2", "--hops", "2", "--rounds", "1")
    assert out.returncode == 0, out.stderr[-3000:]


def test_tflite_tiny():
    pytest.importorskip("ai_edge_litert")
    out = bench("bench_tflite.py", "--steps", "1", "--reps", "1", "--windows", "4", "--threads", "1")
    assert out.returncode == 0, out.stderr[-3000:]


def test_zoo_tiny(tmp_path):
    """One streaming arch and the DNN (no streaming form: '-' cells), and the accuracy table of a run directory."""
    import json

    phase = {"parameters": 10, "validation_classification": {"accuracy": 0.9, "accuracy_ci95": [0.8, 0.95],
                                                             "clips": 100},
             "test_classification": {"accuracy": 0.85, "accuracy_ci95": [0.7, 0.9], "clips": 50}}
    (tmp_path / "metrics.json").write_text(json.dumps({"float": phase, "tanh4": {**phase, "parameters": 11}}))
    out = bench("bench_zoo.py", "--archs", "dnn", "tcresnet", "--repeats", "1", "--seconds", "6",
                "--runs", f"tcresnet={tmp_path}")
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {}
    for line in out.stdout.splitlines():  # the first table (the accuracy table's rows start with the arch too)
        if line.startswith("| "):
            rows.setdefault(line.split("|")[1].strip(), line)
    assert "nan" in rows["dnn"] and float(rows["tcresnet"].split("|")[6]) >= 5  # MAC ratio column
    assert "| tcresnet | tanh4 | 11 | 90.0 % [80.0, 95.0] (100 clips) | +0.0 | 85.0 % [70.0, 90.0] (50 clips) |" \
        in out.stdout
    bad = bench("bench_zoo.py", "--runs", f"resnet={tmp_path}")
    assert bad.returncode == 2 and "expected arch=RUN_DIR" in bad.stderr


def test_data_scale_tiny(tmp_path):
    """A 120-clip folder in the full dataset's layout, one disk-cached run: the table has its row."""
    out = bench("bench_data_scale.py", "--clips", "120", "--corpus_dir", str(tmp_path / "corpus"), "--cache_dir",
                str(tmp_path / "cache"), "--epochs", "1", "--batch", "16", "--settings", "disk")
    assert out.returncode == 0, out.stderr[-3000:]
    assert sorted(os.listdir(tmp_path / "corpus"))[:3] == ["_background_noise_", "backward", "bed"]
    row = [line for line in out.stdout.splitlines() if line.startswith("| disk, cold |")]
    assert len(row) == 1 and row[0].count("|") == 8, out.stdout[-2000:]
