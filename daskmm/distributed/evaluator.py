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

import numpy as np
from distributed import Client, Future

from daskmm.kernels.pls import Workspace, eval_group, group_Lambda, group_modes, lambda_tilde
from daskmm.kernels.stats import Layout, PartitionStats


def _stage1(stats: PartitionStats, layout: Layout, lam: dict,
            workspaces: list | None = None) -> tuple[float, np.ndarray]:
    logdet, RtR = 0.0, np.zeros((layout.k, layout.k))
    for i, g in enumerate(stats.groups):
        ld, r = eval_group(g, group_Lambda(layout, lam, g.composition),
                           ws=workspaces[i] if workspaces else None)
        logdet += ld
        RtR += r
    return logdet, RtR


def _add(*parts: tuple[float, np.ndarray]) -> tuple[float, np.ndarray]:
    return sum(p[0] for p in parts), sum(p[1] for p in parts)


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

    def __init__(self, stats: PartitionStats, layout: Layout):
        self.stats = stats
        self.layout = layout
        self.workspaces = [Workspace() for _ in stats.groups]

    def stage1(self, lam: dict) -> tuple[float, np.ndarray]:
        return _stage1(self.stats, self.layout, lam, self.workspaces)

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
        self.split_every = split_every
        self.rounds = 0

    def stage1(self, lam: dict) -> tuple[float, np.ndarray]:
        tok = uuid.uuid4().hex[:8]
        self.rounds += 1
        parts = self.client.map(_stage1, self.futures, layout=self.layout, lam=lam,
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
        futs = self.client.map(_modes, self.futures, layout=self.layout, lam=lam, prof=prof,
                               beta=beta, u_G=u_G, sigma=sigma,
                               key=[f"daskmm-modes-{tok}-{i}" for i in range(len(self.futures))])
        return [item for part in self.client.gather(futs) for item in part]
