"""``daskmm.gwas``: a mixed-model association scan, FaST-LMM's exact test with LOCO."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from daskmm.distributed.execution import executor, is_in_process, runs_in_process
from daskmm.errors import DaskmmError, DataError
from daskmm.models.gwas.binary import BINARY_COLUMNS, FIRTH_P, coded
from daskmm.models.gwas.genotypes import open_genotypes
from daskmm.models.gwas.output import RESULT_COLUMNS, ScanFolder, lambda_gc, plots, read_results
from daskmm.models.gwas.samples import SampleSet, match_samples
from daskmm.models.gwas.scan import default_block_size, plan_blocks, scan_set
from daskmm.models.gwas.tasks import Filters

log = logging.getLogger("daskmm")

MODES = ("exact", "sparse")
TRAIT_TYPES = ("quantitative", "binary")
SPARSE_THRESHOLD = 0.05
"""fastGWA's (GCTA ``--make-bK-sparse``) cut-off: GRM entries at or below it are set to 0."""
MAX_GROUP = 20_000
"""The most samples one group of relatives may hold in sparse mode (one dense eigh each)."""


@dataclass
class GwasResult:
    """A finished scan: ``path`` (the result folder), ``document`` (``summary.json``)."""

    path: Path
    document: dict

    @property
    def results(self) -> pd.DataFrame:
        """One row per variant and trait (:data:`RESULT_COLUMNS`; a binary scan adds
        :data:`BINARY_COLUMNS` before ``trait``)."""
        cols = RESULT_COLUMNS
        if self.document.get("trait_type", "quantitative") != "quantitative":
            cols = RESULT_COLUMNS[:-1] + BINARY_COLUMNS + ["trait"]
        return read_results(self.path)[cols]

    @property
    def lambda_gc(self) -> dict[str, float]:
        return {t: v["lambda_gc"] for t, v in self.document["traits"].items()}

    def summary(self) -> str:
        """The printed summary (``summary.txt``)."""
        return (self.path / "summary.txt").read_text().rstrip("\n")


def _fingerprint(src, pheno, covar, options: dict) -> dict:
    def stat(p):
        if p is None:
            return None
        st = os.stat(p)
        return [os.path.abspath(p), st.st_size, st.st_mtime_ns]
    return {"genotypes": src.fingerprint(), "pheno": stat(pheno), "covar": stat(covar),
            "options": options}


