"""Models as their authors built them: torchvision's and Hugging Face's, and files of your own, each at its own input
size, decided once and carried by the sized spec (never patched onto the model); and every mistake in a
specification answered in one or two lines that say what to do."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from helpers import data, models
from helpers.blocks import split

ROOT = Path(__file__).resolve().parents[1]
FILES = {
    # a model that runs at 64 x 64 only (its head reads a 16 x 16 map), and says so on the instance it returns
    "sixty_four.py": '''
        import torch.nn as nn


        class Residual(nn.Module):
            def __init__(self, width):
                super().__init__()
                self.branch = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())

            def forward(self, x):
                return x + self.branch(x)


        def build(num_classes):
            net = nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), Residual(8), Residual(8), nn.Flatten(),
                                nn.Linear(8 * 16 * 16, num_classes))
            net.input_size = (3, 64, 64)
            return net


        def undeclared(num_classes):
            return nn.Sequential(*list(build(num_classes)))  # the same network, with no input_size


        class Answer(nn.Module):
            """A classifier whose forward returns what Hugging Face's or a research codebase's does."""
            def __init__(self, num_classes, kind):
                super().__init__()
                self.kind = kind
                self.net = nn.Sequential(nn.Conv2d(3, 8, 3), Residual(8), Residual(8), nn.AdaptiveAvgPool2d(1),
                                         nn.Flatten(), nn.Linear(8, num_classes))

            def forward(self, x):
                logits = self.net(x)
                return {"logits": logits, "features": x} if self.kind == "dict" else (logits, x.mean())


        def as_dict(num_classes):
            return Answer(num_classes, "dict")


        def as_tuple(num_classes):
            return Answer(num_classes, "tuple")


        def plain(num_classes):
            """No residual branch anywhere: nothing a lesion can remove."""
            return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(8, num_classes))
    ''',
    # a file that imports a module beside it, as a research codebase does
    "uses_sibling.py": '''
        from sibling_layers import head


        def build(num_classes):
            return head(num_classes)
    ''',
    "sibling_layers.py": '''
        import torch.nn as nn


        def head(num_classes):
            return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))
    ''',
    "missing_import.py": '''
        import no_such_package_for_vits


        def build(num_classes):
            return None
    ''',
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("yours")
    for name, source in FILES.items():
        (folder / name).write_text(textwrap.dedent(source))
    return folder


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory):
    """A Hugging Face ViT saved with save_pretrained (10 labels, 32 x 32 images, 2 layers)."""
    from transformers import ViTConfig, ViTForImageClassification

    folder = tmp_path_factory.mktemp("hf_vit")
    config = ViTConfig(image_size=32, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, num_labels=10)
    torch.manual_seed(0)
    ViTForImageClassification(config).save_pretrained(folder)
    return folder


def run(args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


# The input size: decided once, in the documented order, carried by the sized spec

def test_the_size_comes_from_the_specification_then_keywords_then_the_model_then_the_figure(folder):
    sixty_four = f"{folder / 'sixty_four.py'}"
    cases = [  # (specification, size, where it comes from)
        ("resnet_18@48", (3, 48, 48), "the specification's @48"),
        (f"{sixty_four}:build@96x64", (3, 96, 64), "the specification's @96x64"),
        ("timm:deit_tiny_patch16_224(img_size=48)", (3, 48, 48), "its keyword img_size=48"),
        ("torchvision.models:vit_b_16(image_size=64)", (3, 64, 64), "its keyword image_size=64"),
        (f"{sixty_four}:build", (3, 64, 64), "the model's input_size attribute"),
        ("torchvision.models:vit_b_16", (3, 224, 224), "its image_size attribute"),
        ("timm:resnet18", (3, 224, 224), "timm's pretrained_cfg"),
        ("vit_ti", (3, 32, 32), "its patch embedding's img_size"),
        ("torchvision.models:resnet18", (3, 32, 32), "the figure's default, CIFAR's 32 x 32"),
    ]
    for text, size, origin in cases:
        spec = models.resolve(text)
        model = spec.builder(num_classes=10, **dict(spec.keywords))  # the model its builder returns, unchecked
        sized = spec.sized(model)
        assert (sized.input_size, sized.size_origin) == (size, origin), text
        assert spec.input_size is None and not hasattr(model, "spec")  # nothing patched, the parsed spec unchanged


def test_a_builder_may_declare_the_size_and_a_split_or_the_data_read_it_from_the_sized_spec(folder, monkeypatch):
    spec = models.resolve(f"{folder / 'sixty_four.py'}:undeclared")
    monkeypatch.setattr(spec.builder, "input_size", (3, 64, 64), raising=False)
    assert spec.sized(spec.build()).size_origin == "its builder's input_size attribute"
    spec = models.resolve(f"{folder / 'sixty_four.py'}:build")
    blocks = split(spec.build(), spec)
    assert blocks.spec.input_size == (3, 64, 64) and blocks.kinds == ["embed", "conv", "conv", "head"]
    images, _ = data.test_images(blocks.spec, 4, smoke=True).tensors
    assert images.shape == (4, 3, 64, 64)
    with pytest.raises(ValueError, match="no input size yet.*spec.sized"):
        data.test_images(spec, 4, smoke=True)  # an unsized spec never falls back to 32 x 32 unseen


def test_the_describing_command_prints_the_blocks_the_size_and_the_stage_that_collapses(capsys):
    assert models.main(["torchvision.models:resnet18"]) == 0
    out = capsys.readouterr().out
    assert "torchvision.models:resnet18's layer4 has 1 x 1 maps, read as part of the head" in out
    assert "give it a larger input: torchvision.models:resnet18@64." in out
    assert "input 3 x 32 x 32 (the figure's default, CIFAR's 32 x 32)" in out
    assert models.main(["torchvision.models:resnet18@64"]) == 0
    out = capsys.readouterr().out
    assert "Note" not in out and "input 3 x 64 x 64 (the specification's @64)" in out
    assert "  8  conv  512 x 2 x 2       yes        layer4.1" in out and "blocks: embed 1, conv 8, head 1" in out


def test_a_token_grid_under_four_by_four_is_said_with_the_keyword_that_avoids_it(capsys):
    spec = models.resolve("torchvision.models.vision_transformer:VisionTransformer(image_size=32, patch_size=16, "
                          "num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)")
    blocks = split(spec.build().eval(), spec)
    out = capsys.readouterr().out
    assert blocks.kinds.count("msa") == 2
    assert "tokens lie on a 2 x 2 grid" in out and "VisionTransformer(image_size=64, patch_size=16" in out


# Models that return more than logits

@pytest.mark.parametrize("function, note", [("as_dict", "the logits of"), ("as_tuple", "the first item (the logits)")])
def test_a_forward_that_returns_a_dict_or_a_tuple_gives_its_logits_with_a_note(folder, function, note, capsys):
    spec = models.resolve(f"{folder / 'sixty_four.py'}:{function}")
    model = spec.build(7).eval()
    assert note in capsys.readouterr().out
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
        assert torch.equal(logits, model.net(x)) and logits.shape == (2, 7)
        assert torch.equal(split(model, spec)(x), logits)


def test_a_hugging_face_classifier_gets_the_figures_classes_and_returns_its_logits(tiny_vit, capsys):
    spec = models.resolve(f"hf:{tiny_vit}")
    model = spec.build(100).eval()
    out = capsys.readouterr().out
    assert "has a new classifier for the figure's 100 classes (its own has 10)" in out
    assert "the logits of" in out and "ImageClassifierOutput" in out
    blocks = split(model, spec)
    assert blocks.spec.size_origin == "its Hugging Face config's image_size"
    assert blocks.kinds == ["embed", "msa", "mlp", "msa", "mlp", "head"]
    with torch.no_grad():
        assert blocks(torch.randn(2, 3, 32, 32)).shape == (2, 100)


# One or two lines that say what to do

@pytest.mark.parametrize("text, message", [
    ("torchvision.models:resnt18", "torchvision.models has no function 'resnt18'; did you mean resnet18"),
    ("torchvision.models:resnet18(num_classes=100)", "the figure sets num_classes (100 for CIFAR-100); drop it"),
    ("{folder}/missing_import.py:build", "imports 'no_such_package_for_vits', which is neither installed nor beside"),
    ("{folder}/sixty_four.py:undeclared", "does not run on a batch of 2 inputs of 3 x 32 x 32 (the figure's default"),
    ("torchvision.models:vit_b_16@32", "Give its input size in the specification, e.g. torchvision.models:vit_b_16@"),
    ("torchvision.models:vit_b_16(image_size=30)", "could not be built: AssertionError"),
    ("hf:{folder}/no_such_model", "no Hugging Face model"),
    ("resnet_18@0", "the size after @ must be positive"),
])
def test_each_mistake_is_one_or_two_lines_that_say_what_to_do(folder, text, message, capsys):
    assert models.main([text.format(folder=folder)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err.replace("\n", " ") and len(err.strip().splitlines()) <= 2
    assert "Traceback" not in err


def test_transformers_missing_is_said_with_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now raises ImportError
    assert models.main(["hf:google/vit-base-patch16-224-missing-transformers"]) == 1
    assert "need the transformers package: pip install transformers" in capsys.readouterr().err


def test_a_file_finds_the_modules_beside_it(folder):
    net = models.create(f"{folder / 'uses_sibling.py'}:build", num_classes=3)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_a_figures_command_line_answers_in_one_line_and_says_when_nothing_can_be_removed(folder, monkeypatch, capsys):
    from helpers import lesion

    done = run(["-m", "helpers.lesion", "--smoke", "--models", "sixty_four.py:undeclared", "--results", "r"], folder)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("error: sixty_four.py:undeclared does not run on a batch of 2 inputs of 3 x 32 x 32")
    monkeypatch.chdir(folder)
    with pytest.raises(SystemExit):  # a specification is checked where the config is made: a usage error
        lesion.main(["--smoke", "--models", "torchvision.models:resnt18"])
    assert "did you mean resnet18" in capsys.readouterr().err
    assert lesion.main(["--smoke", "--models", "sixty_four.py:plain", "--results", "r"]) == 0
    out = capsys.readouterr().out
    assert "has no removable block (none is a residual branch)" in out and "1 of 1 units" in out


def test_models_you_did_not_write_run_a_figure_at_their_own_size(folder, tiny_vit):
    """The Fourier notebook, smoke: a file model that declares 64 x 64 on its instance, torchvision's ViT-B/16 at the
    size its specification gives, and a Hugging Face ViT saved to a folder, its attention found."""
    specs = ["sixty_four.py:build", "torchvision.models:vit_b_16@224", f"hf:{tiny_vit}"]
    done = run(["-m", "helpers.run", str(ROOT / "fourier_analysis.ipynb"), "-p", "smoke=True", "-p", f"models={specs}",
                "-p", "results='results'", "-p", "batch_size=2"], folder)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    import pandas as pd

    table = pd.read_csv(folder / "results" / "fourier_relative_log_amplitude.csv")
    sizes = table.groupby("model")["size"].max()  # the largest map of each model, at the size it ran at
    assert sizes.to_dict() == {specs[0]: 16, specs[1]: 14, specs[2]: 8}
    kinds = table.drop_duplicates(["model", "block"]).groupby("model")["kind"].apply(list)
    assert kinds[specs[1]].count("msa") == 12 and kinds[specs[2]].count("msa") == 2
