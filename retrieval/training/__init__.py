"""Contrastive training of the aligner's heads."""
