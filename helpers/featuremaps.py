"""The statistics of feature maps behind Fig. 2a/8 (`helpers.fourier`) and Fig. 9 (`helpers.variance`), each from one
read of every map, and both from the same read: pure functions of tensors `B, C, H, W`.

- `log_amplitude_diagonal(x)`: the diagonal `H` of the shifted mean log-amplitude spectrum of square maps: entry `i`
  is the mean over batch and channels of log(|F(k, k)| + 1e-6) at k = i - H//2. The diagonal of the 2-D DFT is the
  1-D DFT of the map's wrapped anti-diagonal sums, F(k, k) = sum_j s[j] e^(-2πikj/H) with s[j] the sum of x[m, n]
  over m + n = j (mod H) (see `helpers.fourier` for the statistic).
- `feature_map_variance(x)`: the mean over samples and channels of the spatial variance (divisor `H*W - 1`), 0-d,
  by the corrected two-pass algorithm (Chan, Golub & LeVeque 1983): the deviations from the map's mean, and their sum
  (which corrects for the rounding of that mean) beside the sum of their squares. It is as accurate as `torch.var`,
  also when the mean is large against the spread, and a constant map gives exactly 0.
- `diagonal_and_variance(x)`: both, the mean of each map taken from its anti-diagonal sums, so the variance adds no
  read of the maps (`diagonals, variances = blocks.average(batches, diagonal_and_variance)`).

Each is a `MapStatistic`, called on a batch of maps, or in two steps that `Blocks.average` takes apart: `read` (as a
block's output appears: the one read of its map, down to a few numbers per image and channel) and `finish` (after the
forward pass, for all blocks at once, blocks of one shape together: the DFTs, logs and means of a ViT's 25 blocks
are then one call each instead of 25). On a CPU the maps are read as many at a time as fit in `CHUNK_BYTES` (for
token and channels-last maps, whose channels are innermost, as many images): the copies that the anti-diagonal sums
and the deviations need then stay in the cache, and no map-sized buffer is allocated (next to a forward pass, fresh
map-sized buffers cost more in page faults than their arithmetic).
"""
from dataclasses import dataclass
from typing import NamedTuple

import torch

EPSILON = 1e-6  # the authors' floor under the amplitude before the log
CHUNK_BYTES = 1 << 20  # on a CPU, the images read at a time: about an L2 cache


class Read(NamedTuple):
    """What `MapStatistic.read` keeps of a batch of maps."""
    sums: torch.Tensor | None  # B, C, H: the wrapped anti-diagonal sums (a view)
    moments: torch.Tensor | None  # 2, B, C: the sum of the deviations from the mean, and of their squares
    positions: int  # H * W


@dataclass(frozen=True)
class MapStatistic:
    """A statistic of feature maps `B, C, H, W` (see the module docstring), the mean over the batch."""
    spectrum: bool  # the diagonal of the log-amplitude spectrum
    variance: bool  # the spatial variance

    def __call__(self, x: torch.Tensor):
        """The statistic of the maps `x`: a diagonal `H`, a 0-d variance, or both as a tuple."""
        return self.finish([self.read(x)])[0]

    def read(self, x: torch.Tensor) -> Read:
        """The first step, on a block's maps as they appear: the one read of `x`, down to a few numbers per image and
        channel."""
        check_maps(x)
        height, width = x.shape[-2:]
        if self.spectrum and height != width:
            raise ValueError(f"The half diagonal needs square maps, got {height} x {width}: frequency (k, k) would "
                             f"pair k cycles per {height} rows with k cycles per {width} columns.")
        if self.variance and height * width < 2:
            raise ValueError(f"A {height} x {width} map has no spatial variance.")
        return one_read(x.float(), spectrum=self.spectrum, variance=self.variance)

    def finish(self, reads: list[Read]) -> list:
        """The statistic of each read: its diagonal, its variance, or both as a tuple."""
        if self.spectrum:
            diagonals = by_shape([r.sums for r in reads], [None] * len(reads), diagonals_from_sums)
        if self.variance:
            variances = by_shape([r.moments for r in reads], [r.positions for r in reads], mean_variances)
        if self.spectrum and self.variance:
            return list(zip(diagonals, variances))
        return diagonals if self.spectrum else variances


log_amplitude_diagonal = MapStatistic(spectrum=True, variance=False)
feature_map_variance = MapStatistic(spectrum=False, variance=True)
diagonal_and_variance = MapStatistic(spectrum=True, variance=True)


def check_maps(x: torch.Tensor) -> None:
    """Raise a ValueError unless `x` is a batch of maps `B, C, H, W`."""
    if x.ndim != 4:
        raise ValueError(f"Expected feature maps B, C, H, W, got shape {tuple(x.shape)}; "
                         f"turn tokens into maps with Block.to_map first.")


def channels_inner(x: torch.Tensor) -> bool:
    """Whether the channels are the innermost dimension (token blocks, channels-last maps): then the maps are read
    in that order, `B, H, W, C`, an image at a time."""
    return x.shape[1] > 1 and x.stride(1) == 1


