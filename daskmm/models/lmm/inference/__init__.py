"""Inference after an LMM fit: degrees of freedom, intervals, model comparison, derived
statistics.

Everything here works on the fit's :class:`~daskmm.models.lmm.fit.Problem` (the frozen spec and the
cross-products), never on the rows again: a profile point, a Satterthwaite derivative or a
bootstrap replicate is one more evaluation of the profiled criterion on statistics that are
already computed. The linear algebra lives in :mod:`daskmm.kernels.varpar` and
:mod:`daskmm.kernels.lmm_simulate`; these modules decide what to evaluate and where.

- :mod:`~daskmm.models.lmm.inference.deviance`: the deviance at ``(theta, sigma)`` and
``vcov(beta)``;
- :mod:`~daskmm.models.lmm.inference.ddf`: Satterthwaite degrees of freedom (lmerTest);
- :mod:`~daskmm.models.lmm.inference.profile`: profile-likelihood intervals (lme4's ``confint``);
- :mod:`~daskmm.models.lmm.inference.bootstrap`: parametric bootstrap (lme4's ``bootMer``);
- :mod:`~daskmm.models.lmm.inference.compare`: likelihood-ratio tests (lme4's ``anova``);
- :mod:`~daskmm.models.lmm.inference.variance`: ICC and Nakagawa's R^2 (``performance``).
"""
