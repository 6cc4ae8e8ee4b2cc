"""What attends: one rule over a probe pass (`helpers.trace`) that tells attention from every other token mixing.

Attention is token mixing whose weights are computed from the input: a product of two values that both depend on the
input and that contracts over positions. In the operations a model runs, that is

- a matrix product of two activations (`@`, `bmm`, `einsum`, `baddbmm`, a `linear` whose weight is an activation)
  whose summed dimension holds positions: `softmax(q k^T) v` sums over the keys; factorized attention
  `q (softmax(k)^T v)` and linear or kernel attention `phi(q) (phi(k)^T v)` sum over positions in `k^T v`;
  cross-covariance attention in `q^T k`;
- an elementwise product of two activations summed over a dimension of positions along which both vary: the context
  vector of separable attention, the sum over positions of softmax(context scores) * keys;
- one call that is a whole attention: `F.scaled_dot_product_attention`, and `F.multi_head_attention_forward` (what
  `nn.MultiheadAttention` runs; the probe sees it as one operation).

That holds whatever the normalisation (softmax over the queries or the keys, a kernel feature map, none) and whatever
the layout around it (heads, windows, pooled or strided keys, class tokens). It does not hold for a product of a
value with itself or a view of it (a Gram matrix, a variance), for a product with a parameter (a token-mixing MLP,
gMLP's spatial gating unit with its learned token weights, a convolution), for pooling, or for an elementwise product
that sums over no positions: channel gating (squeeze-and-excitation, ECA; split attention and selective kernels sum
their gated branches, not positions).

Which dimensions hold positions is followed from the model's input through every operation (`helpers.positions`);
where an operation loses track of them, a matrix product of two distinct activations counts as attention.
"""
from helpers.positions import MATRIX_PRODUCTS, SUMS, positions, product_factors, reduced_dims
from helpers.trace import ATTENTION_OPS, SHAPE_OPS

ELEMENTWISE_PRODUCTS = {"mul", "__mul__", "__rmul__", "mul_", "__imul__", "multiply"}
ALIASES = SHAPE_OPS - {"__getitem__"}  # a view of the same value (an index picks another one: q and k of one qkv)


def attends(ops) -> bool:
    """Whether the operations `ops` hold an attention (see the module docstring)."""
    for op in ops:
        if op.name in ATTENTION_OPS:
            return True
        if op.name in MATRIX_PRODUCTS and contracts_positions(op):
            return True
        if op.name in SUMS and sums_product_over_positions(op):
            return True
    return False


def contracts_positions(op):
    """Whether the matrix product `op` is one of two distinct activations that sums over positions."""
    factors = [(value, dims) for value, dims in product_factors(op) if value.activation]
    if len(factors) < 2 or len({id(root(value)) for value, _ in factors}) < 2:
        return False
    known = [positions(value) for value, _ in factors]
    if any(flags is None for flags in known):
        return True  # lost track of the layout: a product of two activations is taken for attention
    return any(flags[d] for (_, dims), flags in zip(factors, known) for d in dims)


def sums_product_over_positions(op):
    """Whether the sum `op` reduces, over a dimension of positions, an elementwise product of two distinct activations
    that both vary along it."""
    x = op.operands[0] if op.operands else None
    if x is None or not x.activation or x.op is None or x.op.name not in ELEMENTWISE_PRODUCTS:
        return False
    factors = [v for v in x.op.operands if v.activation]
    flags = positions(x)
    if len(factors) != 2 or root(factors[0]) is root(factors[1]) or flags is None:
        return False
    for d in reduced_dims(op, len(x.shape)):
        varies = all(d - len(x.shape) + len(f.shape) >= 0 and f.shape[d - len(x.shape) + len(f.shape)] == x.shape[d]
                     for f in factors)
        if flags[d] and varies:
            return True
    return False


def root(value):
    """`value` followed back through views of itself (reshapes, transposes)."""
    while value.op is not None and value.op.name in ALIASES:
        inputs = [v for v in value.op.operands if v.activation]
        if len(inputs) != 1:
            break
        value = inputs[0]
    return value
