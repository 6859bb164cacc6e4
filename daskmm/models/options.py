"""What a model's options object is (:class:`ModelOptions`): the options a model takes, its
own checks of the values, and how to fit with them. Each model package has one
(``models/lmm/options.py``, ...); :mod:`daskmm.models.registry` lists them and chooses.

Options are passed as given by the caller (only those it set), and messages name them the
caller's way (:data:`API`, or the command line's ``--flag value``), so ``daskmm.fit``, ``daskmm
fit`` and job files give the same refusals in their own words.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from daskmm.errors import ModelError

Spell = Callable[[str, object], str]


def API(name: str, value: object) -> str:
    """An option as a Python keyword: ``nagq=7``."""
    return f"{name}={value!r}"


INFERENCE = ("ddf", "ci", "level", "nboot", "seed")
GAM_ONLY = ("rho", "ar_start", "discrete")
SHARED = frozenset({"factors", "weights", "client", "mode", "npartitions"})


class ModelOptions:
    """A model's options. Subclasses set :attr:`kind`, :attr:`what` (the model, for
    messages) and :attr:`takes`, and may refine :meth:`check`."""

    kind: ClassVar[str] = ""
    what: ClassVar[str] = ""
    takes: ClassVar[frozenset[str]] = SHARED

    def refuse(self, given: dict, spell: Spell) -> None:
        """Refuse, in one line, every given option this model does not take."""
        extra = [k for k in given if k not in self.takes]
        if not extra:
            return
        inference = [k for k in extra if k in INFERENCE]
        gam = [k for k in extra if k in GAM_ONLY]
        names = ", ".join(spell(k, given[k]) for k in extra)
        if inference and len(inference) == len(extra):
            raise ModelError(f"{names} (inference after the fit) "
                             f"{'apply' if len(extra) > 1 else 'applies'} to linear mixed "
                             f"models (family gaussian, no smooth terms); this is {self.what}:"
                             f" leave {'them' if len(extra) > 1 else 'it'} out")
        if gam and len(gam) == len(extra):
            raise ModelError(f"{names} (AR1 residuals, discretisation) "
                             f"{'apply' if len(extra) > 1 else 'applies'} to GAMs, formulas "
                             f"with s() terms; this is {self.what}: leave "
                             f"{'them' if len(extra) > 1 else 'it'} out")
        raise ModelError(f"{names} {'do' if len(extra) > 1 else 'does'} not apply to "
                         f"{self.what}; leave {'them' if len(extra) > 1 else 'it'} out")

    def check(self, given: dict, spell: Spell = API) -> dict:
        """The keyword arguments of the model's fit for ``given``, checked; raises
        :class:`ModelError` naming the option (``spell``'s way) and what to do."""
        self.refuse(given, spell)
        return dict(given)

    def fit(self, formula: str, data, family: str, options: dict):
        """Fit with checked options (:meth:`check`)."""
        raise NotImplementedError

    def outputs(self, result, data, plots: bool = False, seed: int | None = None):
        """What this model adds to a result folder beyond the shared files, as a writer
        ``extra(tmp_folder)`` for :func:`daskmm.results.writing.write_outputs` (None: nothing);
        ``plots``: its diagnostic plots under ``plots/`` (``daskmm fit --plots``, a job's
        ``plots: true``)."""
        return None
