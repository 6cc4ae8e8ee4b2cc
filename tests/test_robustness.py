"""helpers.robustness and the CIFAR-100-C and ImageNet sections of helpers.data, against hand computations, a
line-by-line transcription of the authors' frequency-band noise, a fake archive in the real layout served from a
loopback HTTP server, and a small ImageNet-style folder of generated images."""
import hashlib
import io
import math
import os
import subprocess
import sys
import tarfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from fakes import cifar100c_arrays, cifar100c_folder
from http_server import refusing, serve

from helpers import data, robustness
from helpers.noise import authors_band_mask, band_limited_noise, band_mask
from helpers.sweep import Table

PER_SEVERITY = 2  # images per severity in the fake archive


# --- a fake CIFAR-100-C --------------------------------------------------------------------------------------------

fake_arrays, write_folder = cifar100c_arrays, cifar100c_folder


def write_tar(path, folder, extra=()):
    """`folder` as CIFAR-100-C/ in the tar at `path`, plus `extra` (name, TarInfo type) members."""
    with tarfile.open(path, "w") as tar:
        tar.add(folder, arcname="CIFAR-100-C")
        for name, kind in extra:
            info = tarfile.TarInfo(name)
            info.type = kind
            payload = b"" if kind != tarfile.REGTYPE else b"evil"
            info.size = len(payload)
            if kind == tarfile.SYMTYPE:
                info.linkname = "/etc/passwd"
            tar.addfile(info, io.BytesIO(payload))
    return path


def md5(path):
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def fake():
    return fake_arrays()


@pytest.fixture(scope="module")
def mirror(tmp_path_factory, fake):
    """A folder holding a fake CIFAR-100-C.tar in the real layout."""
    root = tmp_path_factory.mktemp("mirror")
    write_tar(root / "CIFAR-100-C.tar", write_folder(root / "build" / "CIFAR-100-C", *fake))
    return root


def test_download_checks_the_md5_then_reads_severities_from_memory_maps(mirror, fake, tmp_path, monkeypatch):
    arrays, labels = fake
    monkeypatch.setattr(data, "CIFAR100C_MD5", md5(mirror / "CIFAR-100-C.tar"))
    with serve(mirror) as base:
        monkeypatch.setattr(data, "CIFAR100C_URL", f"{base}/CIFAR-100-C.tar")  # the official location, served here
        corrupted = data.cifar100c(tmp_path)
    assert corrupted.corruptions == data.ALL_CORRUPTIONS
    for name in ("gaussian_noise", "saturate"):
        for severity in data.SEVERITIES:
            rows = slice(PER_SEVERITY * (severity - 1), PER_SEVERITY * severity)
            images = corrupted.images(name, severity)
            assert isinstance(images, np.memmap)  # read when used, not loaded whole
            assert np.array_equal(images, arrays[name][rows])
            assert np.array_equal(corrupted.labels(severity), labels[rows])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CIFAR-100-C", "CIFAR-100-C.tar"]  # no leftovers
    with refusing() as base:  # the second time, nothing is downloaded
        assert data.cifar100c(tmp_path, url=f"{base}/CIFAR-100-C.tar").per_severity == PER_SEVERITY


def test_a_wrong_checksum_fails_before_anything_is_extracted(mirror, tmp_path, monkeypatch):
    monkeypatch.delenv("VITS_MIRROR", raising=False)
    with serve(mirror) as base:
        monkeypatch.setattr(data, "CIFAR100C_URL", f"{base}/CIFAR-100-C.tar")
        with pytest.raises(RuntimeError, match="does not match the MD5 11f0ed0f"):
            data.cifar100c(tmp_path)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "CIFAR-100-C.tar").write_bytes((mirror / "CIFAR-100-C.tar").read_bytes())  # put there by hand
    with pytest.raises(RuntimeError, match="does not match the MD5.*delete it"):
        data.cifar100c(tmp_path, download=False)
    assert [p.name for p in tmp_path.iterdir()] == ["CIFAR-100-C.tar"]


