"""Disk cache of the deterministic part of the input pipeline (decoded audio or log-mel features), in shards.

A corpus the size of the full Speech Commands (105,829 clips) does not fit an in-memory ``tf.data`` cache on a small
machine once augmentation needs the decoded audio (≈ 6.8 GB of float32). :func:`disk_cached` writes the elements
once with ``tf.data.Dataset.save`` into ``<root>/<key>/`` (``root``: :func:`default_cache_root`) and reads them back
with ``tf.data.Dataset.load``: shards read in parallel, in shuffled order when training, so memory holds only the
shuffle buffer and the prefetched batches, whatever the corpus size.

The key is a SHA-256 over everything the stored elements depend on: :data:`CACHE_FORMAT`, the TensorFlow version,
the caller's settings (feature configuration, sample rate, clip length, ...), and per element its path, any
per-element setting, and the file's size and modification time. A cache built from other settings or other files
therefore has another key and is rebuilt, never reused; a file rewritten with the same size and modification time
is the one change this does not see. A cache folder is complete only once its ``cache.json`` exists: the build
writes into ``<key>.partial-<host>-<pid>/`` and renames it, so a killed build leaves no folder that a later run
could mistake for a cache (the next build of that key removes the dead one). Opening checks ``cache.json`` and the
size of every stored file; anything missing or truncated is rebuilt, with a message saying why.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterable, Sequence

import tensorflow as tf

CACHE_FORMAT = 1
"""Bumped whenever decoding or feature code changes what a cache holds for the same settings."""
MODES = ("auto", "memory", "disk", "none")
"""``memory``: ``tf.data`` in-memory cache; ``disk``: :func:`disk_cached`; ``none``: recomputed every epoch;
``auto``: ``disk`` when the split's elements would exceed :data:`AUTO_MEMORY_BYTES`, else ``memory``."""
AUTO_MEMORY_BYTES = 1 << 30
SHUFFLE_BUFFER_BYTES = 256 << 20
"""Bound of a disk-cached split's shuffle buffer (the shards are read in shuffled order as well)."""
SHARD_ELEMENTS = 4096
"""Elements per shard (at most 256 shards): enough shards to read in parallel and to shuffle their order."""
MANIFEST_NAME = "cache.json"


