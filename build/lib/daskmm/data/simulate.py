"""``daskmm simulate``: a dataset of known parameters, written bucket by bucket.

The model (defaults in :data:`DEFAULTS`, all recorded in the manifest under
``extra["simulation"]``)::

    x ~ N(0, 1);   level g of a factor with ``groups`` levels;   h of a crossed one (``crossed``)
    (b0[g], b1[g]) ~ N(0, [[sd0^2, rho sd0 sd1], [rho sd0 sd1, sd1^2]]);   c[h] ~ N(0, sd_h^2)
    y      = beta0 + beta1 x + b0[g] + b1[g] x + c[h] + N(0, sigma^2)     (gaussian)
    ybin   ~ Bernoulli(logistic(bin0 + bin1 x + u[g]))                     (binomial)
    ycount ~ Poisson(exp(pois0 + pois1 x + u[g]))                          (poisson)
    u[g] ~ N(0, sd_u^2)

Levels of ``g`` go to buckets by the same hash as ``daskmm ingest``
(:func:`~daskmm.data.manifest.bucket_of`), so the result is a dataset like an ingested one.
The rows per level are one multinomial draw (drawn on the client: ``groups`` integers); each
bucket is then simulated and written by its own task from its own random stream, so memory
per worker is one bucket whatever ``rows`` is, and the data do not depend on the cluster.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from distributed import Client

from daskmm.data.manifest import LEVELS_DIR, Manifest, bucket_file, bucket_of
from daskmm.data.staging import check_output, staging_dir
from daskmm.distributed.client import client_for
from daskmm.distributed.progress import track
from daskmm.errors import DataError

DEFAULTS = {"beta0": 1.0, "beta1": 0.5, "sd0": 1.0, "sd1": 0.5, "rho": 0.3, "sd_h": 0.7,
            "sigma": 1.0, "bin0": -0.5, "bin1": 0.8, "pois0": 0.2, "pois1": 0.3, "sd_u": 0.5}


def _bucket(j: int, levels: np.ndarray, counts: np.ndarray, ch: np.ndarray, crossed: int,
            seed: int, p: dict, path: str) -> dict:
    rng = np.random.default_rng([seed, 1, j])
    k = len(levels)
    cov01 = p["rho"] * p["sd0"] * p["sd1"]
    b = rng.multivariate_normal([0.0, 0.0], [[p["sd0"] ** 2, cov01], [cov01, p["sd1"] ** 2]],
                                size=k) if k else np.zeros((0, 2))
    u = rng.normal(0.0, p["sd_u"], size=k)
    local = np.repeat(np.arange(k), counts)
    rng.shuffle(local)
    n = len(local)
    x = rng.normal(size=n)
    h = rng.integers(0, crossed, size=n) if crossed else np.zeros(n, dtype=np.int64)
    y = p["beta0"] + p["beta1"] * x + b[local, 0] + b[local, 1] * x + rng.normal(0, p["sigma"],
                                                                                 size=n)
    if crossed:
        y += ch[h]
    ybin = (rng.random(n) < 1.0 / (1.0 + np.exp(-(p["bin0"] + p["bin1"] * x + u[local])))) \
        .astype(np.int64)
    ycount = rng.poisson(np.exp(p["pois0"] + p["pois1"] * x + u[local])).astype(np.int64)
    cols = {"y": y, "x": x, "g": levels[local].astype(np.int64)}
    if crossed:
        cols["h"] = h.astype(np.int64)
    cols.update(ybin=ybin, ycount=ycount)
    pq.write_table(pa.table(cols), Path(path) / bucket_file(j))
    return {"rows": n,
            "h": np.bincount(h, minlength=crossed) if crossed else None,
            "ybin": np.bincount(ybin, minlength=2),
            "ycount": pd.Series(ycount).value_counts(sort=False)}


def simulate(out: str | os.PathLike, rows: int, groups: int = 10_000, crossed: int = 200,
             buckets: int | None = None, seed: int = 1, params: dict | None = None,
             client: Client | str | None = None, force: bool = False) -> Manifest:
    """Simulate ``rows`` rows (see the module docstring) into a dataset at ``out``.

    Parameters
    ----------
    out : path
        Dataset directory to create.
    rows, groups, crossed : int
        Rows, levels of ``g``, levels of ``h`` (0: no crossed factor).
    buckets : int, optional
        Default: about two million rows a bucket.
    seed : int
    params : dict, optional
        Overrides of :data:`DEFAULTS`.
    client, force
        As for :func:`~daskmm.data.ingest.ingest`.
    """
    from daskmm.data.ingest import ROWS_PER_BUCKET

    unknown = set(params or {}) - set(DEFAULTS)
    if unknown:
        raise DataError(f"unknown simulation parameter(s) {', '.join(sorted(unknown))}; "
                        f"allowed: {', '.join(DEFAULTS)}")
    if rows < 1 or groups < 2 or crossed < 0 or crossed == 1:
        raise DataError(f"need rows >= 1, groups >= 2 and crossed 0 or >= 2; got rows={rows}, "
                        f"groups={groups}, crossed={crossed}")
    p = {**DEFAULTS, **(params or {})}
    nb = buckets or max(1, min(4096, -(-rows // ROWS_PER_BUCKET)))
    if buckets is not None and buckets < 1:
        raise DataError(f"buckets must be a positive integer; got {buckets}")
    out = check_output(out, "dataset", force=force, what="dataset")
    rng = np.random.default_rng([seed, 0])
    counts = rng.multinomial(rows, np.full(groups, 1.0 / groups))
    ch = rng.normal(0.0, p["sd_h"], size=crossed)
    gl = np.arange(groups, dtype=np.int64)
    bkt = bucket_of(gl, nb)
    order = np.argsort(bkt, kind="stable")
    starts = np.concatenate([[0], np.cumsum(np.bincount(bkt, minlength=nb))])
    tok = uuid.uuid4().hex[:8]
    with staging_dir(out) as tmp:
        with client_for(client) as c:
            ch_f = c.scatter(ch, broadcast=True)
            futs = []
            for j in range(nb):
                lv = gl[order[starts[j]:starts[j + 1]]]
                futs.append(c.submit(_bucket, j, lv, counts[lv], ch_f, crossed, seed, p,
                                     str(tmp), key=f"daskmm-simulate-{tok}-{j}"))
            track(futs, "simulate")
            parts = c.gather(futs)
        (tmp / LEVELS_DIR).mkdir()
        tables = {"g": pd.DataFrame({"level": gl[counts > 0], "count": counts[counts > 0]})}
        if crossed:
            hc = sum(q["h"] for q in parts)
            tables["h"] = pd.DataFrame({"level": np.flatnonzero(hc), "count": hc[hc > 0]})
        bc = sum(q["ybin"] for q in parts)
        tables["ybin"] = pd.DataFrame({"level": np.flatnonzero(bc), "count": bc[bc > 0]})
        yc = pd.concat([q["ycount"] for q in parts]).groupby(level=0).sum().sort_index()
        tables["ycount"] = pd.DataFrame({"level": yc.index.to_numpy(), "count": yc.to_numpy()})
        levels = {}
        for i, (col, t) in enumerate(tables.items()):
            name = f"{LEVELS_DIR}/{i:03d}.parquet"
            t.astype({"level": np.int64, "count": np.int64}).to_parquet(tmp / name, index=False)
            levels[col] = {"n_levels": int(len(t)), "file": name}
        schema = {"y": "float64", "x": "float64", "g": "int64"}
        if crossed:
            schema["h"] = "int64"
        schema.update(ybin="int64", ycount="int64")
        manifest = Manifest(key="g", buckets=nb, schema=schema,
                            rows=[int(q["rows"]) for q in parts], levels=levels,
                            source="simulate",
                            extra={"simulation": {"rows": rows, "groups": groups,
                                                  "crossed": crossed, "seed": seed, **p}})
        manifest.write(tmp)  # last: its presence marks a complete dataset
    return manifest
