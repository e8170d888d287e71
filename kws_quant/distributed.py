"""tf.distribute for the training scripts: strategies, the chief/worker roles, and resume agreement.

Multi-worker training (``--strategy=multi_worker``) follows TensorFlow's ``MultiWorkerMirroredStrategy`` protocol:
every worker runs the same command with its own ``TF_CONFIG``; the strategy must exist before any TensorFlow op
(``make_strategy`` is the first thing the scripts do); ``config.data.batch_size`` is the global batch, split across
the workers; only the chief (task ``chief``, or ``worker`` 0 when the cluster has no chief) writes the run directory;
every other worker writes the same files into ``<workdir>/workertemp_<index>/`` (Keras' multi-worker convention),
which it removes when the run has finished. Its backups stay there while the run is unfinished, so a killed and
restarted worker resumes from its own last completed epoch (:func:`agree_on_backup` checks that all workers resume
from the same one).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket

import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi_worker")


def make_strategy(name: str = "default") -> tf.distribute.Strategy:
    """``"default"`` (one device), ``"mirrored"`` (all local devices), ``"multi_worker"`` (``TF_CONFIG``).

    ``multi_worker`` must be created before any TensorFlow op runs in the process (TensorFlow configures its
    collective ops at start-up); otherwise a ``ValueError`` says so.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise ValueError("--strategy=multi_worker needs the TF_CONFIG environment variable (cluster and task)")
        worker_role()  # a malformed TF_CONFIG is named before TensorFlow reads it
        try:
            return KerasMultiWorkerStrategy()
        except RuntimeError as e:
            if "at program startup" in str(e):
                raise ValueError("--strategy=multi_worker: the strategy must be created before any TensorFlow op "
                                 "runs (call kws_quant.distributed.make_strategy first in the program)") from e
            raise
    raise ValueError(f"strategy={name!r} is not allowed; allowed: {', '.join(STRATEGIES)}")


class KerasMultiWorkerStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """``MultiWorkerMirroredStrategy`` whose ``reduce`` accepts what Keras 3's ``fit`` passes it.

    Keras 3 (3.15) calls ``strategy.reduce(MEAN, axis=None)`` on the whole ``(x, y)`` batch before the first step
    of ``fit``/``evaluate`` (only to learn its shapes), and ``reduce(MEAN, axis=0)`` on scalar metrics; TensorFlow's
    multi-worker ``reduce`` takes neither (keras-team/keras#20585: ``fit`` fails with "Attempt to convert a value
    (PerReplica...)"), and the batch's halves differ in shape when a split's last batch does not divide evenly. This
    ``reduce`` maps over the structure; a scalar is reduced over the replicas only; a tensor reduced with
    ``axis=None`` (elementwise across replicas: only that sample batch) is this worker's own value, without a
    collective; everything else is TensorFlow's.
    """

    def reduce(self, reduce_op, value, axis=None):
        def one(v):
            local = self.experimental_local_results(v)[0]
            rank = local.shape.rank if getattr(local, "shape", None) is not None else None
            if axis is None and rank:
                return local
            return super(KerasMultiWorkerStrategy, self).reduce(reduce_op, v, None if rank == 0 else axis)

        return tf.nest.map_structure(one, value)


@dataclasses.dataclass(frozen=True)
class WorkerRole:
    """This process's place in a ``TF_CONFIG`` cluster (a single process: the chief of one)."""

    task_type: str = "worker"
    index: int = 0
    num_workers: int = 1
    has_chief_task: bool = False

    @property
    def is_chief(self) -> bool:
        """The task that writes the run directory: ``chief``, or ``worker`` 0 when there is no chief task."""
        return self.task_type == "chief" or (not self.has_chief_task and self.task_type == "worker"
                                             and self.index == 0)


def worker_role(environ=None) -> WorkerRole:
    """Read ``TF_CONFIG`` (absent: a single process). Raises ``ValueError`` naming what is wrong with it."""
    environ = os.environ if environ is None else environ
    raw = environ.get("TF_CONFIG")
    if not raw:
        return WorkerRole()
    try:
        conf = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON: {e}") from None
    cluster, task = (conf.get("cluster"), conf.get("task")) if isinstance(conf, dict) else (None, None)
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise ValueError('TF_CONFIG needs "cluster" and "task" objects, e.g. {"cluster": {"worker": '
                         '["host1:port", "host2:port"]}, "task": {"type": "worker", "index": 0}}')
    for kind, hosts in cluster.items():
        if not isinstance(hosts, list) or not all(isinstance(h, str) and ":" in h for h in hosts):
            raise ValueError(f"TF_CONFIG cluster.{kind} must be a list of 'host:port' strings, got {hosts!r}")
    task_type, index = task.get("type"), task.get("index")
    if task_type not in ("chief", "worker"):
        raise ValueError(f"TF_CONFIG task.type={task_type!r} is not allowed; allowed: 'chief', 'worker'")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(cluster.get(task_type, [])):
        raise ValueError(f"TF_CONFIG task.index={index!r} is not an index into cluster.{task_type} "
                         f"({len(cluster.get(task_type, []))} entries)")
    n = len(cluster.get("chief", [])) + len(cluster.get("worker", []))
    return WorkerRole(task_type, index, n, "chief" in cluster)


