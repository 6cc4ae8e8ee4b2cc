"""The authors' CIFAR training recipes (configs/cifar100_vit.yaml and cifar100_general.yaml) as plain objects.

The strong recipe is the one the paper uses for CNNs and ViTs alike; the landscape and Hessian modules read its
weight decay and Mixup/CutMix settings, the training module all of it.
"""
from dataclasses import dataclass

from timm.data import Mixup, rand_augment_transform

from helpers import data


@dataclass(frozen=True)
class Recipe:
    name: str
    optimizer: str                     # "adamw" or "sgd"
    lr: float                          # at `batch_size`
    weight_decay: float
    epochs: int
    warmup_epochs: int
    batch_size: int
    scheduler: str                     # "cosine" (to 0 over `epochs`) or "step" (x `gamma` at `milestones`)
    milestones: tuple = ()
    gamma: float = 1.0
    momentum: float = 0.0
    rand_augment: str | None = None    # timm RandAugment spec, applied after the crop and flip
    mixup: float = 0.0                 # Mixup alpha (0: off)
    cutmix: float = 0.0                # CutMix alpha (0: off)
    mix_prob: float = 1.0
    label_smoothing: float = 0.0
    clip_grad: float | None = None     # max gradient norm
    sd: float = 0.0                    # stochastic depth at the last block
    padding: int = 4                   # random crop of the zero-padded image
    eval_batch_size: int = 256

    def train_transform(self, dataset="cifar100", spec=None):
        """Crop and flip, then RandAugment if the recipe has it (PIL images in, normalised tensors out), resized to
        the input size of the model `spec` (a `helpers.models.Spec`) when it is not 32 x 32."""
        if self.rand_augment is None:
            return data.train_transform(dataset, spec=spec)
        # timm's hyper-parameters for RandAugment at this image size: translation and fill from the data mean
        hparams = {"translate_const": int(32 * 0.45), "img_mean": tuple(round(255 * m) for m in data.MEAN[dataset])}
        return data.train_transform(dataset, augment=[rand_augment_transform(self.rand_augment, hparams)], spec=spec)

    def mixup_fn(self, num_classes):
        """timm's batch-wise Mixup/CutMix with label smoothing, or None when the recipe mixes nothing."""
        if not (self.mixup or self.cutmix):
            return None
        return Mixup(mixup_alpha=self.mixup, cutmix_alpha=self.cutmix, prob=self.mix_prob,
                     label_smoothing=self.label_smoothing, num_classes=num_classes)


STRONG = Recipe(
    name="strong", optimizer="adamw", lr=1.25e-4, weight_decay=0.05, epochs=300, warmup_epochs=5, batch_size=96,
    scheduler="cosine", rand_augment="rand-m9-n2-mstd1.0", mixup=1.0, cutmix=0.8, mix_prob=1.0,
    label_smoothing=0.1, clip_grad=5.0, sd=0.1,
)
WEAK = Recipe(
    name="weak", optimizer="sgd", lr=0.1, weight_decay=5e-4, epochs=200, warmup_epochs=1, batch_size=128,
    scheduler="step", milestones=(60, 120, 160), gamma=0.2, momentum=0.9,
)
RECIPES = {recipe.name: recipe for recipe in (STRONG, WEAK)}
