"""The ASR training script as a user runs it: a tiny synthetic run (float + two-stage QAT), one-line errors."""
import json
import os
import subprocess
import sys

import pytest
import soundfile as sf

from wer_reference import corpus_wer_from_tsv

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(args, timeout=600):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "asr_ext.train", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def tiny_args(tmp_path, *extra):
    return [f"--workdir={tmp_path / 'run'}", "--verbose=2", f"--config.data.cache_dir={tmp_path / 'cache'}",
            "--config.data.synthetic.utterances=30", "--config.features.sample_rate=8000",
            "--config.features.n_fft=256", "--config.features.n_mels=20", "--config.data.batch_size=32",
            "--config.data.buckets=1",
            "--config.model.lstm_units=(24,)", "--config.model.reduce_after=()", "--config.model.frame_stack=4",
            "--config.model.pred_units=(16,)", "--config.model.joint_units=16", "--config.model.embed_dim=8",
            "--config.train.float_epochs=1", "--config.train.stage1_epochs=1", "--config.train.stage2_epochs=1",
            "--config.decode.beam_utterances=2", *extra]


@pytest.mark.subprocess
@pytest.mark.slow
def test_tiny_synthetic_run_float_and_qat(tmp_path):
    """A tiny synthetic ASR run, float then tanh4 QAT, with a weight average (config.train.ema_momentum)."""
    out = run(tiny_args(tmp_path, "--config.train.ema_momentum=0.9"))
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.load(open(tmp_path / "run" / "metrics.json"))
    assert set(metrics) == {"data", "float", "tanh4"}
    for phase in ("float", "tanh4"):
        m = metrics[phase]
        assert m["test_wer"] == pytest.approx(corpus_wer_from_tsv(tmp_path / "run" / phase / "test_hypotheses.tsv"))
        assert m["test_cer"] >= 0 and m["beam_utterances"] == 2
        assert (tmp_path / "run" / phase / "model.keras").exists()
        lines = (tmp_path / "run" / phase / "test_hypotheses.tsv").read_text().splitlines()
        assert lines[0] == "utt_id\treference\tgreedy\tbeam" and len(lines) == 1 + m["test_utterances"]
        assert os.listdir(tmp_path / "run" / phase / "tensorboard")
    assert metrics["tanh4"]["stage"] == 2 and metrics["float"]["stage"] is None  # TwoStageQAT reached stage 2
    assert len(metrics["tanh4"]["history"]["loss"]) == 2
    assert set(metrics["data"]) == {"train", "validation", "test"}
    assert "| tanh4 |" in out.stdout and "Results in" in out.stdout
    assert "ran out of data" not in out.stderr + out.stdout  # every epoch's length is known in advance


@pytest.mark.subprocess
@pytest.mark.slow
def test_bucketed_run_sees_every_batch_without_a_data_warning(tmp_path):
    out = run(tiny_args(tmp_path, "--config.data.buckets=3", "--config.qat.recipes=()"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ran out of data" not in out.stderr + out.stdout


@pytest.mark.subprocess
@pytest.mark.slow
def test_bad_input_gives_one_line_errors(tmp_path):
    folder = tmp_path / "libri" / "test-clean" / "1" / "2"
    folder.mkdir(parents=True)
    sf.write(folder / "1-2-0000.flac", [0.0] * 4000, 8000, format="FLAC")
    (folder / "1-2.trans.txt").write_text("1-2-0000 HELLO TWENTY 20\n")
    train = tmp_path / "libri" / "train-clean" / "3" / "4"
    train.mkdir(parents=True)
    sf.write(train / "3-4-0000.flac", [0.0] * 4000, 8000, format="FLAC")
    (train / "3-4.trans.txt").write_text("3-4-0000 HELLO\n")
    out = run([f"--workdir={tmp_path / 'run'}", "--config.data.source=librispeech", f"--data_dir={tmp_path / 'libri'}",
               "--config.features.sample_rate=8000", "--config.features.n_fft=256"])
    assert out.returncode == 2
    err = out.stderr.strip().splitlines()[-1]
    assert err.startswith("error: ") and "1-2.trans.txt line 1" in err and "character '2'" in err, out.stderr

    out = run([f"--workdir={tmp_path / 'run2'}", "--config.data.sorce=fsdd"])
    assert out.returncode == 2 and "unknown config key" in out.stderr and "Traceback" not in out.stderr


def _libri(root, speakers, rate=8000, seconds=0.6):
    """A LibriSpeech-style tree: <speaker>/<chapter>/<speaker>-<chapter>.trans.txt and FLAC files."""
    import numpy as np

    rng = np.random.default_rng(0)
    for s in speakers:
        folder = root / s / "1"
        folder.mkdir(parents=True)
        lines = []
        for n, text in enumerate(["one two", "three", "four five"]):
            utt = f"{s}-1-{n:04d}"
            sf.write(folder / f"{utt}.flac", (0.2 * rng.standard_normal(int(seconds * rate))).astype("float32"), rate)
            lines.append(f"{utt} {text.upper()}")
        (folder / f"{s}-1.trans.txt").write_text("\n".join(lines) + "\n")


@pytest.mark.subprocess
@pytest.mark.slow
def test_evaluate_a_finished_run_on_another_folder(tmp_path):
    """asr_ext.evaluate: a run's models decode every utterance of a user's folder (16 kHz audio resampled to the
    run's 8 kHz, and said); bad folders get one clear line."""
    _libri(tmp_path / "libri", ["11", "12", "13", "14", "15"])
    args = [f"--workdir={tmp_path / 'run'}", "--config.data.source=librispeech", f"--data_dir={tmp_path / 'libri'}",
            "--config.data.librispeech.fractions=(0.6,0.2,0.2)", *tiny_args(tmp_path)[1:], "--config.qat.recipes=()"]
    out = run(args)
    assert out.returncode == 0, out.stderr[-3000:]
    _libri(tmp_path / "mine", ["21", "22"], rate=16000)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    cmd = [sys.executable, "-m", "asr_ext.evaluate", f"--run_dir={tmp_path / 'run'}"]
    out = subprocess.run(cmd + [f"--data_dir={tmp_path / 'mine'}"], cwd=ROOT, capture_output=True, text=True,
                         timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "audio at 16000 Hz is resampled to the run's 8000 Hz" in out.stdout and "| float |" in out.stdout
    metrics = json.load(open(tmp_path / "run" / "eval_mine" / "metrics.json"))
    assert metrics["data"]["utterances"] == 6 and metrics["float"]["test_utterances"] == 6
    hyps = (tmp_path / "run" / "eval_mine" / "float" / "test_hypotheses.tsv").read_text().splitlines()
    assert len(hyps) == 7 and hyps[1].split("\t")[1] in ("one two", "three", "four five")
    out = subprocess.run(cmd + [f"--data_dir={tmp_path / 'nope'}"], cwd=ROOT, capture_output=True, text=True,
                         timeout=600, env=env)
    assert out.returncode == 2 and "does not exist" in out.stderr.strip().splitlines()[-1], out.stderr[-2000:]
    from asr_ext.evaluate import evaluate_folder  # the other bad folders in-process: the same error, fewer processes

    with pytest.raises(FileNotFoundError, match=r"no \*\.trans\.txt"):
        evaluate_folder(str(tmp_path / "run"), str(tmp_path / "run"))