def gwas(*, bed: str | None = None, zarr: str | None = None, pheno: str,
         pheno_name: list[str] | None = None, covar: str | None = None,
         covar_name: list[str] | None = None, out: str | os.PathLike,
         loco: bool | None = None, maf: float = 0.01, max_missing: float = 0.1,
         mode: str = "exact", sparse_threshold: float = SPARSE_THRESHOLD,
         grm_variants: int | None = None, block_size: int | None = None, client=None,
         execution: str = "auto", force: bool = False, plot: bool = True,
         trait_type: str | dict[str, str] = "quantitative", firth_p: float = FIRTH_P
         ) -> GwasResult:
    """Scan every variant for association with each trait under a linear mixed model.

    Binary traits (``trait_type="binary"``) are scanned as SAIGE scans them (see
    :mod:`daskmm.models.gwas.binary`): a logistic mixed null by PQL with AI-REML per trait,
    the score test with SAIGE's variance ratio and saddlepoint p-values, Firth's effect for
    the top hits, allele counts in cases and controls.

    FaST-LMM's model and test (``fastlmm.association.single_snp``): the genetic relationship
    matrix of unit-standardised variants (trace ``n``), left out one chromosome at a time
    (``loco``), ``h2`` by REML per trait and LOCO block, then per variant the GLS effect, its
    SE and the F(1, n - d - 1) test.

    Parameters
    ----------
    bed, zarr : str
        Genotypes: a PLINK prefix (``.bed/.bim/.fam``) or an sgkit / VCF-Zarr store; one.
    pheno : str
        Table of traits with ``FID IID`` or one sample-id column (whitespace or CSV).
    pheno_name : list of str, optional
        Trait columns to scan (default: all but the ids).
    covar, covar_name : optional
        Table of covariates and the columns to use (default: all). An intercept is added.
    out : path
        Result folder (see :mod:`daskmm.models.gwas.output`); a rerun with the same inputs resumes.
    loco : bool, optional
        Leave the tested variant's chromosome out of the relationship matrix (the default in
        exact mode; sparse mode, as fastGWA, has one matrix of close relatives).
    maf, max_missing : float
        Variants with a minor allele frequency below ``maf`` or a missing-call rate above
        ``max_missing`` (over a trait's samples) are skipped, and listed in ``skipped.parquet``;
        they are also left out of the relationship matrix.
    mode : {"exact", "sparse"}
        ``"exact"``: FaST-LMM's scan with dense ``n x n`` relationship matrices. ``"sparse"``:
        fastGWA's model for biobank N: the GRM with entries at or below
        ``sparse_threshold`` set to 0, kept sparse (no ``n x n`` matrix), eigendecomposed
        family by family, then the same REML and the exact GLS test per variant.
    sparse_threshold : float
        Sparse mode: GRM entries kept above this (default 0.05, fastGWA's).
    grm_variants : int, optional
        Sparse mode: build the GRM from this many evenly spaced variants (default: all that
        pass the filters).
    block_size : int, optional
        Variants per task (default: about 64 MB of dosages).
    client : distributed.Client or str, optional
        A cluster; default: in this process for small data, else a local cluster.
    execution : {"auto", "in-process", "distributed"}
        Where the tasks run: ``"auto"`` (in this process for small data when no cluster is
        named or current), or forced.
    force : bool
        Replace a previous result at ``out``.
    trait_type : {"quantitative", "binary"} or dict
        Every trait scanned is of this type, or ``{trait: type}`` per trait (traits not named
        are quantitative). Binary traits are coded 0/1 (control/case) or 1/2 (PLINK: 1
        control, 2 case); missing as for any trait. The traits of one type share their
        pass (the GRM, the genotype reads); each type with samples in common has its own.
    firth_p : float
        Binary traits: Firth's effect (and its SE) is reported for variants whose p-value is
        below this (default 0.01, SAIGE's ``pCutoffforFirth``; 0: never).
    """
    t0 = time.perf_counter()
    if mode not in MODES:
        raise DaskmmError(f"mode={mode!r}; allowed: {', '.join(map(repr, MODES))}")
    if loco is None:
        loco = mode == "exact"
    if mode == "sparse" and loco:
        raise DaskmmError("sparse mode has no LOCO: as fastGWA, its GRM holds only close "
                          "relatives; leave loco out (or --mode exact for LOCO)")
    if not 0 <= firth_p <= 1:
        raise DaskmmError(f"firth_p={firth_p}; give a p-value threshold in [0, 1] (0: no "
                          "Firth effects)")
    if not 0 <= maf < 0.5:
        raise DaskmmError(f"maf={maf}; give a minor allele frequency in [0, 0.5)")
    if not 0 <= max_missing <= 1:
        raise DaskmmError(f"max_missing={max_missing}; give a rate in [0, 1]")
    if not 0 <= sparse_threshold < 1:
        raise DaskmmError(f"sparse_threshold={sparse_threshold}; give a relatedness in [0, 1) "
                          "(fastGWA's is 0.05)")
    src = open_genotypes(bed, zarr)
    match = match_samples(src.samples, pheno, pheno_name, covar, covar_name,
                          fid_ids=src.kind == "bed")
    types = _trait_types(trait_type, [t for s in match.sets for t in s.traits])
    coding: dict[str, str] = {}
    match.sets, kinds = _split_sets(match.sets, types, coding)
    filters = Filters(maf=maf, max_missing=max_missing)
    bs = block_size or default_block_size(max(len(s.index) for s in match.sets))
    if bs < 1:
        raise DaskmmError(f"block_size={bs}; give a positive number of variants")
    chrom = src.variants["chrom"].to_numpy().astype(str)
    blocks = plan_blocks(chrom, bs)
    chrom_order = list(dict.fromkeys(chrom))
    if grm_variants is not None and grm_variants < 1:
        raise DaskmmError(f"grm_variants={grm_variants}; give a positive number of variants")
    if loco and len(chrom_order) < 2:
        raise DataError(f"LOCO needs variants on two or more chromosomes; the genotypes have "
                        f"only chromosome {chrom_order[0]!r}: give --no-loco (loco=False)")
    options = {"mode": mode, "loco": loco, "maf": maf, "max_missing": max_missing,
               "pheno_name": pheno_name, "covar_name": covar_name, "block_size": bs}
    binary = {"firth_p": firth_p}
    if coding:   # (an all-quantitative scan keeps its fingerprint of before)
        kinds_used = set(types.values())
        options.update(trait_type=types if len(kinds_used) > 1 else kinds_used.pop(),
                       firth_p=firth_p)
    sparse = None
    if mode == "sparse":
        sparse = {"threshold": sparse_threshold, "grm_variants": grm_variants,
                  "n_variants": src.n_variants, "max_group": MAX_GROUP}
        options.update(sparse_threshold=sparse_threshold, grm_variants=grm_variants)
    inputs = [p for p in (pheno, covar) if p is not None] + [str(f) for f in src.files()]
    folder = ScanFolder(out, _fingerprint(src, pheno, covar, options), force=force,
                        inputs=inputs)
    done = folder.done_blocks()
    if folder.resumed:
        log.info("resuming %s: %d of %d blocks done", folder.path, len(done),
                 len(blocks) * len(match.sets))
    variants = src.variants
    known = folder.nulls()

    def on_block(block, set_id, tested, skipped):
        v = variants.iloc[tested["variant_index"].to_numpy()].reset_index(drop=True)
        tested = pd.concat([v, tested.reset_index(drop=True)], axis=1)
        vs = variants.iloc[skipped["variant_index"].to_numpy()].reset_index(drop=True)
        skipped = pd.concat([vs[["chrom", "pos", "variant_id"]],
                             skipped.reset_index(drop=True)], axis=1)
        folder.write_block(block.chrom, block.index, set_id, tested, skipped)

    def on_null(c, set_id, null):
        doc = {"chrom": c, "set": set_id, "traits": sset_traits[set_id], "n": null.n,
               "covariates": null.d, "components": dict(zip(sset_traits[set_id],
                                                             null.variance_components())),
               "sparse_grm": getattr(null, "grm", None)}
        if hasattr(null, "markers"):   # a binary null: the variance ratio's markers
            doc["ratio_markers"] = variants["variant_id"].iloc[null.markers].tolist()
        folder.write_null(c, set_id, doc)

    sset_traits = {i: s.traits for i, s in enumerate(match.sets)}

    cells = src.n_variants * max(len(s.index) for s in match.sets) * len(match.sets)
    timing = []
    if execution not in ("auto", "in-process", "distributed"):
        raise DaskmmError(f"execution={execution!r}; allowed: 'auto', 'in-process', "
                          "'distributed'")
    with executor(runs_in_process(execution, client, cells), client) as c:
        reader = src.reader()
        for i, sset in enumerate(match.sets):
            nk = {k[0]: v for k, v in known.items() if k[1] == i}
            timing.append(scan_set(c, reader, sset, i, blocks, filters, loco, done, on_block,
                                   on_null, nk, sparse,
                                   binary if kinds[i] == "binary" else None))
        where = "in-process" if is_in_process(c) else "distributed"
    df = folder.read_results()
    summary, text = _summarize(df, folder, src, match, blocks, chrom_order, loco, options,
                               timing, time.perf_counter() - t0, where, coding)
    if plot:
        plots(df, chrom_order, folder.path)
    folder.finish(summary, text)
    return GwasResult(folder.path, summary)


