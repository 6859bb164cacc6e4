"""Genotype sources: PLINK ``.bed/.bim/.fam`` (read with bed-reader) and sgkit / VCF-Zarr
stores. Both are read by variant blocks, never whole, and both count **allele 1**:

- PLINK: the ``.bim``'s fifth column (A1), as PLINK and FaST-LMM (``count_A1=True``);
- Zarr: ``variant_allele[:, 1]`` (the first ALT), the other allele ``variant_allele[:, 0]``.

A source is small and picklable (paths and tables), so a task on a worker opens the file
itself. ``read(samples, start, stop)`` gives a float64 ``samples x variants`` dosage block with
NaN for a missing call.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from daskmm.data.confine import active, inside, open_checked, open_input
from daskmm.errors import DataError

VARIANT_COLUMNS = ["chrom", "pos", "variant_id", "allele1", "allele2"]


def _strings(a) -> np.ndarray:
    """A Zarr string array (fixed, variable-length or numpy's StringDType) as ``<U``."""
    return np.asarray(a, dtype=object).astype(str)


class GenotypeSource:
    """Samples (``FID``, ``IID``), variants (``chrom, pos, variant_id, allele1, allele2``, in
    file order) and block reads."""

    kind = "genotypes"
    samples: pd.DataFrame
    variants: pd.DataFrame
    path: str

    @property
    def n_samples(self) -> int:
        return len(self.samples)

    @property
    def n_variants(self) -> int:
        return len(self.variants)

    def read(self, samples: np.ndarray | None, start: int, stop: int) -> np.ndarray:
        """Dosages of allele 1, ``samples x (stop - start)``, float64, NaN missing."""
        return self.reader().read(samples, start, stop)

    def reader(self):
        """A small picklable reader of blocks (no variant table) to send to the workers."""
        raise NotImplementedError

    def fingerprint(self) -> dict:
        """What identifies the input (paths, sizes, modification times) for resuming."""
        out = {}
        for p in self.files():
            st = os.stat(p)
            out[str(p)] = [st.st_size, st.st_mtime_ns]
        return out

    def files(self) -> list[Path]:
        return [Path(self.path)]


def _table(path: Path, ncol: int, what: str) -> pd.DataFrame:
    try:
        with open_input(path) as fh:
            t = pd.read_csv(fh, sep=r"\s+", header=None, dtype=str, engine="python")
    except pd.errors.EmptyDataError:
        raise DataError(f"{what} {str(path)!r} is empty") from None
    if t.shape[1] != ncol:
        raise DataError(f"{what} {str(path)!r} has {t.shape[1]} columns; a PLINK {what} has "
                        f"{ncol} (whitespace-separated, no header)")
    return t


class BedGenotypes(GenotypeSource):
    """PLINK 1 binary genotypes: ``PREFIX.bed`` (variant-major), ``.bim``, ``.fam``."""

    kind = "bed"

    def __init__(self, prefix: str | os.PathLike):
        p = os.fspath(prefix)
        for ext in (".bed", ".bim", ".fam"):
            if p.endswith(ext):
                p = p[: -len(ext)]
        self.prefix = p
        self.path = p + ".bed"
        for ext in (".bed", ".bim", ".fam"):
            if not Path(p + ext).is_file():
                raise DataError(f"--bed {prefix!s}: {p + ext!r} does not exist; give the PLINK "
                                "prefix whose .bed, .bim and .fam files are all present")
        fam = _table(Path(p + ".fam"), 6, ".fam")
        bim = _table(Path(p + ".bim"), 6, ".bim")
        self.samples = pd.DataFrame({"FID": fam[0].to_numpy(), "IID": fam[1].to_numpy()})
        try:
            pos = bim[3].astype(np.int64).to_numpy()
        except ValueError:
            raise DataError(f"{p + '.bim'!r}: the fourth column (base-pair position) has a "
                            "value that is not an integer") from None
        self.variants = pd.DataFrame({"chrom": bim[0].to_numpy(), "pos": pos,
                                      "variant_id": bim[1].to_numpy(),
                                      "allele1": bim[4].to_numpy(),
                                      "allele2": bim[5].to_numpy()})
        n, m = len(self.samples), len(self.variants)
        size = os.path.getsize(self.path)
        want = 3 + m * ((n + 3) // 4)
        with open_input(self.path) as f:
            head = f.read(3)
        if head[:2] != b"\x6c\x1b":
            raise DataError(f"{self.path!r} is not a PLINK .bed file (its first bytes are not "
                            "the PLINK magic number 6c 1b)")
        if len(head) < 3 or head[2] != 1:
            raise DataError(f"{self.path!r} is sample-major (PLINK's old individual-major "
                            "mode); convert it with plink --make-bed first")
        if size != want:
            raise DataError(f"{self.path!r} has {size} bytes, but its .fam ({n} samples) and "
                            f".bim ({m} variants) need 3 + {m} x ceil({n}/4) = {want}: the three "
                            "files do not belong together (or the .bed is truncated)")

    def files(self) -> list[Path]:
        return [Path(self.prefix + e) for e in (".bed", ".bim", ".fam")]

    def reader(self) -> BedReader:
        return BedReader(self.path, self.n_samples, self.n_variants, active())


class ZarrGenotypes(GenotypeSource):
    """An sgkit / VCF-Zarr dataset: ``call_genotype`` (variants x samples x ploidy, -1
    missing) or ``call_dosage`` (variants x samples, NaN missing), ``variant_contig``,
    ``variant_position``, ``variant_id`` (optional), ``variant_allele``, ``sample_id``."""

    kind = "zarr"

    def __init__(self, path: str | os.PathLike):
        import zarr

        self.path = os.fspath(path)
        if not Path(self.path).exists():
            raise DataError(f"--zarr {self.path!r} does not exist")
        try:
            g = zarr.open_group(self.path, mode="r")
        except Exception as exc:  # zarr raises several kinds for a folder that is not a store
            raise DataError(f"--zarr {self.path!r} is not a Zarr store ({exc})") from None
        names = set(g.array_keys())
        need = {"variant_contig", "variant_position", "variant_allele", "sample_id"}
        if not need <= names or not names & {"call_genotype", "call_dosage"}:
            missing = sorted(need - names) or ["call_genotype or call_dosage"]
            raise DataError(f"--zarr {self.path!r} lacks {', '.join(missing)}; daskmm reads "
                            "sgkit's VCF-Zarr layout (call_genotype or call_dosage, "
                            "variant_contig, variant_position, variant_allele, sample_id)")
        self.field = "call_dosage" if "call_dosage" in names else "call_genotype"
        sample_id = _strings(g["sample_id"][:])
        self.samples = pd.DataFrame({"FID": sample_id, "IID": sample_id})
        contig = np.asarray(g["variant_contig"][:])
        if "contig_id" in names:
            contigs = _strings(g["contig_id"][:])
        else:
            contigs = np.asarray(g.attrs.get("contigs", []), dtype=str)
        chrom = contigs[contig] if len(contigs) else contig.astype(str)
        alleles = _strings(g["variant_allele"][:])
        if alleles.ndim != 2 or alleles.shape[1] < 2:
            raise DataError(f"--zarr {self.path!r}: variant_allele must have two or more "
                            "alleles per variant")
        m = len(contig)
        vid = (_strings(g["variant_id"][:]) if "variant_id" in names
               else np.array([f"{c}:{p}" for c, p in zip(chrom, g["variant_position"][:])]))
        self.variants = pd.DataFrame({"chrom": chrom.astype(str),
                                      "pos": np.asarray(g["variant_position"][:], np.int64),
                                      "variant_id": vid, "allele1": alleles[:, 1],
                                      "allele2": alleles[:, 0]})
        shape = g[self.field].shape
        if shape[0] != m or shape[1] != len(sample_id):
            raise DataError(f"--zarr {self.path!r}: {self.field} has shape {shape}, but there "
                            f"are {m} variants and {len(sample_id)} samples")

    def files(self) -> list[Path]:
        return [Path(self.path) / n / ".zarray" for n in (self.field,)
                if (Path(self.path) / n / ".zarray").exists()] or [Path(self.path)]

    def reader(self) -> ZarrReader:
        return ZarrReader(self.path, self.field, active())


@dataclass(frozen=True)
class BedReader:
    """Reads variant blocks of a ``.bed`` (bed-reader, one thread: a worker runs one task a
    core). With ``roots`` (a service job's places, :mod:`daskmm.data.confine`) the worker
    opens the file, checks the opened file, and has bed-reader read that very file through its
    descriptor (``/proc/self/fd/N``)."""

    path: str
    n_samples: int
    n_variants: int
    roots: tuple[str, ...] | None = None

    def read(self, samples: np.ndarray | None, start: int, stop: int) -> np.ndarray:
        return self.read_at(samples, slice(start, stop))

    def read_at(self, samples: np.ndarray | None, variants: slice | np.ndarray) -> np.ndarray:
        """As :meth:`read`, for a slice or an index array of variants."""
        from bed_reader import open_bed

        with contextlib.ExitStack() as stack:
            path = self.path
            if self.roots is not None:
                fh = stack.enter_context(open_checked(self.path, "rb", self.roots))
                path = f"/proc/self/fd/{fh.fileno()}"
            bed = stack.enter_context(open_bed(path, iid_count=self.n_samples,
                                               sid_count=self.n_variants, num_threads=1))
            idx = np.s_[:, variants] if samples is None else np.s_[samples, variants]
            return bed.read(index=idx, dtype="float64", order="F", num_threads=1)


@dataclass(frozen=True)
class ZarrReader:
    """Reads variant blocks of a Zarr store's ``call_genotype`` or ``call_dosage``. With
    ``roots`` (a service job's places) each chunk file a block needs must be a regular file
    inside them when the block is read (zarr opens the files itself: checked before, not on
    the opened file)."""

    path: str
    field: str
    roots: tuple[str, ...] | None = None

    def read(self, samples: np.ndarray | None, start: int, stop: int) -> np.ndarray:
        return self.read_at(samples, slice(start, stop))

    def _check_chunks(self, arr, rows: np.ndarray) -> None:
        """Every chunk file the variant ``rows`` need is in the store. Zarr reads a missing
        chunk as its fill value, which for genotypes is a block of made-up calls (all 0:
        "monomorphic" variants skipped without a word)."""
        if not len(rows):
            return
        grid = [range((s + c - 1) // c) for s, c in zip(arr.shape, arr.chunks)]
        first = np.unique(rows // arr.chunks[0])
        base = os.path.join(self.path, self.field)
        for i in first:
            for rest in itertools.product(*grid[1:]):
                key = arr.metadata.encode_chunk_key((int(i), *rest))
                chunk = os.path.join(base, *key.split("/"))
                if self.roots is not None and not inside(os.path.realpath(chunk), self.roots):
                    raise DataError(f"--zarr {self.path!r}: the chunk file {self.field}/{key} "
                                    "leads outside the folders this job may read (a link); "
                                    "copy the chunk in")
                if not os.path.isfile(chunk):
                    lo = int(i) * arr.chunks[0]
                    hi = min(lo + arr.chunks[0], arr.shape[0]) - 1
                    raise DataError(f"--zarr {self.path!r}: the chunk file {self.field}/{key} "
                                    f"(variants {lo}-{hi}) is missing; zarr would read it as "
                                    "fill values, i.e. made-up genotypes: restore the store or "
                                    "re-create it with every chunk (daskmm gwas-ingest writes "
                                    "all of them)")

    def read_at(self, samples: np.ndarray | None, variants: slice | np.ndarray) -> np.ndarray:
        """As :meth:`read`, for a slice or an index array of variants."""
        import zarr

        arr = zarr.open_group(self.path, mode="r")[self.field]
        rows = (np.arange(*variants.indices(arr.shape[0])) if isinstance(variants, slice)
                else np.asarray(variants))
        self._check_chunks(arr, rows)
        try:
            block = np.asarray(arr[variants] if isinstance(variants, slice)
                               else arr.oindex[rows])
        except Exception as exc:  # a codec's error for a damaged chunk
            lo, hi = (int(rows.min()), int(rows.max())) if len(rows) else (0, 0)
            raise DataError(f"--zarr {self.path!r}: {self.field} cannot be read for variants "
                            f"{lo}-{hi} ({type(exc).__name__}: {exc}); a chunk of the store is "
                            "damaged: re-create the store (daskmm gwas-ingest)") from None
        if samples is not None:
            block = block[:, samples]
        if self.field == "call_dosage":
            return np.asfortranarray(block.T, dtype=np.float64)
        gt = block.astype(np.int16)
        dose = (gt == 1).sum(axis=2).astype(np.float64)
        dose[(gt < 0).any(axis=2)] = np.nan
        return np.asfortranarray(dose.T)


def open_genotypes(bed: str | None = None, zarr: str | None = None) -> GenotypeSource:
    """The source named by ``bed`` (a PLINK prefix) or ``zarr`` (a store): exactly one."""
    if (bed is None) == (zarr is None):
        raise DataError("give exactly one genotype input: --bed PREFIX or --zarr PATH")
    return BedGenotypes(bed) if bed is not None else ZarrGenotypes(zarr)


def bed_to_zarr(src: GenotypeSource, out: str | os.PathLike, chunk_variants: int = 10_000,
                client=None) -> Path:
    """Write ``src`` as an sgkit-layout Zarr store (``call_genotype`` int8, chunks of
    ``chunk_variants`` variants x all samples), chunks in parallel when ``client`` is given.

    Allele 1 (the counted allele) becomes ``variant_allele[:, 1]``, so a scan of the store
    reports the same allele and effects as a scan of the ``.bed``."""
    import zarr

    out = Path(out)
    n, m = src.n_samples, src.n_variants
    g = zarr.open_group(str(out), mode="w", zarr_format=2)
    # every chunk written, also one of only 0/0 calls (the fill value): a reader tells a
    # lost chunk from a present one (:meth:`ZarrReader._check_chunks`)
    g.create_array("call_genotype", shape=(m, n, 2), chunks=(chunk_variants, n, 2), dtype="i1",
                   config={"write_empty_chunks": True})
    contigs, codes = np.unique(src.variants["chrom"].to_numpy(), return_inverse=True)
    g.create_array("contig_id", shape=(len(contigs),), dtype=str)[:] = contigs
    g.create_array("variant_contig", shape=(m,), dtype="i2")[:] = codes
    g.create_array("variant_position", shape=(m,), dtype="i8")[:] = \
        src.variants["pos"].to_numpy()
    g.create_array("variant_id", shape=(m,), dtype=str)[:] = \
        src.variants["variant_id"].to_numpy().astype(str)
    g.create_array("variant_allele", shape=(m, 2), dtype=str)[:] = np.c_[
        src.variants["allele2"].to_numpy(), src.variants["allele1"].to_numpy()]
    ids = src.samples["IID"].to_numpy().astype(str)
    g.create_array("sample_id", shape=(n,), dtype=str)[:] = ids
    g.create_array("sample_family_id", shape=(n,), dtype=str)[:] = \
        src.samples["FID"].to_numpy().astype(str)
    g.attrs["contigs"] = [str(c) for c in contigs]
    g.attrs["source"] = f"daskmm gwas-ingest of {src.path}"
    starts = list(range(0, m, chunk_variants))
    if client is None:
        for s in starts:
            write_zarr_chunk(src.reader(), str(out), s, min(s + chunk_variants, m))
    else:
        futs = client.map(write_zarr_chunk, [src.reader()] * len(starts),
                          [str(out)] * len(starts),
                          starts, [min(s + chunk_variants, m) for s in starts], pure=False)
        client.gather(futs)
    return out


def write_zarr_chunk(src, out: str, start: int, stop: int) -> int:
    """Write variants ``start:stop`` of ``src`` into the store at ``out`` (one chunk)."""
    import zarr

    dose = src.read(None, start, stop)                 # samples x variants
    gt = np.zeros(dose.shape[::-1] + (2,), np.int8)    # variants x samples x 2
    d = dose.T
    gt[..., 0] = d >= 1
    gt[..., 1] = d >= 2
    gt[np.isnan(d)] = -1
    zarr.open_group(out, mode="r+")["call_genotype"][start:stop] = gt
    return stop - start
