"""Which dimensions of a probe's values hold positions of the model's input (for `helpers.attention`).

They are followed from the model's input (B, C, H, W: H and W hold positions) through every operation of one probe
pass (`helpers.trace`): a reshape carries positions into the dimensions it splits them into or merges them with, a
permute moves them, a linear map or a convolution keeps the kind of the dimension it maps (a token-mixing MLP maps
positions to positions), a reduction removes the dimensions it reduces, and a dimension of size 1 holds none.
`positions(value)` is None where an operation loses track (an index tensor, an unknown change of rank).
"""
import weakref

MATRIX_PRODUCTS = {"matmul", "__matmul__", "__rmatmul__", "bmm", "mm", "baddbmm", "addmm", "linear", "einsum"}
SUMS = {"sum", "mean", "nansum", "nanmean"}
REDUCTIONS = SUMS | {"amax", "amin", "max", "min", "logsumexp", "prod", "std", "var", "norm", "argmax", "argmin",
                     "all", "any", "median", "count_nonzero"}
# the same elements in the same order: positions go where the sizes' products say
REGROUPS = {"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as", "ravel",
            "_unsafe_view"}

_known = weakref.WeakKeyDictionary()  # Value -> its positions


def positions(value):
    """Per dimension of `value`, whether it holds positions of the model's input; None where that is not known."""
    stack = [value]
    while stack:
        current = stack[-1]
        if current in _known:
            stack.pop()
            continue
        if current.op is None or not current.activation:
            _known[current] = tuple(current.activation and d >= 2 and size > 1 for d, size in enumerate(current.shape))
            stack.pop()
            continue
        pending = [v for v in current.op.operands if v.activation and v not in _known]
        if pending:
            stack.extend(pending)
            continue
        stack.pop()
        try:
            flags = propagated(current.op, current)
        except (IndexError, KeyError, TypeError, ValueError):  # arguments in a form not foreseen: track lost
            flags = None
        _known[current] = None if flags is None or len(flags) != len(current.shape) else \
            tuple(bool(f) and size > 1 for f, size in zip(flags, current.shape))
    return _known[value]


def propagated(op, value):
    """The positions of `value`, a result of `op`, from those of its operands (None: not known)."""
    name, (args, kwargs), shape = op.name, op.arguments, value.shape
    if name in MATRIX_PRODUCTS:
        return matrix_product(op, shape)
    first = op.operands[0] if op.operands else None
    known = _known.get(first) if first is not None and first.activation else None
    if known is None:  # the value is made from others than the first operand, or from one of unknown layout
        return broadcast(op.operands, shape)
    flags = list(known)
    if name in REGROUPS:
        return regrouped(first.shape, flags, shape)
    if name in ("permute", "transpose", "swapaxes", "swapdims", "movedim", "moveaxis", "T", "mT", "H", "mH"):
        return moved(name, flags, args, kwargs)
    if name in REDUCTIONS and len(op.operands) == 1:
        reduced = reduced_dims(op, len(flags))
        if len(shape) == len(flags):  # keepdim
            return [f and d not in reduced for d, f in enumerate(flags)]
        return [f for d, f in enumerate(flags) if d not in reduced]
    if name == "unbind":
        dim = arg(args, kwargs, 1, "dim", 0) % len(flags)
        return flags[:dim] + flags[dim + 1:]
    if name == "__getitem__":
        return indexed(flags, args[1] if len(args) > 1 else kwargs.get("idx"))
    if name == "stack":
        dim = arg(args, kwargs, 1, "dim", 0) % len(shape)
        row = broadcast(op.operands, shape[:dim] + shape[dim + 1:])
        return None if row is None else row[:dim] + [False] + row[dim:]
    if name == "unfold" and len(shape) == len(flags) + 1:  # Tensor.unfold(dim, size, step): windows along dim
        return flags + [flags[arg(args, kwargs, 1, "dimension", 0)]]
    if name == "unfold" and len(flags) == 4 and len(shape) == 3:  # F.unfold: channels x window, window positions
        return [flags[0], True, True]
    return broadcast(op.operands, shape)


def broadcast(operands, shape):
    """Elementwise and shape-keeping operations: the activations' positions, aligned from the last dimension."""
    flags = [False] * len(shape)
    for value in operands:
        if not value.activation:
            continue
        known = _known.get(value)
        if known is None or len(known) > len(shape):
            return None
        offset = len(shape) - len(known)
        for d, flag in enumerate(known):
            flags[offset + d] = flags[offset + d] or flag
    return flags


def regrouped(before, flags, after):
    """The positions of a reshape from `before` to `after`: each group of dimensions whose sizes have the same product
    on both sides holds positions when one of its dimensions did."""
    out = [False] * len(after)
    left = [(d, s) for d, s in enumerate(before) if s != 1]
    right = [(d, s) for d, s in enumerate(after) if s != 1]
    i = j = 0
    while i < len(left) and j < len(right):
        ins, outs = [left[i]], [right[j]]
        product_in, product_out = left[i][1], right[j][1]
        i, j = i + 1, j + 1
        while product_in != product_out:
            if product_in < product_out and i < len(left):
                ins.append(left[i])
                product_in *= left[i][1]
                i += 1
            elif product_out < product_in and j < len(right):
                outs.append(right[j])
                product_out *= right[j][1]
                j += 1
            else:
                return None
        for d, _ in outs:
            out[d] = any(flags[d_in] for d_in, _ in ins)
    return out if i == len(left) and j == len(right) else None


