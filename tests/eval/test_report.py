"""eval.report and eval.kws_streams on a small run directory (untrained models: the plumbing, not the accuracy)."""
import json
import os

import numpy as np
import pandas as pd
import pytest

from eval.kws_streams import StreamConfig, build_streams
from kws_quant.config_defaults import kws_config
from kws_quant.experiments.training import write_json

SMALL = StreamConfig(stream_seconds=20.0, negative_hours=0.01, hop_frames=4)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """config.json + float and tanh4 models (untrained) + labels.json, as kws_quant.train writes them."""
    from kws_quant.experiments.kws import build_model, prepare_data

    root = tmp_path_factory.mktemp("run")
    cfg = kws_config().to_dict()
    cfg["data"].update(cache_dir=str(root / "cache"), augment=False)
    cfg["data"]["synthetic"].update(clips_per_keyword=24, unknown_clips=24, silence_clips=8)
    cfg["model"]["hidden"] = (16, 16)
    write_json(str(root / "config.json"), cfg)
    data = prepare_data(cfg)
    for phase in ("float", "tanh4"):
        os.makedirs(root / phase)
        build_model(cfg, data, phase).save(root / phase / "model.keras")
        write_json(str(root / phase / "labels.json"), data.label_names)
    return root


def test_streams_place_keyword_occurrences_at_known_times(run_dir):
    from kws_quant.experiments.kws import load_manifest

    manifest, _, keywords, _ = load_manifest(json.load(open(run_dir / "config.json")))
    streams = build_streams(manifest, "test", keywords, 16000, SMALL)
    test_kw = int(manifest[(manifest["split"] == "test") & manifest["label"].isin(keywords)].shape[0])
    assert sum(len(s.events) for s in streams) == test_kw  # every held-out keyword clip exactly once
    negative = [s for s in streams if not s.events]
    assert sum(len(s.audio) for s in negative) / 16000 >= 0.01 * 3600
    for s in streams:
        for start, end, label in s.events:
            assert label in keywords and 0 <= start < end <= len(s.audio) / 16000
            seg = s.audio[int(start * 16000):int(end * 16000)]
            assert np.sqrt(np.mean(seg ** 2)) > 0.003  # speech is where the event says
    again = build_streams(manifest, "test", keywords, 16000, SMALL)
    assert all(np.array_equal(a.audio, b.audio) for a, b in zip(streams, again))  # deterministic


def test_report_writes_tables_and_plots(run_dir):
    from eval.report import report_run

    paths = report_run(str(run_dir), out_dir=str(run_dir / "report"), stream_cfg=SMALL, n_boot=10)
    md = open(paths["md"]).read()
    for text in ("## DET curves", "![DET curves](det.png)", "| model | fa_per_hour | frr | frr_rel_change",
                 "## Memory projections", "| tanh4 | nna-5bit |"):
        assert text in md
    points = pd.read_csv(paths["points"])
    assert set(points["model"]) == {"float", "tanh4"} and set(points["fa_per_hour"]) == {1.0, 2.0, 5.0}
    assert np.allclose(points.loc[points["model"] == "float", "frr_rel_change"].dropna(), 0.0)
    memory = pd.read_csv(paths["memory"]).set_index(["model", "preset"])
    assert memory.loc[("float", "arm-neon"), "vs_float32"] == pytest.approx(1.0)
    assert memory.loc[("tanh4", "nna-5bit"), "vs_float32"] > 4  # the paper's claim shape for 4-bit weights
    for png in (paths["det_png"], paths["memory_png"]):
        assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(png) > 10_000
    assert "<img src='det.png'" in open(paths["html"]).read()


def test_report_bad_inputs(run_dir, tmp_path):
    from eval.report import load_kws_model, report_run

    with pytest.raises(FileNotFoundError, match="no config.json"):
        report_run(str(tmp_path), stream_cfg=SMALL)
    with pytest.raises(FileNotFoundError, match=r"no trained model for \['tanh9'\]"):
        report_run(str(run_dir), names=["float", "tanh9"], stream_cfg=SMALL)
    with pytest.raises(ValueError, match="thresholds"):
        report_run(str(run_dir), stream_cfg=SMALL, thresholds=[0.5, 1.5])
    with pytest.raises(FileNotFoundError, match="model file does not exist"):
        load_kws_model(str(tmp_path / "nope.keras"), 98, 40, 3)
    (tmp_path / "junk.keras").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.keras: not a readable Keras model file"):
        load_kws_model(str(tmp_path / "junk.keras"), 98, 40, 3)
    with pytest.raises(ValueError, match=r"is not a KWS model for this run: input \(98, 40\), 3 outputs"):
        load_kws_model(str(run_dir / "float" / "model.keras"), 98, 40, 5)
    labels = run_dir / "tanh4" / "labels.json"
    saved = labels.read_text()
    try:
        labels.write_text(json.dumps(["_silence_", "_unknown_", "hey_siri"]))
        with pytest.raises(ValueError, match="mismatched label sets"):
            report_run(str(run_dir), stream_cfg=SMALL, n_boot=5)
    finally:
        labels.write_text(saved)


def test_empty_test_split_is_refused():
    manifest = pd.DataFrame({"path": ["a.wav"], "label": ["hey_computer"], "speaker": ["s"], "split": ["train"]})
    with pytest.raises(ValueError, match="no clips in the 'test' split"):
        build_streams(manifest, "test", ["hey_computer"], 16000, SMALL)


def test_all_keyword_split_draws_extra_audio_with_events(run_dir):
    """A digit task has no non-keyword clips: the extra hours come from all clips and keep their events."""
    from kws_quant.experiments.kws import load_manifest

    manifest, _, keywords, _ = load_manifest(json.load(open(run_dir / "config.json")))
    only_keywords = manifest[manifest["label"].isin(keywords)]
    streams = build_streams(only_keywords, "test", keywords, 16000, SMALL)
    n_test = int((only_keywords["split"] == "test").sum())
    assert sum(len(s.events) for s in streams) > n_test  # the extra audio carries keyword occurrences too
    assert sum(len(s.audio) for s in streams) / 16000 >= 0.01 * 3600


@pytest.mark.subprocess
@pytest.mark.parametrize("args, message", [
    (["--run_dir=/nonexistent/run"], "error: /nonexistent/run is not a kws_quant run directory: no config.json"),
    (["--thresholds=0.5,1.5"], "error: thresholds must lie in [0, 1]; got values outside it: [1.5]"),
    (["--models=float,tanh9"], "error: no trained model for ['tanh9']"),
])
def test_report_cli_bad_input_gives_one_clear_line(run_dir, tmp_path, args, message):
    import subprocess
    import sys

    if not any(a.startswith("--run_dir") for a in args):
        args = [f"--run_dir={run_dir}", *args]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-m", "eval.report", f"--out={tmp_path / 'r'}", *args], capture_output=True,
                         text=True, timeout=300, env=env, cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert out.returncode != 0 and message in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert not (tmp_path / "r" / "report.md").exists()
