"""The indexing pipeline: bringing an index up to date with folders of images and a caption file.

Owns a run (:mod:`.pipeline`: run, repair, RunSummary), its settings (:mod:`.settings`), where
files come from and who encodes them (:mod:`.source`: the Source protocol, LocalSource), the
decoded stream fed to models (:mod:`.stream`, also used by evaluation and training), caption
corpora (:mod:`.captions`), filling an index from exported embeddings (:mod:`.embeddings`),
publishing the next generation (:mod:`.publish`) and keeping an index current with watched
folders (:mod:`.watch`, debounced runs of the same pipeline).

It may import media, aligners (their interface), storage and ann; never search, evaluation,
training, api, server, cli or cluster: :mod:`retrieval.cluster` plugs in from above as another Source.
"""
