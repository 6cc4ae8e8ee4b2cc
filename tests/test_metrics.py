"""Metrics against values worked out by hand on five images."""
import math

import pytest
import torch

from helpers import metrics

# softmax(log p) = p: (probabilities, label); confidence, correct, bin of 10 on (start, end]
PROBABILITIES = torch.tensor([
    [0.95, 0.03, 0.02],  # 0.95 right,  bin 9
    [0.20, 0.75, 0.05],  # 0.75 wrong,  bin 7
    [0.10, 0.25, 0.65],  # 0.65 right,  bin 6
    [0.55, 0.35, 0.10],  # 0.55 wrong,  bin 5
    [0.10, 0.58, 0.32],  # 0.58 right,  bin 5
], dtype=torch.float64)
LABELS = torch.tensor([0, 0, 2, 1, 1])
LOGITS = PROBABILITIES.log()


def test_hand_computed_values():
    result = metrics.evaluate_logits(LOGITS, LABELS)
    assert result.count == 5
    assert result.accuracy == pytest.approx(3 / 5)
    assert result.nll == pytest.approx(-(math.log(.95) + math.log(.2) + math.log(.65) + math.log(.35)
                                         + math.log(.58)) / 5)
    # bin 9: |1 - .95|, bin 7: |0 - .75|, bin 6: |1 - .65|, each 1/5 of the images;
    # bin 5: two images, accuracy 1/2, mean confidence (.55 + .58) / 2 = .565, 2/5 of the images
    assert result.ece == pytest.approx((0.05 + 0.75 + 0.35) / 5 + 2 / 5 * 0.065)
    assert result.acc_90 == 1.0 and result.freq_90 == pytest.approx(1 / 5)
    assert result.bin_count == (0, 0, 0, 0, 0, 2, 1, 1, 0, 1)
    assert result.bin_accuracy[5:8] == pytest.approx((0.5, 1.0, 0.0))
    assert result.bin_confidence[5] == pytest.approx(0.565)
    assert all(math.isnan(a) for a in result.bin_accuracy[:5])
    assert metrics.accuracy(LOGITS, LABELS) == result.accuracy
    assert metrics.nll(LOGITS, LABELS) == result.nll
    assert metrics.expected_calibration_error(LOGITS, LABELS) == result.ece


def test_nll_is_cross_entropy_and_ece_with_other_bins():
    logits = torch.randn(50, 7, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 7, (50,), generator=torch.Generator().manual_seed(1))
    assert metrics.nll(logits, labels) == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item())
    # one bin: ECE is |accuracy - mean confidence| over the whole set
    confidence = logits.softmax(-1).max(-1).values.mean().item()
    one_bin = metrics.expected_calibration_error(logits, labels, bins=1)
    assert one_bin == pytest.approx(abs(metrics.accuracy(logits, labels) - confidence))
    # 15 bins on the hand example: bins (.933, 1], (.733, .8], (.6, .667], (.533, .6] hold the same images
    assert metrics.expected_calibration_error(LOGITS, LABELS, bins=15) == pytest.approx(
        (0.05 + 0.75 + 0.35) / 5 + 2 / 5 * 0.065)


def test_bins_are_closed_on_the_right_and_certain_is_strict():
    # softmax([0, 0]) = 0.5 exactly: bin (0.4, 0.5]; softmax([100, 0]) = 1.0 exactly: the last bin, and certain
    result = metrics.evaluate_logits(torch.tensor([[0.0, 0.0], [100.0, 0.0]]), torch.tensor([0, 1]))
    assert result.bin_count == (0, 0, 0, 0, 1, 0, 0, 0, 0, 1)
    assert result.freq_90 == 0.5 and result.acc_90 == 0.0
    none_certain = metrics.evaluate_logits(torch.zeros(3, 4), torch.zeros(3, dtype=torch.long))
    assert none_certain.freq_90 == 0 and math.isnan(none_certain.acc_90)


def test_streaming_over_batches_equals_one_pass():
    logits = torch.randn(37, 10, generator=torch.Generator().manual_seed(2)) * 3
    labels = torch.randint(0, 10, (37,), generator=torch.Generator().manual_seed(3))
    accumulator = metrics.Accumulator()
    for chunk in range(0, 37, 8):
        accumulator.update(logits[chunk:chunk + 8], labels[chunk:chunk + 8])
    streamed, whole = accumulator.reduce().result(), metrics.evaluate_logits(logits, labels)
    for key, value in whole.row().items():
        assert streamed.row()[key] == pytest.approx(value, nan_ok=True), key


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="class-index labels"):
        metrics.accuracy(torch.zeros(4, 3), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="no images"):
        metrics.Accumulator().result()
