"""Data parallelism on MPI for the training loops (minidistil.train.distill, minidistil.train.finetune).

    mpiexec -n 2 minidistil distill --batch-size 32 ...      # 2 ranks, each takes 16 of every 32 sequences

Every rank holds the whole model and draws the same GLOBAL batch (the batch order depends on the seed only); rank r
runs the forward and backward on its slice [lo, hi) of it. Each loss is a mean over the positions that count in
the global batch, so a rank's loss is its partial sum divided by the GLOBAL count (the caller scales its local
mean by local count / global count); the sum of the ranks' gradients is then the one-process gradient:

    grad = sum_r d(partial_loss_r)/dw          one Allreduce (sum) of all gradients in one float32 buffer

before clipping and AdamW, which every rank runs on identical parameters, so they stay identical. Random choices
(the masks, dropout) are keyed by the seed, the step and the global example index, never the rank, so 1, 2 or 4
ranks compute the same losses up to the order of float32 sums. Rank 0 alone writes (the log, the checkpoints, the
model, the progress bar, the lock); an error in any rank aborts the whole job (MPI_Abort) instead of leaving the
others waiting in a collective.

Without mpi4py, or outside mpiexec, `world()` is one rank and every call here is a no-op.
"""
from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

# set by mpiexec / a PMI launcher: MPI is initialised only inside such a launch
_LAUNCH_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")


@dataclass
class World:
    rank: int = 0
    size: int = 1
    comm: Any = None          # mpi4py's COMM_WORLD when size > 1
    threads: str = ""         # what set_threads chose

    @property
    def writer(self) -> bool:
        """Rank 0 writes the log, the checkpoints, the model and the report, and prints."""
        return self.rank == 0

    def shard(self, n: int) -> tuple[int, int]:
        """[lo, hi): this rank's contiguous share of a global batch of n examples (sizes differ by at most 1)."""
        if n < self.size:
            raise ValueError(f"batch size: {n} sequences cannot be shared by {self.size} MPI ranks; give "
                             f"--batch-size >= {self.size}")
        base, extra = divmod(n, self.size)
        lo = self.rank * base + min(self.rank, extra)
        return lo, lo + base + (self.rank < extra)

    def sum(self, values) -> np.ndarray:
        """The element-wise sum over ranks of a small float64 vector (losses, counts for the log)."""
        a = np.ascontiguousarray(values, dtype=np.float64).copy()
        if self.size > 1:
            self.comm.Allreduce(self.mpi.IN_PLACE, a, op=self.mpi.SUM)
        return a

    def allreduce_grads(self, params: list):
        """Sum every parameter's gradient over the ranks, in place, in one fused float32 buffer (a parameter
        without a gradient on a rank counts as zeros; it gets one when any rank has one)."""
        if self.size == 1:
            return
        sizes = [int(np.prod(p.shape)) for p in params]
        buf = np.zeros(sum(sizes) + len(params), dtype=np.float32)   # the gradients, then one has-grad flag each
        flags = buf[sum(sizes):]
        off = 0
        for i, (p, n) in enumerate(zip(params, sizes, strict=True)):
            if p.grad is not None:
                buf[off:off + n] = np.asarray(p.grad, dtype=np.float32).reshape(-1)
                flags[i] = 1.0
            off += n
        self.comm.Allreduce(self.mpi.IN_PLACE, buf, op=self.mpi.SUM)
        off = 0
        for i, (p, n) in enumerate(zip(params, sizes, strict=True)):
            if flags[i] > 0:
                p.grad = buf[off:off + n].reshape(p.shape).copy()
            off += n

    def bcast(self, obj):
        """Rank 0's object on every rank (pickled: for the once-per-run state, not per step)."""
        return obj if self.size == 1 else self.comm.bcast(obj, root=0)

    def barrier(self):
        if self.size > 1:
            self.comm.Barrier()

    @property
    def mpi(self):
        from mpi4py import MPI
        return MPI

    def describe(self) -> str:
        if self.size == 1:
            return "one process (no MPI ranks)"
        return f"MPI: rank {self.rank} of {self.size}; {self.threads}"


_WORLD: World | None = None


def launched() -> bool:
    """Whether this process was started by mpiexec (or another MPI launcher)."""
    return any(v in os.environ for v in _LAUNCH_VARS)


def world() -> World:
    """This process's place in the job: one rank without mpi4py or outside mpiexec. Under mpiexec the first call
    initialises MPI and sets the threads (set_threads)."""
    global _WORLD
    if _WORLD is not None:
        return _WORLD
    w = World()
    if launched():
        try:
            from mpi4py import MPI
        except ImportError:
            MPI = None
        if MPI is not None:
            w.comm = MPI.COMM_WORLD
            w.rank, w.size = w.comm.Get_rank(), w.comm.Get_size()
            if w.size > 1:
                w.threads = set_threads(w.comm)
    _WORLD = w
    return w


def set_threads(comm) -> str:
    """Give each rank floor(cores / ranks on this host) BLAS and Numba threads (at least 1), so that ranks x threads
    fits the cores; MINIDISTIL_RANK_THREADS overrides. Returns what was chosen, for the run header."""
    from mpi4py import MPI

    from minidistil.kernels import _blas
    host = comm.Split_type(MPI.COMM_TYPE_SHARED)
    local = host.Get_size()
    host.Free()
    cores = os.cpu_count() or 1
    n = int(os.environ.get("MINIDISTIL_RANK_THREADS", "0")) or max(1, cores // local)
    _blas.openblas().set_num_threads(n)
    try:
        import numba
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    except (ImportError, ValueError):
        pass
    return f"{local} ranks on this host, {cores} cores: {n} BLAS/Numba thread(s) per rank"


@contextlib.contextmanager
def abort_on_error():
    """Under mpiexec with several ranks: an exception in this rank prints its one-line error and aborts every
    rank (MPI_Abort), so that no rank waits forever in a collective for one that has gone."""
    w = world()
    if w.size == 1:
        yield w
        return
    try:
        yield w
    except BaseException as e:  # noqa: B036  (also KeyboardInterrupt: the job must not hang)
        print(f"minidistil (MPI rank {w.rank} of {w.size}): error: {type(e).__name__}: {e}", file=sys.stderr,
              flush=True)
        w.comm.Abort(1)
        raise

