"""CIFAR-10 and CIFAR-100 as the authors prepare them, synthetic stand-ins for smoke runs, and ImageNet images.

`dataset(name, root)` gives a split through torchvision's reader (`name` is "cifar10" or "cifar100"),
downloading it when absent; `test_transform(name)` and `train_transform(name)` are the authors'
transforms with their normalisation (`MEAN`, `STD`); `loader` batches a dataset; `synthetic(n)` is a
small dataset of normalised random images of the real shape. `imagenet_images(folder, model)` reads ImageNet
validation images through a timm model's eval transform, labelled with their ImageNet-1k class indices.

Downloads go to a temporary name that is renamed once verified against the official MD5 (`helpers.download`),
so an interrupted download never passes for a finished one. A `url` override
(a mirror, or the tests' loopback server) cannot match the official MD5s, so its archive and files are
accepted by structure: the archive holds, and extracts to, every file the reader expects.
"""
import copy
import hashlib
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Subset, TensorDataset
from torchvision import datasets, transforms
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.datasets.utils import check_integrity, extract_archive

from helpers.common import file_digest
from helpers.download import DownloadError, download, source
from helpers.download import download as fetch  # noqa: I001  (cifar100c's `download` flag shadows the name)

# From the authors' configs/cifar{10,100}_*.yaml (the same in every config of a dataset).
MEAN = {"cifar10": (0.4914, 0.4822, 0.4465), "cifar100": (0.5071, 0.4867, 0.4408)}
STD = {"cifar10": (0.2023, 0.1994, 0.2010), "cifar100": (0.2675, 0.2565, 0.2761)}
NUM_CLASSES = {"cifar10": 10, "cifar100": 100}


def normalize(name, spec=None):
    """The normalisation of a model's inputs: its own (timm's data config of an ImageNet model), else the dataset's."""
    if spec is not None and spec.mean is not None:
        return transforms.Normalize(spec.mean, spec.std)
    return transforms.Normalize(MEAN[name], STD[name])


def input_size(spec):
    """(C, H, W) of a sized `helpers.spec.Spec` (`spec.sized(model)`: the size is decided where the model is built);
    CIFAR's without one."""
    if spec is None:
        return (3, 32, 32)
    if spec.input_size is None:
        raise ValueError(f"{spec.text} has no input size yet: give the data its sized spec, spec.sized(model).")
    return tuple(spec.input_size)


def resized(spec):
    """[a resize of the 32 x 32 images to the model's input size] when it is another, else []."""
    if tuple(input_size(spec)[1:]) == (32, 32):
        return []
    return [transforms.Resize(tuple(spec.input_size[1:]), interpolation=transforms.InterpolationMode.BICUBIC)]


def say_size(spec, smoke=False):
    """One line when a model runs at another size than the figure's 32 x 32 images."""
    if tuple(input_size(spec)[1:]) != (32, 32):
        print(f"Note: {spec.text} runs at {spec.input_size[1]} x {spec.input_size[2]} ({spec.size_origin}); "
              + ("its synthetic images are drawn at that size." if smoke else
                 "the figure's 32 x 32 images are resized to it."))


def test_transform(name, spec=None):
    """The authors' test transform, at the input size and normalisation of `spec` (a `helpers.models.Spec`)."""
    # The authors' timm eval transform also resizes and centre-crops to 32 pixels: a no-op on CIFAR.
    return transforms.Compose([transforms.ToTensor(), *resized(spec), normalize(name, spec)])


def train_transform(name, augment=(), spec=None):
    """The authors' random 32-pixel crop of the 4-pixel-padded image and horizontal flip.

    `augment` (PIL transforms such as RandAugment) runs after the flip and before `ToTensor`, where the
    authors' timm pipeline puts its augmentations; a model of another input size (`spec`) gets the result resized.
    """
    return transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                               *augment, transforms.ToTensor(), *resized(spec), normalize(name, spec)])


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


DATASETS = {"cifar10": _CIFAR10, "cifar100": _CIFAR100}


