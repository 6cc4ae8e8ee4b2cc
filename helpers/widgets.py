"""The layer explorer: a slider over a model's blocks showing, for the selected block, its kind and name, a few
channels of its feature map, its 2-D log-amplitude spectrum, and where it sits on the Fig. 8 (Δ log amplitude
at the highest frequency) and Fig. 9 (feature-map variance) curves.

Everything is computed once, from one forward pass over `images`; moving the slider only redraws. Whether a
widget can be shown is decided where it can be known:
- outside an IPython kernel (a plain script, a terminal IPython) there is no widget front end: `explore`
  draws the current block as one static pyplot figure and returns it;
- inside a kernel, the explorer displays as a bundle holding both the widget and a PNG of the static figure.
  A front end with a widget manager (JupyterLab, Notebook 7, VS Code, Colab) shows the slider; one without
  (a headless nbclient run, GitHub, nbviewer) shows the PNG. The kernel cannot tell these apart itself: nbclient
  runs a real kernel but renders nothing.
"""
import io

import torch
from einops import rearrange
from matplotlib.figure import Figure

from helpers import fourier, plots, variance
from helpers.blocks import Blocks, split

FIGSIZE = (17, 3.6)


class Explorer:
    """Per-block numbers of one forward pass over `images`, and their figure for any block."""

    def __init__(self, blocks, images, *, channels=4, title=""):
        device = next(blocks.parameters()).device
        with torch.no_grad():
            maps = blocks.feature_maps(images.to(device))
        self.blocks, self.layers, self.title = blocks, blocks.layers, title
        self.channels = [normalized_channels(m[0, :channels]).cpu() for m in maps]  # first image: c, h, w
        self.spectra = [fourier.log_amplitude_spectrum(m).cpu() for m in maps]
        self.high_frequency = [fourier.half_diagonal(s)[-1].item() for s in self.spectra]
        self.variances = [variance.feature_map_variance(m).item() for m in maps]
        self.shapes = [tuple(m.shape[1:]) for m in maps]
        self.index = 0
        self._widget = None

    def figure(self, index=None, *, figure=None):
        """The static figure of block `index` (default: the current one), drawn into `figure` or a new one."""
        index = self.index if index is None else index
        fig = figure if figure is not None else Figure(figsize=FIGSIZE)
        axes = fig.subplots(1, 4, gridspec_kw={"width_ratios": [1.3, 1.1, 1.4, 1.4]})
        block = self.layers[index]
        channels, height, width = self.shapes[index]
        fig.suptitle(f"{self.title} block {index}/{len(self.layers) - 1}: {block.kind} {block.name} "
                     f"({channels} x {height} x {width})".strip())
        axes[0].imshow(rearrange(self.channels[index], "c h w -> h (c w)").numpy(), cmap="viridis")  # channels side by side
        axes[0].set_title(f"first {len(self.channels[index])} channels")
        axes[0].set_axis_off()
        plots.spectrum_image(axes[1], self.spectra[index])
        axes[1].set_title("log amplitude spectrum")
        plots.depth_curve(axes[2], self.blocks, self.high_frequency, highlight=index)
        axes[2].set_ylabel(r"$\Delta$ log amplitude (highest freq.)")
        plots.depth_curve(axes[3], self.blocks, self.variances, color="tab:gray", highlight=index)
        axes[3].set_yscale("log")
        axes[3].set_ylabel("Feature map variance")
        fig.tight_layout()
        return fig

    def png(self, index=None):
        buffer = io.BytesIO()
        self.figure(index).savefig(buffer, format="png", dpi=90)
        return buffer.getvalue()

    @property
    def widget(self):
        """The slider and the figure it redraws (built on first use)."""
        if self._widget is None:
            import ipywidgets

            slider = ipywidgets.IntSlider(value=self.index, min=0, max=len(self.layers) - 1, description="block",
                                          continuous_update=False, layout={"width": "60%"})
            image = ipywidgets.Image(value=self.png(), format="png")

            def show(change):
                self.index = change["new"]
                image.value = self.png()

            slider.observe(show, names="value")
            self._widget = ipywidgets.VBox([slider, image])
        return self._widget

    def _repr_mimebundle_(self, **kwargs):
        # The widget view for front ends that render widgets, the static PNG for the others.
        bundle = self.widget._repr_mimebundle_(**kwargs)
        return {**bundle, "image/png": self.png()}


def normalized_channels(x):
    """Each channel of `x` (`C, H, W`) scaled to [0, 1] so that all are visible side by side."""
    low = x.amin(dim=(-2, -1), keepdim=True)
    high = x.amax(dim=(-2, -1), keepdim=True)
    return (x - low) / (high - low).clamp_min(1e-12)


def in_kernel():
    """True inside an IPython kernel (Jupyter, Colab, VS Code, nbclient), where display bundles reach a front end."""
    try:
        import ipywidgets  # noqa: F401
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def explore(model, images, *, channels=4, block=0, title=""):
    """The layer explorer of `model` (a model `split` accepts, or its `Blocks`) on `images` (`B, 3, H, W`).

    In a kernel it returns the `Explorer`, which displays as the slider (or its PNG, see the module docstring);
    elsewhere it returns one static pyplot figure of block `block`.
    """
    import matplotlib.pyplot as plt

    blocks = model if isinstance(model, Blocks) else split(model)
    explorer = Explorer(blocks, images, channels=channels, title=title)
    if not 0 <= block < len(explorer.layers):
        raise ValueError(f"block {block} is not one of the {len(explorer.layers)} non-head blocks.")
    explorer.index = block
    if in_kernel():
        return explorer
    return explorer.figure(figure=plt.figure(figsize=FIGSIZE))
