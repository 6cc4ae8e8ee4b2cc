"""Every benchmark of this folder, then one table of the ratios they measured against their baselines.

Each script runs in a process of its own, `python benchmarks/NAME.py [--device D] [--threads N] [--smoke]`, with
its output shown as it comes; the lines it ends with, `ratio NAME: VALUE (goal <= 1.1)` (`timing.print_ratio`), are
collected. The table gives each ratio with the goal its script states and whether it is met; a script that fails or
prints no ratio line is listed below it, and makes this exit with status 1.

    python benchmarks/all.py                                 # real sizes on the CPU: hessian.py alone takes hours
    python benchmarks/all.py --device cuda
    python benchmarks/all.py --smoke                         # every script at its tiny size: a minute or two
    python benchmarks/all.py --only features lesion
"""
import argparse
import operator
import os
import re
import subprocess
import sys
import time
from pathlib import Path

# what timing.print_ratio writes; read here without importing timing (torch, timm), so this starts at once
# (and hessian.py's "ratio B / ours on the figure's workload: 2.7x (goal >= 2.5)", ">2.7x" a lower bound, "missing")
RATIO_LINE = re.compile(r"ratio (?P<name>.+?): (?P<value>>?[0-9.]+|inf|nan|missing)x?"
                        r"(?: \(goal (?P<goal>[<>]= [0-9.]+)\))?(?: .*)?")
HERE = Path(__file__).resolve().parent
SCRIPTS = sorted(path.stem for path in HERE.glob("*.py") if path.stem not in ("all", "timing"))
GOALS = {"<=": operator.le, ">=": operator.ge}


def run(script, options):
    """(exit status, seconds, ratio lines as dicts) of one benchmark, its output echoed line by line."""
    root = str(HERE.parent)  # the helpers beside this folder, whatever is installed
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    print(f"\n=== {script}.py {' '.join(options)}", flush=True)
    start, ratios = time.perf_counter(), []
    with subprocess.Popen([sys.executable, str(HERE / f"{script}.py"), *options], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=env, cwd=root) as process:
        for line in process.stdout:
            print(line, end="", flush=True)
            match = RATIO_LINE.fullmatch(line.strip())
            if match:
                ratios.append(match.groupdict())
    return process.returncode, time.perf_counter() - start, ratios


def met(value, goal):
    """"yes" or "no" for a goal such as "<= 1.05"; "" without one, "not run" for a missing baseline. A value ">2.7"
    is a lower bound."""
    if not goal or value == "missing":
        return "not run" if value == "missing" else ""
    comparison, bound = goal.split()
    return "yes" if GOALS[comparison](float(value.lstrip(">")), float(bound)) else "no"


def table(results):
    """The ratios of every script as lines of text, then a line per script that failed or printed none."""
    rows = [(script, ratio["name"], ratio["value"], ratio["goal"] or "", met(ratio["value"], ratio["goal"]))
            for script, (_, _, ratios) in results.items() for ratio in ratios]
    header = ("benchmark", "ratio", "value", "goal", "met")
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(f"{cell:<{width}}" for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "-" * len(lines[0]))
    for script, (status, seconds, ratios) in results.items():
        if status or not ratios:
            lines.append(f"{script}: " + (f"failed (exit status {status})" if status else "printed no ratio line")
                         + f" after {seconds:.0f} s")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=SCRIPTS, default=SCRIPTS, help="these benchmarks only")
    parser.add_argument("--device", help="passed on (each script's default: CUDA, then MPS, then CPU)")
    parser.add_argument("--threads", type=int, help="passed on (each script's default: 1 CPU thread)")
    parser.add_argument("--smoke", action="store_true", help="each at its tiny size: checks that they run")
    args = parser.parse_args()
    options = ([f"--device={args.device}"] if args.device else []) + (
        [f"--threads={args.threads}"] if args.threads is not None else []) + (["--smoke"] if args.smoke else [])
    results = {script: run(script, options) for script in args.only}
    print("\n" + "\n".join(table(results)))
    if args.smoke:
        print("(--smoke: tiny sizes that only check the scripts run; their ratios measure nothing)")
    return 1 if any(status or not ratios for status, _, ratios in results.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