def dataset(name, root="data", *, train=True, transform=None, download=True, url=None, mirror=None):
    """The train or test split of `name` as a torchvision CIFAR dataset of (image, label) pairs.

    Images are PIL images unless `transform` says otherwise. The data is downloaded into `root` when absent and
    `download` is true, from the official location (MD5-checked) or from the mirror in effect (`mirror`, else
    $VITS_MIRROR; see `helpers.download`) or from `url`, whose archives are checked by structure only.
    """
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    if url is None:
        url, official = source(DATASETS[name].url, mirror)
        url = None if official else url
    return DATASETS[name](root, train, transform, download, url)


def worker_count(workers=None):
    """Data-loading processes: `workers`, by default 4 or fewer if the machine has fewer cores."""
    return min(4, os.cpu_count() or 1) if workers is None else workers


def loader(dataset, batch_size=128, *, shuffle=False, workers=None):
    """Batches of `dataset`, as in the authors' notebooks; `workers` defaults to `worker_count()`."""
    workers = worker_count(workers)
    return DataLoader(dataset, batch_size, shuffle=shuffle, num_workers=workers,
                      pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0)


def synthetic(n=64, name="cifar100", *, seed=0, spec=None):
    """`n` random images of a model's input size (`spec`; default 32 x 32), normalised like its inputs, with random
    labels of `name`'s classes; no download."""
    generator = torch.Generator().manual_seed(seed)
    size = input_size(spec)
    pixels = torch.randint(0, 256, (n, *size), generator=generator, dtype=torch.uint8)
    labels = torch.randint(0, NUM_CLASSES[name], (n,), generator=generator)
    return TensorDataset(normalize(name, spec)(pixels / 255), labels)


