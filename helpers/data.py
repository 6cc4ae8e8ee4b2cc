"""CIFAR-10 and CIFAR-100 as the authors prepare them, and synthetic stand-ins for smoke runs.

`dataset(name, root)` gives a split through torchvision's reader (`name` is "cifar10" or "cifar100"),
downloading it when absent; `test_transform(name)` and `train_transform(name)` are the authors'
transforms with their normalisation (`MEAN`, `STD`); `loader` batches a dataset; `synthetic(n)` is a
small dataset of normalised random images of the real shape.

Downloads go to a temporary name that is renamed once verified against the official MD5 (`helpers.download`),
so an interrupted download never passes for a finished one. A `url` override
(a mirror, or the tests' loopback server) cannot match the official MD5s, so its archive and files are
accepted by structure: the archive holds, and extracts to, every file the reader expects.
"""
import os
import tarfile
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset
from torchvision import datasets, transforms
from torchvision.datasets.utils import check_integrity, extract_archive

from helpers.download import DownloadError, download

# From the authors' configs/cifar{10,100}_*.yaml (the same in every config of a dataset).
MEAN = {"cifar10": (0.4914, 0.4822, 0.4465), "cifar100": (0.5071, 0.4867, 0.4408)}
STD = {"cifar10": (0.2023, 0.1994, 0.2010), "cifar100": (0.2675, 0.2565, 0.2761)}
NUM_CLASSES = {"cifar10": 10, "cifar100": 100}


def normalize(name):
    return transforms.Normalize(MEAN[name], STD[name])


def test_transform(name):
    # The authors' timm eval transform also resizes and centre-crops to 32 pixels: a no-op on CIFAR.
    return transforms.Compose([transforms.ToTensor(), normalize(name)])


def train_transform(name, augment=()):
    """The authors' random 32-pixel crop of the 4-pixel-padded image and horizontal flip.

    `augment` (PIL transforms such as RandAugment) runs after the flip and before `ToTensor`, where the
    authors' timm pipeline puts its augmentations.
    """
    return transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                               *augment, transforms.ToTensor(), normalize(name)])


class _Downloading:
    """torchvision's CIFAR reader with an atomic download, a clear error, and an optional mirror `url`."""

    def __init__(self, root, train, transform, download, url):
        self.may_download = download
        if url is not None:
            # No MD5 for a mirror: torchvision then only checks that each file exists.
            self.url, self.tgz_md5 = url, None
            self.train_list = [[file, None] for file, _ in self.train_list]
            self.test_list = [[file, None] for file, _ in self.test_list]
            self.meta = {**self.meta, "md5": None}
        # torchvision calls download() only when asked; ours always runs, so that an archive put in `root`
        # by hand is extracted and a missing one raises our error rather than torchvision's.
        super().__init__(root, train=train, transform=transform, download=True)

    def download(self):
        if self._check_integrity():
            return
        archive = Path(self.root) / self.filename
        if not self._intact(archive):
            if not self.may_download:
                raise self._missing("download=False")
            self._fetch(archive)
        extract_archive(archive, self.root)

    def _fetch(self, archive):
        def verify(partial):
            if not self._intact(partial):
                raise DownloadError("the download is truncated or corrupted")

        try:
            download(self.url, archive, verify=verify)
        except DownloadError as error:
            raise self._missing(error) from error

    def _intact(self, archive):
        if self.tgz_md5 is not None:
            return check_integrity(archive, self.tgz_md5)
        files = [file for file, _ in self.train_list + self.test_list] + [self.meta["filename"]]
        try:
            # Listing the members inflates the whole stream, so a truncated archive raises here.
            with tarfile.open(archive) as tar:
                return {f"{self.base_folder}/{file}" for file in files} <= set(tar.getnames())
        except (OSError, EOFError, tarfile.TarError):
            return False

    def _missing(self, reason):
        folder = Path(self.root)
        return RuntimeError(
            f"{self.title} is not in {folder}/ and could not be downloaded from {self.url} ({reason}). "
            f"Download the archive by hand and put it in {folder}/ as {self.filename}: "
            f"it is extracted on the next call.")


class _CIFAR10(_Downloading, datasets.CIFAR10):
    title = "CIFAR-10"


class _CIFAR100(_Downloading, datasets.CIFAR100):
    title = "CIFAR-100"


_DATASETS = {"cifar10": _CIFAR10, "cifar100": _CIFAR100}


def dataset(name, root="data", *, train=True, transform=None, download=True, url=None):
    """The train or test split of `name` as a torchvision CIFAR dataset of (image, label) pairs.

    Images are PIL images unless `transform` says otherwise. The data is downloaded into `root` when
    absent and `download` is true; `url` replaces the official archive URL (checked by structure only).
    """
    return _DATASETS[name](root, train, transform, download, url)


def loader(dataset, batch_size=128, *, shuffle=False, workers=None):
    """Batches of `dataset`, as in the authors' notebooks; `workers` defaults to 4, or fewer cores."""
    workers = min(4, os.cpu_count() or 1) if workers is None else workers
    return DataLoader(dataset, batch_size, shuffle=shuffle, num_workers=workers,
                      pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0)


def synthetic(n=64, name="cifar100", *, seed=0):
    """`n` random images, normalised like `name`'s, with random labels of its classes; no download."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (n, 3, 32, 32), generator=generator, dtype=torch.uint8)
    labels = torch.randint(0, NUM_CLASSES[name], (n,), generator=generator)
    return TensorDataset(normalize(name)(pixels / 255), labels)
