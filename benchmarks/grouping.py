"""Grouping by person: eight edge rules compared on the shared photos and on synthetic sets.

    .venv/bin/python benchmarks/grouping.py [--faces DIR] [--cache FILE]
    .venv/bin/python benchmarks/grouping.py --synthetic N --rule RULE [--faces DIR] [--cache FILE]

Embeds every photo of ``calibration/``, ``people/`` and ``distractors/`` once (the cache is
shared with benchmarks/open_set.py) and drops repeated photos (73 distractors are also in
calibration/strangers). The first form groups the people/ + distractors/ part (521 faces) and
the whole set (3,877) with Chinese whispers over the edges of each rule in :data:`RULES`,
printing BCubed precision, recall and F, the expected precision the grouping states
(:func:`visage.grouping.expected_precision`, for the threshold rules) and the time; then the
incremental rows (first half grouped alone, second half added with
:func:`visage.grouping.extend`; the time is the extend step's), for halves in path order and
interleaved halves.

``--synthetic N``: N faces drawn from a Gaussian model of the real embeddings
(:func:`fit_model`, :func:`synthetic_faces`), grouped at one rule in one process (peak RSS is
the process's), printing the time, peak RSS and BCubed scores; then, for N up to 5,000, how
the synthetic genuine and impostor distances compare with the real ones.
"""

from __future__ import annotations

import argparse
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from machine import cpu_line, default_faces
from open_set import embed_all, identity

from visage.decision import default_calibration, normalize
from visage.eval.metrics import bcubed
from visage.grouping import (
    EDGE_STRAY,
    Grouping,
    _edges,
    _from_labels,
    _neighbours,
    _support,
    _whisper,
    _within,
    edge_threshold,
    expected_precision,
    extend,
    group,
)

MODEL = "dlib_resnet_v1"
FIXED = default_calibration(MODEL).threshold
"""The fixed 1:1 threshold (FMR 1e-3, 0.3764)."""

TOP_K = 5
"""mutual-knn: an edge needs each face among the other's TOP_K nearest. On the whole set (3,877
faces) F was 0.890 / 0.922 / 0.952 / 0.950 at k = 2 / 3 / 5 / 10 over the size-aware threshold,
and 0.844 / 0.841 / 0.800 / 0.711 over the fixed one; 5 is best where it is adopted."""

MIN_CORE = 2
"""density: a core face has at least MIN_CORE other faces within the threshold (1 is plain
Chinese whispers; 2, 3, 4 lowered F on the whole set at the size-aware threshold: 0.932, 0.916,
0.899)."""

Vectors = npt.NDArray[np.float32]
Lists = list[npt.NDArray[np.int64]]


def pairs(vecs: Vectors, cut: float) -> Lists:
    """The plain threshold rules: every pair within ``cut``."""
    return _neighbours(vecs, cut)


def hub_pairs(vecs: Vectors, cut: float) -> Lists:
    """The default: every pair within ``cut`` that survives the hub correction."""
    return _edges(vecs, cut)


def mutual_knn(vecs: Vectors, cut: float) -> Lists:
    """Rank-based: a pair within ``cut`` whose faces are each among the other's :data:`TOP_K`
    nearest (a faiss kNN search; no range search)."""
    import faiss

    index = faiss.IndexFlatIP(vecs.shape[1])
    index.add(vecs)
    sims, near = index.search(vecs, TOP_K + 1)
    n = len(vecs)
    rows = np.repeat(np.arange(n, dtype=np.int64), TOP_K + 1)
    cols, close = near.reshape(-1).astype(np.int64), sims.reshape(-1) >= 1.0 - cut**2 / 2 - 1e-6
    keep = close & (cols >= 0) & (cols != rows)
    rows, cols = rows[keep], cols[keep]
    mutual = np.isin(cols * n + rows, rows * n + cols)
    rows, cols = rows[mutual], cols[mutual]
    return np.split(cols, np.searchsorted(rows, np.arange(1, n)))


def density(vecs: Vectors, cut: float) -> Lists:
    """DBSCAN-like on the graph of pairs within ``cut``: a face with at least :data:`MIN_CORE`
    neighbours is a core face; core faces keep their edges to core faces, every other face
    keeps one edge, to its nearest core neighbour, and is left alone without one."""
    found = _within(vecs, vecs, cut)
    near = [(rows[rows != i], sims[rows != i]) for i, (rows, sims) in enumerate(found)]
    core = np.asarray([len(r) >= MIN_CORE for r, _ in near])
    lists: Lists = []
    for i, (rows, sims) in enumerate(near):
        if core[i]:
            lists.append(rows[core[rows]])
        else:
            cores = core[rows]
            lists.append(rows[cores][np.argmax(sims[cores])][None] if cores.any() else rows[:0])
    return lists


