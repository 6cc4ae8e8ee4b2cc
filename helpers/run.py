"""Run a notebook headless with parameters: `python -m helpers.run NOTEBOOK [-p key=value ...]`.

The overrides go in a new cell right after the cell tagged `parameters` (papermill's convention, so the
notebook's defaults stay visible above them); the executed copy is written to `results/` beside the figures
and tables the notebook saves there. Values are Python literals (`-p smoke=True -p models="['vit_ti']"`);
anything that is not a literal is taken as a string (`-p model=vit_ti`).
"""
import argparse
import ast
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError


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


def inject(notebook, parameters):
    """Insert a cell assigning `parameters` after the `parameters` cell; unknown keys are an error."""
    index = next((i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])), None)
    if index is None:
        raise SystemExit("The notebook has no cell tagged 'parameters'.")
    known = {target.id for node in ast.parse(notebook.cells[index].source).body if isinstance(node, ast.Assign)
             for target in node.targets if isinstance(target, ast.Name)}
    unknown = sorted(set(parameters) - known)
    if unknown:
        raise SystemExit(f"Unknown parameter(s) {', '.join(unknown)}; the notebook takes: {', '.join(sorted(known))}.")
    source = "# Parameters given on the command line\n" + "".join(f"{k} = {v!r}\n" for k, v in parameters.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    notebook.cells.insert(index + 1, cell)
    return notebook


def run(path, parameters=None, output="results", timeout=None):
    """Execute the notebook at `path` in its own folder; write the executed copy into `output`; return its path."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"No notebook at {path}.")
    notebook = inject(nbformat.read(path, as_version=4), parameters or {})
    executed = Path(output) / path.name
    executed.parent.mkdir(parents=True, exist_ok=True)
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.resolve().parent)}})
    try:
        client.execute()
    finally:  # keep the partial run: its outputs show where it failed
        nbformat.write(notebook, executed)
    return executed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebook")
    parser.add_argument("-p", "--parameter", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("-o", "--output", default="results", help="folder for the executed notebook")
    parser.add_argument("--timeout", type=int, default=None, help="seconds per cell (default: none)")
    args = parser.parse_args(argv)
    try:
        executed = run(args.notebook, parse_parameters(args.parameter), args.output, args.timeout)
    except CellExecutionError as error:
        print(f"{args.notebook} failed; the executed copy is in {args.output}/.\n{error}", file=sys.stderr)
        return 1
    print(f"Executed {args.notebook} -> {executed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