def test_a_mirror_is_checked_by_its_members(mirror, fake, tmp_path):
    with serve(mirror) as base:  # a mirror's copy need not be byte-identical: its layout is checked instead
        corrupted = data.cifar100c(tmp_path / "a", mirror=base)
    assert corrupted.corruptions == data.ALL_CORRUPTIONS and corrupted.per_severity == PER_SEVERITY
    arrays, labels = fake
    partial = tmp_path / "partial"
    write_tar(partial / "CIFAR-100-C.tar", write_folder(partial / "build" / "CIFAR-100-C",
                                                        {"fog": arrays["fog"]}, labels))
    with serve(partial) as base, pytest.raises(RuntimeError, match="is not CIFAR-100-C: it lacks CIFAR-100-C/brightness"):
        data.cifar100c(tmp_path / "b", mirror=base)
    assert not (tmp_path / "b" / "CIFAR-100-C.tar").exists()


@pytest.mark.parametrize("member", [("CIFAR-100-C/../../evil.txt", tarfile.REGTYPE), ("/tmp/evil.txt", tarfile.REGTYPE),
                                    ("CIFAR-100-C/link.npy", tarfile.SYMTYPE)], ids=["dotdot", "absolute", "symlink"])
def test_members_outside_the_folder_and_links_are_refused(fake, tmp_path, monkeypatch, member):
    source = tmp_path / "source"
    archive = write_tar(tmp_path / "CIFAR-100-C.tar", write_folder(source / "CIFAR-100-C", *fake), extra=[member])
    root = tmp_path / "data" / "inner"
    root.mkdir(parents=True)
    (root / "CIFAR-100-C.tar").write_bytes(archive.read_bytes())
    monkeypatch.setattr(data, "CIFAR100C_MD5", md5(archive))
    with pytest.raises(RuntimeError, match="refusing to extract"):
        data.cifar100c(root, download=False)
    assert [p.name for p in root.iterdir()] == ["CIFAR-100-C.tar"]
    assert not list(tmp_path.rglob("evil.txt")) and not list(tmp_path.rglob("link.npy"))


def test_missing_data_and_bad_files_give_clear_errors(fake, tmp_path):
    with pytest.raises(RuntimeError, match="download=False. Download https://zenodo.org/record/3555552"):
        data.cifar100c(tmp_path / "empty", download=False)
    with refusing() as base:
        with pytest.raises(RuntimeError, match="could not be downloaded"):
            data.cifar100c(tmp_path / "offline", url=f"{base}/CIFAR-100-C.tar")
    arrays, labels = fake
    corrupted = data.CorruptedCIFAR(write_folder(tmp_path / "c", {"fog": arrays["fog"]}, labels))
    with pytest.raises(ValueError, match="severity must be one of"):
        corrupted.images("fog", 6)
    with pytest.raises(ValueError, match="'snow' is not in"):
        corrupted.images("snow", 1)
    np.save(tmp_path / "c" / "labels.npy", labels[:7])
    with pytest.raises(ValueError, match="not a multiple of 5"):
        data.CorruptedCIFAR(tmp_path / "c")


# --- the tensor pipeline and the metrics ---------------------------------------------------------------------------

def test_model_input_converts_and_normalises_like_the_authors():
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    mean = np.array((0.5071, 0.4867, 0.4408)).reshape(1, 3, 1, 1)  # the authors' CIFAR-100 config, typed again
    std = np.array((0.2675, 0.2565, 0.2761)).reshape(1, 3, 1, 1)
    by_hand = (images.transpose(0, 3, 1, 2) / 255 - mean) / std
    inputs = robustness.model_input(images, torch.device("cpu"))
    assert inputs.dtype == torch.float32 and inputs.shape == (3, 3, 32, 32)
    torch.testing.assert_close(inputs, torch.from_numpy(by_hand).float())
    assert robustness.model_input(inputs, torch.device("cpu")) is inputs  # model inputs pass through
    with pytest.raises(ValueError, match="expected uint8 images"):
        robustness.model_input(images.transpose(0, 3, 1, 2), torch.device("cpu"))


