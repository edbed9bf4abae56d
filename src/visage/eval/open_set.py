"""Open-set calibration: from labelled photos' embeddings, the record identify derives its rule
from (:class:`visage.decision.OpenSetCalibration`).

Used for the shipped ``data/open_set.json`` (benchmarks/open_set.py) and by
``visage calibrate --folder`` for an operator's own people. Every photo probes as a stranger
against one photo (the first) of every other identity; photos of an identity with several
give the mated probes. No gallery is sampled for the nearest distance (exact hypergeometric
chances); the margin rule's two nearest are sampled exactly, 256 galleries per photo and size.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import numpy.typing as npt

from ..decision import MARGIN_WEIGHT, MIN_TAIL_COUNT
from ..errors import InputError

Floats = npt.NDArray[np.float64]

SIZES = (1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200, 300, 500, 700, 1000, 1500,
         2000, 2500, 3000)  # fmt: skip
FPIRS = (0.003, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)
GRID = np.linspace(0.1, 0.8, 1401)


def distance_matrix(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> Floats:
    """Unit-sphere Euclidean distances, as :func:`visage.decision.distances` computes them."""
    cos = a.astype(np.float64) @ b.astype(np.float64).T
    out: Floats = np.sqrt(np.clip(2.0 - 2.0 * cos, 0.0, 4.0))
    return out


def calibrate(
    vectors: npt.NDArray[np.float32], labels: list[str], source: str, model_id: str
) -> dict[str, Any]:
    """The open-set record (see :class:`visage.decision.OpenSetCalibration`) of these photos:
    unit embeddings of ``model_id`` and whose each is; ``source`` says what they are."""
    lab = np.asarray(labels)
    dist = distance_matrix(vectors, vectors)
    other = lab[:, None] != lab[None, :]
    upper = np.triu(other, 1)
    impostor = np.sort(dist[upper])
    n_imp = impostor.size
    fmr = []
    for level in 10.0 ** np.arange(-8, -0.99, 0.125):
        count = int(np.ceil(level * n_imp))
        if count >= MIN_TAIL_COUNT:
            fmr.append((float(f"{level:.4g}"), round(float(impostor[count - 1]), 6)))
    if len(fmr) < 2:
        raise InputError(f"{n_imp} impostor pairs are too few to calibrate an open-set rule")
    low = np.asarray(fmr[:17])  # the lowest two decades
    slope, intercept = np.polyfit(low[:, 1], np.log10(low[:, 0]), 1)
    # Galleries hold distinct persons: each is drawn from one photo per identity (the first), and
    # every photo probes them (against the identities not its own).
    _, first = np.unique(lab, return_index=True)
    pool = np.zeros(len(lab), bool)
    pool[first] = True
    rows = [np.sort(dist[i][other[i] & pool]) for i in range(len(lab))]
    m = np.asarray([r.size for r in rows], np.float64)[:, None]
    k = np.stack([np.searchsorted(r, GRID, side="right") for r in rows]).astype(np.float64)
    sizes = [n for n in SIZES if n <= m.min()]
    log_fact = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, int(m.max()) + 1)))])
    free = (m - k).astype(np.int64)
    mi = m.astype(np.int64)
    rank1 = []
    for n in sizes:
        ok = free >= n
        log_none = np.where(  # log C(free, n) / C(m, n): no photo of the n within the distance
            ok,
            log_fact[free] - log_fact[np.where(ok, free - n, 0)] - log_fact[mi] + log_fact[mi - n],
            -np.inf,
        )
        fpir = np.mean(-np.expm1(log_none), axis=0)  # P(nearest of n random photos <= GRID)
        rank1.append([round(float(np.interp(t, fpir, GRID)), 6) for t in FPIRS])
    margin, fnir = margin_tables(dist, lab, pool, other, sizes, rank1[0])
    return {
        "model_id": model_id,
        "source": source,
        "created": time.strftime("%Y-%m-%d"),
        "n_impostor": int(n_imp),
        "n_probes": len(lab),
        "fmr": fmr,
        "tail": [round(float(intercept), 6), round(float(slope), 6)],
        "sizes": sizes,
        "fpirs": list(FPIRS),
        "rank1": rank1,
        "margin": margin,
        "fnir": fnir,
    }


def nearest_two(m: int, n: int, draws: int, rng: np.random.Generator) -> tuple[Any, Any]:
    """Positions (in a list of ``m`` sorted nearest first) of the nearest and second-nearest of
    a random ``n``-subset, ``draws`` times, sampled exactly by inverting the hypergeometric
    survival functions: P(nearest >= k) = C(m-k, n) / C(m, n), and given the nearest at i,
    P(second >= k) = C(m-k, n-1) / C(m-i-1, n-1). ``second`` is -1 where ``n`` is 1."""
    k = np.arange(m + 1)
    log_fact = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, m + 1)))])

    def log_choose(a: Any, b: int) -> Any:
        ok = a >= b
        return np.where(ok, log_fact[a] - log_fact[np.where(ok, a - b, 0)] - log_fact[b], -np.inf)

    first = np.searchsorted(-(log_choose(m - k, n) - log_choose(np.array(m), n)),
                            -np.log(rng.random(draws)), side="right") - 1  # fmt: skip
    if n == 1:
        return first, np.full(draws, -1)
    tail = log_choose(m - k, n - 1)
    second = np.searchsorted(-tail, -(tail[first + 1] + np.log(rng.random(draws))), "right") - 1
    return first, second


def margin_tables(
    dist: Floats, lab: Any, pool: Any, other: Any, sizes: list[int], ceiling: list[float],
    draws: int = 256,
) -> tuple[list[list[float]], list[list[float]]]:
    """identify's margin rule calibrated: for each gallery size and FPIR, the margin score
    (:func:`visage.decision.margin_score`) that share of the strangers reach with their nearest
    person also within ``ceiling`` (the one-person bar at that FPIR; each photo against random
    galleries of the other identities' first photos, ``draws`` per photo), and the share of
    mated probes (against their identity's first photo plus n - 1 random others) it misses."""
    rng = np.random.default_rng(0)
    sim = 1.0 - dist**2 / 2.0
    rows = [np.sort(sim[i][other[i] & pool])[::-1] for i in range(len(lab))]
    own = {lab[i]: i for i in np.flatnonzero(pool)}
    mated = [(i, sim[i, own[lab[i]]]) for i in range(len(lab)) if own[lab[i]] != i]
    weight = MARGIN_WEIGHT
    least = 1.0 - np.asarray(ceiling) ** 2 / 2.0  # the nearest's lowest similarity, per FPIR
    margin, fnir = [], []
    for n in sizes:
        nearest, scores = [], []
        for row in rows:
            a, b = nearest_two(row.size, n, draws, rng)
            nearest.append(row[a])
            scores.append(row[a] - (weight * row[b] if n > 1 else 0.0))
        s1, score = np.concatenate(nearest), np.concatenate(scores)
        bars = [float(np.quantile(np.where(s1 >= low, score, -1.0), 1.0 - f))
                for f, low in zip(FPIRS, least, strict=True)]  # fmt: skip
        missed = np.zeros(len(FPIRS))
        for i, s_own in mated:
            if n == 1:
                score, beaten = np.full(draws, s_own), np.zeros(draws, bool)
            else:
                a, _ = nearest_two(rows[i].size, n - 1, draws, rng)
                score, beaten = s_own - weight * rows[i][a], rows[i][a] >= s_own
            missed += [np.mean(beaten | (score < bar) | (s_own < low))
                       for bar, low in zip(bars, least, strict=True)]  # fmt: skip
        margin.append([round(b, 6) for b in bars])
        fnir.append([round(float(x), 4) for x in missed / max(1, len(mated))])
    return margin, fnir if mated else []  # no identity with two photos: no miss rate to state
