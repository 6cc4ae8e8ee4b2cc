"""helpers.widgets: the static figure outside a kernel, the widget+PNG bundle inside one, features computed once."""
import matplotlib

matplotlib.use("Agg")
import IPython  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

from helpers import widgets  # noqa: E402
from helpers.blocks import Blocks, split  # noqa: E402

PNG = b"\x89PNG"


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = VisionTransformer(img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2, num_classes=3).eval()
    return model, torch.randn(2, 3, 16, 16)


def test_outside_a_kernel_it_draws_one_static_figure(tiny):
    model, images = tiny
    assert not widgets.in_kernel()  # pytest runs no IPython kernel
    fig = widgets.explore(model, images, block=1)
    assert isinstance(fig, Figure)
    assert "block 1/4: msa blocks.0.attn (16 x 4 x 4)" in fig._suptitle.get_text()
    assert len(fig.axes) >= 4 and fig.axes[0].images  # channels, spectrum, Fig. 8, Fig. 9 (+ a colorbar)
    with pytest.raises(ValueError, match="not one of the 5 non-head blocks"):
        widgets.explore(model, images, block=5)


def test_in_a_kernel_it_offers_the_widget_and_a_png(tiny, monkeypatch):
    model, images = tiny
    monkeypatch.setattr(IPython, "get_ipython", lambda: type("Shell", (), {"kernel": object()})())
    assert widgets.in_kernel()
    explorer = widgets.explore(split(model), images)
    bundle = explorer._repr_mimebundle_()
    assert "model_id" in bundle["application/vnd.jupyter.widget-view+json"]
    assert bundle["image/png"].startswith(PNG)


def test_slider_redraws_without_another_forward_pass(tiny, monkeypatch):
    model, images = tiny
    explorer = widgets.Explorer(split(model), images, channels=2)
    passes = []
    monkeypatch.setattr(Blocks, "feature_maps", lambda self, x: passes.append(x))
    slider, image = explorer.widget.children
    first = image.value
    slider.value = 3
    assert explorer.index == 3 and bytes(image.value) != bytes(first) and bytes(image.value).startswith(PNG)
    assert not passes
    assert [c.shape for c in explorer.channels] == [(2, 4, 4)] * 5
    assert all(0 <= c.min() and c.max() <= 1 for c in explorer.channels)
