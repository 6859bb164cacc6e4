"""``daskmm.fit``: the one entry point for every model; the CLI, the job runner and the
service call it (or, with their own spelling of the options, :func:`daskmm.models.registry
.check` and the chosen model's fit). ``daskmm.lmm``, ``daskmm.glmm`` and ``daskmm.gam`` stay
as the familiar names."""

from __future__ import annotations

DEFAULTS = {"link": None, "reml": None, "nagq": 1, "factors": None, "weights": None,
            "client": None, "mode": "auto", "npartitions": None, "optimizer_options": None,
            "method": None, "rho": 0.0, "ar_start": None, "discrete": False, "ddf": None,
            "ci": None, "level": 0.95, "nboot": 500, "seed": None, "crossed": "auto"}
"""``fit``'s options and their defaults: an option left at its default is not "given"."""


def given_options(values: dict) -> dict:
    """The options of ``values`` that differ from :data:`DEFAULTS` (an empty list or dict
    counts as not given where the default is None)."""
    out = {}
    for k, default in DEFAULTS.items():
        v = values.get(k, default)
        if v is default or (default is None and isinstance(v, (list, tuple, dict)) and not v):
            continue
        if not isinstance(v, (list, dict)) and v == default and type(v) is type(default):
            continue
        out[k] = v
    return out


def fit(formula: str, data, family: str = "gaussian", *, link: str | None = None,
        reml: bool | None = None, nagq: int = 1, factors: list[str] | None = None,
        weights: str | None = None, client=None, mode: str = "auto",
        npartitions: int | None = None, optimizer_options: dict | None = None,
        method: str | None = None, rho: float = 0.0, ar_start: str | None = None,
        discrete: bool | int = False, ddf: str | None = None, ci: str | None = None,
        level: float = 0.95, nboot: int = 500, seed: int | None = None,
        crossed: str = "auto"):
    """Fit a mixed model (``lmer`` for the Gaussian family, ``glmer`` otherwise) or, for a
    formula with smooth terms (``s()``, ``te()``, ``ti()``), a GAM (``mgcv::bam``).

    The model is chosen by :func:`daskmm.models.registry.choose`; its own options object checks
    the options given (those not at their default) and refuses, in one line, any it does not
    take.

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
    rho, ar_start, discrete
        GAM only: AR1 residuals and the discretised fit (:func:`daskmm.gam`).
    ddf, ci, level, nboot, seed
        LMM only: inference after the fit (:func:`daskmm.lmm`); ``seed`` also seeds the
        matrix-free crossed path's probes (LMM and GLMM).
    crossed : {"auto", "dense", "sparse", "matrix-free"}
        LMM and GLMM: how crossed random effects are fitted (:func:`daskmm.lmm`,
        :func:`daskmm.glmm`).

    Returns
    -------
    LmmResult, GlmmResult or GamResult
        The first two are :class:`daskmm.results.base.MixedResult`.
    """
    from daskmm.models.registry import check
    model, options = check(formula, family, given_options(locals()))
    return model.fit(formula, data, family, options)
