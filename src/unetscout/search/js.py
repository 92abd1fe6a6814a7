"""IAC-LTH's pruning signal (docs/methods.md#stability-test): op importances, their Jensen-Shannon drift between
epochs, and the per-edge pruning rule with its growing threshold tau."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def importance(op_weights: np.ndarray, edge_weights: np.ndarray) -> np.ndarray:
    """I [14, 7] = softmax(alpha_e over active ops)_o * w~_e; pruned ops are 0.

    `op_weights` [14, 7] already holds the softmax over active ops (0 elsewhere) and
    `edge_weights` [14] the capped edge weights.
    """
    return np.asarray(op_weights, dtype=np.float64) * np.asarray(edge_weights, dtype=np.float64)[:, None]


def op_distribution(importances: np.ndarray, active: np.ndarray) -> np.ndarray:
    """p_e = I_e / sum_o I_{e,o} over the active ops of each edge (rows of [14, 7]), 0 elsewhere."""
    masked = np.where(active, importances, 0.0)
    return masked / masked.sum(axis=1, keepdims=True)


def js_divergence(p: np.ndarray, q: np.ndarray, smoothing: float = 1e-10) -> float:
    """JS(p || q) in nats; each distribution is smoothed by `smoothing` and renormalised."""
    p = np.asarray(p, dtype=np.float64) + smoothing
    q = np.asarray(q, dtype=np.float64) + smoothing
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2
    return float(0.5 * np.sum(p * np.log(p / m)) + 0.5 * np.sum(q * np.log(q / m)))


def edge_drift(p_now: np.ndarray, p_before: np.ndarray, active_now: np.ndarray, smoothing: float) -> np.ndarray:
    """JS per edge between this epoch's and the previous epoch's p, over the ops active now
    (the previous distribution renormalised over them, as an op pruned since then is gone)."""
    drift = np.zeros(len(p_now))
    for e, (now, before, active) in enumerate(zip(p_now, p_before, active_now)):
        previous = before[active]
        total = previous.sum()
        previous = previous / total if total > 0 else np.full(active.sum(), 1.0 / active.sum())
        drift[e] = js_divergence(now[active], previous, smoothing)
    return drift


@dataclass(frozen=True)
class PruneDecision:
    prune: tuple[int, ...]     # op indices (into the edge's 7) to remove
    tau: float                 # the edge's threshold for the next epoch


def prune_edge(importances: np.ndarray, active: np.ndarray, js: float, tau: float,
               gamma: float, std_factor: float) -> PruneDecision:
    """The per-edge rule: if JS < tau, prune every active op with I < mean - factor * std
    (population std over the active ops), else the single lowest; never the last op. If the
    edge is still moving (JS >= tau), prune nothing and grow tau by gamma."""
    ops = np.flatnonzero(active)
    if len(ops) <= 1:
        return PruneDecision((), tau)
    if not js < tau:
        return PruneDecision((), tau * gamma)
    values = np.asarray(importances, dtype=np.float64)[ops]
    outliers = ops[values < values.mean() - std_factor * values.std()]
    if len(outliers) == 0:
        outliers = ops[[int(np.argmin(values))]]
    if len(outliers) >= len(ops):  # keep the strongest one whatever happens
        outliers = np.setdiff1d(ops, ops[[int(np.argmax(values))]])
    return PruneDecision(tuple(int(o) for o in sorted(outliers)), tau)
