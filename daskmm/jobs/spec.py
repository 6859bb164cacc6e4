"""The job file: its schema, and loading it with errors that name the field.

A job file is YAML::

    name: sleepstudy                    # optional; default: the file's stem
    data: ../examples/sleepstudy.csv    # CSV, Parquet or a daskmm dataset
    ingest:                             # optional: bucket the data by a factor first
      by: Subject
      out: ../work/sleepstudy.dataset   # where the dataset goes
      buckets: 4                        # optional
      na_action: keep                   # keep (each fit drops the rows it cannot use, as
                                        #   lme4's na.omit) | omit (drop at ingest) | fail
    simulate:                           # optional, instead of an existing `data`: create it
      rows: 100000000                   #   (written to `data` unless it exists)
      groups: 100000
    formula: "Reaction ~ Days + (Days | Subject)"
    family: gaussian                    # gaussian (lmer) | binomial | poisson (glmer)
                                        #   | negative_binomial (glmer.nb)
    link: logit                         # GLMM only: logit | probit | cloglog | log
    nagq: 1                             # GLMM only: 1 = Laplace, up to 25 = AGQ
    method: REML                        # REML | ML (gaussian); GAM: fREML (default) | REML | ML
    rho: 0.6                            # GAM only: AR1 residuals (bam's rho, AR.start)
    ar_start: start
    discrete: false                     # GAM only: fit on a covariate grid (faster, approximate)
    ddf: satterthwaite                  # LMM only: df and p-values of the fixed effects
    ci: profile                         # LMM only: wald | profile | boot confidence intervals
    level: 0.95
    nboot: 500                          # ci: boot: replicates, from
    seed: 1                             #   this seed (also the matrix-free path's probes)
    crossed: auto                       # LMM, binomial/Poisson GLMM: auto | dense | sparse |
                                        #   matrix-free (how crossed random effects are
                                        #   fitted)
    factors: []                         # columns to treat as categorical
    weights: null                       # column of prior weights (binomial: the trials of a
                                        #   proportion response)
    plots: true                         # diagnostic plots under plots/ (daskmm fit --plots:
                                        #   LMM panels, GLMM DHARMa, GAM plot.gam; GLMM draws
                                        #   from seed, default 123)
    output: ../results/sleepstudy       # result directory
    cluster:                            # optional
      scheduler: tcp://10.0.0.5:8786    # join this scheduler ...
      n_workers: 2                      # ... or start a LocalCluster of this shape
      threads_per_worker: 1
      memory_limit: 4GB
      mode: auto                        # auto | in-process | gathered | distributed

A GWAS job (``kind: gwas``) names genotypes and traits instead of data and a formula::

    kind: gwas
    bed: ../data/geno                   # PLINK prefix, or  zarr: ../data/geno.zarr
    pheno: ../data/pheno.txt            # FID IID (or one id column) and traits
    pheno_name: [height]                # optional: traits to scan (default: all)
    covar: ../data/covar.txt            # optional, and covar_name: [...]
    loco: true                          # leave the tested chromosome out (default)
    maf: 0.01                           # skip rarer variants (default 0.01)
    max_missing: 0.1                    # skip variants with more missing calls (default 0.1)
    mode: exact
    trait_type: quantitative            # or binary: case/control traits (SAIGE's scan),
                                        # or per trait: {asthma: binary, bmi: quantitative}
    firth_p: 0.01                       # binary: Firth effects below this p (0: none)
    output: ../results/gwas1            # the scan's folder; an unfinished one resumes
    cluster: {...}                      # as above

Relative paths are taken from the job file's directory, so a job runs the same from anywhere.
The schema (:data:`SCHEMA`) is checked before any work starts.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import yaml

from daskmm.errors import DaskmmError
from daskmm.formula.parse import is_gam_formula


class JobError(DaskmmError):
    """The job file is missing, unreadable or does not follow the schema."""


_CLUSTER = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "scheduler": {"type": ["string", "null"]},
        "n_workers": {"type": "integer", "minimum": 1},
        "threads_per_worker": {"type": "integer", "minimum": 1},
        "memory_limit": {"type": ["string", "integer"]},
        "mode": {"enum": ["auto", "in-process", "gathered", "distributed"]},
    },
}

SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "daskmm job",
    "type": "object",
    "additionalProperties": False,
    "required": ["data", "formula", "output"],
    "properties": {
        "kind": {"enum": ["fit", "gwas"]},
        "name": {"type": "string", "minLength": 1},
        "data": {"type": "string", "minLength": 1},
        "ingest": {
            "type": "object",
            "additionalProperties": False,
            "required": ["by", "out"],
            "properties": {
                "by": {"type": "string", "minLength": 1},
                "out": {"type": "string", "minLength": 1},
                "buckets": {"type": "integer", "minimum": 1},
                "na_action": {"enum": ["keep", "omit", "fail"]},
            },
        },
        "simulate": {
            "type": "object",
            "additionalProperties": False,
            "required": ["rows"],
            "properties": {
                "rows": {"type": "integer", "minimum": 1},
                "groups": {"type": "integer", "minimum": 2},
                "crossed": {"type": "integer", "minimum": 0},
                "buckets": {"type": "integer", "minimum": 1},
                "seed": {"type": "integer"},
            },
        },
        "formula": {"type": "string", "minLength": 1},
        "family": {"enum": ["gaussian", "binomial", "poisson", "negative_binomial", "gamma",
                            "inverse_gaussian"]},
        "link": {"enum": ["logit", "probit", "cloglog", "log", "identity", "inverse",
                          "1/mu^2"]},
        "nagq": {"type": "integer", "minimum": 1, "maximum": 25},
        "method": {"enum": ["REML", "ML", "fREML"]},
        "rho": {"type": "number", "exclusiveMinimum": -1, "exclusiveMaximum": 1},
        "ar_start": {"type": ["string", "null"]},
        "discrete": {"type": ["boolean", "integer"]},
        "factors": {"type": "array", "items": {"type": "string"}},
        "weights": {"type": ["string", "null"]},
        "ddf": {"enum": ["satterthwaite", "kenward-roger"]},
        "ci": {"enum": ["wald", "profile", "boot"]},
        "level": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        "nboot": {"type": "integer", "minimum": 2},
        "seed": {"type": "integer"},
        "crossed": {"enum": ["auto", "dense", "sparse", "matrix-free"]},
        "allow_uncertified": {"type": "boolean"},
        "plots": {"type": "boolean"},
        "output": {"type": "string", "minLength": 1},
        "cluster": _CLUSTER,
    },
}


_STRINGS = {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1}
GWAS_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "daskmm gwas job",
    "type": "object",
    "additionalProperties": False,
    "required": ["kind", "pheno", "output"],
    "properties": {
        "kind": {"enum": ["gwas"]},
        "name": {"type": "string", "minLength": 1},
        "bed": {"type": "string", "minLength": 1},
        "zarr": {"type": "string", "minLength": 1},
        "pheno": {"type": "string", "minLength": 1},
        "pheno_name": _STRINGS,
        "covar": {"type": ["string", "null"]},
        "covar_name": _STRINGS,
        "loco": {"type": "boolean"},
        "maf": {"type": "number", "minimum": 0, "exclusiveMaximum": 0.5},
        "max_missing": {"type": "number", "minimum": 0, "maximum": 1},
        "mode": {"enum": ["exact", "sparse"]},
        "sparse_threshold": {"type": "number"},
        "grm_variants": {"type": "integer", "minimum": 1},
        "block_size": {"type": "integer", "minimum": 1},
        "trait_type": {"anyOf": [
            {"enum": ["quantitative", "binary"]},
            {"type": "object", "minProperties": 1,
             "additionalProperties": {"enum": ["quantitative", "binary"]}}]},
        "firth_p": {"type": "number", "minimum": 0, "maximum": 1},
        "plots": {"type": "boolean"},
        "output": {"type": "string", "minLength": 1},
        "cluster": _CLUSTER,
    },
}


@dataclass
class GwasJob:
    """A validated ``kind: gwas`` job; ``options`` are :func:`daskmm.models.gwas.gwas`'s keywords
    (paths resolved)."""

    name: str
    output: Path
    options: dict
    cluster: dict | None = None
    raw: dict | None = None
    path: Path | None = None


@dataclass
class Job:
    """A validated job, paths resolved against the job file's directory."""

    name: str
    data: str
    formula: str
    output: Path
    family: str = "gaussian"
    link: str | None = None
    nagq: int = 1
    method: str = "REML"
    rho: float = 0.0
    ar_start: str | None = None
    discrete: bool | int = False
    factors: tuple[str, ...] = ()
    weights: str | None = None
    inference: dict | None = None
    ingest: dict | None = None
    simulate: dict | None = None
    cluster: dict | None = None
    raw: dict | None = None
    path: Path | None = None

    def fingerprint(self) -> str:
        """Hash of what determines the result (the parsed job, not its file's formatting)."""
        d = dict(self.raw or {})
        d.pop("cluster", None)  # where it runs does not change the numbers
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _where(err: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in err.absolute_path) or "top level"


