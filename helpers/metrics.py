"""Classification metrics of the paper's tables: accuracy, NLL, ECE, Acc-90, Freq-90, reliability diagrams.

Everything is computed from sums over test images, so a test set can be fed batch by batch (`Accumulator`) and
summed over `torchrun` ranks (`Accumulator.reduce`) with the same result as one pass over all of it:

- accuracy: share of images whose arg-max class is the label;
- NLL: mean cross-entropy of the softmax against the label, per image;
- ECE: confidence (the largest softmax probability) is put in `bins` equal-width bins; ECE is the sum over bins
  of (share of images in the bin) x |accuracy in the bin - mean confidence in the bin|;
- Acc-90 and Freq-90: accuracy on, and share of, the images whose confidence exceeds 0.9.

As in the authors' code (ops/tests.py), the default is 10 bins, bins are closed on the right, (start, end], so a
confidence of exactly 1.0 lands in the last bin, and "90% certain" means confidence > 0.9 strictly. The authors
count a bin's images on (start, end] but sum its confidences on [start, end); we use (start, end] for both.
Their NLL averages per-batch means; ours averages per image (the same up to a smaller last batch).
"""
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

BINS = 10         # the authors' ops/tests.py: np.linspace(0, 1, 11)
CERTAIN = 0.9     # Acc-90 / Freq-90 threshold (strict: confidence > 0.9)


@dataclass(frozen=True)
class Metrics:
    """Fractions in [0, 1] (not percent); `bin_*` are the reliability diagram's bars, one entry per bin."""
    count: int
    accuracy: float
    nll: float
    ece: float
    acc_90: float
    freq_90: float
    bin_edges: tuple
    bin_count: tuple
    bin_accuracy: tuple     # nan for an empty bin
    bin_confidence: tuple   # nan for an empty bin
    throughput: float = float("nan")   # images per second, when the caller timed it

    def row(self):
        """The scalar columns, for a CSV row or a table."""
        return {k: v for k, v in asdict(self).items() if not k.startswith("bin_")}


class Accumulator:
    """Sums over batches of (logits, labels) from which every metric follows; `update`, then `result`.

    The sums live in one float64 vector (float32 on MPS) on `device`, the device of the logits to come, so a batch
    costs no host sync and `reduce` is a single all-reduce (a rank with no images still takes part).
    """

    # layout of the sum vector: count, correct, nll, certain, certain_correct, then per bin count/correct/confidence
    def __init__(self, bins=BINS, certain=CERTAIN, device="cpu"):
        if bins < 1:
            raise ValueError(f"bins must be a positive number of confidence bins, not {bins}")
        self.bins, self.certain = bins, certain
        dtype = torch.float32 if torch.device(device).type == "mps" else torch.float64
        self.sums = torch.zeros(5 + 3 * bins, dtype=dtype, device=device)

    def update(self, logits, labels):
        if logits.ndim != 2 or labels.shape != logits.shape[:1]:
            raise ValueError(f"expected logits of shape (batch, classes) and class-index labels of shape (batch,); "
                             f"got {tuple(logits.shape)} and {tuple(labels.shape)}")
        logits, labels = logits.detach().float(), labels.to(logits.device)
        log_probabilities = F.log_softmax(logits, dim=-1)
        confidence, prediction = log_probabilities.max(-1)
        confidence = confidence.exp()
        dtype = torch.float32 if logits.device.type == "mps" else torch.float64
        correct = (prediction == labels).to(dtype)
        nll = F.nll_loss(log_probabilities, labels, reduction="sum")
        certain = (confidence > self.certain).to(dtype)
        # bucketize(right=False) gives i with edges[i-1] < c <= edges[i]: bin i-1 is (start, end]
        edges = torch.linspace(0, 1, self.bins + 1, device=logits.device)
        index = (torch.bucketize(confidence, edges) - 1).clamp(0, self.bins - 1)
        per_bin = torch.zeros(3, self.bins, dtype=dtype, device=logits.device)
        per_bin[0].index_add_(0, index, torch.ones_like(correct))
        per_bin[1].index_add_(0, index, correct)
        per_bin[2].index_add_(0, index, confidence.to(dtype))
        totals = torch.stack([correct.new_tensor(len(labels)), correct.sum(), nll.to(dtype),
                              certain.sum(), (certain * correct).sum()])
        self.sums += torch.cat([totals, per_bin.flatten()]).to(self.sums)
        return self

    def reduce(self):
        """Sum over all ranks (every rank must call it); a no-op outside `torch.distributed`."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.sums)
        return self

    def result(self, throughput=float("nan")):
        if self.sums[0] == 0:
            raise ValueError("no images were accumulated: call update(logits, labels) first")
        sums = self.sums.double().cpu()
        count, correct, nll, certain, certain_correct = sums[:5].tolist()
        bin_count, bin_correct, bin_confidence = sums[5:].view(3, self.bins)  # (3, bins)
        filled = bin_count > 0
        ece = (bin_count[filled] / count * (bin_correct[filled] / bin_count[filled]
                                            - bin_confidence[filled] / bin_count[filled]).abs()).sum().item()
        return Metrics(
            count=int(count), accuracy=correct / count, nll=nll / count, ece=ece,
            acc_90=certain_correct / certain if certain else float("nan"), freq_90=certain / count,
            bin_edges=tuple(torch.linspace(0, 1, self.bins + 1).tolist()),
            bin_count=tuple(int(n) for n in bin_count.tolist()),
            bin_accuracy=tuple((bin_correct / bin_count).tolist()),
            bin_confidence=tuple((bin_confidence / bin_count).tolist()),
            throughput=throughput)


def evaluate_logits(logits, labels, *, bins=BINS, certain=CERTAIN):
    """Every metric of one tensor of logits (N, classes) against class indices (N,)."""
    return Accumulator(bins, certain, logits.device).update(logits, labels).result()


def accuracy(logits, labels):
    return evaluate_logits(logits, labels).accuracy


def nll(logits, labels):
    return evaluate_logits(logits, labels).nll


def expected_calibration_error(logits, labels, *, bins=BINS):
    return evaluate_logits(logits, labels, bins=bins).ece
