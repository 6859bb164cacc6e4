"""``daskmm.fit``: the one entry point for every model; the CLI, the job runner and the
service call it. ``daskmm.lmm`` and ``daskmm.glmm`` stay as the familiar names."""

from __future__ import annotations

from daskmm.errors import ModelError
from daskmm.core.families import get_family
from daskmm.models.lmm.inference.options import check_level, check_nboot


def fit(formula: str, data, family: str = "gaussian", *, link: str | None = None,
        reml: bool | None = None, nagq: int = 1, factors: list[str] | None = None,
        weights: str | None = None, client=None, mode: str = "auto",
        npartitions: int | None = None, optimizer_options: dict | None = None,
        method: str | None = None, rho: float = 0.0, ar_start: str | None = None,
        discrete: bool | int = False, ddf: str | None = None, ci: str | None = None,
        level: float = 0.95, nboot: int = 500, seed: int | None = None):
    """Fit a mixed model (``lmer`` for the Gaussian family, ``glmer`` otherwise) or, for a
    formula with smooth terms (``s()``, ``te()``, ``ti()``), a GAM (``mgcv::bam``).

    Parameters
    ----------
    formula : str
        lme4 formula.
    data : path, URL, pandas or dask DataFrame
    family : str
        ``gaussian`` (an LMM), ``binomial``, ``poisson``, ``negative_binomial``
        (:mod:`daskmm.core.families`).
    link : str, optional
        The family's link (its default when None).
    reml : bool, optional
        Gaussian only: REML (default) or ML. A GLMM is always fitted by maximum likelihood.
    nagq : int
        GLMM only: 1 (Laplace) or up to 25 adaptive Gauss-Hermite nodes.
    factors, weights, client, mode, npartitions, optimizer_options
        As :func:`daskmm.lmm` and :func:`daskmm.glmm`.
    method : str, optional
        GAM: ``"fREML"`` (default), ``"REML"`` or ``"ML"``; a mixed model: ``"REML"`` or
        ``"ML"`` (the same as ``reml``).
    ddf, ci, level, nboot, seed
        LMM only: inference after the fit (:func:`daskmm.lmm`).

    Returns
    -------
    LmmResult, GlmmResult or GamResult
        The first two are :class:`daskmm.results.base.MixedResult`.
    """
    from daskmm.formula.parse import is_gam_formula
    inference = ddf is not None or ci is not None
    if inference and (is_gam_formula(formula) or get_family(family).code is not None):
        raise ModelError("ddf= and ci= (degrees of freedom, confidence intervals) are built "
                         "for linear mixed models (family gaussian, no smooth terms); leave "
                         "them out for this model")
    if ci == "boot":
        check_nboot(nboot)
    if ci is not None:
        check_level(level)
    if is_gam_formula(formula):
        if reml is False and method not in (None, "ML"):
            raise ModelError(f"reml=False and method={method!r} disagree; for a GAM give "
                             "method 'fREML', 'REML' or 'ML'")
        if reml is False:
            method = "ML"
        if nagq != 1:
            raise ModelError(f"nagq={nagq} does not apply to a GAM; leave nagq out")
        if optimizer_options:
            raise ModelError("optimizer_options apply to mixed models; a GAM's smoothing "
                             "parameters are found by Newton's method on the REML score")
        from daskmm.models.gam.model import gam
        return gam(formula, data, family, link=link, method=method or "fREML",
                   factors=factors, weights=weights, client=client, mode=mode,
                   npartitions=npartitions, rho=rho, ar_start=ar_start, discrete=discrete)
    if rho or ar_start is not None or discrete:
        raise ModelError("rho, ar_start (AR1 residuals) and discrete apply to GAMs, formulas "
                         "with s() terms")
    if method is not None:
        if method not in ("REML", "ML"):
            raise ModelError(f"method={method!r}; a mixed model takes 'REML' or 'ML' "
                             "('fREML' is for GAMs, formulas with s() terms)")
        reml = method == "REML"
    fam = get_family(family)
    if fam.code is None:
        if link not in (None, "identity"):
            raise ModelError(f"link {link!r} does not apply to the gaussian family (its link "
                             "is identity); give family binomial, poisson or "
                             "negative_binomial for a GLMM, or leave the link out")
        if nagq != 1:
            raise ModelError(f"nagq={nagq} does not apply to the gaussian family (an LMM's "
                             "likelihood is exact); leave nagq out")
        from daskmm.models.lmm.fit import lmm
        return lmm(formula, data, reml=True if reml is None else reml, factors=factors,
                   weights=weights, client=client, mode=mode, npartitions=npartitions,
                   optimizer_options=optimizer_options, ddf=ddf, ci=ci, level=level,
                   nboot=nboot, seed=seed)
    if reml:
        raise ModelError("REML applies to the gaussian family; a GLMM is fitted by maximum "
                         "likelihood (leave reml out)")
    from daskmm.models.glmm.fit import glmm
    return glmm(formula, data, fam.name, link=link, nagq=nagq, factors=factors,
                weights=weights, client=client, mode=mode, npartitions=npartitions,
                optimizer_options=optimizer_options)
