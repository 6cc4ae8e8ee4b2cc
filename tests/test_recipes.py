import torch

from helpers.recipes import STRONG, WEAK


def test_strong_recipe_is_the_authors_cifar100_vit_config():
    assert (STRONG.optimizer, STRONG.lr, STRONG.batch_size, STRONG.weight_decay) == ("adamw", 1.25e-4, 96, 0.05)
    assert (STRONG.epochs, STRONG.warmup_epochs, STRONG.clip_grad, STRONG.sd) == (300, 5, 5.0, 0.1)
    assert (STRONG.mixup, STRONG.cutmix, STRONG.label_smoothing) == (1.0, 0.8, 0.1)
    assert (WEAK.optimizer, WEAK.lr, WEAK.milestones, WEAK.gamma, WEAK.weight_decay) == ("sgd", 0.1, (60, 120, 160), 0.2, 5e-4)


def test_mixup_gives_smoothed_soft_targets():
    images, labels = torch.randn(6, 3, 32, 32), torch.arange(6)
    mixed, targets = STRONG.mixup_fn(100)(images, labels)
    assert mixed.shape == images.shape and targets.shape == (6, 100)
    assert torch.allclose(targets.sum(1), torch.ones(6))
    assert targets.min() >= 0.1 / 100 - 1e-6  # label smoothing leaves mass on every class
    assert WEAK.mixup_fn(100) is None


def test_train_transforms_give_normalised_tensors():
    from PIL import Image
    image = Image.new("RGB", (32, 32), (128, 64, 32))
    assert STRONG.train_transform()(image).shape == (3, 32, 32)
    assert "RandAugment" in repr(STRONG.train_transform()) and "RandAugment" not in repr(WEAK.train_transform())
