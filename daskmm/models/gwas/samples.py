"""Phenotype and covariate tables, matched to the genotype samples by id.

Tables have a header and are whitespace- or comma-separated. Samples are named by ``FID IID``
(PLINK / REGENIE) or by one id column (``IID``, ``sample_id``, ``sample``, ``id``). With a
PLINK source and ``FID IID`` in the table both ids must match; otherwise ``IID`` (or the id
column) is matched to the genotype's sample id. Missing values: ``NA``, ``NaN``, ``.``, an
empty field, and PLINK's ``-9``.

Per trait, the samples used are those with genotypes, every covariate and that trait; traits
with the same samples share one null model. Nothing is dropped without being counted.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from daskmm.data.confine import open_input
from daskmm.errors import ColumnNotFoundError, DataError
from daskmm.kernels.aliasing import aliased_columns

MISSING = ["NA", "NaN", "nan", ".", "", "-9"]
ID_COLUMNS = ("IID", "sample_id", "sample", "id")


def read_table(path: str | os.PathLike, what: str) -> tuple[pd.DataFrame, list[str]]:
    """The table at ``path`` and the names of its id columns (``["FID", "IID"]`` or one)."""
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise DataError(f"{what} {p!r} does not exist")
    with open_input(p, "rb") as fb:
        raw = fb.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{what} {p!r} is not UTF-8 text (byte {exc.start}); save it as "
                        "UTF-8") from None
    lines = io.StringIO(text)
    first = lines.readline()
    width = len(first.split(",")) if "," in first else len(first.split())
    for i, line in enumerate(lines, start=2):
        if not line.strip():
            continue
        k = len(line.split(",")) if "," in first else len(line.split())
        if k != width:
            raise DataError(f"{what} {p!r} line {i} has {k} fields; its header has "
                            f"{width}")
    sep = "," if "," in first else r"\s+"
    try:
        t = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False,
                        engine="python")
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"cannot read {what} {p!r}: {str(exc).strip().splitlines()[0]}") from None
    cols = list(t.columns)
    if "FID" in cols and "IID" in cols:
        ids = ["FID", "IID"]
    else:
        ids = [c for c in ID_COLUMNS if c in cols][:1]
        if not ids:
            raise DataError(f"{what} {p!r} has no sample id column: give FID and IID columns "
                            f"(PLINK) or one of {', '.join(ID_COLUMNS)}; its header is "
                            f"{' '.join(cols[:8])}")
    return t, ids


def numeric(t: pd.DataFrame, col: str, what: str) -> np.ndarray:
    """Column ``col`` as float64, with the missing tokens as NaN; one line on a bad value."""
    raw = t[col].str.strip()
    miss = raw.isin(MISSING)
    vals = pd.to_numeric(raw.where(~miss), errors="coerce")
    bad = vals.isna() & ~miss
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"{what} column {col!r} has a value that is not a number: "
                        f"{t[col].iloc[i]!r} (data row {i + 1}); code categories as numbers "
                        f"(dummy columns) and missing values as NA")
    return vals.to_numpy(dtype=np.float64)


@dataclass
class SampleSet:
    """Traits that use the same samples: ``index`` into the genotype samples, ``y`` (n x t),
    ``X`` (n x d, covariates then the intercept), the trait names."""

    index: np.ndarray
    traits: list[str]
    y: np.ndarray
    X: np.ndarray


@dataclass
class SampleMatch:
    """The sets to fit and the counts reported in ``summary.json``."""

    sets: list[SampleSet]
    counts: dict = field(default_factory=dict)
    covariates: list[str] = field(default_factory=list)


def _keys(t: pd.DataFrame, ids: list[str], by_fid: bool) -> pd.Index:
    if by_fid:
        return pd.Index(t["FID"].str.strip() + "\x00" + t["IID"].str.strip())
    return pd.Index(t[ids[-1]].str.strip())


def _check_collinear(X: np.ndarray, covs: list[str], trait: str) -> None:
    """Refuse covariates that are collinear on a trait's samples, naming each aliased one and
    what it is made of (the intercept counted first, as R's model matrix has it)."""
    Xi = np.column_stack([X[:, -1], X[:, :-1]])
    bad = aliased_columns(Xi, ["(Intercept)", *covs])
    if bad:
        parts = [f"{name!r} is " + ("zero on every sample" if not of else
                                    "constant" if of == ["(Intercept)"] else
                                    f"a linear combination of {', '.join(map(repr, of))}")
                 for name, of in bad]
        raise DataError(f"--covar: the covariates are collinear on the {len(X)} samples of "
                        f"trait {trait!r}: {'; '.join(parts)}; drop "
                        f"{'it' if len(bad) == 1 else 'them'} (--covar-name lists the "
                        "covariates to use)")


def match_samples(samples: pd.DataFrame, pheno: str | os.PathLike,
                  pheno_names: list[str] | None = None, covar: str | os.PathLike | None = None,
                  covar_names: list[str] | None = None, fid_ids: bool = True) -> SampleMatch:
    """Match ``pheno`` (and ``covar``) to the genotype ``samples`` (``FID``, ``IID``).

    ``fid_ids``: the genotype samples have meaningful family ids (PLINK); tables with ``FID
    IID`` are then matched on both.
    """
    pt, pids = read_table(pheno, "--pheno")
    by_fid = fid_ids and pids == ["FID", "IID"]
    gkeys = _keys(samples, ["FID", "IID"], by_fid)
    if gkeys.has_duplicates:
        dup = gkeys[gkeys.duplicated()][0].replace("\x00", " ")
        raise DataError(f"the genotype samples repeat the id {dup!r}; sample ids must be unique")
    tables = [("--pheno", pheno, pt, pids)]
    if covar is not None:
        ct, cids = read_table(covar, "--covar")
        tables.append(("--covar", covar, ct, cids))
    values: dict[str, np.ndarray] = {}
    counts: dict = {"genotyped": len(samples)}
    for what, path, t, ids in tables:
        keys = _keys(t, ids, by_fid and ids == ["FID", "IID"])
        if keys.has_duplicates:
            dup = keys[keys.duplicated()][0].replace("\x00", " ")
            raise DataError(f"{what} {os.fspath(path)!r} lists the sample {dup!r} twice; each "
                            "sample must have one row")
        pos = keys.get_indexer(gkeys)
        found = int((pos >= 0).sum())
        if found == 0:
            ex_t = ", ".join(k.replace("\x00", " ") for k in keys[:3])
            ex_g = ", ".join(k.replace("\x00", " ") for k in gkeys[:3])
            raise DataError(f"no sample of {what} {os.fspath(path)!r} matches a genotyped "
                            f"sample (table: {ex_t}; genotypes: {ex_g}); check the "
                            f"{' '.join(ids)} column{'s' if len(ids) > 1 else ''}")
        tag = what.lstrip("-")
        counts[f"in_{tag}"] = len(t)
        counts[f"{tag}_not_genotyped"] = len(t) - found
        if what == "--pheno":
            names = pheno_names or [c for c in t.columns if c not in ids]
        else:
            names = covar_names or [c for c in t.columns if c not in ids]
        for c in names:
            if c not in t.columns:
                raise ColumnNotFoundError(f"{what} {os.fspath(path)!r} has no column {c!r}; "
                                          f"its columns are {', '.join(t.columns)}")
            v = numeric(t, c, what)
            col = np.full(len(samples), np.nan)
            col[pos >= 0] = v[pos[pos >= 0]]
            values[("y:" if what == "--pheno" else "x:") + c] = col
        if what == "--pheno" and not names:
            raise DataError(f"--pheno {os.fspath(path)!r} has no trait column besides the ids")
    traits = [k[2:] for k in values if k.startswith("y:")]
    covs = [k[2:] for k in values if k.startswith("x:")]
    X = np.column_stack([values["x:" + c] for c in covs] + [np.ones(len(samples))])
    cov_ok = ~np.isnan(X).any(axis=1)
    counts["dropped_missing_covariates"] = int((~cov_ok).sum())
    groups: dict[bytes, list[str]] = {}
    per_trait = {}
    for tr in traits:
        ok = cov_ok & ~np.isnan(values["y:" + tr])
        per_trait[tr] = {"used": int(ok.sum()),
                         "dropped_missing_trait": int((cov_ok & ~ok).sum())}
        if ok.sum() == 0:
            raise DataError(f"trait {tr!r} has no sample with a value, genotypes and every "
                            "covariate")
        y = values["y:" + tr][ok]
        if np.unique(y).size < 2:
            raise DataError(f"trait {tr!r} has one value ({y[0]:g}) in its {ok.sum()} samples; "
                            "a trait must vary to be tested")
        if ok.sum() <= X.shape[1] + 1:
            raise DataError(f"trait {tr!r} has {ok.sum()} samples for {X.shape[1]} covariate "
                            "columns (with the intercept); it needs more samples than that")
        _check_collinear(X[ok], covs, tr)
        groups.setdefault(ok.tobytes(), []).append(tr)
    counts["traits"] = per_trait
    sets = []
    for mask_bytes, trs in groups.items():
        ok = np.frombuffer(mask_bytes, dtype=bool)
        idx = np.flatnonzero(ok)
        sets.append(SampleSet(idx, trs, np.column_stack([values["y:" + t][idx] for t in trs]),
                              X[idx]))
    return SampleMatch(sets, counts, covs)
