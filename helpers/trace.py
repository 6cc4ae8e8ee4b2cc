"""One probe forward pass that records what a model computes, for the rules in `helpers.anatomy` (what is a residual
branch), `helpers.attention` (what attends) and `helpers.landscape` (which parameters are position embeddings).

`probe(model, x)` runs `model(x)` once in eval mode with a forward pre-hook and hook on every module and a
`TorchFunctionMode` that sees every tensor operation, and returns a `Trace`:

- the module calls as a tree (`Call`: the module, its name, which call of that module it is within the forward
  pass, its input and output values, its child calls and its own operations, in call order);
- the data flow between them: every tensor is a `Value` (a new one after an in-place operation) made by an `Op`
  from its operand values, so that "the output of this call is an ancestor of that add's operand" can be asked.

A value is an activation when it depends on the model's input; parameters, buffers and what is computed from them
alone (position tables, masks) are not. Nothing is kept after the probe but this record of one small batch.
"""
import itertools
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

# Operations that only move or rescale a value: a zero stays a zero through them (a residual branch's output may
# pass through them on its way to the add), and they change no spatial mixing.
SHAPE_OPS = {"view", "reshape", "permute", "transpose", "flatten", "unflatten", "contiguous", "squeeze", "unsqueeze",
             "__getitem__", "expand", "view_as", "reshape_as", "movedim", "clone", "to", "type_as", "float",
             "T", "mT", "H", "mH", "data"}
SCALE_OPS = {"mul", "__mul__", "__rmul__", "mul_", "div", "__truediv__", "div_"}
ADD_OPS = {"add", "__add__", "__radd__", "add_", "__iadd__"}
PRODUCT_OPS = {"matmul", "__matmul__", "__rmatmul__", "bmm", "mm", "einsum", "baddbmm"}
# Tensor properties that are operations (`k.mT`): recorded under their own names; other properties are not operations
PROPERTIES = {"T", "mT", "H", "mH", "data"}
# One call that is a whole attention (its internals are not seen): `nn.MultiheadAttention`'s and PyTorch's fused ones
ATTENTION_OPS = {"scaled_dot_product_attention", "multi_head_attention_forward", "_native_multi_head_attention"}


@dataclass(eq=False, repr=False)
class Value:
    """One tensor state: `op` made it (None: an input, parameter or buffer), `activation`: it depends on the input."""
    shape: tuple
    activation: bool
    op: "Op | None" = None
    parameter: str | None = None  # the parameter's (or buffer's) name, for those
    order: int = 0                 # when it was made (operation counter)

    def __repr__(self):
        return f"Value({self.shape}, {self.op.name if self.op else self.parameter or 'input'})"


@dataclass(eq=False, repr=False)
class Op:
    name: str
    operands: list
    results: list
    call: "Call"
    order: int
    module_weight: bool = False   # a convolution/linear kernel from a parameter (a "weight layer")
    spatial: bool = False         # mixes neighbouring positions: a convolution wider than 1, a pooling window
    arguments: tuple = ((), {})   # the call's (args, kwargs), for the dimensions an operation works on

    def __repr__(self):
        return f"Op({self.name} in {self.call})"


@dataclass(eq=False, repr=False)
class Call:
    """One call of a module in the probe's forward pass."""
    module: nn.Module
    name: str
    index: int                       # this is the index-th call of `module` in the forward pass
    parent: "Call | None"
    inputs: list = field(default_factory=list)    # Values of the tensors among its arguments, in order
    outputs: list = field(default_factory=list)   # Values of the tensors it returned, in order
    children: list = field(default_factory=list)  # Calls, in call order
    ops: list = field(default_factory=list)       # Ops made directly in its own code, in order
    start: int = 0
    end: int = 0

    @property
    def input(self):
        return next((v for v in self.inputs if v.activation), self.inputs[0] if self.inputs else None)

    @property
    def output(self):
        return self.outputs[0] if self.outputs else None

    def walk(self):
        yield self
        for child in self.children:
            yield from child.walk()

    def __repr__(self):
        return f"Call({self.name or '<model>'}#{self.index})"