class Lookup(nn.Module):
    """Returns row i of `logits` for the image whose first pixel's red value is i."""

    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(logits)
        self.seen = []

    def forward(self, x):
        self.seen.append(x.clone())
        red = x[:, 0, 0, 0] * data.STD["cifar100"][0] + data.MEAN["cifar100"][0]
        return self.logits[(red * 255).round().long().clamp(0, len(self.logits) - 1)]  # noise may move it


def lookup_images(n):
    images = np.zeros((n, 32, 32, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n)
    return images


# confidence 0.70 right, 0.50 wrong, 0.85 right, 0.72 wrong
PROBABILITIES = [[0.70, 0.20, 0.10], [0.50, 0.30, 0.20], [0.05, 0.10, 0.85], [0.72, 0.18, 0.10]]
LABELS = [0, 1, 2, 1]


def test_accuracy_nll_and_ece_match_a_hand_computation():
    model = Lookup(torch.tensor(PROBABILITIES).log())
    result = robustness.evaluate(model.train(), lookup_images(4), LABELS, batch_size=3, bins=15)
    assert model.training  # left as it was
    assert result.accuracy == 0.5
    assert result.nll == pytest.approx(-(math.log(0.7) + math.log(0.3) + math.log(0.85) + math.log(0.18)) / 4)
    # 15 bins of width 1/15: 0.70 and 0.72 share (10/15, 11/15]: accuracy 1/2, confidence 0.71; 0.5 and 0.85 alone
    assert result.ece == pytest.approx(2 / 4 * abs(0.5 - 0.71) + 1 / 4 * 0.5 + 1 / 4 * 0.15)
    ten_bins = robustness.evaluate(model, lookup_images(4), LABELS).ece  # the default, the authors' 10: 0.70, 0.72 apart
    assert ten_bins == pytest.approx((0.3 + 0.72 + 0.5 + 0.15) / 4)


# --- frequency bands -----------------------------------------------------------------------------------------------

def authors_random(xs, eps):
    """`Random.__call__` of the authors' ops/adversarial.py (without the .cuda() moves)."""
    b, c, h, w = xs.shape
    random = torch.randn([b, c, h, w])
    return xs + eps * random.sign()


def authors_fourier_mask(x, f, s=0.2):
    """`FreqAttack._fourier_mask` of the authors' ops/adversarial.py, line by line (f and s in radians)."""
    b, c, h, w = x.shape

    x = torch.fft.fft2(x)
    x = torch.roll(x, shifts=(int(h / 2), int(w / 2)), dims=(2, 3))
    x_abs = x.abs()
    x_ang = x.angle()

    mask1 = authors_center_mask(int(((f + s) * h) / (2 * math.pi)) * 2, h)
    mask2 = authors_center_mask(int(((f - s) * h) / (2 * math.pi)) * 2, h)
    mask = mask1 - mask2
    x_abs = mask * x_abs

    unit = torch.complex(torch.zeros(b, c, h, w), torch.ones(b, c, h, w))
    x = x_abs * torch.exp(unit * x_ang)
    x = torch.roll(x, shifts=(int(h / 2), int(w / 2)), dims=(2, 3))
    return torch.fft.ifft2(x)


def authors_center_mask(w1, w2):
    """`FreqAttack._center_mask`, line by line."""
    w1 = w2 if w1 > w2 else w1
    w1 = 0 if w1 < 0 else w1
    mask = torch.ones([1, 3, w1, w1])
    return F.pad(mask, [int((w2 - w1) / 2)] * 4)


@pytest.mark.parametrize("size", [32, 224])
def test_the_default_band_is_the_authors_freq_attack(size):
    xs = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(5))  # normalised images
    for k in range(1, 10):
        torch.manual_seed(0)
        xs_adv = authors_random(xs, 0.7)
        theirs = xs + authors_fourier_mask(xs_adv - xs, k / 10 * math.pi).real  # FreqAttack.__call__, f = k pi / 10
        noise = band_limited_noise(xs.shape, k / 10, generator=torch.Generator().manual_seed(0))
        assert noise.abs().max() > 0.01
        torch.testing.assert_close(xs + noise, theirs, rtol=0, atol=1e-5)
    assert robustness.FREQUENCIES == tuple(k / 10 for k in range(1, 10))


