"""helpers.data against fake CIFAR archives in the real format, served from a loopback HTTP server."""
import hashlib
import re

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import datasets, transforms

from fakes import CIFAR_LAYOUT, cifar_archive
from http_server import refusing, serve

from helpers import data

# The authors' configs, typed again so the module's constants are checked rather than reused.
AUTHORS = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
           "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))}

LAYOUT = CIFAR_LAYOUT
IMAGES_PER_FILE = 12


def write_archive(folder, name):
    return cifar_archive(folder, name, IMAGES_PER_FILE)


@pytest.fixture(scope="module", params=["cifar10", "cifar100"])
def mirror(request, tmp_path_factory):
    """(name, folder holding the archive, expected images and labels by split)."""
    folder = tmp_path_factory.mktemp(request.param)
    return request.param, folder, write_archive(folder, request.param)


def archive_url(base, name):
    return f"{base}/{LAYOUT[name][0]}"


@pytest.mark.parametrize("train", [True, False])
def test_download_gives_back_the_images_and_labels(mirror, tmp_path, train):
    name, folder, expected = mirror
    images, labels = expected[train]
    with serve(folder) as base:
        split = data.dataset(name, tmp_path, train=train, transform=transforms.ToTensor(),
                             url=archive_url(base, name))
    assert len(split) == len(labels)
    assert split.targets == labels
    assert split.classes == [f"class_{i}" for i in range(data.NUM_CLASSES[name])]
    for i in range(len(split)):
        image, label = split[i]
        assert label == labels[i]
        assert torch.equal(image, torch.from_numpy(images[i]).float() / 255)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(LAYOUT[name][:2])


def test_test_transform_is_the_authors_normalisation(mirror, tmp_path):
    name, folder, expected = mirror
    images, _ = expected[False]
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in AUTHORS[name])
    with serve(folder) as base:
        split = data.dataset(name, tmp_path, train=False, transform=data.test_transform(name),
                             url=archive_url(base, name))
    for i in range(len(split)):
        by_hand = (torch.from_numpy(images[i]).double() / 255 - mean) / std
        torch.testing.assert_close(split[i][0], by_hand.float())


def test_existing_files_are_used_without_the_network(mirror, tmp_path):
    name, folder, _ = mirror
    with serve(folder) as base:
        data.dataset(name, tmp_path, url=archive_url(base, name))
    with refusing() as base:
        assert len(data.dataset(name, tmp_path, train=False, url=archive_url(base, name))) == IMAGES_PER_FILE


def test_an_archive_put_by_hand_is_extracted_without_download(mirror, tmp_path):
    name, folder, expected = mirror
    archive = LAYOUT[name][0]
    (tmp_path / archive).write_bytes((folder / archive).read_bytes())
    with refusing() as base:
        split = data.dataset(name, tmp_path, train=False, download=False, url=archive_url(base, name))
    assert split.targets == expected[False][1]


def test_the_official_checksum_rejects_a_fake_archive(mirror, tmp_path):
    name, folder, _ = mirror
    archive = LAYOUT[name][0]
    (tmp_path / archive).write_bytes((folder / archive).read_bytes())
    with pytest.raises(RuntimeError, match="download=False"):
        data.dataset(name, tmp_path, download=False)