def one_read(x: torch.Tensor, *, spectrum: bool, variance: bool) -> Read:
    """The `Read` of float maps `x`, reading each map once (and its copies in the cache)."""
    batch, channels, height, width = x.shape
    inner = channels_inner(x)
    if not inner and channels > 1:  # read map by map, B*C of them, so that a part fits the cache whatever its size
        sums, moments, positions = one_read(x.reshape(batch * channels, 1, height, width), spectrum=spectrum,
                                            variance=variance)
        return Read(None if sums is None else sums.view(batch, channels, height),
                    None if moments is None else moments.view(2, batch, channels), positions)
    maps = x.permute(0, 2, 3, 1) if inner else x  # B, H, W, C or B, C, H, W: the order in memory
    positions, per_map = ((1, 2), lambda m: m[:, None, None]) if inner else ((2, 3), lambda m: m[..., None, None])
    step = images_per_read(x) if x.device.type == "cpu" else batch
    sums = x.new_empty(batch, *((height, channels) if inner else (channels, height))) if spectrum else None
    moments = x.new_empty(2, batch, channels) if variance else None
    padded = padded_workspace(x, step) if spectrum else None
    deviations = x.new_empty(step, *maps.shape[1:]) if variance else None
    for start in range(0, batch, step):
        part = slice(start, min(start + step, batch))
        images = maps[part]
        if spectrum:
            anti_diagonal_sums(images, padded, inner, out=sums[part])
        if variance:
            totals = sums[part].sum(positions[0]) if spectrum else images.sum(positions)
            deviation_sums(images, per_map(totals / (height * width)), positions, deviations, out=moments[:, part])
    return Read(sums.transpose(1, 2) if spectrum and inner else sums, moments, height * width)  # sums B, C, H


def images_per_read(x: torch.Tensor) -> int:
    batch, channels, height, width = x.shape
    return max(1, min(batch, CHUNK_BYTES // (channels * height * (width + 1) * x.element_size())))


def padded_workspace(x: torch.Tensor, images: int) -> torch.Tensor:
    """`images` maps of `x`'s size in its memory order with one zero column more: `images, C, H, H + 1` (channels
    inner: `images, H, H + 1, C`)."""
    _, channels, height, _ = x.shape
    if channels_inner(x):
        padded = x.new_empty(images, height, height + 1, channels)
        padded[:, :, height] = 0
    else:
        padded = x.new_empty(images, channels, height, height + 1)
        padded[..., height] = 0
    return padded


def anti_diagonal_sums(maps: torch.Tensor, padded: torch.Tensor, inner: bool, *, out: torch.Tensor) -> torch.Tensor:
    """The wrapped anti-diagonal sums of square maps into `out` (`B, C, H`; channels inner, `maps` are `B, H, W, C`
    and `out` is `B, H, C`), through `padded` (`padded_workspace`).

    Copied into rows of H + 1 that end in a zero, the map read as rows of H shifts each row one column further left:
    read row m holds x[m, j - m] at j >= m and, at j < m, the element of row m - 1 on the same wrapped anti-diagonal
    j (or the zero); read row H holds row H - 1's wrapped elements. The sum of the read rows is s[j]."""
    images, height = len(maps), maps.shape[1 if inner else 2]
    padded = padded[:images]
    (padded[:, :, :height] if inner else padded[..., :height]).copy_(maps)
    if inner:
        return torch.sum(padded.view(images, height + 1, height, -1), dim=1, out=out)
    return torch.sum(padded.view(images, -1, height + 1, height), dim=2, out=out)


def deviation_sums(maps: torch.Tensor, means: torch.Tensor, positions: tuple, deviations: torch.Tensor, *,
                   out: torch.Tensor) -> torch.Tensor:
    """Into `out` (`2, B, C`): the sums over the `positions` dims of the deviations of `maps` from their `means`, and
    of their squares; the deviations are written into the workspace `deviations`."""
    deviations = torch.sub(maps, means, out=deviations[:len(maps)])
    torch.sum(deviations, positions, out=out[0])
    return torch.sum(deviations.square_(), positions, out=out[1])


def by_shape(tensors: list, keys: list, function) -> list:
    """`function(stack, key)` of each group of `tensors` of one shape and key, a stack `G, ...`, split back into the
    order of `tensors`: the small second step of a statistic, one call per shape rather than per block."""
    groups = {}
    for index, (tensor, key) in enumerate(zip(tensors, keys)):
        groups.setdefault((tuple(tensor.shape), key), []).append(index)
    results = [None] * len(tensors)
    for (_, key), indices in groups.items():
        for index, value in zip(indices, function(torch.stack([tensors[i] for i in indices]), key)):
            results[index] = value
    return results


def diagonals_from_sums(sums: torch.Tensor, _=None) -> torch.Tensor:
    """The diagonals `G, H` of the shifted mean log-amplitude spectrum from anti-diagonal sums `G, B, C, H`."""
    height = sums.shape[-1]
    real, imaginary = torch.view_as_real(torch.fft.rfft(sums)).unbind(-1)  # G, B, C, H//2 + 1: k = 0 to H//2
    # |F| as sqrt(re² + im²): a third of the time of the complex abs, whose only gain, no overflow of the squares above
    # |F| = 1e19, no float32 feature map needs
    amplitude = torch.addcmul(imaginary.square(), real, real).sqrt_()
    half = amplitude.add_(EPSILON).log_().mean(dim=(1, 2))  # G, H//2 + 1
    mirrored = (torch.arange(height, device=half.device) - height // 2).abs()  # a real map's |F(-k, -k)| is |F(k, k)|
    return half[:, mirrored]


def mean_variances(moments: torch.Tensor, positions: int) -> torch.Tensor:
    """The mean spatial variances `G` from deviation sums `G, 2, B, C` of maps of `positions` positions."""
    rounding, squares = moments.unbind(1)
    return ((squares - rounding.square() / positions) / (positions - 1)).mean(dim=(1, 2))
