"""The rule that finds a model's blocks in one probe forward pass (`helpers.trace`); see `helpers.blocks`.

`units(trace)` walks the module calls from the model down and returns its units in order: residual blocks (each
branch of a chain of residual branches is one), and the modules that are not residual and have no sequence of
children (a convolution, a norm, a dense block). `groups(units)` joins the units that are not residual blocks into
layers: a unit with weights starts one, the norms, activations and poolings after it join it. `helpers.blocks`
turns the groups into `Block`s (kinds, layouts, embed and head).
"""
from dataclasses import dataclass, field

import torch.nn as nn

from helpers.attention import attends
from helpers.trace import ADD_OPS, SCALE_OPS, SHAPE_OPS, ancestors, ops_between


@dataclass(eq=False, repr=False)
class Unit:
    """A residual block (`branch_end` set) or a module call that is not one (`call`), with what the rule needs."""
    name: str
    call: object                 # the trace's Call of the module
    site: tuple                  # (module name, call index, "input" | "output"): where its output is read
    value: object                # the trace Value read there
    ops: list                    # the operations that decide its kind: its branch's, or all of the module's
    branch_end: object = None    # the Call whose output is the residual branch's, for a residual block
    members: list = None         # the calls a unit of several spans, for its name
    weighted: bool = False
    attending: bool = False
    spatial: bool = False

    @property
    def residual(self):
        return self.branch_end is not None

    @property
    def names(self):
        """The modules it is made of."""
        if not self.members:
            return [self.name]
        weighted = [c.name for c in self.members if any(op.module_weight for op in window_ops(c))]
        return weighted or [c.name for c in self.members]


@dataclass(eq=False, repr=False)
class Group:
    """Consecutive units read as one block: its site is its last unit's."""
    units: list = field(default_factory=list)

    @property
    def site(self):
        return self.units[-1].site

    @property
    def value(self):
        return self.units[-1].value

    @property
    def residual(self):
        return len(self.units) == 1 and self.units[0].residual

    @property
    def ops(self):
        return [op for unit in self.units for op in unit.ops]


def described(unit):
    unit.weighted = any(op.module_weight for op in unit.ops)
    unit.attending = attends(unit.ops)
    unit.spatial = any(op.spatial for op in unit.ops)
    return unit


def window_ops(call):
    return [op for c in call.walk() for op in c.ops]


def leaf(call):
    return described(Unit(call.name, call, (call.name, call.index, "output"), call.output, window_ops(call)))


# Residual branches

@dataclass(eq=False, repr=False)
class Merge:
    op: object
    branch: object     # the branch's value at the add
    shortcut: object   # the other operand
    end: object        # the child call whose output is the branch's


def passive_root(call, value):
    """`value` followed back through reshapes and scalings by non-activations made in `call`'s own code."""
    while value.op is not None and value.op.call is call and (value.op.name in SHAPE_OPS | SCALE_OPS):
        inputs = [v for v in value.op.operands if v.activation]
        if len(inputs) != 1:
            break
        value = inputs[0]
    return value


def branch_end(call, value, before):
    """The last child call of `call` (finished before the counter `before`) whose output `value` is, passively."""
    root = passive_root(call, value)
    ends = [c for c in call.children if c.end < before and any(v is root for v in c.outputs)]
    return ends[-1] if ends else None


def weights_of(value, other, since):
    """(weight layers, other computing operations) that made `value` and not `other`: the branch has more."""
    ops = ops_between(value, ancestors(other, since=since), since=since)
    return sum(op.module_weight for op in ops), sum(op.name not in SHAPE_OPS for op in ops)


def merges(call):
    """Every add in `call`'s own code of two activations where one is a child's output carrying more weights than
    the other (the branch and its shortcut); None when some add of two activations is not such a merge."""
    found = []
    for op in call.ops:
        operands = [v for v in op.operands if v.activation]
        if op.name not in ADD_OPS or len(operands) != 2:
            continue
        first, second = operands
        weights = weights_of(first, second, call.start), weights_of(second, first, call.start)
        branch, shortcut = (first, second) if weights[0] > weights[1] else (second, first)
        end = branch_end(call, branch, op.order) if weights[0] != weights[1] else None
        if end is None:
            return None
        found.append(Merge(op, branch, shortcut, end))
    return found


def chain(call):
    """The merges of `call` when they are one chain (each branch computed from the sum before it), else []."""
    if not hasattr(call, "chain"):
        call.chain = one_chain(call)
    return call.chain


def one_chain(call):
    found = merges(call) or []
    for previous, merge in zip(found, found[1:]):
        result = previous.op.results[0]
        if passive_root(call, merge.shortcut) is not result or id(result) not in ancestors(merge.branch,
                                                                                           since=call.start):
            return []
    return found


