"""People: the faces an index holds grouped into people, and the user's names and corrections.

Owns the grouping of face descriptors (:mod:`.clustering`: incremental, never moving a face the
user placed nor renumbering a person the user named) and the user's requests on people
(:mod:`.naming`: name, merge, move, hide, forget, the listing). Finding and embedding faces
is :mod:`retrieval.aligners.faces`; the tables are :mod:`retrieval.storage.faces`.

It sits between storage and ingest: an index run groups the faces it found before it ends.
It may import storage, numpy and the shared root modules; never ingest or anything above.
"""