def moved(name, flags, args, kwargs):
    """The positions after a permutation of the dimensions."""
    n = len(flags)
    if name in ("T", "H"):
        return flags[::-1]
    if name in ("mT", "mH"):
        return flags[:-2] + [flags[-1], flags[-2]]
    if name == "permute":
        order = args[1:] if len(args) > 1 and isinstance(args[1], int) else arg(args, kwargs, 1, "dims")
        return [flags[d % n] for d in order]
    if name in ("movedim", "moveaxis"):
        source, target = arg(args, kwargs, 1, "source"), arg(args, kwargs, 2, "destination")
        source, target = ([s] if isinstance(s, int) else list(s) for s in (source, target))
        order = [d for d in range(n) if d not in {s % n for s in source}]
        for s, t in sorted(zip((s % n for s in source), (t % n for t in target)), key=lambda pair: pair[1]):
            order.insert(t, s)
        return [flags[d] for d in order]
    first, second = arg(args, kwargs, 1, "dim0") % n, arg(args, kwargs, 2, "dim1") % n
    flags = list(flags)
    flags[first], flags[second] = flags[second], flags[first]
    return flags


def indexed(flags, index):
    """The positions after `x[index]`: an integer drops a dimension, None adds one, a slice keeps it; an index
    tensor loses track."""
    items = list(index) if isinstance(index, tuple) else [index]
    if any(not (item is None or item is Ellipsis or isinstance(item, (int, slice))) for item in items):
        return None
    if Ellipsis in items:
        at = items.index(Ellipsis)
        fill = len(flags) - sum(item is not None for item in items if item is not Ellipsis)
        items = items[:at] + [slice(None)] * fill + items[at + 1:]
    out, d = [], 0
    for item in items:
        if item is None:
            out.append(False)
        elif isinstance(item, slice):
            out.append(flags[d])
            d += 1
        else:
            d += 1
    return out + list(flags[d:])


def reduced_dims(op, ndim):
    """The dimensions a reduction `op` removes (all of them without a `dim`)."""
    args, kwargs = op.arguments
    dim = arg(args, kwargs, 2 if op.name == "norm" else 1, "dim")
    if dim is None or not isinstance(dim, (int, tuple, list)):
        return set(range(ndim))
    return {d % ndim for d in ([dim] if isinstance(dim, int) else dim)}


def arg(args, kwargs, position, name, default=None):
    return args[position] if len(args) > position else kwargs.get(name, default)


# Matrix products: what each factor sums over, and where positions go

def product_factors(op):
    """[(factor, the dimensions of it the product sums over)] of a matrix product."""
    values = op.operands
    if op.name == "einsum":
        terms, output = einsum_terms(op)
        return [(v, [d for d, letter in enumerate(term) if letter not in output]) for v, term in zip(values, terms)]
    if op.name == "linear":
        return [(v, [len(v.shape) - 1]) for v in values[:2]]
    if op.name in ("baddbmm", "addmm"):
        values = values[1:3]
    elif op.name == "__rmatmul__":
        values = values[1::-1]
    if len(values) < 2:
        return []
    a, b = values[:2]
    return [(a, [len(a.shape) - 1]), (b, [max(len(b.shape) - 2, 0)])]


ELLIPSIS = "ABCDEFGHIJKLMNOP"  # letters for the dimensions an ellipsis stands for, aligned from the last


def einsum_terms(op):
    """(the subscripts of each operand, the output's), with any ellipsis spelled out."""
    equation = op.arguments[0][0].replace(" ", "")
    inputs, arrow, output = equation.partition("->")
    terms = []
    for term, value in zip(inputs.split(","), op.operands):
        count = len(value.shape) - len(term.replace("...", ""))
        terms.append(term.replace("...", ELLIPSIS[len(ELLIPSIS) - count:]))
    broadcast_letters = max((c for c in terms), key=lambda t: sum(ch.isupper() for ch in t), default="")
    spelled = "".join(c for c in broadcast_letters if c.isupper())
    if not arrow:  # implicit output: the ellipsis, then the letters used once, in order
        letters = "".join(terms)
        output = spelled + "".join(sorted(c for c in set(letters) if c.islower() and letters.count(c) == 1))
    return terms, output.replace("...", spelled)


def matrix_product(op, shape):
    """The positions of a matrix product's result: batch dimensions from both factors, rows from the first, columns
    from the second; a parameter factor's free dimension keeps the kind of the dimension it sums over."""
    if op.name == "einsum":
        terms, output = einsum_terms(op)
        letters = {}
        for term, value in zip(terms, op.operands):
            known = _known.get(value) if value.activation else (False,) * len(term)
            if known is None:
                return None
            for c, flag in zip(term, known):
                letters[c] = letters.get(c, False) or flag
        return [letters.get(c, False) for c in output]
    factors = product_factors(op)
    if len(factors) < 2:
        return broadcast(op.operands, shape)
    (a, _), (b, _) = factors
    fa = list(_known[a] or ()) if a.activation else [False] * len(a.shape)
    fb = list(_known[b] or ()) if b.activation else [False] * len(b.shape)
    if len(fa) != len(a.shape) or len(fb) != len(b.shape):
        return None
    if op.name == "linear":
        fb = fb[::-1]  # x @ weight^T
    fa = fa if len(fa) > 1 else [False] + fa
    fb = fb if len(fb) > 1 else fb + [False]
    summed = fa[-1] or fb[-2]
    rows = fa[-2] if a.activation else summed
    columns = fb[-1] if b.activation else summed
    depth = max(len(fa), len(fb)) - 2
    batch = [False] * depth
    for flags in (fa[:-2], fb[:-2]):
        for d, flag in enumerate(flags):
            batch[depth - len(flags) + d] = batch[depth - len(flags) + d] or flag
    out = batch + [rows, columns]
    if len(a.shape) == 1:
        out.pop(-2)
    if len(b.shape) == 1:
        out.pop(-1)
    return out