def square(d, size=32):
    """The shifted-layout square of even side 2d placed by a symmetric pad: offsets -d, ..., d - 1 from centre."""
    offsets = np.arange(size) - size // 2
    inside = (offsets >= -d) & (offsets < d)
    return inside[:, None] & inside[None, :]


def test_the_authors_band_is_one_bin_off_centre_and_its_real_part_halves_unpaired_frequencies():
    # int((f +- 0.2) 32 / 2 pi) at f = 0.1 pi: 2, 0; at 0.5 pi: 9, 6; at 0.9 pi: 15, 13 (half the squares' sides)
    for frequency, (outer, inner) in ((0.1, (2, 0)), (0.5, (9, 6)), (0.9, (15, 13))):
        mask = authors_band_mask(32, 32, frequency)
        assert np.array_equal(torch.fft.fftshift(mask).numpy(), square(outer) & ~square(inner))
    sign = 0.7 * torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2)).sign()
    noise = band_limited_noise(sign.shape, 0.5, generator=torch.Generator().manual_seed(2))
    mask = authors_band_mask(32, 32, 0.5).double()
    mirrored = torch.roll(mask.flip(0, 1), (1, 1), dims=(0, 1))  # entry k holds mask(-k)
    assert ((mask + mirrored) == 1).any()  # frequencies whose mirror image is outside the ring ...
    torch.testing.assert_close(torch.fft.fft2(noise.double()), torch.fft.fft2(sign.double()) * (mask + mirrored) / 2,
                               rtol=0, atol=1e-4)  # ... keep half their amplitude
    with pytest.raises(ValueError, match="square images of even size"):
        band_limited_noise((1, 3, 31, 31), 0.5)


