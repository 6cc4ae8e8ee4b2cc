"""Every benchmark script runs at its tiny size (`--smoke`) and ends with its ratio lines, which `benchmarks/all.py`
collects into its table; no timing value is checked. Each runs under all.py (`--only SCRIPT`), which starts without
importing torch, so all.py is tested at no extra cost. hessian.py's smoke run is in tests/test_hessian.py."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
SCRIPTS = sorted(path.stem for path in BENCHMARKS.glob("*.py") if path.stem not in ("all", "timing", "hessian"))
RATIO = re.compile(r"ratio (?P<name>\S.*): (?P<value>\d+\.\d{3})(?P<goal> \(goal [<>]= \d+(\.\d+)?\))?")


def smoke_run(script):
    """(exit status, the script's own output, all.py's table) of `all.py --smoke --only script`."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(BENCHMARKS / "all.py"), "--smoke", "--only", script], cwd=ROOT,
                          env=environment, capture_output=True, text=True, timeout=300)
    output, _, table = done.stdout.partition("\nbenchmark ")
    return done.returncode, output.split(f"=== {script}.py --smoke\n", 1)[-1], table, done


def ending_ratios(output):
    """The ratio lines `output` ends with (at least one); no ratio line comes before them."""
    lines = output.strip().splitlines()
    ending = len(lines)
    while ending and RATIO.fullmatch(lines[ending - 1]):
        ending -= 1
    assert ending < len(lines), f"no ratio line at the end of:\n{output[-2000:]}"
    assert not any(RATIO.fullmatch(line) for line in lines[:ending]), "a ratio line before the last lines"
    return [RATIO.fullmatch(line) for line in lines[ending:]]


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_runs_at_smoke_size_and_all_tables_its_ratios(script):
    status, output, table, done = smoke_run(script)
    assert status == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ratios = ending_ratios(output)
    for ratio in ratios:  # one row each: benchmark, ratio, value, goal and whether it is met
        goal = ratio["goal"][len(" (goal "):-1] if ratio["goal"] else ""
        row = rf"{script} +{re.escape(ratio['name'])} +{ratio['value']}" + (rf" +{goal} +(yes|no)" if goal else "")
        assert re.search(rf"^{row}$", table, flags=re.M), f"no row for {ratio[0]!r} in\n{table}"
    if script == "features":  # issue 19: timm's ViT and ConvNeXt are among its models
        names = [ratio["name"] for ratio in ratios]
        assert any("deit_tiny" in name for name in names) and any("convnext_atto" in name for name in names)
