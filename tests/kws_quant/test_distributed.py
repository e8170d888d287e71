"""Multi-worker training as a user runs it: two worker processes on 127.0.0.1 (``--strategy=multi_worker``, one
``TF_CONFIG`` each), the chief-only run directory, agreement with one process, and a worker killed and restarted."""
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pandas as pd
import pytest

from kws_quant.distributed import WorkerRole, free_local_ports, worker_role, worker_workdir

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EPOCHS = 1  # of the comparison: 5 steps
LEARNING_RATE = 2e-3  # config.train.learning_rate of the runs (kws_quant.config_defaults)
CHIEF_NOTICES = 30  # seconds the test waits for the chief to stop by itself after its peer was killed
TIMEOUT = 420  # seconds a two-worker run may take before the test gives up (and kills both)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One synthetic corpus cache for the module's runs (each corpus is rendered once, not once per process)."""
    return tmp_path_factory.mktemp("synthetic_cache")


def tiny_args(tmp_path, cache, float_epochs: int, *extra, silence_clips: int = 16) -> list[str]:
    """A small synthetic float run without dropout (its masks are per replica) or XLA (no CPU collectives).
    ``silence_clips=20`` gives splits whose last batch does not divide evenly between two workers."""
    return [sys.executable, "-m", "kws_quant.train", f"--workdir={tmp_path / 'run'}", "--verbose=2",
            f"--config.data.cache_dir={cache}",
            "--config.data.synthetic.clips_per_keyword=40", "--config.data.synthetic.unknown_clips=40",
            f"--config.data.synthetic.silence_clips={silence_clips}", "--config.data.batch_size=16",
            "--config.model.hidden=(24,24)", "--config.model.dropout=0.0",
            f"--config.train.float_epochs={float_epochs}", "--config.train.jit_compile=False",
            f"--config.train.learning_rate={LEARNING_RATE}", "--config.qat.recipes=()", "--config.qat.ptq_recipes=()",
            "--config.report.enabled=False", "--config.export.enabled=False", *extra]


def env(tf_config=None) -> dict:
    e = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1",
         "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}  # tiny models; the suite runs beside them
    e.pop("TF_CONFIG", None)
    if tf_config is not None:
        e["TF_CONFIG"] = json.dumps(tf_config)
    return e


class Workers:
    """Two ``kws_quant.train`` worker processes; always killed on exit."""

    def __init__(self, args, ports, tmp_path, tag):
        hosts = [f"127.0.0.1:{p}" for p in ports]
        self.logs = [open(tmp_path / f"{tag}_worker{i}.log", "w") for i in range(2)]
        self.procs = [subprocess.Popen([*args, "--strategy=multi_worker"], cwd=ROOT, stdout=log,
                                       stderr=subprocess.STDOUT, text=True,
                                       env=env({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": i}}))
                      for i, log in enumerate(self.logs)]

    def wait(self, timeout=TIMEOUT) -> list[int]:
        deadline = time.monotonic() + timeout
        return [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in self.procs]

    def output(self, i) -> str:
        self.logs[i].flush()
        with open(self.logs[i].name) as f:
            return f.read()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in self.logs:
            log.close()


def test_worker_role_from_tf_config():
    two = {"cluster": {"worker": ["a:1", "b:2"]}}
    assert worker_role({}) == WorkerRole() and WorkerRole().is_chief
    w1 = worker_role({"TF_CONFIG": json.dumps({**two, "task": {"type": "worker", "index": 1}})})
    assert (w1.index, w1.num_workers, w1.is_chief) == (1, 2, False)
    assert worker_role({"TF_CONFIG": json.dumps({**two, "task": {"type": "worker", "index": 0}})}).is_chief
    with_chief = {"cluster": {"chief": ["c:0"], "worker": ["a:1"]}}
    assert not worker_role({"TF_CONFIG": json.dumps({**with_chief, "task": {"type": "worker", "index": 0}})}).is_chief
    assert worker_role({"TF_CONFIG": json.dumps({**with_chief, "task": {"type": "chief", "index": 0}})}).is_chief
    assert worker_workdir("runs/x", w1) == os.path.join("runs/x", "workertemp_worker_1")
    assert worker_workdir("runs/x", WorkerRole()) == "runs/x"


@pytest.mark.parametrize("tf_config, message", [
    ("{not json", "TF_CONFIG is not valid JSON"),
    ('{"cluster": {"worker": ["a:1"]}}', 'TF_CONFIG needs "cluster" and "task"'),
    ('{"cluster": {"worker": "a:1"}, "task": {"type": "worker", "index": 0}}', "cluster.worker must be a list"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "ps", "index": 0}}', "task.type='ps' is not allowed"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}', "task.index=3 is not an index"),
])
def test_bad_tf_config_is_named(tf_config, message):
    with pytest.raises(ValueError, match=message):
        worker_role({"TF_CONFIG": tf_config})


def test_multi_worker_without_tf_config_is_refused(monkeypatch):
    """Refused before TensorFlow configures anything (the CLI prints it as one ``error:`` line, exit 2)."""
    from kws_quant.distributed import make_strategy

    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match=r"^--strategy=multi_worker needs the TF_CONFIG environment variable"):
        make_strategy("multi_worker")


