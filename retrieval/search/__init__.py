"""Ranking matches: queries, filters, duplicates."""
