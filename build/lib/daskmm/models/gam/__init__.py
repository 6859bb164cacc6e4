"""Generalized additive models as mgcv's bam fits them."""
