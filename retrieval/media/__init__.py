"""Files in, pixels out: everything between a folder of images and a model's input array.

Owns which files are images and reading them safely (:mod:`.files`), decoding with EXIF
orientation and draft scaling (:mod:`.decode`, :mod:`.exif`), the per-file time limit
(:mod:`.deadline`), the decoding worker pool (:mod:`.workers`) and the model-input transform
(:mod:`.transform`). The first stage of the data's path: it may import numpy, Pillow, the
standard library and :mod:`retrieval.errors` only; never the aligners, storage, FAISS or torch,
so that a spawned decoding worker starts in a fraction of a second.
"""
