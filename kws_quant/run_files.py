"""Reading back the files of a run directory, with one clear error for each damaged file.

A run directory (:class:`kws_quant.experiments.training.RunDir`) is read back on every resume: ``config.json``, ``metrics.json``,
each phase's ``backup/`` (Keras ``BackupAndRestore``: ``latest.weights.h5`` and ``training_metadata.json``, and with
``double_checkpoint`` their ``.bkp`` copies from the epoch before) and each finished phase's ``model.keras``. A
file damaged by a full disk, a kill during a write or a bad copy gives a ``ValueError`` that names the file and what
to delete (the training scripts print it as one ``error:`` line, exit status 2): never a traceback, and never Keras'
"File not found" about a file that exists. A damaged latest backup is not an error when its ``.bkp`` copy reads:
the phase then resumes from that epoch, and says so.
"""
from __future__ import annotations

import json
import os
import shutil
import zipfile
import zlib

import keras

WEIGHTS = "latest.weights.h5"
"""Keras ``BackupAndRestore``'s weight file (its ``double_checkpoint`` copy: ``WEIGHTS + ".bkp"``)."""
METADATA = "training_metadata.json"
"""Keras ``BackupAndRestore``'s ``{"epoch": completed epochs, "batch": ...}`` (copy: ``METADATA + ".bkp"``)."""

_JSON_TYPES = {dict: "object", list: "array"}


def read_json(path: str, what: str, remedy: str, kind: type = dict):
    """The JSON value in ``path``, which must be a ``kind`` (``dict`` or ``list``). A file that cannot be read, is
    not JSON (e.g. truncated) or holds another type raises ``ValueError`` naming it: ``"<path>: <what> is ...;
    <remedy>"``."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as e:  # JSONDecodeError is a ValueError
        raise ValueError(f"{path}: {what} is not readable JSON ({e}); {remedy}") from None
    if not isinstance(data, kind):
        raise ValueError(f"{path}: {what} must be a JSON {_JSON_TYPES.get(kind, kind.__name__)}, not "
                         f"{type(data).__name__}; {remedy}")
    return data


def check_keras_file(path: str, remedy: str) -> None:
    """Raise ``ValueError`` naming ``path`` unless it is a complete ``.keras`` archive: a zip file whose every member
    reads back with its checksum, with the ``config.json`` (valid JSON) and ``model.weights.h5`` Keras writes. A
    truncated file, random bytes or a flipped byte are refused here; Keras' own message for them is "File not found"
    or an h5py error."""
    try:
        with zipfile.ZipFile(path) as z:
            damaged = z.testzip()  # reads every member and checks its CRC
            if damaged is not None:
                raise ValueError(f"member {damaged!r} fails its checksum")
            missing = sorted({"config.json", "model.weights.h5"} - set(z.namelist()))
            if missing:
                raise ValueError(f"no {', '.join(missing)} in the archive")
            json.loads(z.read("config.json"))
    except (OSError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, ValueError,
            NotImplementedError) as e:
        reason = "not a zip archive (truncated or overwritten?)" if isinstance(e, zipfile.BadZipFile) else str(e)
        raise ValueError(f"{path}: not a readable Keras model file: {reason}; {remedy}") from None


def save_model_atomically(model: keras.Model, path: str) -> None:
    """``model.save(path)`` through a temporary file in the same folder: a kill leaves the old file or none, never a
    truncated one."""
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name[:-len('.keras')]}.partial.keras")
    model.save(tmp)
    os.replace(tmp, path)


def _epoch_of(metadata_path: str) -> int:
    """Completed epochs recorded in a backup's metadata file; ``ValueError`` (its reason) when unusable."""
    with open(metadata_path, encoding="utf-8") as f:
        text = f.read()
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ValueError(f"not readable JSON ({e})") from None
    epoch = data.get("epoch") if isinstance(data, dict) else None
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        raise ValueError(f"no epoch count in it (expected {{\"epoch\": <int >= 0>, ...}}, got {text[:80]!r})")
    return epoch


class CheckedBackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras ``BackupAndRestore`` (use with ``double_checkpoint=True``) whose restore checks what it reads.

    On ``fit``'s start it restores the latest backup (weights, optimizer state, completed epochs). When that backup
    is damaged (a truncated or foreign weight file, a truncated, garbage or epoch-less ``training_metadata.json``)
    and the ``.bkp`` copy from the epoch before reads, it resumes from the copy, makes it the latest again and
    prints which file was damaged. (Keras' own fallback only covers an ``OSError`` from the weight file, and then
    trusts the copy's metadata.) When neither reads it raises ``ValueError`` naming both files and the folder to
    delete to restart the phase from its first epoch. Saving is Keras'.
    """

    def __init__(self, backup_dir: str, phase: str, **kwargs):
        super().__init__(backup_dir, **kwargs)
        self.phase = phase

    def on_train_begin(self, logs=None):
        d = self.backup_dir
        latest = (os.path.join(d, WEIGHTS), os.path.join(d, METADATA))
        previous = (latest[0] + ".bkp", latest[1] + ".bkp")
        if any(os.path.exists(p) for p in latest + previous) and not self.model.built:
            raise ValueError("BackupAndRestore: the model must be built before fit() restores its backup")
        problems, half_loaded = [], False
        for weights, metadata in (latest, previous):
            if not (os.path.exists(weights) or os.path.exists(metadata)):
                continue
            if half_loaded and not os.path.exists(weights):  # a failed load may have set some weights already
                problems.append(f"{weights}: missing")
                continue
            try:
                epoch = _epoch_of(metadata) if os.path.exists(metadata) else None
            except (OSError, UnicodeDecodeError, ValueError) as e:
                problems.append(f"{metadata}: {e}")
                continue
            if os.path.exists(weights):
                try:
                    self._restore_weights(weights)
                except Exception as e:  # noqa: BLE001 — h5py, Keras and TensorFlow raise many kinds here
                    half_loaded = True
                    problems.append(f"{weights}: not readable as this model's weights ({type(e).__name__}: "
                                    f"{' '.join(str(e).split())[:300]})")
                    continue
            if epoch is not None:
                self.model._initial_epoch = epoch  # what Keras' restore sets: fit starts after this epoch
            if problems:  # restored from the previous copy: it becomes the latest again
                for src, dst in zip((weights, metadata), latest):
                    if os.path.exists(src):
                        shutil.copyfile(src, dst)
                    elif os.path.exists(dst):
                        os.remove(dst)
                print(f"warning: phase {self.phase!r}: the latest backup is damaged ({'; '.join(problems)}); "
                      f"resuming from the previous one (epoch {epoch or 0})", flush=True)
            return
        if problems:
            raise ValueError(f"phase {self.phase!r}: cannot resume from its backup: {'; '.join(problems)}. Delete "
                             f"the folder {d} to restart phase {self.phase!r} from its first epoch")

    def _restore_weights(self, path: str) -> None:
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)  # its state is in the backup too
        if path.endswith(".weights.h5"):
            self.model.load_weights(path)
            return
        tmp = os.path.join(os.path.dirname(path), "restoring.weights.h5")  # Keras reads only *.weights.h5 names
        shutil.copyfile(path, tmp)
        try:
            self.model.load_weights(tmp)
        finally:
            os.remove(tmp)


def merged(base: dict, override: dict) -> dict:
    """``base`` updated recursively with ``override`` (new dicts; neither input changes)."""
    out = dict(base)
    for k, v in override.items():
        out[k] = merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def ptq_phase_name(recipe: str) -> str:
    """Run-directory phase of the post-training baseline of ``recipe``."""
    return f"ptq_{recipe}"