def _trait_types(trait_type, names: list[str]) -> dict[str, str]:
    """Each scanned trait's type from ``trait_type`` (one type, or ``{trait: type}``)."""
    allowed = ", ".join(map(repr, TRAIT_TYPES))
    if isinstance(trait_type, str):
        if trait_type not in TRAIT_TYPES:
            raise DaskmmError(f"trait_type={trait_type!r}; allowed: {allowed}, or a mapping "
                              "of trait names to them")
        return dict.fromkeys(names, trait_type)
    if not isinstance(trait_type, dict):
        raise DaskmmError(f"trait_type={trait_type!r}; give {allowed}, or a mapping of trait "
                          "names to them")
    for t, k in trait_type.items():
        if t not in names:
            raise DaskmmError(f"trait_type names the trait {t!r}, which is not scanned; the "
                              f"traits are {', '.join(names)}")
        if k not in TRAIT_TYPES:
            raise DaskmmError(f"trait_type of {t!r} is {k!r}; allowed: {allowed}")
    return {t: trait_type.get(t, "quantitative") for t in names}


def _split_sets(sets: list, types: dict[str, str], coding: dict[str, str]):
    """The sample sets split by trait type (quantitative first, so an all-quantitative
    scan's sets are those of before), binary traits coded 0/1 (``coding`` records how they
    came). Returns the sets and each one's type."""
    out, kinds = [], []
    for s in sets:
        for kind in TRAIT_TYPES:
            cols = [j for j, t in enumerate(s.traits) if types[t] == kind]
            if not cols:
                continue
            y = s.y[:, cols].copy()
            names = [s.traits[j] for j in cols]
            if kind == "binary":
                for j, t in enumerate(names):
                    y[:, j], coding[t] = coded(y[:, j], t)
            out.append(SampleSet(s.index, names, y, s.X))
            kinds.append(kind)
    return out, kinds


