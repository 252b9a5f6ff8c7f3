"""Recall@k on captioned image sets, and the photo sets with known answers."""
