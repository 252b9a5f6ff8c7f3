"""How an index run uses a Ray cluster: the settings the driver passes to :mod:`.ray_index`.

A leaf of the package (it imports neither ray nor the rest of the package), so ``ray_index``
and the package ``__init__``, which re-exports it, both import it without a circle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from retrieval.aligners import Aligner


@dataclass
class RaySettings:
    #: None: start a private Ray instance on this machine, even where this machine runs a cluster
    #: (ray.init's "local"); "auto" (that cluster, or RAY_ADDRESS), "HOST:PORT" or "ray://HOST:10001": join that cluster.
    address: str | None = None
    #: Encoder actors when the cluster has no GPU (one per GPU otherwise). None: one.
    encoders: int | None = None
    #: Torch threads in each CPU encoder actor. None: the smallest node's CPU count divided by the encoders on it.
    encoder_threads: int | None = None
    #: Files per read/decode task: big enough to amortize a task's few milliseconds of overhead.
    chunk: int = 8
    #: A zero-argument callable that returns the aligner, run once in each encoder actor.
    #: None: ``load_aligner(spec)`` with the driver's spec. (Tests pass a plumbing aligner's class.)
    aligner_factory: Callable[[], Aligner] | None = None
    #: Build an on-disk index's shards as Ray tasks (retrieval.cluster.ray_shards). None: when
    #: the cluster has more than one node. On one machine the tasks share the cores FAISS's own
    #: threads already use, and cost copies, so they are slower than one process
    #: (docs/scaling.md#f-on-disk-shards-one-process-against-ray-tasks).
    shards_on_ray: bool | None = None
    #: Seconds without progress (no file read or decoded, no vector stored) after which a run
    #: ends with a message: a cluster that lost the CPUs or nodes the work waits for would
    #: otherwise wait forever, silently. What was stored is kept; the same command resumes.
    #: Longer than a model's load on a busy node, which an encoder's restart repeats.
    #: (`retrieval index --ray-stall SECONDS`.)
    stall_seconds: float = 120.0
    #: Decoded files that may wait for each encoder actor still loading its model, beyond the
    #: usual two groups per encoder: the cores the loading actor leaves free decode ahead instead
    #: of idling, which shortened a whole run by about a sixth when the driver's model was already
    #: loaded (docs/scaling.md#a-the-ray-path-against-the-local-path). (A fresh `retrieval index`
    #: driver loads its own model meanwhile and starts decoding only when the actor is about
    #: ready: no gain there.) Bounded because decoded pixels wait in the object store: 512 files
    #: at 224 x 224 float32 are about 300 MB. 0: no decoding ahead.
    decode_ahead_files: int = 512
