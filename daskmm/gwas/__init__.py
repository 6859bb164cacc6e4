"""Genome-wide association scans with a linear mixed model (FaST-LMM's exact test, LOCO)."""

from daskmm.gwas.api import GwasResult, gwas
from daskmm.gwas.output import read_results

__all__ = ["gwas", "GwasResult", "read_results"]