RULES: dict[str, tuple[Callable[[Vectors, float], Lists], str]] = {
    "size-aware+hub": (hub_pairs, "default"),
    "size-aware": (pairs, "stray 0.15"),
    "fixed+hub": (hub_pairs, "fixed"),
    "fixed": (pairs, "fixed"),
    "mutual-knn": (mutual_knn, "fixed"),
    "mutual-knn+size-aware": (mutual_knn, "stray 0.15"),
    "density": (density, "fixed"),
    "density+size-aware": (density, "stray 0.15"),
}
"""Each rule's edges and threshold: ``default`` is the size-aware one at
:data:`visage.grouping.EDGE_STRAY` (0.3, chosen with the hub correction), ``stray 0.15`` the
size-aware one at the stray rate that was best without it, ``fixed`` the 1:1 one."""

STATED = ("size-aware+hub", "fixed+hub")
"""The rules :func:`visage.grouping.expected_precision` speaks for (it counts the hub
correction's pruning)."""


def threshold(rule: str, n: int) -> float:
    """The distance threshold ``rule`` works at for ``n`` faces."""
    kind = RULES[rule][1]
    if kind == "fixed":
        return FIXED
    return edge_threshold(n, MODEL, **({"stray": 0.15} if kind == "stray 0.15" else {})).threshold


def run(vecs: Vectors, rule: str) -> tuple[float, Grouping]:
    """The grouping of ``vecs`` by Chinese whispers over ``rule``'s edges, and its threshold."""
    cut = threshold(rule, len(vecs))
    lists = RULES[rule][0](vecs, cut)
    labels = np.arange(len(vecs), dtype=np.int64)
    _whisper(labels, labels.copy(), lists, 100, 0)
    return cut, _from_labels(labels, _support(labels, lists))


SPREAD = (1.05, 0.15, 1.2, 0.3)
"""``(within scale, within log-sd, between scale, between log-sd)``: the fitted Gaussians alone
give lighter tails than the real distances (genuine within 0.3764: 0.99 against 0.91; impostor
FMR at 0.3764: 1.7e-4 against 7.1e-4), so each face's offset and each identity's offset from
the mean are scaled by a log-normal factor. These four were chosen on a grid (72 points, 3,877
synthetic faces each) to match the real genuine share within 0.30 and 0.3764 and the log
impostor FMR at 0.33 and 0.3764; :func:`compare_distances` prints the match."""


@dataclass(frozen=True)
class Model:
    """A Gaussian model of the embeddings: identity centres ``mean + s_p z @ between``, faces
    ``centre + s_f z @ within`` (then unit length; ``s_p``, ``s_f`` log-normal, :data:`SPREAD`),
    and the real number of faces per identity."""

    mean: npt.NDArray[np.float64]
    between: npt.NDArray[np.float64]
    within: npt.NDArray[np.float64]
    per_person: npt.NDArray[np.int64]


def fit_model(unit: Vectors, truth: list[str]) -> Model:
    """Fit :class:`Model` to the real faces: ``within`` from each face's offset from its
    identity's mean (scaled by sqrt(m / (m - 1)) for an identity of m faces, so it is not
    shrunk), ``between`` from the covariance of the means of identities with 2+ faces less
    the within part they still carry; faces per identity as in the real set."""
    names, inverse, counts = np.unique(truth, return_inverse=True, return_counts=True)
    x = unit.astype(np.float64)
    means = np.zeros((len(names), x.shape[1]))
    np.add.at(means, inverse, x)
    means /= counts[:, None]
    many = counts[inverse] >= 2
    m = counts[inverse][many]
    offsets = (x - means[inverse])[many] * np.sqrt(m / (m - 1))[:, None]
    within = np.cov(offsets, rowvar=False)
    several = counts >= 2
    carried = within * np.mean(1.0 / counts[several])
    between = np.cov(means[several], rowvar=False) - carried
    values, vectors = np.linalg.eigh(between)
    between = (vectors * np.clip(values, 0, None)) @ vectors.T
    return Model(x.mean(axis=0), _root(between), _root(within), counts.astype(np.int64))