def default_cache_root() -> str:
    """``$KWS_QUANT_CACHE`` if set, else ``~/.cache/kws_quant``: where the synthetic corpus and feature caches live."""
    return os.environ.get("KWS_QUANT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "kws_quant")


def resolve_mode(mode: str | bool, elements: int, element_bytes: int) -> str:
    """One of ``memory, disk, none`` for a cache setting (``True``/``False`` mean ``memory``/``none``).

    Raises:
        ValueError: ``mode`` is not one of :data:`MODES`.
    """
    if mode is True or mode is False:
        return "memory" if mode else "none"
    if mode not in MODES:
        raise ValueError(f"cache={mode!r} is not one of {list(MODES)}")
    if mode == "auto":
        return "disk" if elements * element_bytes > AUTO_MEMORY_BYTES else "memory"
    return mode


def fingerprint(paths: Sequence[str], per_element: Iterable[object], settings: dict) -> str:
    """Hex SHA-256 of the settings and, per element, its path, ``per_element`` value and file size/mtime (a missing
    file counts as size -1)."""
    h = hashlib.sha256(json.dumps({"format": CACHE_FORMAT, "tensorflow": tf.__version__, **settings},
                                  sort_keys=True, default=str).encode())
    for path, extra in zip(paths, per_element, strict=True):
        try:
            st = os.stat(path)
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:
            size, mtime = -1, -1
        h.update(f"{path}\0{extra!r}\0{size}\0{mtime}\n".encode())
    return h.hexdigest()


@dataclasses.dataclass(frozen=True)
class CacheEntry:
    """A complete cache folder and what its ``cache.json`` says."""

    directory: str
    elements: int
    shards: int
    info: dict


def open_entry(directory: str, key: str) -> tuple[CacheEntry | None, str]:
    """The complete cache at ``directory``, or ``(None, why not)``: absent, another key, or a file missing or of
    another size than written."""
    manifest = os.path.join(directory, MANIFEST_NAME)
    if not os.path.isdir(directory):
        return None, "no cache yet"
    try:
        with open(manifest, encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, ValueError) as e:
        return None, f"{manifest} is unreadable ({type(e).__name__})"
    if info.get("key") != key or info.get("format") != CACHE_FORMAT:
        return None, f"{manifest} belongs to another key or format"
    for rel, size in info.get("files", {}).items():
        path = os.path.join(directory, rel)
        actual = os.path.getsize(path) if os.path.isfile(path) else -1
        if actual != size:
            return None, f"{path} has {actual} bytes, {size} were written"
    return CacheEntry(directory, int(info["elements"]), int(info["shards"]), info), ""


def disk_cached(build: Callable[[], tf.data.Dataset], key: str, root: str, elements: int, shuffle: bool,
                seed: int = 0, describe: str = "", extra_info: dict | None = None,
                entry: CacheEntry | None = None) -> tuple[tf.data.Dataset, dict]:
    """``(dataset, info)``: the elements of ``build()`` read from ``<root>/<key>/``, written there first when there is
    no complete cache of that key.

    ``build()`` must yield ``(index int64 [], value)`` with ``index`` in ``[0, elements)``, in index order: shards hold
    contiguous index ranges, so an unshuffled read returns the elements in that order. ``shuffle``: shards in an
    order reshuffled every epoch (seeded), read interleaved. ``extra_info`` is stored in ``cache.json`` and returned
    in ``info`` (e.g. the bad files skipped while building). ``entry``: what :func:`open_entry` just returned for
    this key, when the caller opened it (it is not opened again).
    """
    directory = os.path.join(root, key)
    entry, why = (entry, "") if entry is not None else open_entry(directory, key)
    if entry is None:
        if why != "no cache yet":
            print(f"feature cache: rebuilding {directory}: {why}", file=sys.stderr)
            shutil.rmtree(directory, ignore_errors=True)
        entry = _build(build, directory, key, elements, describe, extra_info or {})
    else:
        print(f"feature cache: reusing {directory} ({entry.elements:,} {describe or 'elements'})")
    ds = tf.data.Dataset.load(entry.directory, reader_func=_reader(entry.shards, shuffle, seed))
    return ds, entry.info


def _reader(shards: int, shuffle: bool, seed: int):
    def read(datasets):
        if not shuffle:
            return datasets.flat_map(lambda d: d)
        datasets = datasets.shuffle(shards, seed=seed, reshuffle_each_iteration=True)
        return datasets.interleave(lambda d: d, cycle_length=min(shards, 8), num_parallel_calls=tf.data.AUTOTUNE,
                                   deterministic=True)
    return read


def _build(build, directory: str, key: str, elements: int, describe: str, extra_info: dict) -> CacheEntry:
    root = os.path.dirname(directory)
    os.makedirs(root, exist_ok=True)
    _remove_dead_partials(root, key)
    partial = f"{directory}.partial-{socket.gethostname()}-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    shards = max(1, min(256, -(-elements // SHARD_ELEMENTS)))
    per_shard = -(-elements // shards)
    print(f"feature cache: building {directory} ({elements:,} {describe or 'elements'}, {shards} shard(s))")
    start = time.perf_counter()
    build().save(partial, shard_func=lambda index, _value: index // per_shard)
    seconds = time.perf_counter() - start
    files = {os.path.relpath(os.path.join(d, n), partial): os.path.getsize(os.path.join(d, n))
             for d, _, names in os.walk(partial) for n in names}
    info = {"format": CACHE_FORMAT, "key": key, "elements": elements, "shards": shards, "describe": describe,
            "build_seconds": round(seconds, 3), "bytes": sum(files.values()), "files": files, **extra_info}
    tmp = os.path.join(partial, MANIFEST_NAME + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1)
    os.replace(tmp, os.path.join(partial, MANIFEST_NAME))
    try:
        os.rename(partial, directory)
    except OSError:  # another process (a second worker on this machine) finished the same key first
        shutil.rmtree(partial, ignore_errors=True)
        entry, why = open_entry(directory, key)
        if entry is None:
            raise RuntimeError(f"feature cache {directory}: could not install it ({why})") from None
        return entry
    print(f"feature cache: {elements:,} {describe or 'elements'} in {seconds:.1f} s "
          f"({elements / max(seconds, 1e-9):,.0f}/s), {info['bytes'] / 2**20:,.1f} MiB")
    return CacheEntry(directory, elements, shards, info)


def _remove_dead_partials(root: str, key: str) -> None:
    """Remove ``<key>.partial-<this host>-<pid>`` folders whose process is gone (a killed build)."""
    prefix = f"{key}.partial-{socket.gethostname()}-"
    for name in os.listdir(root):
        if name.startswith(prefix) and name[len(prefix):].isdigit() and not _alive(int(name[len(prefix):])):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
