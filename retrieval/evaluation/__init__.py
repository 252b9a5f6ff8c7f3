"""Recall@k on captioned image sets, the way the field measures it, and the photo sets with known answers.

Owns the captioned sets in their many formats (:mod:`.datasets`), the metrics with
CLIP_benchmark's definitions (:mod:`.metrics`), running an aligner over a set, exactly or through
an index (:mod:`.evaluate`), recall curves as pictures (:mod:`.plot`, matplotlib), and two photo
sets: the demo's (:mod:`.demo`) and the hand-captioned dev set whose tuning decides the
``default`` aligner's constants (:mod:`.devset`, its captions shipped beside it).

It may import ingest (the decoded stream), storage, ann, aligners, media and the shared root
modules; never search, training, api or the edges above.
"""
