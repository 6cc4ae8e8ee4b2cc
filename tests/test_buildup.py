"""The build-up rule against the authors' animation (README, resources/vit/buildup_v.key) and a case of our own."""
from itertools import islice
from pathlib import Path

import pytest

from helpers.alternet import Layout
from helpers.buildup import build_up

# ResNet-50 on CIFAR-100 as the authors' animation builds it up, on AlterNet-50's baseline (3, 4, 6, 4):
# (layout, accuracy %, kept: a new best, rule 2: back to the best layout at the end of an earlier stage)
ANIMATION = [
    ("resnet", 82.5, True, False),
    ("c4.3", 83.45, True, False),
    ("c4.1+c4.3", 83.65, True, False),                    # c4 has no position left (c4.0 changes the stride)
    ("c3.5+c4.1+c4.3", 83.77, True, False),               # rule 1 goes on from the end: the last MSA helped
    ("c3.3+c3.5+c4.1+c4.3", 83.52, False, False),
    ("c3.1+c3.3+c3.5+c4.1+c4.3", 83.2, False, False),     # on top of the step before, though it was worse
    ("c2.3+c3.5+c4.1+c4.3", 84.0, True, True),            # c3 exhausted: rule 2 from the best (c3.5+c4.1+c4.3)
    ("c2.1+c2.3+c3.5+c4.1+c4.3", 83.4, False, False),
    ("c1.2+c2.3+c3.5+c4.1+c4.3", 83.8, False, True),      # c2 exhausted: rule 2 again; c1 then ends the search
]


def scripted(table):
    """An accuracy function that knows only the layouts of `table`, and records the order it was asked in."""
    accuracies = {name: accuracy for name, accuracy, *_ in table}
    asked = []

    def accuracy(layout):
        asked.append(layout.name)
        return accuracies[layout.name]  # KeyError: a layout the rule should not have visited
    return accuracy, asked


def check(steps, table):
    assert [(s.layout.name, s.accuracy, s.kept, s.rule_2) for s in steps] == table


def test_the_authors_animation_step_by_step():
    accuracy, asked = scripted(ANIMATION)
    steps = list(build_up((3, 4, 6, 4), accuracy))
    check(steps, ANIMATION)
    assert asked == [name for name, *_ in ANIMATION]  # one call per variant, in order
    assert [s.best.name for s in steps] == ["resnet", "c4.3", "c4.1+c4.3"] + ["c3.5+c4.1+c4.3"] * 3 \
        + ["c2.3+c3.5+c4.1+c4.3"] * 3
    assert steps[-1].best == Layout.parse("c2.3+c3.5+c4.1+c4.3")
    assert max(steps, key=lambda s: s.accuracy).accuracy == 84.0


def test_a_first_msa_that_does_not_help_sends_the_next_stage_back_to_the_baseline():
    table = [  # AlterNet-18's baseline (2, 2, 2, 2): one position per stage, index 1
        ("resnet", 80.0, True, False),
        ("c4.1", 79.0, False, False),
        ("c3.1", 81.0, True, True),         # rule 2 from the baseline, not on top of c4.1
        ("c2.1+c3.1", 81.0, False, False),  # a tie is no improvement: the earlier layout stays the best
        ("c1.1+c3.1", 80.5, False, True),
    ]
    accuracy, _ = scripted(table)
    steps = list(build_up((2, 2, 2, 2), accuracy))
    check(steps, table)
    assert steps[-1].best.name == "c3.1"


def test_a_stage_of_one_block_is_skipped():
    table = [("resnet", 1.0, True, False), ("c3.1", 2.0, True, False), ("c1.2+c3.1", 3.0, True, False)]
    accuracy, _ = scripted(table)
    check(list(build_up((3, 1, 2, 1), accuracy)), table)


def test_resuming_from_stored_results_visits_the_same_layouts():
    accuracy, asked = scripted(ANIMATION)
    first = list(islice(build_up((3, 4, 6, 4), accuracy), 4))  # a run stopped after four layouts
    assert len(asked) == 4  # nothing is evaluated ahead of the step that needs it
    stored = {}

    def from_store(layout):  # a rerun: stored units are read back, the rest evaluated and stored
        if layout.name not in stored:
            stored[layout.name] = accuracy(layout)
        return stored[layout.name]
    for step in first:
        stored[step.layout.name] = step.accuracy
    steps = list(build_up((3, 4, 6, 4), from_store))
    check(steps, ANIMATION)
    assert asked == [name for name, *_ in ANIMATION]  # the first four were not evaluated again
    assert steps[:4] == first



def test_the_trained_walk_is_stored_per_variant_and_replayed_without_training(tmp_path, monkeypatch):
    from helpers import buildup, train

    config = buildup.Config(smoke=True, baseline="alternet_18", results=str(tmp_path))
    (outcome,) = buildup.run(config, progress=False)
    names = [unit["layout"] for unit in outcome.units]
    assert names[0] == "resnet" and len(names) == 5 and outcome.table.computed == 5  # (2, 2, 2, 2): one per stage
    checkpoints = [row["checkpoint"] for row in outcome.table.rows()]
    assert all(Path(path).exists() and "smoke" in path for path in checkpoints)
    monkeypatch.setattr(train, "train", lambda *a, **kw: pytest.fail("a stored variant was trained again"))
    (again,) = buildup.run(config, progress=False)
    assert again.table.computed == 0 and [u["layout"] for u in again.units] == names
    steps = buildup.steps(again, config.baseline)
    assert list(steps.layout) == names and steps.parent.iloc[0] == "" and steps.best.iloc[-1] in names