def md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_the_official_path_checks_the_md5s(mirror, tmp_path, monkeypatch):
    """Without `url`, the reader's own URL and MD5s apply: give it the fake's to run that path offline."""
    name, folder, expected = mirror
    archive, base_folder, files, meta, _, _ = LAYOUT[name]
    official = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}[name]
    sums = {file: md5(folder / base_folder / file) for file in [*files, meta]}
    monkeypatch.setattr(official, "train_list", [[file, sums[file]] for file, train in files.items() if train])
    monkeypatch.setattr(official, "test_list", [[file, sums[file]] for file, train in files.items() if not train])
    monkeypatch.setattr(official, "meta", {**official.meta, "md5": sums[meta]})
    monkeypatch.setattr(official, "tgz_md5", "0" * 32)
    with serve(folder) as base:
        monkeypatch.setattr(official, "url", archive_url(base, name))
        with pytest.raises(RuntimeError, match="corrupted"):
            data.dataset(name, tmp_path)
        assert list(tmp_path.iterdir()) == []
        monkeypatch.setattr(official, "tgz_md5", md5(folder / archive))
        assert data.dataset(name, tmp_path, train=False).targets == expected[False][1]
    # A damaged file fails its MD5 and is extracted again from the archive, without the network.
    test_file = next(file for file, train in files.items() if not train)
    (tmp_path / base_folder / test_file).write_bytes(b"damaged")
    assert data.dataset(name, tmp_path, train=False, download=False).targets == expected[False][1]


def offline_message(name, root, url):
    title = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}[name]
    return re.escape(f"{title} is not in {root}/ and could not be downloaded from {url} (") + ".*" + re.escape(
        f"). Download the archive by hand and put it in {root}/ as {LAYOUT[name][0]}")


def test_offline_error_names_the_url_and_the_folder(mirror, tmp_path):
    name, _, _ = mirror
    root, empty = tmp_path / "data", tmp_path / "empty"
    empty.mkdir()
    with refusing() as base:
        url = archive_url(base, name)
        with pytest.raises(RuntimeError, match=offline_message(name, root, url)):
            data.dataset(name, root, url=url)
    with serve(empty) as base:  # answers 404
        url = archive_url(base, name)
        with pytest.raises(RuntimeError, match=offline_message(name, root, url)):
            data.dataset(name, root, url=url)
    official = {"cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"}[name]
    with pytest.raises(RuntimeError, match=offline_message(name, root, official)):
        data.dataset(name, root, download=False)
    assert list(root.iterdir()) == []


def test_an_interrupted_download_leaves_no_archive(mirror, tmp_path):
    name, folder, _ = mirror
    archive = LAYOUT[name][0]
    with serve(folder, truncate=(folder / archive).stat().st_size // 2) as base:
        with pytest.raises(RuntimeError, match="interrupted after"):
            data.dataset(name, tmp_path, url=archive_url(base, name))
    assert list(tmp_path.iterdir()) == []


def test_train_transform_crops_the_padded_image_and_flips():
    image = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
    candidates = [crop[:, ::-1] if flip else crop for top in range(9) for left in range(9)
                  for crop in [padded[top:top + 32, left:left + 32]] for flip in (False, True)]
    seen_pil = []
    augment = [transforms.Lambda(lambda im: seen_pil.append(isinstance(im, Image.Image)) or im)]
    transform = data.train_transform("cifar100", augment=augment)
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in AUTHORS["cifar100"])
    torch.manual_seed(0)
    for _ in range(20):
        output = transform(Image.fromarray(image))
        pixels = ((output * std + mean) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        assert any(np.array_equal(pixels, candidate) for candidate in candidates)
    assert seen_pil == [True] * 20


def test_synthetic_is_normalised_random_images_of_the_real_shape():
    images, labels = data.synthetic(16, "cifar10", seed=3).tensors
    assert images.shape == (16, 3, 32, 32) and images.dtype == torch.float32
    assert labels.shape == (16,) and 0 <= labels.min() and labels.max() < 10
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in AUTHORS["cifar10"])
    pixels = (images * std + mean) * 255
    torch.testing.assert_close(pixels, pixels.round(), atol=1e-3, rtol=0)
    assert torch.equal(images, data.synthetic(16, "cifar10", seed=3).tensors[0])
    assert not torch.equal(images, data.synthetic(16, "cifar10", seed=4).tensors[0])


def test_loader_batches_the_dataset():
    batches = list(data.loader(data.synthetic(10), batch_size=4, workers=0))
    assert [len(labels) for _, labels in batches] == [4, 4, 2]
    assert batches[0][0].shape == (4, 3, 32, 32)
