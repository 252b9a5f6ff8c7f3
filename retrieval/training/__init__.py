"""Contrastive training of the aligner's heads on image-caption pairs (``retrieval train``).

Owns the run: splitting pairs, the on-disk feature cache, validation with the evaluation
metrics, resuming, and self-describing checkpoints. The tensor work (towers, loss, optimizer)
lives in :mod:`retrieval.aligners.fitting`, since only aligners import torch.

It may import evaluation, ingest (the decoded stream), aligners and the shared root modules.
"""
