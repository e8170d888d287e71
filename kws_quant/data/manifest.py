"""The common dataset representation: a manifest DataFrame with columns ``path, label, speaker, split``.

``path`` is an absolute file path, ``label`` a class name, ``speaker`` an id used to keep one person (or one
synthetic voice) inside a single split, ``split`` one of :data:`SPLITS`. Readers may add further columns.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence

import pandas as pd

COLUMNS = ("path", "label", "speaker", "split")
SPLITS = ("train", "validation", "test")
UNKNOWN_LABEL = "_unknown_"
"""Class of speech that is none of the keywords."""
SILENCE_LABEL = "_silence_"
"""Class of clips with background noise only."""


def validate_manifest(
    manifest: pd.DataFrame,
    label_names: Iterable[str] | None = None,
    check_files: bool = True,
    source: str = "manifest",
    speaker_disjoint: bool = True,
) -> pd.DataFrame:
    """Check a manifest and return it unchanged.

    Raises:
        ValueError: a required column is missing, a split is not in :data:`SPLITS`, a speaker is in two splits
            (when ``speaker_disjoint``), or a label is not in ``label_names`` (message names the file, the field
            and the value).
        FileNotFoundError: ``check_files`` and a listed file does not exist (message names it).
    """
    missing = [c for c in COLUMNS if c not in manifest.columns]
    if missing:
        raise ValueError(f"{source}: missing required column(s) {missing}; has {list(manifest.columns)}")
    bad_split = ~manifest["split"].isin(SPLITS)
    if bad_split.any():
        row = manifest[bad_split].iloc[0]
        raise ValueError(f"{source}: {row['path']}: split={row['split']!r} is not one of {list(SPLITS)}")
    if label_names is not None:
        allowed = set(label_names)
        bad_label = ~manifest["label"].isin(allowed)
        if bad_label.any():
            row = manifest[bad_label].iloc[0]
            raise ValueError(
                f"{source}: {row['path']}: label={row['label']!r} is not in the label set {sorted(allowed)} "
                f"({int(bad_label.sum())} such row(s))"
            )
    if speaker_disjoint:
        check_speaker_disjoint(manifest, source)
    if check_files:
        for path in manifest["path"]:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{source}: listed file does not exist: {path}")
    return manifest


def check_speaker_disjoint(manifest: pd.DataFrame, source: str = "manifest") -> None:
    """Raise ``ValueError`` naming the first speaker that appears in more than one split."""
    splits_per_speaker = manifest.groupby("speaker")["split"].nunique()
    shared = splits_per_speaker[splits_per_speaker > 1]
    if len(shared):
        speaker = shared.index[0]
        found = sorted(manifest.loc[manifest["speaker"] == speaker, "split"].unique())
        raise ValueError(f"{source}: speaker={speaker!r} appears in several splits {found}")


def assign_speaker_splits(
    manifest: pd.DataFrame,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    validation_speakers: Iterable[str] | None = None,
    test_speakers: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Return a copy of ``manifest`` with a ``split`` column in which no speaker is in two splits.

    With explicit speaker lists, those speakers go to validation/test and all others to train. Otherwise speakers
    are ordered by a hash of ``(seed, speaker)`` (stable under adding speakers, independent of row order) and
    taken in that order into test, then validation, until each holds about its fraction of the *files*; the rest is
    train. Every split with a non-zero fraction gets at least one speaker while there are enough speakers.

    Args:
        manifest: needs ``path`` and ``speaker`` columns.
        fractions: (train, validation, test), non-negative, summing to 1.
        seed: changes the hash order.
    """
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be (train, validation, test) >= 0 summing to 1, got {tuple(fractions)}")
    out = manifest.copy()
    speakers = out["speaker"].astype(str)
    if validation_speakers is not None or test_speakers is not None:
        assignment = _explicit_assignment(set(speakers), validation_speakers or (), test_speakers or ())
    else:
        assignment = _hashed_assignment(speakers.value_counts().to_dict(), fractions, seed)
    out["split"] = speakers.map(assignment).fillna("train")
    return out


def _explicit_assignment(known: set[str], validation: Iterable[str], test: Iterable[str]) -> dict[str, str]:
    validation, test = [str(s) for s in validation], [str(s) for s in test]
    for name, listed in (("validation_speakers", validation), ("test_speakers", test)):
        unknown = sorted(set(listed) - known)
        if unknown:
            raise ValueError(f"{name}: speaker(s) {unknown} not in the data; known speakers: {sorted(known)}")
    both = sorted(set(validation) & set(test))
    if both:
        raise ValueError(f"speaker(s) {both} listed for both validation and test")
    return {**{s: "validation" for s in validation}, **{s: "test" for s in test}}


def _hashed_assignment(files_per_speaker: dict[str, int], fractions: Sequence[float], seed: int) -> dict[str, str]:
    order = sorted(files_per_speaker, key=lambda s: hashlib.sha1(f"{seed}:{s}".encode()).hexdigest())
    total = sum(files_per_speaker.values())
    ordered = (("test", fractions[2]), ("validation", fractions[1]), ("train", fractions[0]))
    active = [(split, fraction) for split, fraction in ordered if fraction > 0]
    assignment, pos = {}, 0
    for k, (split, fraction) in enumerate(active):
        later = len(active) - 1 - k  # splits still to fill: one speaker is kept for each; the last takes the rest
        stop, taken = len(order) - later, 0
        while pos < stop and (later == 0 or taken == 0 or taken < fraction * total):
            assignment[order[pos]] = split
            taken += files_per_speaker[order[pos]]
            pos += 1
    return assignment


def relabel_unknown(manifest: pd.DataFrame, keep: Iterable[str], unknown_label: str = UNKNOWN_LABEL) -> pd.DataFrame:
    """Copy of ``manifest`` with every label not in ``keep`` replaced by ``unknown_label`` (e.g. the 12-class
    Speech Commands task); the original label is kept in an ``original_label`` column."""
    keep = set(keep)
    out = manifest.copy()
    out["original_label"] = out["label"]
    out.loc[~out["label"].isin(keep), "label"] = unknown_label
    return out