def expected_radii(k, size=32):
    """Chebyshev radii d (in frequency bins, pi = size / 2 bins) of band k: (k - 1/2) / 10 <= 2d / size < (k + 1/2) / 10."""
    return {d for d in range(size // 2 + 1)
            if Fraction(2 * k - 1, 20) <= Fraction(2 * d, size) < Fraction(2 * k + 1, 20)}


ALL_BANDS = tuple(k / 10 for k in range(11))  # 0, 0.1 pi, ..., pi: the disjoint rings tile the spectrum


def test_disjoint_band_masks_are_square_rings_that_tile_the_spectrum():
    masks = [band_mask(32, 32, f) for f in ALL_BANDS]
    offsets = np.arange(-16, 16)  # the shifted spectrum: zero frequency at index 16
    chebyshev = np.maximum(*np.meshgrid(np.abs(offsets), np.abs(offsets), indexing="ij"))
    for k, mask in enumerate(masks):
        shifted = torch.fft.fftshift(mask).numpy()
        assert np.array_equal(shifted, np.isin(chebyshev, list(expected_radii(k))))
    assert expected_radii(0) == {0} and expected_radii(1) == {1, 2} and expected_radii(10) == {16}
    total = torch.stack(masks).sum(0)
    assert torch.equal(total, torch.ones(32, 32, dtype=total.dtype))  # disjoint, and every frequency in one band
    # a ring of radius d holds 8d frequencies; the bands of Fig. 2b hold alternately one or two radii
    assert [int(m.sum()) for m in masks[1:10]] == [24, 24, 72, 104, 64, 152, 88, 200, 232]


def test_disjoint_noise_keeps_its_band_at_equal_power_per_image():
    shape, epsilon = (16, 3, 32, 32), 0.7
    full = epsilon * torch.randn(shape, generator=torch.Generator().manual_seed(1)).sign()
    for f in ALL_BANDS:
        noise = band_limited_noise(shape, f, band="disjoint", epsilon=epsilon,
                                              generator=torch.Generator().manual_seed(1))
        mask = band_mask(32, 32, f)
        spectrum = torch.fft.fft2(noise.double())
        assert spectrum[..., ~mask].abs().pow(2).sum() / spectrum.abs().pow(2).sum() < 1e-12  # float32 round-off
        rms = noise.double().pow(2).mean(dim=(1, 2, 3)).sqrt()
        torch.testing.assert_close(rms, torch.full_like(rms, epsilon), rtol=0, atol=1e-6)  # every image, every band
        projection = torch.fft.ifft2(torch.fft.fft2(full.double()) * mask).real  # the band's part of the sign noise
        torch.testing.assert_close(noise.double(), projection * epsilon / projection.pow(2).mean(dim=(1, 2, 3),
                                   keepdim=True).sqrt(), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="band must be one of"):
        band_limited_noise(shape, 0.5, band="textbook")


# --- sweeps --------------------------------------------------------------------------------------------------------

class Counting(nn.Module):
    """A small CNN that counts its calls and can stop the run at call `fail_at`, like a killed job."""

    def __init__(self, fail_at=None):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 100))
        self.calls, self.fail_at = 0, fail_at

    def forward(self, x):
        self.calls += 1
        if self.calls == self.fail_at:
            raise KeyboardInterrupt
        return self.net(x)


CORRUPTIONS = ("gaussian_noise", "fog", "contrast")


@pytest.fixture
def folder(tmp_path):
    arrays, labels = fake_arrays(CORRUPTIONS, n=3, seed=2)
    return data.CorruptedCIFAR(write_folder(tmp_path / "CIFAR-100-C", arrays, labels)), arrays, labels


def clean_set(n=5):
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 100, n)


def test_corruption_sweep_rows_are_each_severity_evaluated_alone(folder, tmp_path):
    corrupted, arrays, labels = folder
    clean_images, clean_labels = clean_set()
    model = Counting()
    table = robustness.corruption_sweep(model, corrupted, clean_images, clean_labels, corruption_table(tmp_path / "c"),
                                        corruptions=CORRUPTIONS, batch_size=2)
    assert len(table) == 1 + 3 * 5
    for row in table.itertuples():
        if row.corruption == "clean":
            expected = robustness.evaluate(model, clean_images, clean_labels)
        else:
            rows = slice(3 * (row.severity - 1), 3 * row.severity)
            expected = robustness.evaluate(model, arrays[row.corruption][rows], labels[rows])
        assert (row.count, row.accuracy, row.ece) == (expected.count, expected.accuracy, pytest.approx(expected.ece))
        assert row.nll == pytest.approx(expected.nll, rel=1e-6)


def corruption_table(folder):
    return Table(folder, ("corruption", "severity"))


def test_an_interrupted_sweep_resumes_to_the_uninterrupted_table(folder, tmp_path):
    corrupted, _, _ = folder
    clean_images, clean_labels = clean_set()
    run = dict(corruptions=CORRUPTIONS, batch_size=2, progress=False)
    whole = robustness.corruption_sweep(Counting(), corrupted, clean_images, clean_labels,
                                        corruption_table(tmp_path / "a"), **run)
    with pytest.raises(KeyboardInterrupt):
        robustness.corruption_sweep(Counting(fail_at=20), corrupted, clean_images, clean_labels,
                                    corruption_table(tmp_path / "b"), **run)
    model = Counting()
    resumed = robustness.corruption_sweep(model, corrupted, clean_images, clean_labels,
                                          corruption_table(tmp_path / "b"), **run)
    assert 0 < model.calls < 3 + 15 * 2  # only the units left were run
    pd.testing.assert_frame_equal(resumed, whole)
    model = Counting()
    robustness.corruption_sweep(model, corrupted, clean_images, clean_labels, corruption_table(tmp_path / "b"), **run)
    assert model.calls == 0


