"""Where the objective is evaluated: on the client (gathered) or on the workers (distributed).

Both evaluators expose the same two calls, so the model code does not know which it has:

``stage1(lam) -> (logdet, RtR)``
    sum over levels of the primary factor of ``log|L_l|^2`` and ``R_l' R_l``;
``modes(lam, profile, beta, u_G, sigma) -> list of (group, b, cov)``
    conditional modes and covariances per level group.

The distributed evaluator runs each call as one round of tasks: a map over the persisted
statistics (named ``daskmm-pls-*``) and a tree reduction of ``k x k`` matrices. Only ``theta``
(as the small ``Lambda`` blocks) goes out and only the reduced sums come back. If a worker dies,
Dask recomputes the lost statistics from their graph (the partition is read again) and the
round finishes with the same numbers.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import numpy as np

from daskmm.distributed.mapreduce import scatter_large
from daskmm.kernels.pls import (
    Workspace,
    eval_group,
    eval_group_grad,
    group_Lambda,
    group_modes,
    lambda_tilde,
)
from daskmm.kernels.stats import Layout, PartitionStats

if TYPE_CHECKING:
    from distributed import Client, Future


def _stage1(stats: PartitionStats, layout: Layout, lam: dict,
            workspaces: list | None = None) -> tuple[float, np.ndarray]:
    logdet, RtR = 0.0, np.zeros((layout.k, layout.k))
    for i, g in enumerate(stats.groups):
        ld, r = eval_group(g, group_Lambda(layout, lam, g.composition),
                           ws=workspaces[i] if workspaces else None)
        logdet += ld
        RtR += r
    return logdet, RtR


def _stage1_grad(stats: PartitionStats, layout: Layout, lam: dict, dlams: list[dict]):
    k, nd = layout.k, len(dlams)
    out = [0.0, np.zeros((k, k)), np.zeros(nd), np.zeros((nd, k, k))]
    for g in stats.groups:
        Lam = group_Lambda(layout, lam, g.composition)
        dL = [group_Lambda(layout, d, g.composition) for d in dlams]
        for i, part in enumerate(eval_group_grad(g, Lam, dL)):
            out[i] = out[i] + part
    return tuple(out)


def _add(*parts: tuple) -> tuple:
    return tuple(sum(p[i] for p in parts) for i in range(len(parts[0])))


def _modes(stats: PartitionStats, layout: Layout, lam: dict, prof, beta, u_G, sigma):
    LamT = lambda_tilde(layout, lam)
    out = []
    for g in stats.groups:
        b, cov = group_modes(g, group_Lambda(layout, lam, g.composition), LamT, prof, beta,
                             u_G, sigma, layout)
        out.append((g.composition, g.levels, g.nested_levels, b, cov))
    return out


class GatheredEvaluator:
    """Statistics held in this process (one :class:`PartitionStats`, level-sorted)."""

    mode = "gathered"

    def __init__(self, stats: PartitionStats, layout: Layout, mode: str = "gathered"):
        self.mode = mode
        self.stats = stats
        self.layout = layout
        self.workspaces = [Workspace() for _ in stats.groups]

    def stage1(self, lam: dict) -> tuple[float, np.ndarray]:
        return _stage1(self.stats, self.layout, lam, self.workspaces)

    def stage1_grad(self, lam: dict, dlams: list[dict]) -> tuple:
        """``stage1`` with its derivatives along ``dlams`` (``(logdet, RtR, dlogdet,
        dRtR)``)."""
        return _stage1_grad(self.stats, self.layout, lam, dlams)

    def modes(self, lam, prof, beta, u_G, sigma):
        return _modes(self.stats, self.layout, lam, prof, beta, u_G, sigma)


class DistributedEvaluator:
    """Statistics persisted on the workers; one round of tasks per evaluation."""

    mode = "distributed"

    def __init__(self, client: Client, futures: list[Future], layout: Layout,
                 split_every: int = 8):
        self.client = client
        self.futures = futures
        self.layout = layout
        # the layout (its global levels can be large) sent once, under a key of its own
        self._layout = scatter_large(client, {"layout": layout})["layout"]
        self.split_every = split_every
        self.rounds = 0

    def stage1(self, lam: dict) -> tuple[float, np.ndarray]:
        return self._round(_stage1, lam=lam)

    def stage1_grad(self, lam: dict, dlams: list[dict]) -> tuple:
        return self._round(_stage1_grad, lam=lam, dlams=dlams)

    def _round(self, fn, **kw):
        """One round of tasks: ``fn`` mapped over the statistics, then a tree sum."""
        tok = uuid.uuid4().hex[:8]
        self.rounds += 1
        parts = self.client.map(fn, self.futures,
                                **scatter_large(self.client, {"layout": self._layout, **kw}),
                                key=[f"daskmm-pls-{tok}-{i}" for i in range(len(self.futures))])
        level = 0
        while len(parts) > 1:
            parts = [self.client.submit(_add, *parts[j:j + self.split_every],
                                        key=f"daskmm-pls-sum-{tok}-{level}-{j}")
                     for j in range(0, len(parts), self.split_every)]
            level += 1
        return parts[0].result()

    def modes(self, lam, prof, beta, u_G, sigma):
        tok = uuid.uuid4().hex[:8]
        futs = self.client.map(_modes, self.futures, **scatter_large(
            self.client, {"layout": self._layout, "lam": lam, "prof": prof, "beta": beta,
                          "u_G": u_G, "sigma": sigma}),
            key=[f"daskmm-modes-{tok}-{i}" for i in range(len(self.futures))])
        return [item for part in self.client.gather(futs) for item in part]