def synthetic_pixels(n, name="cifar100", *, seed=0):
    """(uint8 images n x 32 x 32 x 3, labels) of random pixels: a smoke run's stand-in for a raw CIFAR split."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, NUM_CLASSES[name], n)


def test_images(spec, n=None, *, root="data", mirror=None, smoke=False, name="cifar100", seed=0):
    """The first `n` test images of `name` (all when None) through `spec`'s test transform, or `n` synthetic ones of
    its size for a smoke run (drawn from `seed`): the test set of every figure and of training. `spec` is sized
    (`spec.sized(model)`)."""
    say_size(spec, smoke)
    if smoke:
        return synthetic(n or 8, name, seed=seed, spec=spec)
    test_set = dataset(name, root, train=False, transform=test_transform(name, spec), mirror=mirror)
    return Subset(test_set, range(min(n or len(test_set), len(test_set))))


def sample(dataset, n=None, *, seed=0):
    """The first `n` items of `dataset` in an order shuffled by `seed`, as a Subset; all of it when `n` is None."""
    if n is None:
        return dataset
    if n > len(dataset):
        raise ValueError(f"{n} images asked for, but the dataset holds {len(dataset)}")
    return Subset(dataset, torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n].tolist())


def training_set(config, transform, name="cifar100", spec=None):
    """The training split of `name` with `transform`, the first `config.images` of a shuffle seeded by
    `config.seed` (synthetic images of `spec`'s size when `config.smoke`): what every experiment trains or measures on.
    `config` is an experiment config (smoke, images, seed, data_root, mirror)."""
    say_size(spec, config.smoke)
    if config.smoke:
        return synthetic(config.images, name, seed=config.seed, spec=spec)
    dataset_ = dataset(name, config.data_root, train=True, transform=transform, mirror=config.mirror)
    return sample(dataset_, config.images, seed=config.seed)


def fingerprint(dataset):
    """The identity and size of `dataset`, for the definition of a stored result: a digest of its raw content (a
    CIFAR split's uint8 images and labels, a tensor dataset's tensors, an image folder's file names and sizes),
    through any `Subset`s. Transforms are not part of it: the settings that choose them are in the definition."""
    digest = hashlib.sha256()
    kind = _feed(digest, dataset)
    return {"kind": kind, "size": len(dataset), "digest": digest.hexdigest()[:16]}


def _feed(digest, dataset):
    if isinstance(dataset, Subset):
        digest.update(np.asarray(dataset.indices, dtype=np.int64).tobytes())
        return _feed(digest, dataset.dataset) + " subset"
    if isinstance(dataset, TensorDataset):
        for tensor in dataset.tensors:
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return "tensors"
    if isinstance(dataset, datasets.CIFAR10):  # CIFAR-100 too
        digest.update(np.ascontiguousarray(dataset.data).tobytes())
        digest.update(np.asarray(dataset.targets, dtype=np.int64).tobytes())
        return f"{type(dataset).__name__.strip('_').lower()} {'train' if dataset.train else 'test'}"
    files = getattr(dataset, "samples", None) or [(path, -1) for path in getattr(dataset, "files", [])]
    if files:  # an image folder: names, labels and sizes
        for path, label in files:
            digest.update(f"{Path(path).name} {label} {os.path.getsize(path)}\n".encode())
        return "image folder"
    raise TypeError(f"Cannot fingerprint a {type(dataset).__name__}: give a CIFAR split, a TensorDataset, an image "
                    "folder or a Subset of one")


# ---------------------------------------------------------------------------------------------------------------
# CIFAR-100-C (Hendrycks & Dietterich, 2019): the CIFAR-100 test set under 19 corruptions at 5 severities.
#
# The archive holds CIFAR-100-C/NAME.npy (uint8 images, N x 32 x 32 x 3, severity 1 to 5 one after another) and
# CIFAR-100-C/labels.npy. It is downloaded whole, its MD5 checked before anything is extracted, and extracted
# member by member checks into a temporary folder that is renamed into place, so a half-extracted folder never
# passes for a finished one. Arrays are memory-mapped: a severity is a slice of the file, read when used.
# ---------------------------------------------------------------------------------------------------------------

CIFAR100C_URL = "https://zenodo.org/record/3555552/files/CIFAR-100-C.tar"
CIFAR100C_MD5 = "11f0ed0f1191edbf9fa23466ae6021d3"
CIFAR100C_FOLDER = "CIFAR-100-C"
CIFAR100C_VERIFIED = ".md5"  # in the folder, the archive's MD5 when it was extracted from the MD5-checked official one
# The 15 corruptions whose mean is the benchmark's number, then the 4 extra ones (the authors' ops/datasets.py).
CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
               "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
               "jpeg_compression")
EXTRA_CORRUPTIONS = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
ALL_CORRUPTIONS = CORRUPTIONS + EXTRA_CORRUPTIONS
SEVERITIES = (1, 2, 3, 4, 5)


class CorruptedCIFAR:
    """A CIFAR-C folder: `images(corruption, severity)` (uint8 N x 32 x 32 x 3, memory-mapped) and `labels()`."""

    def __init__(self, folder):
        self.folder = Path(folder)
        labels = self.folder / "labels.npy"
        if not labels.is_file():
            raise FileNotFoundError(f"{labels} is missing: {self.folder} is not a CIFAR-C folder. "
                                    "Delete the folder to download and extract it again.")
        self._labels = np.load(labels, mmap_mode="r")
        if len(self._labels) % len(SEVERITIES):
            raise ValueError(f"{labels} has {len(self._labels)} rows, not a multiple of {len(SEVERITIES)} severities")
        self.per_severity = self.available = len(self._labels) // len(SEVERITIES)
        self.corruptions = tuple(name for name in ALL_CORRUPTIONS if (self.folder / f"{name}.npy").is_file())

    def first(self, n):
        """The same folder, reading only the first `n` images of each severity (all of them if it holds fewer)."""
        if n < 1:
            raise ValueError(f"a CIFAR-C subset needs at least one image per severity, not {n}")
        subset = copy.copy(self)
        subset.per_severity = min(n, self.available)
        return subset

    def _rows(self, severity):
        if severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, not {severity!r}")
        start = self.available * (severity - 1)
        return slice(start, start + self.per_severity)

    def images(self, corruption, severity):
        """The images of `corruption` at `severity` (the severity-th fifth of the file's rows), not yet read."""
        if corruption not in self.corruptions:
            raise ValueError(f"{corruption!r} is not in {self.folder}; it holds {', '.join(self.corruptions)}")
        images = np.load(self.folder / f"{corruption}.npy", mmap_mode="r")
        if images.dtype != np.uint8 or images.shape[1:] != (32, 32, 3) or len(images) != len(self._labels):
            raise ValueError(f"{self.folder / corruption}.npy holds {images.dtype} {images.shape}; expected uint8 "
                             f"({len(self._labels)}, 32, 32, 3) like labels.npy. Delete the folder to extract it again.")
        return images[self._rows(severity)]

    def labels(self, severity=1):
        """Class indices (int64) of the images of any corruption at `severity` (the same test images each time)."""
        return np.array(self._labels[self._rows(severity)], dtype=np.int64)

    def fingerprint(self):
        """Identity and size for a stored result: the labels, and each corruption's file size and first and last
        megabyte (hashing all 2.9 GB would cost more than it tells: the folder is the MD5-checked archive's)."""
        digest = hashlib.sha256(np.ascontiguousarray(self._labels).tobytes())
        for name in self.corruptions:
            path = self.folder / f"{name}.npy"
            with open(path, "rb") as f:
                head = f.read(1 << 20)
                f.seek(max(path.stat().st_size - (1 << 20), 0))
                digest.update(f"{name} {path.stat().st_size}".encode() + head + f.read())
        return {"kind": "cifar-c", "size": len(self._labels), "per_severity": self.per_severity,
                "corruptions": len(self.corruptions), "digest": digest.hexdigest()[:16]}


def _check_members(tar, target):
    """Refuse any member that is not a plain file or folder, or whose path would land outside `target`."""
    target = Path(target).resolve()
    for member in tar.getmembers():
        path = (target / member.name).resolve()
        if not (member.isfile() or member.isdir()):
            raise RuntimeError(f"refusing to extract {member.name!r}: links and special files are not allowed")
        if Path(member.name).is_absolute() or ".." in Path(member.name).parts or target not in (path, *path.parents):
            raise RuntimeError(f"refusing to extract {member.name!r}: it would land outside {target}")


def safe_extract(archive, target):
    """Extract the tar `archive` into `target` after checking every member (no `..`, absolute paths or links)."""
    with tarfile.open(archive) as tar:
        _check_members(tar, target)
        if hasattr(tarfile, "data_filter"):  # Python 3.11.4+: the standard library checks again
            tar.extractall(target, filter="data")
        else:
            tar.extractall(target)


def cifar100c(root="data", *, download=True, url=None, mirror=None):
    """CIFAR-100-C in `root`/CIFAR-100-C, downloaded (2.9 GB) and extracted when absent.

    From the official location the archive must match `CIFAR100C_MD5` before anything is extracted; from the
    mirror in effect (`mirror`, else $VITS_MIRROR) or `url` it must hold labels.npy and all 19 corruptions. An
    archive put in `root` by hand as CIFAR-100-C.tar is used without download.
    """
    root = Path(root)
    folder, archive = root / CIFAR100C_FOLDER, root / f"{CIFAR100C_FOLDER}.tar"
    if folder.is_dir():
        return CorruptedCIFAR(folder)
    url, official = (url, False) if url else source(CIFAR100C_URL, mirror)
    hint = f"Download {CIFAR100C_URL} by hand and put it in {root}/ as {archive.name}: it is extracted on the next call."

    def verify(path):
        if official and file_digest(path, "md5") != CIFAR100C_MD5:
            raise DownloadError(f"the download of {url} does not match the MD5 {CIFAR100C_MD5} (corrupted or "
                                f"not CIFAR-100-C); nothing was kept. {hint}")
        if not official:
            check_cifar100c_members(path, url)

    if not archive.is_file():
        if not download:
            raise RuntimeError(f"CIFAR-100-C is not in {root}/ and download=False. {hint}")
        try:
            fetch(url, archive, verify=verify, hint=hint)
        except DownloadError as error:
            raise RuntimeError(f"CIFAR-100-C could not be downloaded: {error}") from error
    elif official and file_digest(archive, "md5") != CIFAR100C_MD5:
        raise RuntimeError(f"{archive} does not match the MD5 {CIFAR100C_MD5}: delete it and run again to download it.")
    partial = Path(tempfile.mkdtemp(dir=root, prefix=f".{CIFAR100C_FOLDER}."))
    try:
        safe_extract(archive, partial)
        if not (partial / CIFAR100C_FOLDER / "labels.npy").is_file():
            raise RuntimeError(f"{archive} holds no {CIFAR100C_FOLDER}/labels.npy; delete it and download it again.")
        if official or file_digest(archive, "md5") == CIFAR100C_MD5:  # official: checked above or when downloaded
            (partial / CIFAR100C_FOLDER / CIFAR100C_VERIFIED).write_text(CIFAR100C_MD5 + "\n")
        os.replace(partial / CIFAR100C_FOLDER, folder)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return CorruptedCIFAR(folder)


def check_cifar100c_members(archive, origin):
    """A mirror's archive must hold CIFAR-100-C/labels.npy and the .npy of every corruption."""
    expected = {f"{CIFAR100C_FOLDER}/{name}.npy" for name in ("labels", *ALL_CORRUPTIONS)}
    try:
        with tarfile.open(archive) as tar:
            missing = sorted(expected - set(tar.getnames()))
    except (OSError, EOFError, tarfile.TarError) as error:
        raise DownloadError(f"{origin} is not a readable tar archive ({error}); nothing was kept.") from error
    if missing:
        raise DownloadError(f"{origin} is not CIFAR-100-C: it lacks {', '.join(missing[:5])}"
                            f"{' and more' if len(missing) > 5 else ''}; nothing was kept.")


def synthetic_cifar100c(folder, n=4, *, corruptions=ALL_CORRUPTIONS, seed=0):
    """Write a CIFAR-100-C-like folder of random images (`n` per severity) into `folder`, for smoke runs."""
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "labels.npy", np.tile(rng.integers(0, NUM_CLASSES["cifar100"], n), len(SEVERITIES)))
    for name in corruptions:
        np.save(folder / f"{name}.npy", rng.integers(0, 256, (n * len(SEVERITIES), 32, 32, 3), dtype=np.uint8))
    return CorruptedCIFAR(folder)


# --- ImageNet validation images, for timm's ImageNet models (the authors' Fig. 2) --------------------------------

class ImageFiles(torch.utils.data.Dataset):
    """Image `files` as (transformed image, label) pairs; `labels` is the tensor of their labels."""

    def __init__(self, files, labels, transform):
        self.files, self.labels, self.transform = list(files), torch.as_tensor(labels, dtype=torch.long), transform

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        with Image.open(self.files[index]) as image:
            return self.transform(image.convert("RGB")), self.labels[index]


def _image_files(folder):
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)


def imagenet_images(folder, model, n=None, *, labelled=True):
    """The first `n` images of `folder` through `model`'s timm eval transform (resize, centre crop to its input
    size, 224 for the paper's models, and the normalisation of its data config), as an `ImageFiles` dataset.

    `folder` is an ImageFolder tree of synset folders (`n01440764/ILSVRC2012_val_00000293.JPEG`, ...), read in
    sorted order. Labels are ImageNet-1k class indices looked up by synset in timm's own metadata
    (`timm.data.ImageNetInfo`), not ImageFolder's enumeration of the folders present, which is wrong for a partial
    tree. With `labelled=False` (spectra need no labels) the folder names are not checked, a flat folder of images
    is read too, and every label is -1.
    """
    import timm.data

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"No folder of ImageNet validation images at {folder}.")
    synsets = sorted(p for p in folder.iterdir() if p.is_dir())
    if labelled:
        index = {name: i for i, name in enumerate(timm.data.ImageNetInfo().label_names())}  # synset -> class
        unknown = [p.name for p in synsets if p.name not in index]
        if not synsets or unknown:
            found = f"{unknown[:5]} are not ImageNet-1k synsets" if unknown else "it has no subfolders"
            raise ValueError(f"{folder} must hold one folder per ImageNet-1k synset (n01440764/, n01443537/, ...) "
                             f"with that class's images inside (the ImageFolder layout); {found}.")
        pairs = [(file, index[synset.name]) for synset in synsets for file in _image_files(synset)]
    else:
        pairs = [(file, -1) for subfolder in (synsets or [folder]) for file in _image_files(subfolder)]
    if not pairs:
        raise FileNotFoundError(f"No images in {folder}.")
    pairs = pairs[:n]
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    return ImageFiles([file for file, _ in pairs], [label for _, label in pairs], transform)