def _summarize(df, folder, src, match, blocks, chrom_order, loco, options, timing, wall,
               where, coding):
    sk_parts = sorted((folder.path / "_skipped").glob("part-*.parquet"))
    skipped = (pd.concat([pd.read_parquet(p) for p in sk_parts], ignore_index=True)
               if sk_parts else pd.DataFrame(columns=["variant_id", "reason", "traits"]))
    nulls = folder.nulls()
    traits = {}
    for i, s in enumerate(match.sets):
        sk = skipped[skipped["traits"] == ",".join(s.traits)]
        reasons = {str(k): int(v) for k, v in sk["reason"].value_counts().items()}
        for t in s.traits:
            d = df[df["trait"] == t]
            comps = {c: nulls[(c, i)]["components"][t]
                     for c in (chrom_order if loco else ["all"]) if (c, i) in nulls}
            traits[t] = {"samples_used": len(s.index), "variants_tested": int(len(d)),
                         "variants_skipped": reasons, "lambda_gc": lambda_gc(d["p_value"]),
                         "null": comps, "sample_set": i,
                         **match.counts["traits"][t]}
            traits[t]["trait_type"] = "binary" if t in coding else "quantitative"
            if t in coding:
                y = s.y[:, s.traits.index(t)]
                traits[t].update(coding=coding[t], cases=int(y.sum()),
                                 controls=int(len(y) - y.sum()),
                                 saddlepoint=int(d["spa"].sum()), firth=int(d["firth"].sum()))
    model = ("FaST-LMM exact LMM scan (single_snp): GRM of unit-standardised variants, trace "
             "n; REML h2; F(1, n-d-1) test")
    if options["mode"] == "sparse":
        model = ("fastGWA's model: sparse GRM (entries above "
                 f"{options['sparse_threshold']} kept, trace n), REML h2, exact GLS F(1, n-d-1) "
                 "test per variant")
    kinds = {v["trait_type"] for v in traits.values()}
    if "binary" in kinds:
        saige = ("SAIGE's model: logistic mixed null by PQL with AI-REML (tau on the whole "
                 "GRM, " + ("coefficients again per LOCO block" if loco else "no LOCO")
                 + ("; sparse GRM of close relatives" if options["mode"] == "sparse" else "")
                 + "); score test with the variance ratio, saddlepoint p-values beyond 2 SD, "
                 f"Firth effects below p = {options['firth_p']:g}")
        model = saige if kinds == {"binary"} else f"quantitative traits: {model}; binary: {saige}"
    sparse_grm = {f"set{k[1]}": v.get("sparse_grm") for k, v in nulls.items()
                  if v.get("sparse_grm")}
    summary = {"kind": "gwas", "model": model, **({"sparse_grm": sparse_grm} if sparse_grm
                                                   else {}),
               "trait_type": kinds.pop() if len(kinds) == 1 else "mixed",
               "mode": options["mode"], "loco": loco, "genotypes": src.path,
               "samples": {k: v for k, v in match.counts.items() if k != "traits"},
               "covariates": match.covariates, "variants": src.n_variants,
               "blocks": len(blocks), "filters": {"maf": options["maf"],
                                                  "max_missing": options["max_missing"]},
               "counted_allele": "allele1 (PLINK A1 / Zarr variant_allele[:, 1])",
               "traits": traits, "timing": {"wall_s": wall, "sets": timing},
               "executed": where}
    lines = [f"daskmm gwas: {src.n_variants} variants in {len(blocks)} blocks, "
             f"{'LOCO' if loco else 'one GRM (no LOCO)'}, {options['mode']} mode ({where})",
             f"samples: {match.counts['genotyped']} genotyped; covariates: "
             f"{', '.join(match.covariates) or '(intercept only)'}"]
    for t, v in traits.items():
        if v["trait_type"] == "binary":
            tau = [c["tau"] for c in v["null"].values()]
            ratio = [c["variance_ratio"] for c in v["null"].values()]
            lines.append(f"trait {t} (binary, {v['coding']}): {v['cases']} cases, "
                         f"{v['controls']} controls, {v['variants_tested']} variants tested; "
                         f"tau {tau[0]:.4f}, variance ratio {min(ratio):.4f}"
                         + (f"..{max(ratio):.4f}" if len(ratio) > 1 else "")
                         + f"; {v['saddlepoint']} p-values by saddlepoint, {v['firth']} Firth "
                         f"effects; lambda_gc {v['lambda_gc']:.4f}")
            continue
        h2 = [c["h2"] for c in v["null"].values()]
        why = v["variants_skipped"]
        n_skip = sum(why.values())
        skipped = ("none skipped" if not n_skip else f"{n_skip} skipped (" + ", ".join(
            f"{k}: {n}" for k, n in why.items() if n) + ")")
        null = (f"h2 {h2[0]:.4f} (one null model)" if len(h2) == 1 else
                f"h2 {min(h2):.4f}..{max(h2):.4f} over {len(h2)} null models (LOCO)")
        lines.append(f"trait {t}: {v['samples_used']} samples "
                     f"({v['dropped_missing_trait']} missing the trait), "
                     f"{v['variants_tested']} variants tested, {skipped}; {null}; lambda_gc "
                     f"{v['lambda_gc']:.4f}")
    lines.append(f"wall time {wall:.1f} s")
    return summary, "\n".join(lines) + "\n"


__all__ = ["gwas", "GwasResult", "read_results"]