def test_corruption_summary_means_over_15_and_over_19():
    rows = [{"model": "m", "corruption": "clean", "severity": 0, "accuracy": 0.9, "nll": 0.5, "ece": 0.05}]
    for i, name in enumerate(data.ALL_CORRUPTIONS):
        for s in data.SEVERITIES:
            value = 0.5 if i < 15 else 0.1  # the 4 extra corruptions are harder
            rows.append({"model": "m", "corruption": name, "severity": s, "accuracy": value - 0.01 * s,
                         "nll": 2 * s, "ece": 0.1})
    summary = robustness.corruption_summary(pd.DataFrame(rows)).iloc[0]
    assert summary["clean_accuracy"] == 0.9 and summary["clean_nll"] == 0.5
    assert summary["accuracy_15"] == pytest.approx(0.5 - 0.03)
    assert summary["accuracy_19"] == pytest.approx((15 * 0.5 + 4 * 0.1) / 19 - 0.03)
    assert summary["nll_15"] == pytest.approx(6) and summary["ece_19"] == pytest.approx(0.1)
    partial = robustness.corruption_summary(pd.DataFrame(rows[:-1])).iloc[0]
    assert math.isnan(partial["accuracy_19"]) and partial["accuracy_15"] == pytest.approx(0.47)


def noise_table(folder):
    return Table(folder, ("epsilon", "frequency"))


def test_frequency_noise_sweep_adds_each_bands_noise_and_reports_the_drop(tmp_path):
    images, labels = lookup_images(4), LABELS
    frequencies = (0.1, 0.5, 0.9)
    clean = robustness.model_input(images, torch.device("cpu"))
    tables = {}
    for band in ("authors", "disjoint"):  # each band is its own definition, so its own table
        model = Lookup(torch.tensor(PROBABILITIES).log())
        tables[band] = table = robustness.frequency_noise_sweep(model, images, labels, noise_table(tmp_path / band),
                                                                band=band, frequencies=frequencies, batch_size=4)
        assert [tuple(r) for r in table[["epsilon", "frequency"]].itertuples(index=False)] == [
            (0.0, 0.0), (0.7, 0.1), (0.7, 0.5), (0.7, 0.9)]
        torch.testing.assert_close(model.seen[0], clean)
        for seen, f in zip(model.seen[1:], frequencies):
            noise = (seen - clean).double()
            if band == "authors":
                mask = authors_band_mask(32, 32, f).bool()
                mask |= torch.roll(mask.flip(0, 1), (1, 1), dims=(0, 1))  # the real part keeps mirror images too
            else:
                mask = band_mask(32, 32, f)
                rms = noise.pow(2).mean(dim=(1, 2, 3)).sqrt()
                torch.testing.assert_close(rms, torch.full_like(rms, 0.7), rtol=0, atol=1e-5)
            assert torch.fft.fft2(noise)[..., ~mask].abs().max() < 1e-4 and noise.abs().max() > 0
        again = robustness.frequency_noise_sweep(model, images, labels, noise_table(tmp_path / f"{band}-again"),
                                                 band=band, frequencies=frequencies, batch_size=4)
        torch.testing.assert_close(torch.cat(model.seen[4:]), torch.cat(model.seen[:4]))  # the same noise each run
        pd.testing.assert_frame_equal(again, table)
    drop = robustness.accuracy_drop(pd.concat([t.assign(model=band) for band, t in tables.items()],
                                              ignore_index=True))
    assert list(drop["model"]) == ["authors"] * 3 + ["disjoint"] * 3 and list(drop["frequency"]) == [*frequencies] * 2
    accuracies = np.concatenate([t["accuracy"].values[1:] for t in tables.values()])
    torch.testing.assert_close(torch.tensor(drop["accuracy_drop"].values), torch.tensor(0.5 - accuracies),
                               rtol=0, atol=1e-12)


