"""Run a notebook headless with parameters: `python -m helpers.run NOTEBOOK [-p key=value ...]`.

The overrides go in a new cell right after the cell tagged `parameters` (papermill's convention, so the
notebook's defaults stay visible above them). Values are Python literals (`-p smoke=True -p models="['vit_ti']"`);
anything that is not a literal is taken as a string (`-p model=vit_ti`); a parameter whose default is True or
False takes only True or False (any case). The kernel runs in the folder the command was started from, so
relative paths in parameters mean what they mean on the command line. The executed copy, outputs and full
tracebacks included, is written beside the notebook's results (the `results` parameter, or the default results
folder; `-o` to choose). A failing run ends with a few lines naming the cell and the error.
"""
import argparse
import ast
import re
import sys
import tempfile
from pathlib import Path

import nbformat
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from helpers.experiment import results_folder

ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def parse_value(text):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_parameters(pairs):
    parameters = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise SystemExit(f"Parameter {pair!r} is not of the form key=value (key a Python name).")
        parameters[key] = parse_value(value)
    return parameters


def defaults(notebook):
    """(index of the `parameters` cell, {name: default value or None when not a literal})."""
    index = next((i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])), None)
    if index is None:
        raise SystemExit("The notebook has no cell tagged 'parameters'.")
    values = {}
    for node in ast.parse(notebook.cells[index].source).body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    try:
                        values[target.id] = ast.literal_eval(node.value)
                    except ValueError:
                        values[target.id] = None
    return index, values


def checked(parameters, known):
    """`parameters` with flags made strict: a parameter whose default is a bool takes True or False, any case."""
    unknown = sorted(set(parameters) - set(known))
    if unknown:
        raise SystemExit(f"Unknown parameter(s) {', '.join(unknown)}; the notebook takes: {', '.join(sorted(known))}.")
    result = dict(parameters)
    for key, value in parameters.items():
        if isinstance(known[key], bool) and not isinstance(value, bool):
            if str(value).lower() not in ("true", "false"):
                raise SystemExit(f"Parameter {key}={value!r} must be True or False.")
            result[key] = str(value).lower() == "true"
    return result


def inject(notebook, parameters):
    """Insert a cell assigning `parameters` after the `parameters` cell; unknown keys and non-boolean flags are
    errors. Returns the notebook and the parameters as injected."""
    index, known = defaults(notebook)
    parameters = checked(parameters, known)
    source = "# Parameters given on the command line\n" + "".join(f"{k} = {v!r}\n" for k, v in parameters.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    notebook.cells.insert(index + 1, cell)
    return notebook, parameters


def executed_path(path, parameters, output=None):
    """Where the executed copy goes: `output`, else the notebook's results folder (its `results` parameter,
    relative to the working folder, or the default results folder)."""
    folder = Path(output) if output is not None else results_folder(parameters.get("results"))
    return folder / Path(path).name


def strip_colours(notebook):
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if "traceback" in output:
                output["traceback"] = [ANSI.sub("", line) for line in output["traceback"]]
            if "text" in output:
                output["text"] = ANSI.sub("", output["text"])


def run(path, parameters=None, output=None, timeout=None):
    """Execute the notebook at `path` in the working folder; write the executed copy (see `executed_path`) and
    return its path. Raises CellExecutionError, after writing the copy, when a cell fails."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"No notebook at {path}.")
    notebook, parameters = inject(nbformat.read(path, as_version=4), parameters or {})
    executed = executed_path(path, parameters, output)
    executed.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vits-kernel-") as sockets:
        # IPC sockets in a private folder: the kernel is local, so nothing goes over TCP (and the kernel has no
        # unencrypted-TCP warning to give)
        manager = KernelManager(kernel_name="python3", transport="ipc", ip=str(Path(sockets) / "kernel"))
        client = NotebookClient(notebook, km=manager, timeout=timeout, extra_arguments=["--colors=nocolor"],
                                resources={"metadata": {"path": str(Path.cwd())}})
        try:
            client.execute()
        finally:  # keep the partial run: its outputs show where it failed
            if manager.has_kernel:  # a kernel manager given to nbclient is ours to stop
                manager.shutdown_kernel(now=True)
            strip_colours(notebook)
            nbformat.write(notebook, executed)
    return executed


def failure(notebook_path, executed):
    """A few lines on the first failing cell of the executed copy: which cell, the error, where the copy is."""
    notebook = nbformat.read(executed, as_version=4)
    for cell in notebook.cells:
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        if errors:
            first_line = next((line for line in cell.source.splitlines() if line.strip()), "")
            message = ANSI.sub("", str(errors[0].get("evalue", ""))).strip()
            if len(message) > 1200:
                message = message[:1200] + " ..."
            return (f"{notebook_path} failed in cell In [{cell.get('execution_count')}]: {first_line}\n"
                    f"{errors[0].get('ename')}: {message}\n"
                    f"The executed copy, with the full traceback, is {executed}")
    return f"{notebook_path} failed; the executed copy is {executed}"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m helpers.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebook")
    parser.add_argument("-p", "--parameter", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("-o", "--output", default=None, help="folder for the executed notebook (default: its results)")
    parser.add_argument("--timeout", type=int, default=None, help="seconds per cell (default: none)")
    args = parser.parse_args(argv)
    parameters = parse_parameters(args.parameter)
    try:
        executed = run(args.notebook, parameters, args.output, args.timeout)
    except CellExecutionError:
        notebook = nbformat.read(args.notebook, as_version=4)
        print(failure(args.notebook, executed_path(args.notebook, checked(parameters, defaults(notebook)[1]),
                                                   args.output)), file=sys.stderr)
        return 1
    print(f"Executed {args.notebook} -> {executed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
