"""The build-up rule (Sec. 4, the README's "How to apply MSA to your own model"): where to put MSA blocks in a CNN.

The authors' rules: (1) alternately replace Conv blocks with MSA blocks from the end of a baseline CNN; (2) if the
added MSA does not improve predictive performance, replace a Conv block at the end of an earlier stage instead;
(3) use more heads and wider MSAs in later stages (AlterNet's `heads` per stage and its stage widths).

`build_up` walks rules 1 and 2 the way the authors' build-up animation of ResNet-50 on CIFAR-100 does
(resources/vit/buildup_v.key), which is what it reproduces step by step:

- start from the baseline, no MSA, and from its last stage;
- within a stage, add MSA blocks at every other position from its end (n-1, n-3, ...; never index 0, the block
  that changes channels and stride), each on top of the layout before it, whether or not that one improved;
- once the stage has no position left, go on at the end of the previous stage from the BEST layout so far; when
  the last MSA added did not improve on it, that is rule 2 (the step is flagged `rule_2`), otherwise it is rule 1
  going on from the end of the network;
- stop after the first stage. The best layout is the one with the highest accuracy (ties keep the earlier).

Each variant is one unit of work: `accuracy(layout)` trains it or reads its stored result, and the sequence of
layouts depends only on the accuracies returned, so a rerun backed by stored results visits the same layouts.
"""
from dataclasses import dataclass

from helpers.alternet import Layout


@dataclass(frozen=True)
class Step:
    layout: Layout
    accuracy: float
    kept: bool      # better than every layout before it: the new best
    rule_2: bool    # the previous MSA did not help: back to the best layout, at the end of an earlier stage
    best: Layout    # the best layout so far, this one included


def positions(num_blocks, stage):
    """Rule 1 within `stage` (from 1): every other block from its end, never the first."""
    return range(num_blocks[stage - 1] - 1, 0, -2)


def build_up(num_blocks, accuracy):
    """Yields the `Step`s of the build-up rule on a baseline with `num_blocks` blocks per stage (e.g. AlterNet-50's
    (3, 4, 6, 4)), calling `accuracy(layout) -> float` once per visited layout; the last step's `best` is the
    result."""
    layout = best = Layout()
    best_accuracy = accuracy(layout)
    previous = Step(layout, best_accuracy, kept=True, rule_2=False, best=best)
    yield previous
    for stage in range(len(num_blocks), 0, -1):
        for n, index in enumerate(positions(num_blocks, stage)):
            rule_2 = n == 0 and not previous.kept
            layout = (best if n == 0 else layout).plus(stage, index)
            score = accuracy(layout)
            kept = score > best_accuracy
            if kept:
                best, best_accuracy = layout, score
            previous = Step(layout, score, kept, rule_2, best)
            yield previous
