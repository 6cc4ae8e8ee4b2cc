"""helpers.published: the authors' real grids (tests/fixtures/authors_grids, byte for byte theirs) read through a
mirror folder and a server, as a user behind a firewall would; and every other file refused, whichever way it comes."""
import shutil
from pathlib import Path

import pandas as pd
import pytest
from http_server import serve

from helpers import claims, models, published

GRIDS = Path(__file__).resolve().parent / "fixtures" / "authors_grids"
FILES = {name: models.entry(name).grid[0] for name in published.MODELS}


def test_the_authors_grids_from_a_mirror_folder_give_fig_1a_with_the_diverged_points_said(tmp_path):
    tables = {f"{name} (authors)": published.grid(name, tmp_path / "data", mirror=str(GRIDS)) for name in FILES}
    for name, table in tables.items():
        assert len(table) == 441 and list(table.columns) == [*published.COLUMNS[:5], "loss", "Acc", "msa", "run"]
    assert tables["vit_ti (authors)"].msa.all() and not tables["resnet_50 (authors)"].msa.any()  # by the rule
    centre = tables["resnet_50 (authors)"].query("x == 0 and y == 0").iloc[0]
    assert centre.loss == pytest.approx(2.1941113 + 0.05 * 1534.2000732)  # NLL + wd x L2
    landscapes = pd.concat(tables, names=["model"]).reset_index(level=0)
    verdicts = claims.landscape(landscapes, run="unverified")  # the figure's own grids may rest on a mirror's files
    mean = verdicts[verdicts.statistic.str.startswith("mean")].iloc[0]
    assert mean.holds is True and mean.models == "vit_ti (authors) vs resnet_50 (authors)" and mean.n == 160
    assert mean.value == pytest.approx(15.0977, abs=1e-4) and "resnet_50 (authors) inf" in mean.comparison
    assert "resnet_50 (authors): 24 of 80 edge points infinite (the loss diverged)" in mean.comparison
    assert verdicts.holds.tolist() == [True, True] and verdicts.run.tolist() == ["official"] * 2  # theirs are theirs
    again = published.grid("vit_ti", tmp_path / "data", mirror=str(tmp_path / "nowhere"))  # the verified copy kept
    pd.testing.assert_frame_equal(again, tables["vit_ti (authors)"])


def test_a_server_delivers_the_authors_files(tmp_path):
    with serve(GRIDS) as base:
        table = published.grid("vit_ti", tmp_path, url=f"{base}/{FILES['vit_ti']}")
    assert len(table) == 441 and (tmp_path / "authors" / FILES["vit_ti"]).read_bytes() == (
        GRIDS / FILES["vit_ti"]).read_bytes()


def altered(folder, name, change):
    """A copy of the authors' file of `name` in `folder`, its lines passed through `change`."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = (GRIDS / FILES[name]).read_text().splitlines(keepends=True)
    (folder / FILES[name]).write_text("".join(change(lines)))
    return folder


def centre_l1(lines, value="130782.5"):
    return [",".join(line.split(",")[:2] + [value] + line.split(",")[3:]) if line.startswith("0.0,0.0,") else line
            for line in lines]


@pytest.mark.parametrize("change, said", [
    (lambda lines: lines[:9], "it holds 9 points, not 441"),
    (centre_l1, "its centre's l1/l2 are 130782.5/769.49933, the registry's 130782.34/769.4993"),
    (lambda lines: [lines[0].replace(",0.0,0.9,", ",0.0,0.8,", 1)] + lines[1:], "its SHA-256 is "),
    (lambda lines: ["x,y,loss\n", "0,0,1\n"], "is not one of the authors' grids: expected 19 numeric columns"),
])
def test_any_other_file_is_refused_in_one_line_and_not_kept(tmp_path, change, said):
    mirror = altered(tmp_path / "mirror", "vit_ti", change)
    with pytest.raises(ValueError) as refused:
        published.grid("vit_ti", tmp_path / "data", mirror=str(mirror))
    message = str(refused.value)
    assert said in message and "\n" not in message and FILES["vit_ti"] in message
    assert not list((tmp_path / "data").rglob("*.csv")) and not list((tmp_path / "data").rglob("*.part"))


def test_a_cached_copy_is_checked_by_its_digest_at_every_read(tmp_path):
    cache = tmp_path / "data" / "authors"
    altered(cache, "resnet_50", lambda lines: lines[:-1] + [lines[-1].replace("1.0,1.0,", "1.0,1.0000001,", 1)])
    with pytest.raises(ValueError, match=r"delete it to download it again\) is not the authors' grid of resnet_50: its "
                                         r"SHA-256 is [0-9a-f]{64}, the registry's 395072b6"):
        published.grid("resnet_50", tmp_path / "data", mirror=str(GRIDS))
    shutil.copy(GRIDS / FILES["resnet_50"], cache)  # the authors' own bytes pass
    assert len(published.grid("resnet_50", tmp_path / "data")) == 441


def test_only_the_models_the_authors_published():
    with pytest.raises(ValueError, match="resnet_50, vit_ti only, not 'swin_ti'"):
        published.grid("swin_ti")
