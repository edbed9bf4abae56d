"""Protocol files are parsed exactly, and malformed ones are refused with the line at fault."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from visage.errors import InputError
from visage.eval import protocols as p


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


LFW = "2\t1\nAnn\t1\t2\nAnn\t1\tBob\t3\nBob\t2\t3\nCy\t1\tBob\t10\n"


def test_lfw_pairs(tmp_path: Path) -> None:
    pairs = p.read_lfw_pairs(write(tmp_path, "pairs.txt", LFW), tmp_path)
    assert [(x.same, x.fold, x.person_a, x.person_b) for x in pairs] == [
        (True, 0, "Ann", "Ann"),
        (False, 0, "Ann", "Bob"),
        (True, 1, "Bob", "Bob"),
        (False, 1, "Cy", "Bob"),
    ]
    assert pairs[0].a == tmp_path / "Ann" / "Ann_0001.jpg"
    assert pairs[3].b == tmp_path / "Bob" / "Bob_0010.jpg"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty pairs file"),
        ("two\t1\n", ":1: expected 'folds<TAB>pairs'"),
        ("1\t1\nAnn\t1\t2\n", "header promises 1 folds x 2 pairs, found 1"),
        ("1\t1\nAnn\t1\tBob\t2\nAnn\t1\t2\n", ":2: expected 'name i j'"),
        ("1\t1\nAnn\t1\t2\nAnn\tx\tBob\t2\n", ":3: photo number 'x' is not a number"),
    ],
)
def test_lfw_pairs_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        p.read_lfw_pairs(write(tmp_path, "pairs.txt", text), tmp_path)


def test_pairs_csv_is_dealt_into_folds(tmp_path: Path) -> None:
    text = "a,b,same\nann/1.jpg,ann/2.jpg,1\nann/1.jpg,bob/1.jpg,false\nbob/1.jpg,bob/2.jpg,yes\n"
    pairs = p.read_pairs_csv(write(tmp_path, "pairs.csv", text), tmp_path, folds=2)
    assert [(x.same, x.fold, x.person_a, x.person_b) for x in pairs] == [
        (True, 0, "ann", "ann"),
        (False, 1, "ann", "bob"),
        (True, 0, "bob", "bob"),
    ]
    assert pairs[1].b == tmp_path / "bob" / "1.jpg"
    with pytest.raises(InputError, match="row 1: expected 'a,b,same'"):
        p.read_pairs_csv(write(tmp_path, "bad.csv", "a.jpg,b.jpg,maybe\n"), tmp_path)


def test_read_pairs_needs_both_kinds(tmp_path: Path) -> None:
    path = write(tmp_path, "same.csv", "a/1.jpg,a/2.jpg,1\n")
    with pytest.raises(InputError, match="both same-person and different-person"):
        p.read_pairs(path, tmp_path)
    assert len(p.read_pairs(write(tmp_path, "pairs.txt", LFW), tmp_path)) == 4


def test_all_pairs_labels_every_two_photos() -> None:
    pairs = [
        p.Pair(Path("a1"), Path("a2"), True, 0, "a", "a"),
        p.Pair(Path("a1"), Path("b1"), False, 0, "a", "b"),
    ]
    every = p.all_pairs(pairs)
    assert [(x.a.name, x.b.name, x.same) for x in every] == [
        ("a1", "a2", True),
        ("a1", "b1", False),
        ("a2", "b1", False),
    ]


def test_identification_list(tmp_path: Path) -> None:
    text = "# gallery\nann photos/ann 1.jpg\n\nbob  photos/bob.jpg  # enrolled\n"
    entries = p.read_identification_list(write(tmp_path, "list.txt", text))
    assert entries == [
        p.Entry("ann", tmp_path / "photos/ann 1.jpg"),
        p.Entry("bob", tmp_path / "photos/bob.jpg"),
    ]
    other = p.read_identification_list(tmp_path / "list.txt", Path("/data"))
    assert other[0].path == Path("/data/photos/ann 1.jpg")
    with pytest.raises(InputError, match="list.txt:1: expected 'person path'"):
        p.read_identification_list(write(tmp_path, "list.txt", "ann\n"))
    with pytest.raises(InputError, match="no entries"):
        p.read_identification_list(write(tmp_path, "list.txt", "# nothing\n"))


def test_groups_table(tmp_path: Path) -> None:
    groups = p.read_groups(write(tmp_path, "g.csv", "person,group\nann,x\nbob, y\n"))
    assert groups == {"ann": "x", "bob": "y"}
    with pytest.raises(InputError, match="g.csv:2: expected 'person,group'"):
        p.read_groups(write(tmp_path, "g.csv", "ann,x\nbob\n"))


def test_centre_box_scales_with_the_photo() -> None:
    assert p.centre_box(250, 250) == (68, 80, 175, 188)
    assert p.centre_box(100, 200) == (27, 64, 70, 150)


def embedded(vectors: dict[str, np.ndarray | None]) -> p.Embedded:
    photos = {
        Path(name): p.Acquisition(
            0 if v is None else 1, None if v is None else v.astype(np.float32)
        )
        for name, v in vectors.items()
    }
    return p.Embedded(photos, "test-model", p.MissingFace.COUNT)


def test_score_pairs_gives_nan_without_a_face() -> None:
    e = embedded({"a": np.array([1.0, 0.0]), "b": np.array([0.0, 1.0]), "c": None})
    pairs = [
        p.Pair(Path("a"), Path("b"), False, 0, "a", "b"),
        p.Pair(Path("a"), Path("c"), True, 0, "a", "a"),
    ]
    scores = p.score_pairs(pairs, e)
    assert scores.distances[0] == pytest.approx(np.sqrt(2))
    assert np.isnan(scores.distances[1])
    assert scores.genuine.size == 1 and scores.impostor.size == 1
    assert e.failed == [Path("c")] and e.fta_rate == pytest.approx(1 / 3)


def test_score_identification_keeps_unenrolled_persons_mated() -> None:
    e = embedded(
        {"ann1": np.array([1.0, 0.0]), "bob1": None, "ann2": np.array([1.0, 0.1]), "bob2": None}
    )
    gallery = [p.Entry("ann", Path("ann1")), p.Entry("bob", Path("bob1"))]
    probes = [
        p.Entry("ann", Path("ann2")),
        p.Entry("bob", Path("bob2")),
        p.Entry("cy", Path("ann2")),
    ]
    scores = p.score_identification(gallery, probes, e)
    assert scores.persons == ("ann",)
    assert scores.unenrolled == (gallery[1],)
    assert scores.mated.tolist() == [True, True, False]
    assert scores.searchable.tolist() == [True, False, False]
    assert np.isnan(scores.matrix[1]).all() and scores.matrix[0, 0] < 0.1