def _message(err: jsonschema.ValidationError) -> str:
    where = _where(err)
    v = err.validator
    sch = err.schema
    if v == "additionalProperties":
        allowed = ", ".join(sorted(sch.get("properties", {})))
        extra = sorted(set(err.instance) - set(sch.get("properties", {})))
        return f"unknown field {extra[0]!r} at {where}; allowed fields: {allowed}"
    if v == "required":
        return f"{err.message.split(' is a required')[0]} is required at {where}"
    if v == "enum":
        return (f"{where} is {err.instance!r}; allowed: "
                f"{', '.join(repr(x) for x in sch['enum'])}")
    if v == "anyOf":
        def one(sub: dict) -> str:
            if "enum" in sub:
                return ", ".join(repr(x) for x in sub["enum"])
            inner = sub.get("additionalProperties", {}).get("enum")
            return "a mapping of names to " + (" or ".join(map(repr, inner)) if inner else
                                              sub.get("type", "a value"))
        return f"{where} is {err.instance!r}; allowed: " + ", or ".join(map(one, sch["anyOf"]))
    if v == "type":
        want = sch["type"] if isinstance(sch["type"], str) else " or ".join(sch["type"])
        return f"{where} should be {want}; got {err.instance!r}"
    return f"{where}: {err.message}"


