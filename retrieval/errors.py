"""Named exceptions. The library raises these; only the CLI turns them into messages and exit codes."""


class RetrievalError(Exception):
    """Base class: a problem the user can fix (bad input, missing file, mismatched model)."""


class ModelError(RetrievalError):
    """An aligner spec that cannot be resolved or loaded."""


class IndexNotFound(RetrievalError):
    """The named index does not exist on disk."""


class ModelMismatch(RetrievalError):
    """An index built with one aligner was asked to work with another."""


class DatasetError(RetrievalError):
    """A dataset file that cannot be read or parsed; the message names file and line."""


class TrainingError(RetrievalError):
    """Training cannot start or continue (too little data, an existing output, ...)."""


class DamagedIndex(RetrievalError):
    """A derived FAISS file is missing, truncated or altered; the next index run rebuilds it."""


class CatalogDamaged(RetrievalError):
    """The catalog database is malformed; `retrieval check` says what is wrong."""


class StorageError(RetrievalError):
    """The environment refused a read or write: disk full, read-only folder, no permission."""


class FolderGone(RetrievalError):
    """A folder being indexed is not there (an unplugged disk): nothing under it is removed."""


class IndexBusy(RetrievalError):
    """Another process holds the index's writer lock; the message names it."""


class BadVideo(RetrievalError):
    """A video that cannot be sampled into frames (retrieval/media/video.py); the message is the skip reason."""


class DamagedVideo(BadVideo):
    """A video file FFmpeg cannot read: truncated, corrupt, or not the container its name says."""


class NoVideoStream(BadVideo):
    """A media file with no video stream (audio only, subtitles)."""


class EmptyVideo(BadVideo):
    """A video of zero length: an empty file, or a stream with no frame to show."""


class PeopleError(RetrievalError):
    """A `retrieval people` request that cannot be done: an unknown person or face id, a name
    another person has, an index without faces; the message says which."""
