"""Fold assignment: deterministic by seed, every case held out once, strata spread over the folds."""
from __future__ import annotations

from collections import Counter

import pytest

from glioseg.errors import InputError
from glioseg.experiments.folds import assign_folds, balance, fold_split, nested_order, read_grades, stratum_of

# 20 cases at 5 sites of unequal size, two grades
STRATA = {f"{site}_{n}": stratum_of(site, "HGG" if n % 3 else "LGG")
          for site, count in (("A", 7), ("B", 5), ("C", 4), ("D", 3), ("E", 1)) for n in range(count)}


def test_the_same_seed_gives_the_same_folds_and_another_seed_others():
    assert assign_folds(STRATA, 4, (0, 0)) == assign_folds(dict(reversed(STRATA.items())), 4, (0, 0))
    assert assign_folds(STRATA, 4, (0, 0)) != assign_folds(STRATA, 4, (0, 1))


@pytest.mark.parametrize("k", [2, 3, 5])
def test_every_case_is_held_out_exactly_once_and_strata_are_balanced(k):
    folds = assign_folds(STRATA, k, (7, 0))
    assert sorted(folds) == sorted(STRATA) and set(folds.values()) == set(range(k))
    sizes = Counter(folds.values())
    assert max(sizes.values()) - min(sizes.values()) <= 1
    for stratum, per_fold in balance(folds, STRATA, k).items():
        assert max(per_fold) - min(per_fold) <= 1, stratum


def test_sites_are_balanced_when_grade_is_unknown():
    strata = {f"{s}_{n}": stratum_of(s, None) for s, c in (("TCIA", 6), ("CBICA", 4), ("2013", 2)) for n in range(c)}
    folds = assign_folds(strata, 2, (0, 0))
    for site in ("TCIA", "CBICA", "2013"):
        counts = Counter(f for c, f in folds.items() if c.startswith(site))
        assert counts[0] == counts[1], site
    assert stratum_of(None, None) == "?/?"


def test_the_split_holds_out_the_fold_and_validates_on_training_cases():
    folds = assign_folds(STRATA, 4, (0, 0))
    split = fold_split(folds, 2, seed=3, val_fraction=0.25)
    assert split["test"] == sorted(c for c, f in folds.items() if f == 2)
    assert not set(split["test"]) & (set(split["train"]) | set(split["val"]))
    assert sorted(split["train"] + split["val"] + split["test"]) == sorted(STRATA)
    assert len(split["val"]) == round(0.25 * (len(STRATA) - len(split["test"])))


def test_the_nested_order_keeps_every_stratum_in_proportion_at_every_length():
    order = nested_order(list(STRATA), STRATA, (0, 1))
    assert sorted(order) == sorted(STRATA) and order == nested_order(sorted(STRATA, reverse=True), STRATA, (0, 1))
    assert order != nested_order(list(STRATA), STRATA, (0, 2))
    sizes = Counter(STRATA.values())
    for n in range(1, len(order) + 1):
        taken = Counter(STRATA[c] for c in order[:n])
        for stratum, size in sizes.items():
            assert abs(taken[stratum] - n * size / len(STRATA)) < 2, (n, stratum)


def test_fewer_training_cases_are_a_nested_subset_with_the_same_held_out_cases():
    folds = assign_folds(STRATA, 4, (0, 0))
    full = fold_split(folds, 1, seed=0, val_fraction=0.0)
    small, smaller = (fold_split(folds, 1, 0, 0.0, n, STRATA) for n in (10, 5))
    assert small["test"] == smaller["test"] == full["test"]
    assert len(small["train"]) == 10 and set(smaller["train"]) < set(small["train"]) < set(full["train"])
    assert small["train_cases"] == 10 and sorted(small["train"] + small["unused"]) == full["train"]
    assert "unused" not in full and fold_split(folds, 1, 0, 0.25, 8, STRATA)["val"]   # validation within the 8
    with pytest.raises(InputError, match="train_cases 16: fold 1 has 15 training cases"):
        fold_split(folds, 1, 0, 0.0, 16, STRATA)


@pytest.mark.parametrize("k", [1, 21])
def test_impossible_fold_counts_are_errors(k):
    with pytest.raises(ValueError, match="folds"):
        assign_folds(STRATA, k, (0, 0))


def test_grades_file_is_read_and_a_bad_one_named(tmp_path):
    good = tmp_path / "grades.csv"
    good.write_text("case,grade\na,HGG\nb,LGG\nc,\n")
    assert read_grades(good) == {"a": "HGG", "b": "LGG"}
    bad = tmp_path / "bad.csv"
    bad.write_text("id,who\na,HGG\n")
    with pytest.raises(ValueError, match="bad.csv.*case and grade"):
        read_grades(bad)