def free_local_ports(n: int) -> list[int]:
    """``n`` TCP ports free on 127.0.0.1 now (bound together, then released): a ``TF_CONFIG`` cluster of ``n``
    workers on one machine (tests, benchmarks, trying the protocol)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def role_of(strategy: tf.distribute.Strategy) -> WorkerRole:
    """The role of this process under ``strategy`` (only multi-worker strategies have non-chief processes)."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return worker_role()
    return WorkerRole()


def worker_workdir(workdir: str, role: WorkerRole) -> str:
    """Where this process writes: ``workdir`` for the chief, ``<workdir>/workertemp_<index>`` otherwise."""
    if role.is_chief:
        return workdir
    return os.path.join(workdir, f"workertemp_{role.task_type}_{role.index}")


def remove_worker_workdir(workdir: str, role: WorkerRole) -> None:
    """Delete a non-chief worker's temporary directory at the end of a finished run (the chief's is kept)."""
    if not role.is_chief:
        shutil.rmtree(worker_workdir(workdir, role), ignore_errors=True)


def is_lost_worker(error: BaseException, strategy: tf.distribute.Strategy) -> bool:
    """Whether ``error`` is a multi-worker collective aborted because a peer went away (killed, preempted,
    unreachable): the run is intact on disk and resumes when every worker is restarted."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and isinstance(
        error, (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError,
                tf.errors.DeadlineExceededError))


def backup_epoch(backup_dir: str, previous: bool = False) -> int:
    """The epoch a Keras ``BackupAndRestore`` folder resumes from (0: none); ``previous``: its ``.bkp`` copy."""
    path = os.path.join(backup_dir, "training_metadata.json" + (".bkp" if previous else ""))
    if not os.path.exists(path):
        return 0
    try:
        with open(path, encoding="utf-8") as f:
            return int(json.load(f)["epoch"])
    except (ValueError, KeyError, TypeError, OSError):
        return -1  # unreadable: Keras falls back to the .bkp copy; agreement treats it as unknown


def agree_on_backup(strategy: tf.distribute.Strategy, backup_dir: str) -> int:
    """Make every worker resume a phase from the same epoch; returns it. A no-op outside multi-worker training.

    Each worker keeps its own backup. A kill between the epoch's last collective and one worker's backup write can
    leave that worker's backup one epoch ahead of the others': it then falls back to its previous backup (Keras'
    ``double_checkpoint`` copy), which holds the agreed epoch. Any other disagreement raises ``ValueError``
    naming the epochs (training on would deadlock: the workers would run different numbers of steps).
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return backup_epoch(backup_dir)
    mine = backup_epoch(backup_dir)
    previous = backup_epoch(backup_dir, previous=True)

    @tf.function
    def gather(value):
        return tf.distribute.get_replica_context().all_gather(tf.reshape(value, [1, 2]), axis=0)

    pairs = strategy.run(gather, args=(tf.constant([mine, previous], tf.int64),))
    pairs = [tuple(int(v) for v in row) for row in strategy.experimental_local_results(pairs)[0].numpy()]
    agreed = min(latest for latest, _ in pairs)
    if any(latest != agreed and prev != agreed for latest, prev in pairs):
        raise ValueError(f"multi-worker resume: the workers' backups of this phase are at epochs "
                         f"{[latest for latest, _ in pairs]} (previous copies {[prev for _, prev in pairs]}); they "
                         f"cannot resume together. Delete every worker's {os.path.basename(backup_dir)!r} folder of "
                         "this phase to restart it.")
    if mine != agreed:  # one epoch ahead: fall back to the previous backup, which holds the agreed epoch
        for name in ("latest.weights.h5", "training_metadata.json"):
            shutil.copyfile(os.path.join(backup_dir, name + ".bkp"), os.path.join(backup_dir, name))
    return agreed