def validate(doc: object, source: str = "job file") -> None:
    """Raise :class:`JobError` for the first schema violation, naming the field."""
    if not isinstance(doc, dict):
        raise JobError(f"{source}: a job file is a YAML mapping (name: value lines); "
                       f"got {type(doc).__name__}")
    if doc.get("kind", "fit") not in ("fit", "gwas"):
        raise JobError(f"{source}: kind is {doc['kind']!r}; allowed: 'fit', 'gwas'")
    schema = GWAS_SCHEMA if doc.get("kind") == "gwas" else SCHEMA
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(doc), key=lambda e: (len(e.absolute_path),
                                                               str(e.absolute_path)))
    if errors:
        raise JobError(f"{source}: {_message(errors[0])}")
    family = doc.get("family", "gaussian")
    # a GLMM's seed is its matrix-free crossed path's (with crossed given)
    used = [k for k in ("ddf", "ci", "level", "nboot", "seed") if k in doc
            and not (k == "seed" and "crossed" in doc and family != "gaussian")]
    if schema is SCHEMA and used and (family != "gaussian" or _is_gam(str(doc["formula"]))):
        raise JobError(f"{source}: {', '.join(used)} (inference after the fit) apply to linear "
                       "mixed models (family gaussian, no smooth terms); remove them")
    if schema is SCHEMA and "crossed" in doc and (
            family not in ("gaussian", "binomial", "poisson") or _is_gam(str(doc["formula"]))):
        raise JobError(f"{source}: crossed (how crossed random effects are fitted) applies to "
                       "linear mixed models and binomial or Poisson GLMMs (no smooth terms); "
                       f"remove it for family {family}")
    if schema is GWAS_SCHEMA and ("bed" in doc) == ("zarr" in doc):
        raise JobError(f"{source}: a gwas job names its genotypes with exactly one of bed "
                       "(a PLINK prefix) or zarr (a store)")


def load_job(path: str | os.PathLike) -> Job | GwasJob:
    """Read and validate a job file."""
    p = Path(path)
    if not p.is_file():
        raise JobError(f"job file {str(p)!r} does not exist")
    try:
        text = p.read_text()
        # a .json job file (the service writes them) is read as JSON: YAML 1.1 would read
        # 1e-05 as a string
        doc = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise JobError(f"job file {str(p)!r} is not valid JSON (line {exc.lineno}): "
                       f"{exc.msg}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark else ""
        raise JobError(f"job file {str(p)!r} is not valid YAML{at}: "
                       f"{getattr(exc, 'problem', exc)}") from exc
    validate(doc, f"job file {str(p)!r}")
    base = p.resolve().parent

    def resolve(s: str) -> str:
        return s if "://" in s or os.path.isabs(s) else str((base / s).resolve())

    if doc.get("kind") == "gwas":
        opts = {k: v for k, v in doc.items() if k not in ("kind", "name", "output", "cluster",
                                                            "plots")}
        for k in ("bed", "zarr", "pheno", "covar"):
            if opts.get(k) is not None:
                opts[k] = resolve(opts[k])
        opts["plot"] = doc.get("plots", True)
        return GwasJob(name=doc.get("name", p.stem), output=Path(resolve(doc["output"])),
                       options=opts, cluster=doc.get("cluster"), raw=doc, path=p.resolve())
    ingest = dict(doc["ingest"]) if "ingest" in doc else None
    if ingest:
        ingest["out"] = resolve(ingest["out"])
    return Job(name=doc.get("name", p.stem), data=resolve(doc["data"]), formula=doc["formula"],
               output=Path(resolve(doc["output"])), family=doc.get("family", "gaussian"),
               link=doc.get("link"), nagq=doc.get("nagq", 1),
               method=doc.get("method", "fREML" if _is_gam(doc["formula"]) else "REML"),
               factors=tuple(doc.get("factors", [])), rho=doc.get("rho", 0.0),
               ar_start=doc.get("ar_start"), discrete=doc.get("discrete", False),
               weights=doc.get("weights"), ingest=ingest,
               inference={k: doc[k] for k in ("ddf", "ci", "level", "nboot", "seed",
                                              "crossed") if k in doc} or None,
               simulate=doc.get("simulate"),
               cluster=doc.get("cluster"), raw=doc, path=p.resolve())


def _is_gam(formula: str) -> bool:
    return is_gam_formula(formula)