def tensors_in(obj):
    """The tensors in a nest of tuples, lists and dicts, in order."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for item in obj for t in tensors_in(item)]
    if isinstance(obj, dict):
        return [t for item in obj.values() for t in tensors_in(item)]
    return []


class Trace(TorchFunctionMode):
    """The record of one forward pass (see the module docstring); build it with `probe`."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.values = {}   # id(tensor) -> its current Value
        self.keep = []     # the tensors seen, kept alive so that no id is reused during the probe
        self.counter = itertools.count(1)
        self.stack = []
        self.root = None
        self.calls_of = {}  # module -> number of calls so far
        for name, tensor in itertools.chain(model.named_parameters(), model.named_buffers()):
            self.value(tensor, parameter=name)

    def value(self, tensor, *, parameter=None, activation=False):
        known = self.values.get(id(tensor))
        if known is None:
            known = Value(tuple(tensor.shape), activation, parameter=parameter, order=next(self.counter))
            self.values[id(tensor)] = known
            self.keep.append(tensor)
        return known

    # module calls

    def enter(self, module, name, args, kwargs):
        index = self.calls_of.get(module, 0)
        self.calls_of[module] = index + 1
        parent = self.stack[-1] if self.stack else None
        call = Call(module, name, index, parent, start=next(self.counter))
        call.inputs = [self.value(t) for t in tensors_in((args, kwargs))]
        (parent.children if parent else [None]).append(call)
        self.root = self.root or call
        self.stack.append(call)

    def leave(self, module, output):
        call = self.stack.pop()
        call.outputs = [self.value(t) for t in tensors_in(output)]
        call.end = next(self.counter)

    # tensor operations

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if name == "__get__":  # a property: `k.mT` is a transpose, `x.shape` no operation
            name = getattr(getattr(func, "__self__", None), "__name__", "")
            name = name if name in PROPERTIES else "__get__"
        if name in ("__get__", "__set__") or not self.stack:
            return result
        results = tensors_in(result)
        if not results:
            return result
        operands = [self.value(t) for t in tensors_in((args, kwargs))]
        op = Op(name, operands, [], self.stack[-1], next(self.counter), arguments=(args, kwargs))
        activation = any(v.activation for v in operands)
        inputs = {id(t) for t in tensors_in((args, kwargs))}
        for tensor in results:
            if id(tensor) in inputs and id(tensor) in self.values:  # in place: a new state of the same tensor
                del self.values[id(tensor)]
            value = self.value(tensor, activation=activation)
            if value.op is None and value.parameter is None:
                value.op, value.activation, value.order = op, activation, op.order
            op.results.append(value)
        op.module_weight, op.spatial = weight_and_spatial(name, args, kwargs, operands)
        self.stack[-1].ops.append(op)
        return result


def weight_and_spatial(name, args, kwargs, operands):
    """(whether `name` applies a parameter kernel, whether it mixes neighbouring positions)."""
    weighted = any(v.parameter is not None and len(v.shape) >= 2 for v in operands)
    if name.startswith("conv"):
        weight = args[1] if len(args) > 1 else kwargs.get("weight")
        spatial = weight is not None and any(k > 1 for k in weight.shape[2:])
        return weighted, spatial
    if "pool" in name:
        if name.startswith("adaptive"):
            return False, False  # to a fixed size: global pooling in a head, never a local window
        kernel = args[1] if len(args) > 1 else kwargs.get("kernel_size")
        return False, kernel not in (None, 1, (1, 1))
    if name in ("linear", "addmm") or name in PRODUCT_OPS or name in ATTENTION_OPS:
        return weighted, False
    return False, False


def probe(model, x):
    """The `Trace` of `model(x)` in eval mode, without gradients; the model is left as it was."""
    from helpers.common import evaluating

    names = {module: name for name, module in model.named_modules()}
    trace = Trace(model)
    handles = []
    for module, name in names.items():
        handles.append(module.register_forward_pre_hook(
            lambda m, args, kwargs, name=name: trace.enter(m, name, args, kwargs), with_kwargs=True))
        handles.append(module.register_forward_hook(lambda m, args, output: trace.leave(m, output)))
    trace.value(x, activation=True)
    try:
        with evaluating(model), torch.no_grad(), trace:
            trace.output = model(x)
    finally:
        for handle in handles:
            handle.remove()
    return trace


# Questions about the data flow

def ancestors(value, *, since=0):
    """Every value that `value` was computed from (itself included), made at or after the counter `since`."""
    seen, stack = {id(value): value}, [value]
    while stack:
        current = stack.pop()
        if current.op is None or current.order < since:
            continue
        for operand in current.op.operands:
            if id(operand) not in seen and operand.order >= since:
                seen[id(operand)] = operand
                stack.append(operand)
    return seen


def ops_between(value, stop, *, since=0):
    """The operations that made `value` from values made at or after `since`, not counting those that made any
    value of `stop` (a dict of values by id, e.g. another value's `ancestors`)."""
    ops, seen, stack = {}, set(), [value]
    while stack:
        current = stack.pop()
        if id(current) in seen or id(current) in stop or current.op is None or current.order < since:
            continue
        seen.add(id(current))
        ops[id(current.op)] = current.op
        stack.extend(current.op.operands)
    return list(ops.values())


def position_parameters(trace):
    """The names of the parameters that are position tables: they reach the activations only by being added to them
    (after any computation of their own: an index into a bias table, an MLP of coordinates), and are a table, indexed
    on the way or of three or more dimensions (a position embedding). A class token joined by concatenation, or a
    bias added as it is, is not one."""
    consumers = {}
    for call in trace.root.walk():
        for op in call.ops:
            for operand in op.operands:
                consumers.setdefault(id(operand), []).append(op)
    found = set()
    for name, parameter in trace.model.named_parameters():
        start = trace.values.get(id(parameter))
        if start is None or parameter.ndim < 2:
            continue
        frontier, seen, contacts, indexed = [start], {id(start)}, [], False
        while frontier:
            for op in consumers.get(id(frontier.pop()), []):
                if any(v.activation for v in op.results):
                    contacts.append(op.name)
                    continue
                indexed |= op.name in ("__getitem__", "index_select", "gather", "take")
                for result in op.results:
                    if id(result) not in seen:
                        seen.add(id(result))
                        frontier.append(result)
        if contacts and all(c in ADD_OPS for c in contacts) and (indexed or parameter.ndim >= 3):
            found.add(name)
    return found