def history(path) -> list[int]:
    return pd.read_csv(path)["epoch"].tolist()


@pytest.mark.subprocess
@pytest.mark.slow
def test_two_workers_train_like_one_process_and_only_the_chief_writes(tmp_path, cache):
    """Two workers, global batch 16 (8 each), versus one process with the same global batch and seed, 5 steps: at
    least 95 % of each tensor's weights agree to 1e-4 and all to 5 learning-rate steps. (The all-reduce sums in
    another order; Adam's normalised step turns the rounding of a near-zero gradient into up to one learning-rate
    step per update, so a few weights differ by ~lr. Another data order or unsynchronised batch-norm statistics move
    most weights by more than 1e-4.)"""
    # one process, the same global batch; a one-replica mirrored strategy builds the model the way fit does under
    # any strategy (Keras reads one batch first, which advances the datasets' per-iteration shuffles and seeds)
    single = subprocess.run([*tiny_args(tmp_path / "one", cache, EPOCHS), "--strategy=mirrored"], cwd=ROOT,
                            capture_output=True, text=True, timeout=TIMEOUT, env=env())
    assert single.returncode == 0, single.stderr[-3000:]
    with Workers(tiny_args(tmp_path / "mw", cache, EPOCHS), free_local_ports(2), tmp_path, "mw") as workers:
        codes = workers.wait()
        assert codes == [0, 0], workers.output(0)[-3000:] + workers.output(1)[-3000:]
    run = tmp_path / "mw" / "run"
    assert sorted(os.listdir(run)) == ["config.json", "float", "metrics.json"]  # no worker's temporary folder left
    assert {"model.keras", "history.csv", "labels.json"} <= set(os.listdir(run / "float"))
    assert history(run / "float" / "history.csv") == list(range(EPOCHS))
    a = keras.saving.load_model(run / "float" / "model.keras")
    b = keras.saving.load_model(tmp_path / "one" / "run" / "float" / "model.keras")
    for va, vb in zip(a.weights, b.weights, strict=True):
        diff = np.abs(np.asarray(va) - np.asarray(vb))
        assert np.mean(diff > 1e-4) <= 0.05 and diff.max() <= 5 * LEARNING_RATE, (va.path, diff.max())
    ma = json.load(open(run / "metrics.json"))["float"]
    mb = json.load(open(tmp_path / "one" / "run" / "metrics.json"))["float"]
    assert abs(ma["test_accuracy"] - mb["test_accuracy"]) <= 1 / ma["test_clips"] + 1e-9


@pytest.mark.subprocess
@pytest.mark.slow
def test_killed_worker_restarted_resumes_without_losing_an_epoch(tmp_path, cache):
    """Worker 1 is killed once the chief has backed up epoch 2 of 4; the chief stops with a clear line (exit 75) if
    it notices within a minute (else it is killed, as a cluster manager restarting the job would); both are restarted
    with the same command and finish: every epoch once in the history. The splits' last batches
    do not divide evenly between the workers (Keras used to fail on that with a collective shape mismatch)."""
    args = tiny_args(tmp_path, cache, 4, silence_clips=20)
    ports = free_local_ports(2)
    metadata = tmp_path / "run" / "float" / "backup" / "training_metadata.json"
    with Workers(args, ports, tmp_path, "first") as workers:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            try:
                if json.load(open(metadata))["epoch"] >= 2:
                    break
            except (FileNotFoundError, json.JSONDecodeError, KeyError):
                pass
            assert all(p.poll() is None for p in workers.procs), workers.output(0)[-3000:]
            time.sleep(0.2)
        else:
            pytest.fail("epoch 2 was never backed up")
        workers.procs[1].send_signal(signal.SIGKILL)
        try:  # within seconds when a collective was in flight; when none was, the next one may wait for minutes
            code = workers.procs[0].wait(timeout=CHIEF_NOTICES)
        except subprocess.TimeoutExpired:
            code = None  # a cluster manager restarts every worker when one exits: so does the test
        if code is not None:
            assert code == 75, workers.output(0)[-3000:]
            last = workers.output(0).strip().splitlines()[-1]
            assert last.startswith("error: multi-worker training lost a peer") and "restart every worker" in last
    with Workers(args, free_local_ports(2), tmp_path, "second") as workers:
        codes = workers.wait()
        assert codes == [0, 0], workers.output(0)[-3000:] + workers.output(1)[-3000:]
        assert "Epoch 1/4" not in workers.output(0)  # resumed, not restarted
    assert sorted(set(history(tmp_path / "run" / "float" / "history.csv"))) == [0, 1, 2, 3]
    assert sorted(os.listdir(tmp_path / "run")) == ["config.json", "float", "metrics.json"]