# --- ImageNet --------------------------------------------------------------------------------------------------

# synset -> ImageNet-1k class index (tench, tabby cat, toilet tissue); ImageFolder would number them 0, 1, 2
SYNSETS = {"n01440764": 0, "n02123045": 281, "n15075141": 999}


def imagenet_folder(root, synsets=SYNSETS, per_class=2):
    """An ImageFolder tree of small random JPEGs and PNGs in real synset folders."""
    rng = np.random.default_rng(0)
    for synset in synsets:
        (root / synset).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (40 + 10 * i, 60, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / synset / f"ILSVRC2012_val_{i}.{'JPEG' if i % 2 else 'png'}")
    return root


def test_imagenet_images_carry_imagenet_1k_labels_and_the_timm_eval_transform(tmp_path):
    import timm
    import timm.data

    model = timm.create_model("resnet18", pretrained=False)  # no hub: only its data config is read
    images = data.imagenet_images(imagenet_folder(tmp_path / "val"), model)
    assert images.labels.tolist() == [0, 0, 281, 281, 999, 999]
    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))
    with Image.open(tmp_path / "val" / "n02123045" / "ILSVRC2012_val_1.JPEG") as image:
        expected = transform(image.convert("RGB"))
    image, label = images[3]
    assert image.shape == (3, 224, 224) and label == 281
    torch.testing.assert_close(image, expected)
    assert len(data.imagenet_images(tmp_path / "val", model, n=4)) == 4


def test_imagenet_folders_in_another_layout_are_explained(tmp_path):
    import timm

    model = timm.create_model("resnet18", pretrained=False)
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (32, 32)).save(flat / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(ValueError, match=r"one folder per ImageNet-1k synset \(n01440764/.*no subfolders"):
        data.imagenet_images(flat, model)
    assert data.imagenet_images(flat, model, labelled=False).labels.tolist() == [-1]  # spectra need no labels
    imagenet_folder(tmp_path / "odd", {"n01440764": 0, "cats": None}, per_class=1)
    with pytest.raises(ValueError, match=r"\['cats'\] are not ImageNet-1k synsets"):
        data.imagenet_images(tmp_path / "odd", model)
    (tmp_path / "empty" / "n01440764").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="No images"):
        data.imagenet_images(tmp_path / "empty", model)
    with pytest.raises(FileNotFoundError, match="ImageNet"):
        data.imagenet_images(tmp_path / "missing", model)


def test_the_noise_sweep_runs_on_imagenet_images_at_224(tmp_path):
    import timm

    model = timm.create_model("resnet18", pretrained=False).eval()
    with torch.no_grad():
        model.fc.bias[281] = 100.0  # always "tabby cat": accuracy 1/3 with the ImageNet-1k labels, 0 with 0, 1, 2
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    images = data.imagenet_images(imagenet_folder(tmp_path / "val"), model)
    table = robustness.frequency_noise_sweep(model, images, images.labels, noise_table(tmp_path / "n"),
                                             frequencies=(0.1, 0.9), batch_size=4)
    assert list(table["frequency"]) == [0.0, 0.1, 0.9] and set(table["count"]) == {6}
    assert list(table["accuracy"]) == pytest.approx([1 / 3] * 3)
    clean = torch.stack([image for image, _ in images])
    torch.testing.assert_close(torch.cat(seen[:2]), clean)
    for batches, f in ((seen[2:4], 0.1), (seen[4:6], 0.9)):
        noise = (torch.cat(batches) - clean).double()
        assert noise.shape == (6, 3, 224, 224) and noise.abs().max() > 0.01
        mask = authors_band_mask(224, 224, f).bool()
        mask |= torch.roll(mask.flip(0, 1), (1, 1), dims=(0, 1))
        assert torch.fft.fft2(noise)[..., ~mask].abs().max() < 1e-3  # the authors' band, at 224 x 224


