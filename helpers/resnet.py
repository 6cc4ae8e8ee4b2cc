"""The authors' CIFAR ResNet: post-activation basic/bottleneck blocks, a 3x3 stem without max-pool, GAP + linear.

Module and attribute names follow the original implementation, because the official checkpoint's keys
(`layer0.0.weight`, `layer1.0.conv1.0.weight`, `classifier.0.dense.weight`, ...) are derived from them.
"""
import torch.nn as nn
from timm.layers import DropPath


def conv_bn(in_channels, out_channels, kernel_size=3, stride=1, groups=1, relu=True):
    layers = [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2,
                  groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
    ]
    return nn.Sequential(*layers, nn.ReLU()) if relu else nn.Sequential(*layers)


def shortcut(in_channels, out_channels, stride):
    """1x1 projection where the shape changes, identity (an empty Sequential, as in the original) otherwise."""
    if stride == 1 and in_channels == out_channels:
        return nn.Sequential()
    return conv_bn(in_channels, out_channels, kernel_size=1, stride=stride, relu=False)


# BasicBlock and Bottleneck repeat each other's shape on purpose: each mirrors the original class whose attribute
# names (`shortcut`, `conv1`, ..., `sd`) are the official checkpoint's keys, so they are not folded into one.

class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_channels, channels, stride=1, sd=0.0):
        super().__init__()
        out_channels = channels * self.expansion
        self.shortcut = shortcut(in_channels, out_channels, stride)
        self.conv1 = conv_bn(in_channels, channels, stride=stride)
        self.conv2 = conv_bn(channels, out_channels, relu=False)
        self.relu = nn.ReLU()
        self.sd = DropPath(sd) if sd > 0.0 else nn.Identity()

    def forward(self, x):
        return self.relu(self.sd(self.conv2(self.conv1(x))) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels, channels, stride=1, sd=0.0):
        super().__init__()
        out_channels = channels * self.expansion
        self.shortcut = shortcut(in_channels, out_channels, stride)
        self.conv1 = conv_bn(in_channels, channels, kernel_size=1)
        self.conv2 = conv_bn(channels, channels, stride=stride)
        self.conv3 = conv_bn(channels, out_channels, kernel_size=1, relu=False)
        self.relu = nn.ReLU()
        self.sd = DropPath(sd) if sd > 0.0 else nn.Identity()

    def forward(self, x):
        return self.relu(self.sd(self.conv3(self.conv2(self.conv1(x)))) + self.shortcut(x))


class GAPClassifier(nn.Module):
    """Global average pooling and a linear layer (the original's `GAPBlock`, hence `dense`)."""

    def __init__(self, in_features, num_classes):
        super().__init__()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.dense = nn.Linear(in_features, num_classes)

    def forward(self, x):
        return self.dense(self.gap(x).flatten(1))  # B, C, 1, 1 -> B, C -> B, classes


def stochastic_depths(num_blocks, sd):
    """Drop-path rates rising linearly from 0 at the first block to `sd` at the last, over the whole network."""
    return [sd * i / max(num_blocks - 1, 1) for i in range(num_blocks)]


class ResNet(nn.Module):

    def __init__(self, block, num_blocks, num_classes=100, stem=False, sd=0.0):
        super().__init__()
        if stem:  # the ImageNet stem: 7x7 stride-2 conv and max-pool
            self.layer0 = nn.Sequential(*conv_bn(3, 64, kernel_size=7, stride=2),
                                        nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        else:  # CIFAR: one 3x3 conv, full resolution
            self.layer0 = conv_bn(3, 64)
        channels, rates = 64, iter(stochastic_depths(sum(num_blocks), sd))
        for stage, (width, n) in enumerate(zip((64, 128, 256, 512), num_blocks)):
            blocks = []
            for i in range(n):
                stride = 2 if i == 0 and stage > 0 else 1
                blocks.append(block(channels, width, stride=stride, sd=next(rates)))
                channels = width * block.expansion
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
        self.classifier = nn.Sequential(GAPClassifier(channels, num_classes))

    def forward(self, x):
        for layer in (self.layer0, self.layer1, self.layer2, self.layer3, self.layer4, self.classifier):
            x = layer(x)
        return x


def resnet_18(**kw):
    return ResNet(BasicBlock, (2, 2, 2, 2), **kw)


def resnet_34(**kw):
    return ResNet(BasicBlock, (3, 4, 6, 3), **kw)


def resnet_50(**kw):
    return ResNet(Bottleneck, (3, 4, 6, 3), **kw)


def resnet_101(**kw):
    return ResNet(Bottleneck, (3, 4, 23, 3), **kw)


def resnet_152(**kw):
    return ResNet(Bottleneck, (3, 8, 36, 3), **kw)