def is_cut(call, values):
    """Whether every path from `call`'s inputs to its outputs passes through one of `values` (a child's outputs)."""
    stop = {id(v) for v in values}
    stack, seen = [v for v in call.outputs if v.activation], set()
    while stack:
        current = stack.pop()
        if id(current) in stop or id(current) in seen or not current.activation:
            continue
        seen.add(id(current))
        if current.order < call.start or current.op is None:
            return False  # reached the input side another way
        stack.extend(current.op.operands)
    return True


def cut_children(call):
    return [child for child in call.children if any(v.activation for v in child.outputs)
            and is_cut(call, [v for v in child.outputs if v.activation])]


def residual_units(call, found):
    """The units of a residual `call` whose merges are `found`: its weighted children before the first fork and
    after the last merge that the stream passes through on their own, then one unit per branch."""
    cuts = cut_children(call)
    before = [c for c in cuts if c.end < found[0].op.order and id(c.output) in ancestors(found[0].shortcut)]
    after = [c for c in cuts if c.start > found[-1].op.order]
    before = [c for c in before if weighty(c)]
    after = [c for c in after if weighty(c)]
    units = [u for c in before for u in segment(c)]
    halves = []
    for k, merge in enumerate(found):
        exclusive = ops_between(merge.branch, ancestors(merge.shortcut, since=call.start), since=call.start)
        if k + 1 < len(found):
            read = [(c, v) for c in call.children if c.start > merge.op.order for v in c.inputs[:1]
                    if passive_root(call, v) is merge.op.results[0]]
            if not read:
                return None
            (reader, value), = read[:1]
            site = (reader.name, reader.index, "input")
        elif after:
            site, value = (after[0].name, after[0].index, "input"), after[0].input
        else:
            site, value = (call.name, call.index, "output"), call.output
        start = found[k - 1].op.order if k else (before[-1].end if before else call.start)
        main = max((c for c in call.children if start < c.start and c.end < merge.op.order),
                   key=lambda c: (sum(op.module_weight for op in window_ops(c)),
                                  sum(op.name not in SHAPE_OPS for op in window_ops(c))))
        name = call.name if len(found) == 1 else main.name
        halves.append(described(Unit(name, call, site, value, exclusive, branch_end=merge.end)))
    return units + halves + [u for c in after for u in segment(c)]


def weighty(call):
    return any(op.module_weight for op in window_ops(call)) or bool(chain(call))


def segment(call):
    """The units of `call`, in order (see the module docstring)."""
    found = chain(call)
    if found:
        units = residual_units(call, found)
        if units is not None:
            return units
    cuts = cut_children(call)
    if not cuts:
        return [leaf(call)]
    listing = type(call.module) is nn.Sequential  # its modules are the model's units: not split in layers
    units, aside = [], []
    for child in call.children:
        if child not in cuts:  # off the stream (a side branch, a class-attention block): joins the next cut;
            if child.output is not None and child.output.activation:  # a position encoding is no activation
                aside.append(child)
            continue
        if any(weighty(c) for c in aside):
            units.append(span(call, aside + [child]))
        elif listing and not holds_residual(child):
            units.append(leaf(child))
        else:
            units += segment(child)
        aside = []
    return units


def holds_residual(call):
    return any(chain(c) for c in call.walk())


def span(parent, calls):
    """One unit of consecutive child calls of `parent`, with what `parent` computes between them (an attention's
    product and softmax), read at the last one's output."""
    first, last = calls[0], calls[-1]
    own = [op for op in parent.ops if first.start <= op.order <= last.end]
    return described(Unit(last.name, last, (last.name, last.index, "output"), last.output,
                          [op for call in calls for op in window_ops(call)] + own, members=calls))


def units(trace):
    return segment(trace.root)


def groups(units, is_map):
    """Units joined into layers: a residual or attending unit alone; a weighted unit starts a group that the
    following units without weights join, except a pooling window after the first group, which is a layer of its
    own; units without weights before any weighted unit, or after the map has ended (`is_map(value)` false: global
    pooling), wait for the next one."""
    found, current, waiting = [], None, []
    for unit in units:
        if unit.residual or unit.attending:
            found += [Group(waiting)] if waiting else []
            found.append(Group([unit]))
            current, waiting = None, []
        elif unit.weighted or (unit.spatial and found and current is not found[0]):
            current = Group(waiting + [unit])
            found.append(current)
            waiting = []
        elif current is not None and is_map(unit.value):
            current.units.append(unit)
        else:
            current = None
            waiting.append(unit)
    return found + ([Group(waiting)] if waiting else [])
