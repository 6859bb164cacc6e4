"""Simulated GWAS data (families in two strata, causal variants), shared by the GWAS tests."""

from __future__ import annotations

import pytest

from daskmm.models.gwas.simulate import simulate_gwas


@pytest.fixture(scope="session")
def gwas_data(tmp_path_factory):
    """380 samples (60 families of 5, 80 unrelated), 3 chromosomes x 300 variants, 1% missing
    calls, two traits (y_causal with 5 causal variants, y_null) and covariates age, sex."""
    return simulate_gwas(tmp_path_factory.mktemp("gwas") / "sim", families=60, children=3,
                         unrelated=80, chromosomes=3, variants_per_chrom=300,
                         missing_rate=0.01, seed=2)