def stored(results, figure):
    (folder,) = (Path(results) / "sweeps" / figure).glob("alternet_18-*")
    key = ("corruption", "severity") if "cifar" in figure else ("epsilon", "frequency")
    return Table(folder, key).frame().sort_values(list(key)).reset_index(drop=True)


def test_two_torchrun_ranks_give_the_table_of_one_process(tmp_path):
    arrays, labels = fake_arrays(("gaussian_noise", "fog"), n=8, seed=4)
    folder = write_folder(tmp_path / "CIFAR-100-C", arrays, labels)
    common = ["--models", "alternet_18", "--cifar100c", str(folder), "--images", "4", "--batch-size", "4",
              "--corruptions", "gaussian_noise", "fog", "--data-root", str(tmp_path / "nothing-downloaded")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    root = Path(__file__).parents[1]
    for run, launcher in (("one", []), ("two", ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"])):
        done = subprocess.run([sys.executable, *launcher, "-m", "helpers.robustness", "--smoke", *common, "--results",
                               str(tmp_path / run)], env=env, cwd=root, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.count("units finished") == 2  # one summary, from rank 0: one line per table
    for figure, rows in (("robustness_cifar100c", 11), ("robustness_noise", 10)):
        one, two = stored(tmp_path / "one", figure), stored(tmp_path / "two", figure)
        assert len(one) == rows
        pd.testing.assert_frame_equal(one, two)


def test_the_real_path_reads_cifar100c_through_its_folder_and_the_images_cap(tmp_path):
    arrays, labels = fake_arrays(("gaussian_noise",), n=6, seed=4)
    corrupted = data.CorruptedCIFAR(write_folder(tmp_path / "CIFAR-100-C", arrays, labels)).first(2)
    assert corrupted.images("gaussian_noise", 3).shape == (2, 32, 32, 3)
    np.testing.assert_array_equal(corrupted.images("gaussian_noise", 3), arrays["gaussian_noise"][12:14])
    np.testing.assert_array_equal(corrupted.labels(3), labels[12:14])
    assert corrupted.fingerprint() != data.CorruptedCIFAR(tmp_path / "CIFAR-100-C").fingerprint()


def test_the_imagenet_mode_of_the_config_runs_timm_counterparts_on_a_synset_folder(tmp_path, monkeypatch):
    import timm

    from helpers import models

    made = []

    build = models.Spec.build

    def offline(spec, *, fresh=False, **keywords):  # the hub is out of reach: the same model without its weights
        made.append(spec.text)
        return build(spec, fresh=True, **keywords)

    monkeypatch.setattr(models.Spec, "build", offline)
    config = robustness.Config(models=["resnet_18"], sweeps=["noise"], imagenet=str(imagenet_folder(tmp_path / "val")),
                               images=4, batch_size=2, frequencies=[0.5], results=str(tmp_path / "results"))
    (outcome,) = robustness.run(config, progress=False)
    counterpart = "resnet18." + timm.models.get_pretrained_cfg("resnet18").tag  # timm's default weights
    assert made == ["timm:" + counterpart] and outcome.table.folder.name.startswith(f"timm-{counterpart}_imagenet-")
    _, noise_table = robustness.tables([outcome])
    assert list(noise_table.frequency) == [0.0, 0.5] and set(noise_table["count"]) == {4}
    definition = (outcome.table.folder / "definition.json").read_text()
    assert '"image folder"' in definition  # its identity is the folder's files, not CIFAR's