def _root(cov: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    values, vectors = np.linalg.eigh(cov)
    return (vectors * np.sqrt(np.clip(values, 0, None))).T


def synthetic_faces(model: Model, n: int, seed: int = 0) -> tuple[Vectors, list[int]]:
    """``n`` synthetic faces and their identity numbers: identities drawn with the real
    numbers of faces per identity until ``n`` faces are reached."""
    rng = np.random.default_rng(seed)
    sizes = rng.choice(model.per_person, size=n)  # more than enough identities
    sizes = sizes[: int(np.searchsorted(np.cumsum(sizes), n)) + 1]
    sizes[-1] -= int(sizes.sum()) - n
    dim, (cw, sw, cb, sb) = len(model.mean), SPREAD
    scale_p = cb * np.exp(sb * rng.standard_normal(len(sizes)) - sb**2)[:, None]
    centres = model.mean + scale_p * (rng.standard_normal((len(sizes), dim)) @ model.between)
    who = np.repeat(np.arange(len(sizes)), sizes)
    scale_f = cw * np.exp(sw * rng.standard_normal(n) - sw**2)[:, None]
    faces = centres[who] + scale_f * (rng.standard_normal((n, dim)) @ model.within)
    return normalize(faces.astype(np.float32)), who.tolist()


def compare_distances(real: Vectors, real_truth: list[str], model: Model) -> None:
    """Genuine acceptance and impostor FMR at three thresholds, real against synthetic."""
    fake, who = synthetic_faces(model, len(real), seed=1)
    print("| faces | genuine within 0.30 / 0.33 / 0.3764 | impostor FMR at 0.30 / 0.33 / 0.3764 |")
    print("|---|---|---|")
    for label, vecs, names in (("real", real, real_truth), ("synthetic", fake, who)):
        d = np.sqrt(np.clip(2 - 2 * vecs @ vecs.T, 0, None))
        same = np.asarray(names)[:, None] == np.asarray(names)[None]
        upper = np.triu(np.ones_like(same), 1)
        gen, imp = d[same & upper], d[~same & upper]
        cuts = (0.30, 0.33, FIXED)
        print(f"| {label} | " + " / ".join(f"{(gen <= c).mean():.3f}" for c in cuts) + " | "
              + " / ".join(f"{(imp <= c).mean():.1e}" for c in cuts) + " |")  # fmt: skip


def score_line(label: str, vecs: Vectors, who: list, rule: str) -> str:
    """One table row: ``rule`` on ``vecs`` against the names ``who``."""
    start = time.perf_counter()
    cut, found = run(vecs, rule)
    took = time.perf_counter() - start
    score = bcubed(found.labels(), who)
    stated = expected_precision(found, cut, MODEL) if rule in STATED else None
    said = "-" if stated is None else f"{stated.precision:.3f}"
    return (f"| {label} | {len(vecs)} | {len(set(who))} | {rule} | {cut:.4f} | "
            f"{score.precision:.3f} | {score.recall:.3f} | {score.f:.3f} | {said} | {took:.1f} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--faces", type=Path, default=Path(default_faces()))
    parser.add_argument("--cache", type=Path, default=Path("/tmp/visage-open-set-embeddings.npz"))
    parser.add_argument("--synthetic", type=int, default=0,
                        help="instead: group N synthetic faces (e.g. 100000) at --rule")  # fmt: skip
    parser.add_argument("--rule", choices=tuple(RULES), default="size-aware+hub",
                        help="with --synthetic: the edge rule")  # fmt: skip
    args = parser.parse_args()
    paths, vectors = embed_all(args.faces, args.cache)
    seen: set[str] = set()
    keep = [i for i, p in enumerate(paths) if not (Path(p).name in seen or seen.add(Path(p).name))]
    names = [paths[i] for i in keep]
    unit = normalize(vectors[keep])
    truth = [identity(p) for p in names]
    print(f"{cpu_line()}; edge stray rate {EDGE_STRAY}, top-k {TOP_K}, min core {MIN_CORE}")
    if args.synthetic:
        synthetic(unit, truth, args.synthetic, args.rule)
        return
    print("| set | faces | people | rule | threshold | precision | recall | F | stated "
          "precision | seconds |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    shared = [i for i, p in enumerate(names) if not p.startswith("calibration")]
    for label, rows in (("people/ + distractors/", shared), ("all", list(range(len(names))))):
        sub, who = unit[rows], [truth[i] for i in rows]
        for rule in RULES:
            print(score_line(label, sub, who, rule))
        for split, first in (("halves in turn", np.arange(len(sub)) < len(sub) // 2),
                             ("interleaved halves", np.arange(len(sub)) % 2 == 0)):  # fmt: skip
            incremental(label, sub, who, first, split)


def synthetic(unit: Vectors, truth: list[str], n: int, rule: str) -> None:
    """Time, peak RSS and BCubed of ``rule`` on ``n`` synthetic faces of the fitted model."""
    model = fit_model(unit, truth)
    faces, who = synthetic_faces(model, n)
    print(score_line("synthetic", faces, who, rule))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak:.0f} MB")
    if n <= 5000:  # after the peak is read: the comparison holds two (3877, 3877) matrices
        compare_distances(unit, truth, model)


def incremental(label: str, sub: np.ndarray, who: list[str], first: np.ndarray, split: str) -> None:
    """One row: the ``first`` rows grouped alone, then the others added by :func:`extend`."""
    cut = edge_threshold(len(sub), MODEL).threshold
    before = group(sub[first], edge_threshold(int(first.sum()), MODEL).threshold)
    start = time.perf_counter()
    grown = extend(sub[first], before, sub[~first], cut)
    took = time.perf_counter() - start
    order = [who[i] for i in np.flatnonzero(first)] + [who[i] for i in np.flatnonzero(~first)]
    score = bcubed(grown.labels(), order)
    stated = expected_precision(grown, cut, MODEL)
    print(f"| {label} | {len(sub)} | {len(set(who))} | size-aware+hub, incremental ({split}) | "
          f"{cut:.4f} | {score.precision:.3f} | {score.recall:.3f} | {score.f:.3f} | "
          f"{'-' if stated is None else f'{stated.precision:.3f}'} | {took:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
