"""One model specification everywhere a model is named: registry names, timm architectures (with keywords, or a
pretrained tag), your own file or module; each bad specification has its own clear error."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import timm
import torch

from helpers import checkpoints, lesion, models
from helpers.blocks import split
from helpers.experiment import pair_parser

ROOT = Path(__file__).resolve().parents[1]
MY_NET = '''
import torch.nn as nn


def build(num_classes, width=8):
    """Two residual conv blocks and a head: a researcher's own CIFAR network."""
    return Net(num_classes, width)


class Residual(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.branch = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())

    def forward(self, x):
        return x + self.branch(x)


class Net(nn.Module):
    def __init__(self, num_classes, width):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.Sequential(Residual(width), nn.MaxPool2d(2), Residual(width))
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


def flat(num_classes):
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())  # not (batch, classes)
'''


@pytest.fixture
def my_net(tmp_path):
    path = tmp_path / "my_net.py"
    path.write_text(MY_NET)
    return path


def test_a_registry_name_resolves_to_its_entry_and_the_cifar_input():
    spec = models.resolve("vit_ti")
    assert spec.entry is models.REGISTRY["vit_ti"] and spec.input_size is None and not spec.imagenet
    model = spec.build()
    assert models.resolve(spec) is spec and not hasattr(model, "spec")  # nothing is patched onto a model
    assert spec.sized(model).input_size == (3, 32, 32) and spec.sized(model) == spec.sized(model)


def test_a_timm_architecture_takes_keywords_and_the_figure_classes():
    spec = models.resolve("timm:deit_tiny_patch16_224(img_size=32, patch_size=4)")
    assert spec.keywords == (("img_size", 32), ("patch_size", 4))
    net = spec.build(10).eval()
    assert spec.sized(net).input_size == (3, 32, 32) and spec.sized(net).size_origin == "its keyword img_size=32"
    assert net.patch_embed.num_patches == 64 and net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert spec.slug != models.resolve("timm:deit_tiny_patch16_224").slug  # other keywords, other tables


def test_a_pretrained_tag_takes_timms_data_config_and_its_classes():
    name = "convnext_atto." + timm.models.get_pretrained_cfg("convnext_atto").tag
    spec = models.resolve("timm:" + name)
    config = timm.models.get_pretrained_cfg(name)
    assert spec.imagenet and spec.classes == config.num_classes == 1000
    net = spec.build(fresh=True)  # the classes its weights fix, whatever the figure's
    assert net.num_classes == 1000 and spec.sized(net).input_size == config.input_size
    assert spec.mean == config.mean and spec.std == config.std


def test_your_own_file_and_module_build_with_the_figure_classes(my_net, monkeypatch):
    net = models.create(f"{my_net}:build(width=4)", num_classes=7)
    assert net.head.out_features == 7 and net.head.in_features == 4
    monkeypatch.syspath_prepend(str(my_net.parent))
    spec = models.resolve("my_net:build")
    assert spec.source == "code" and spec.build().head.out_features == 100
    blocks = split(spec.build().eval())
    assert blocks.kinds == ["embed", "conv", "pool", "conv", "head"] and sum(b.removable for b in blocks) == 2


def test_a_file_runs_once_per_version_however_often_it_is_named(tmp_path):
    log, path = tmp_path / "runs.txt", tmp_path / "counted.py"
    source = f"open({str(log)!r}, 'a').write('ran\\n')\n" + MY_NET
    path.write_text(source)
    first, again = models.resolve(f"{path}:build"), models.resolve(f"{path}:build(width=4)")
    assert log.read_text().count("ran") == 1 and type(first.build()) is type(again.build())
    path.write_text(source + "\n# edited\n")
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10 ** 9))  # a later version
    models.resolve(f"{path}:build")
    assert log.read_text().count("ran") == 2


@pytest.mark.parametrize("text, message", [
    ("timm:convnext_attto", "timm has no model 'convnext_attto'; close: convnext_atto"),
    ("timm:convnext_atto.no_such_tag", "no pretrained weights 'convnext_atto.no_such_tag'"),
    ("vit_tiny", "vit_ti"),  # a registry name mistyped: the names there are
    ("no_such_package_xyz:build", "no module named 'no_such_package_xyz'"),
    ("timm:resnet18(depth)", "name=value pairs"),
])
def test_each_bad_specification_says_what_is_wrong(text, message):
    with pytest.raises(models.SpecificationError, match=message.replace("(", r"\(").replace(".", r"\.")):
        models.resolve(text)


def test_a_file_without_the_function_or_without_the_file_or_with_other_outputs(my_net, tmp_path):
    with pytest.raises(models.SpecificationError, match="has no function 'make'; it defines: build, Residual, Net, flat"):
        models.resolve(f"{my_net}:make")
    with pytest.raises(models.SpecificationError, match="there is no file"):
        models.resolve(f"{tmp_path / 'missing.py'}:build")
    with pytest.raises(models.SpecificationError, match=r"returns \(2, 3600\).*\(batch, classes\) = \(2, 100\)"):
        models.create(f"{my_net}:flat")
    with pytest.raises(models.SpecificationError, match="unexpected keyword argument 'img_size'; give only keywords"):
        models.create("timm:convnext_atto(img_size=32)")  # a ConvNeXt takes any size, and no such keyword


def test_a_checkpoint_of_another_architecture_names_the_first_mismatched_keys(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18", num_classes=100).state_dict(), path)
    with pytest.raises(checkpoints.CheckpointError, match=r"does not fit timm:convnext_atto.*\n  missing: stem\.0"):
        checkpoints.load_file(path, "timm:convnext_atto")
    loaded = checkpoints.load_file(path, "timm:resnet18")  # the right architecture loads
    assert not hasattr(loaded, "spec")


def test_a_checkpoint_may_be_named_by_a_specification_with_keywords():
    parse = pair_parser(str)
    assert parse("timm:vit_tiny_patch16_224(img_size=32, patch_size=4)=v.pth") == \
        ("timm:vit_tiny_patch16_224(img_size=32, patch_size=4)", "v.pth")
    assert parse("a.py:f=dir(1)/x.pth") == ("a.py:f", "dir(1)/x.pth")


def test_imagenet_weights_are_refused_where_a_figure_needs_cifar_classes(tmp_path):
    config = lesion.Config(smoke=True, models=["timm:convnext_atto.d2_in1k"], results=str(tmp_path))
    with pytest.raises(ValueError, match="classifies ImageNet"):
        lesion.run(config, progress=False)


def run(args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_a_file_of_yours_runs_through_a_figures_command_line_and_notebook(my_net, tmp_path):
    """From the folder the file is in, as a user would: the lesion command line, then the variance notebook."""
    done = run(["-m", "helpers.lesion", "--smoke", "--models", "my_net.py:build", "--results", "results"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "3 of 3 units finished" in done.stdout  # intact and its two residual blocks
    notebook = run(["-m", "helpers.run", str(ROOT / "featuremap_variance.ipynb"), "-p", "smoke=True",
                    "-p", "models=['my_net.py:build(width=4)', 'resnet_18']", "-p", "results='results'"], tmp_path)
    assert notebook.returncode == 0, notebook.stdout[-3000:] + notebook.stderr[-3000:]
    table = tmp_path / "results" / "featuremap_variance.csv"
    rows = table.read_text().splitlines()
    assert sum("my_net.py:build(width=4)" in row for row in rows) == 4  # embed, conv, pool, conv
    assert json.loads((tmp_path / "results" / "featuremap_variance.json").read_text())["run"] == "smoke"
