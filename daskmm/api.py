"""``daskmm.fit``: the one entry point for every model; the CLI, the job runner and the
service call it. ``daskmm.lmm`` and ``daskmm.glmm`` stay as the familiar names."""

from __future__ import annotations

from daskmm.errors import ModelError
from daskmm.families import get_family


def fit(formula: str, data, family: str = "gaussian", *, link: str | None = None,
        reml: bool | None = None, nagq: int = 1, factors: list[str] | None = None,
        weights: str | None = None, client=None, mode: str = "auto",
        npartitions: int | None = None, optimizer_options: dict | None = None):
    """Fit a mixed model: ``lmer`` for the Gaussian family, ``glmer`` otherwise.

    Parameters
    ----------
    formula : str
        lme4 formula.
    data : path, URL, pandas or dask DataFrame
    family : str
        ``gaussian`` (an LMM), ``binomial``, ``poisson``, ``negative_binomial``
        (:mod:`daskmm.families`).
    link : str, optional
        The family's link (its default when None).
    reml : bool, optional
        Gaussian only: REML (default) or ML. A GLMM is always fitted by maximum likelihood.
    nagq : int
        GLMM only: 1 (Laplace) or up to 25 adaptive Gauss-Hermite nodes.
    factors, weights, client, mode, npartitions, optimizer_options
        As :func:`daskmm.lmm` and :func:`daskmm.glmm`.

    Returns
    -------
    LmmResult or GlmmResult
        Both are :class:`daskmm.results.base.MixedResult`.
    """
    fam = get_family(family)
    if fam.code is None:
        if link not in (None, "identity"):
            raise ModelError(f"link {link!r} does not apply to the gaussian family (its link "
                             "is identity); give family binomial, poisson or "
                             "negative_binomial for a GLMM, or leave the link out")
        if nagq != 1:
            raise ModelError(f"nagq={nagq} does not apply to the gaussian family (an LMM's "
                             "likelihood is exact); leave nagq out")
        from daskmm.lmm import lmm
        return lmm(formula, data, reml=True if reml is None else reml, factors=factors,
                   weights=weights, client=client, mode=mode, npartitions=npartitions,
                   optimizer_options=optimizer_options)
    if reml:
        raise ModelError("REML applies to the gaussian family; a GLMM is fitted by maximum "
                         "likelihood (leave reml out)")
    from daskmm.glmm import glmm
    return glmm(formula, data, fam.name, link=link, nagq=nagq, factors=factors,
                weights=weights, client=client, mode=mode, npartitions=npartitions,
                optimizer_options=optimizer_options)
