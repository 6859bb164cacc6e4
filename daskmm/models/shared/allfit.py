"""lme4's ``allFit``: the same model refitted with every optimiser, side by side.

Convergence warnings are among the most asked-about lme4 problems; ``allFit`` answers them by
showing whether the optimisers agree. :func:`all_fit` runs one refit per optimiser (a task
each on a cluster, in this process otherwise) and returns an :class:`AllFit`, whose
:meth:`AllFit.summary` prints ``summary(allFit(m))``'s tables: which optimisers converged,
their messages, fixed effects, log-likelihoods, standard deviations and correlations,
``theta``, times and evaluations.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

OPTIMIZERS = {
    "L-BFGS-B+Newton": {"method": "auto"},
    "bobyqa": {"method": "bobyqa"},
    "Nelder_Mead": {"method": "neldermead"},
}
"""The optimisers an all-fit runs, by lme4-style name, as ``optimizer_options``: daskmm's
default (L-BFGS-B and Newton on the exact gradient where the model has one, else BOBYQA),
NLopt's BOBYQA (lme4's ``nloptwrap``) and NLopt's bounded Nelder-Mead."""


@dataclass
class AllFit:
    """The refits of one model by each optimiser.

    Attributes
    ----------
    fits : dict
        Optimiser name -> the refit result, or the exception text when it failed.
    times : dict
        Optimiser name -> seconds.
    """

    fits: dict = field(default_factory=dict)
    times: dict = field(default_factory=dict)

    def ok(self) -> dict[str, bool]:
        """Which refits ran and passed their own check of the optimum (lme4's
        ``which.OK`` says only which ran)."""
        return {k: not isinstance(v, str) and bool(v.certified) for k, v in self.fits.items()}

    def _good(self) -> dict:
        return {k: v for k, v in self.fits.items() if not isinstance(v, str)}

    def table(self, what: str) -> pd.DataFrame:
        """One of ``fixef``, ``llik``, ``sdcor``, ``theta``, ``feval``, ``times`` as a frame
        (rows: optimisers), as ``summary(allFit(m))``'s."""
        rows = {}
        for k, f in self._good().items():
            if what == "fixef":
                rows[k] = pd.Series(np.asarray(f.beta, float), index=f.fixef_names)
            elif what == "llik":
                rows[k] = pd.Series([f.loglik], index=["llik"])
            elif what == "sdcor":
                vc = f.varcorr()
                names = [f"{r.grp}.{r.var1}" if r.var2 is None or
                         (isinstance(r.var2, float) and math.isnan(r.var2))
                         else f"{r.grp}.{r.var2}.{r.var1}" for r in vc.itertuples()]
                names = [n.replace("Residual.nan", "sigma").replace("Residual.None", "sigma")
                         for n in names]
                rows[k] = pd.Series(vc["sdcor"].to_numpy(float), index=names)
            elif what == "theta":
                names = [nm for t in f.spec.terms for nm in t.theta_names()]
                rows[k] = pd.Series(np.asarray(f.theta, float), index=names)
            elif what == "feval":
                rows[k] = pd.Series([f.optinfo.feval], index=["feval"])
        if what == "times":
            return pd.DataFrame({"elapsed": self.times})
        return pd.DataFrame(rows).T

    def messages(self) -> dict[str, list[str]]:
        """Per optimiser: what its own check of the optimum found (lme4's ``msgs``), or why
        the refit failed."""
        out = {}
        for k, f in self.fits.items():
            out[k] = [f] if isinstance(f, str) else list(f.convergence_messages())
        return out

    def summary(self) -> str:
        """``summary(allFit(m))``'s blocks: ``$which.OK``, ``$msgs``, ``$fixef``, ``$llik``,
        ``$sdcor``, ``$theta``, ``$times``, ``$feval``."""
        lines = ["$which.OK", _named(self.ok()), "", "$msgs"]
        for k, m in self.messages().items():
            lines += [f"$msgs${k}", "NULL" if not m else "\n".join(f"[1] {x!r}" for x in m),
                      ""]
        for what in ("fixef", "llik", "sdcor", "theta", "times", "feval"):
            tab = self.table(what)
            if what in ("llik", "feval"):
                tab = tab.iloc[:, 0] if len(tab.columns) else tab
                lines += [f"${what}", _named(tab.to_dict()), ""]
            else:
                lines += [f"${what}", tab.to_string(float_format=lambda v: f"{v:.7g}"), ""]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _named(values: dict) -> str:
    """An R named vector: names over values, right-aligned."""
    keys = list(values)
    vals = [("TRUE" if v else "FALSE") if isinstance(v, (bool, np.bool_)) else f"{v:.10g}"
            for v in values.values()]
    w = [max(len(k), len(v)) for k, v in zip(keys, vals)]
    return " ".join(k.rjust(n) for k, n in zip(keys, w)) + "\n" + \
        " ".join(v.rjust(n) for v, n in zip(vals, w))


def all_fit(refit: Callable[[dict], object], client=None,
            optimizers: dict | None = None) -> AllFit:
    """Refit with each optimiser: ``refit(optimizer_options) -> result``; on ``client`` a
    task each (``refit`` must pickle), in this process otherwise. A refit that fails is
    recorded with its error's text."""
    optimizers = optimizers or OPTIMIZERS
    out = AllFit()
    if client is None:
        for name, opts in optimizers.items():
            res, secs = _timed(refit, opts)
            out.fits[name], out.times[name] = res, secs
        return out
    from daskmm.distributed.mapreduce import submit
    futures = {name: submit(client, _timed, refit, opts, name=f"allfit-{name}")
               for name, opts in optimizers.items()}
    for name, fut in futures.items():
        out.fits[name], out.times[name] = fut.result()
    return out


def _timed(refit, opts):
    t = time.perf_counter()
    try:
        res = refit(opts)
    except Exception as exc:  # a failed optimiser is a row of the table, as in allFit
        res = f"{type(exc).__name__}: {exc}"
    return res, time.perf_counter() - t
