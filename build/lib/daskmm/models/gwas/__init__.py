"""Genome-wide association scans with a linear mixed model (FaST-LMM's exact test, LOCO)."""

from daskmm.models.gwas.api import GwasResult, gwas
from daskmm.models.gwas.output import read_results

__all__ = ["gwas", "GwasResult", "read_results"]
