"""Lanczos with full reorthogonalisation for the extreme eigenvalues of a symmetric operator, certified, in memory
that follows the steps taken.

`lanczos(operator, dim)` runs on any v -> A v (`helpers.hessian.HessianOperator`: Hessian-vector products). Each
Ritz value theta_i of the projection T_m has the residual bound |beta_m s_{m,i}|: an exact eigenvalue lies within
it. A run stops once the k Ritz values of largest magnitude of every shifted operator A + shift I are certified:
every bound at most tol·|theta_i|, and the next candidate inwards from each end cannot reach their magnitude
(`certified`). Inner products and norms are summed pairwise (`inner_products`): float32 BLAS sums drop small terms
after a large one, off by 6e-3 at 10M parameters. The basis grows CHUNK vectors at a time up to `basis`; a run that
needs more restarts thick (Wu & Simon 2000: the wanted Ritz vectors and the residual go on, T becomes an
arrowhead), so a run holds (basis + WORK) x dim numbers at most (`memory`).
"""
from dataclasses import dataclass
from dataclasses import field as dataclass_field

import torch

K = 5             # the k eigenvalues of largest magnitude (the paper's statistic), and k at each end of the spectrum
TOL = 1e-4        # a Ritz value is certified when its residual bound is at most TOL times its magnitude
MAX_STEPS = 128   # Lanczos steps (Hessian-vector products) at most
BASIS = 64        # Lanczos vectors held at most, each of the number of parameters; beyond, a thick restart
CHUNK = 8         # basis vectors allocated at a time: memory follows the steps taken
WORK = 2          # vectors held besides the basis: a product H v while its pieces are joined (see `memory`)


class Basis:
    """The orthonormal Lanczos vectors: rows of chunks of CHUNK vectors, allocated as the steps need them and never
    more than `capacity` in all. `allocated` (what the run holds) is the hook that tests read."""

    def __init__(self, dim, capacity, device, dtype):
        self.dim, self.capacity, self.device, self.dtype = dim, capacity, device, dtype
        self.chunks, self.count = [], 0

    def __len__(self):
        return self.count

    def __getitem__(self, i):
        return self.chunks[i // CHUNK][i % CHUNK]

    @property
    def allocated(self):
        return sum(len(chunk) for chunk in self.chunks)

    def filled(self):
        """The vectors, a (rows, dim) view per chunk."""
        return [chunk[:self.count - start] for start, chunk in zip(range(0, self.count, CHUNK), self.chunks)]

    def append(self, vector):
        if self.count == self.capacity:
            raise RuntimeError(f"the basis is full ({self.capacity} vectors): restart before appending")
        if self.count == self.allocated:
            rows = min(CHUNK, self.capacity - self.allocated)
            self.chunks.append(torch.empty(rows, self.dim, device=self.device, dtype=self.dtype))
        self[self.count].copy_(vector)
        self.count += 1

    def orthogonalise(self, vector):
        """Remove from `vector`, in place, its components along the basis; return its new norm.

        One classical Gram-Schmidt pass per chunk (its inner products, then one matrix-vector product), and a second
        pass only when the first removed most of the vector (norm below 1/sqrt(2) of what it was): then what rounding
        left of the first pass is no longer small against the remainder ("twice is enough", Kahan and Parlett).
        """
        before = norm(vector)
        for _ in range(2):
            for rows in self.filled():
                vector.addmv_(rows.T, inner_products(rows, vector), alpha=-1)
            after = norm(vector)
            if after > before / 2 ** 0.5:
                break
            before = after
        return after

    def rotate(self, coefficients):
        """Replace the m vectors V by the l vectors V S (S = `coefficients`, m x l, orthonormal columns), in place, a
        slice of columns at a time, so that no second basis is ever held (the slices' copies are about a vector)."""
        m, l = coefficients.shape
        coefficients = coefficients.to(self.device, self.dtype)
        width = max(1, self.dim // (2 * m))
        for start in range(0, self.dim, width):
            columns = torch.cat([rows[:, start:start + width] for rows in self.filled()])  # (m, width)
            rotated = coefficients.T @ columns  # (l, width)
            for first, chunk in zip(range(0, l, CHUNK), self.chunks):
                chunk[:l - first, start:start + width] = rotated[first:first + CHUNK]
        self.count = l


def inner_products(rows, vector):
    """rows @ vector, each sum over the dimension by torch's pairwise reduction: BLAS's dot and gemv, and torch's
    vector_norm on the CPU, sum in a running float32 total that absorbs the small terms following a large one. On a
    10M-dimensional diagonal operator with its outliers first, they put the certified eigenvalues 6e-3 off (the
    bound holds for the T computed, not for H); this, 1e-6."""
    return torch.stack([torch.sum(row * vector) for row in rows])


def norm(vector):
    return inner_products(vector[None], vector).sqrt().item()


@dataclass
class Krylov:
    """What a Lanczos run leaves, small and in float64. With V the basis (orthonormal columns here), H V = V T + beta
    v e_m^T for a unit vector v orthogonal to V: so each eigenpair (theta_i, s_i) of T gives a Ritz pair whose
    residual norm is |beta s_{m,i}|, and some eigenvalue of H lies within it of theta_i."""
    projection: torch.Tensor  # T = V^T H V: tridiagonal, after a thick restart an arrowhead followed by a tridiagonal
    beta: float = 0.0         # the norm of the residual left after the last step (0: the Krylov space is exhausted)
    block: int = 0            # first row of the current Krylov block; rows before it span an invariant subspace
    alphas: list = dataclass_field(default_factory=list)  # the tridiagonal of the steps before the first thick
    betas: list = dataclass_field(default_factory=list)   # ... restart (the SLQ quadrature); betas[-1] its beta
    steps: int = 0            # Lanczos steps, i.e. operator products
    restarts: int = 0         # thick restarts
    held: int = 0             # basis vectors allocated at most


def smallest_basis(k, losses=1):
    """The fewest basis vectors a thick restart works with: each loss's k wanted Ritz vectors, the `frontier` at both
    ends, and the residual."""
    return losses * k + 3


def lanczos(operator, dim, *, k=K, tol=TOL, max_steps=MAX_STEPS, basis=BASIS, shifts=(0.0,), generator=None,
            device=None, dtype=torch.float32):
    """The `Krylov` run of the symmetric `operator` from a random unit Rademacher vector, with full
    reorthogonalisation, stopped at the first step where `certified(run, shift=s, k=k, tol=tol)` holds for every
    shift s of `shifts` (the spectra of operator + s I, which share the Krylov space), or after `max_steps` (capped
    at `dim`). `tol=0` runs exactly `max_steps` steps (a fixed-step quadrature).

    Memory: the basis grows CHUNK vectors at a time, as the steps need them, up to `basis` vectors (see `memory`);
    when it is full the run restarts thick (Wu & Simon 2000): it keeps the wanted Ritz vectors (`kept`) and goes on
    from the residual, so a step costs one product and the memory stays (basis + WORK) x dim numbers of `dtype`.
    When the Krylov space is exhausted (beta ~ 0) the run continues from a fresh random vector orthogonal to the
    basis, so that copies of a multiple eigenvalue are found: T is then block diagonal (that beta is stored as 0).
    """
    if basis < smallest_basis(k, len(shifts)):
        raise ValueError(too_small(basis, k, len(shifts)))
    vectors = Basis(dim, min(basis, dim), device, dtype)
    vectors.append(random_unit_vector(dim, generator, device, dtype))
    run = Krylov(torch.zeros(1, 1, dtype=torch.float64))
    for step in range(min(max_steps, dim)):
        residual, exhausted = lanczos_step(operator, vectors, run)
        run.held = vectors.allocated
        if step + 1 == min(max_steps, dim) or (tol > 0 and not exhausted and all(
                certified(run, shift=shift, k=k, tol=tol) for shift in shifts)):
            break
        coupling = restart(run, vectors, k=k, shifts=shifts) if len(vectors) == vectors.capacity else None
        extend(run, vectors, residual, coupling, generator, exhausted)
        del residual  # copied into the basis: not held through the next product
    return run


def too_small(basis, k, losses):
    each = f"{k} wanted Ritz vectors" + (f" of each of {losses} losses" if losses > 1 else "")
    return (f"basis={basis} vectors cannot hold the {each}, the next candidate at each end of the spectrum and the "
            f"residual across a thick restart; use basis >= {smallest_basis(k, losses)} (memory: hessian.memory), or "
            "a smaller k")


def lanczos_step(operator, vectors, run):
    """One step from the last basis vector v: alpha = v^T H v into T, and the residual H v - T's column, orthogonalised
    against the whole basis, as rounding requires. Returns (residual, exhausted); run.beta is its norm (0 if so)."""
    vector = vectors[len(vectors) - 1]
    residual = operator(vector)
    alpha = inner_products(vector[None], residual).item()
    residual.add_(vector, alpha=-alpha)  # the three-term recurrence (after a restart, the arrowhead's couplings) ...
    for i in run.projection[-1, :-1].nonzero().flatten().tolist():
        residual.add_(vectors[i], alpha=-run.projection[-1, i].item())
    beta = vectors.orthogonalise(residual)  # ... then against the whole basis
    run.projection[-1, -1] = alpha
    exhausted = beta <= 100 * torch.finfo(residual.dtype).eps * max(run.projection.abs().max().item(), 1e-30)
    run.beta, run.steps = 0.0 if exhausted else beta, run.steps + 1
    if not run.restarts:
        run.alphas.append(alpha)
        run.betas.append(run.beta)
    return residual, exhausted


def extend(run, vectors, residual, coupling, generator, exhausted):
    """Append the next basis vector, the normalised residual, coupled to the basis by `coupling` (None: by beta to the
    last vector), or, when the Krylov space is exhausted, a fresh one that starts a new block."""
    m = len(vectors)
    if coupling is None:
        coupling = torch.zeros(m, dtype=torch.float64)
        coupling[-1] = run.beta
    if exhausted:
        coupling, run.block = torch.zeros(m, dtype=torch.float64), m
        residual = fresh_vector(vectors, generator)
    else:
        residual /= run.beta
    vectors.append(residual)
    projection = torch.zeros(m + 1, m + 1, dtype=torch.float64)
    projection[:m, :m], projection[m, :m], projection[:m, m] = run.projection, coupling, coupling
    run.projection = projection


def restart(run, vectors, *, k, shifts):
    """Thick restart: the basis becomes the `kept` Ritz vectors Y = V S, T their values, diag(theta); then
    H Y = Y diag(theta) + beta v s_m^T, so the residual v (the next vector) is coupled to y_i by beta s_{m,i}, which
    `extend` puts in T's new row (the arrowhead). Returns those couplings."""
    values, pairs, _, current = ritz_pairs(run)
    keep = kept(values, current, k=k, shifts=shifts, room=vectors.capacity // 2)
    keep = keep[current[keep].int().argsort(stable=True)]  # the invariant part first: T stays block diagonal
    vectors.rotate(pairs[:, keep])
    run.projection, run.block = torch.diag(values[keep]), int((~current[keep]).sum())
    run.restarts += 1
    return run.beta * pairs[-1, keep]


def kept(values, current, *, k, shifts, room):
    """Indices of the Ritz vectors (of ascending `values`) that a thick restart keeps: for each shift, the k of
    largest magnitude of values + shift and the `frontier` at both ends, so that the whole run from each end to its
    frontier is kept and the frontier, which `certified` watches, keeps its progress; then, up to `room` in all, the
    next k by magnitude, which speed the convergence there, and the k at each end (our panels)."""
    required = []
    for shift in shifts:
        wanted = by_magnitude(values + shift, k)
        required += wanted.tolist() + frontier(current, wanted).tolist()
    wished = torch.cat([by_magnitude(values + shift, 2 * k) for shift in shifts]
                       + [torch.arange(len(values))[:k], torch.arange(len(values)).flip(0)[:k]]).tolist()
    required = list(dict.fromkeys(required))
    return torch.tensor(list(dict.fromkeys(required + wished))[:max(len(required), room)])


def random_unit_vector(dim, generator, device, dtype):
    signs = torch.randint(0, 2, (dim,), generator=generator, dtype=torch.int8)  # int64's draws, an eighth the bytes
    return signs.to(device, dtype).mul_(2).sub_(1).div_(dim ** 0.5)


def fresh_vector(vectors, generator):
    """A random unit vector orthogonal to the basis `vectors`, to continue in the orthogonal complement of an
    invariant subspace; drawn again while it lies (numerically) in the span, as a Rademacher vector can exactly."""
    norm = 0.0
    while norm <= torch.finfo(vectors.dtype).eps ** 0.5:
        vector = random_unit_vector(vectors.dim, generator, vectors.device, vectors.dtype)
        norm = vectors.orthogonalise(vector)
    return vector / norm


def memory(parameters, *, basis=BASIS, dtype=torch.float32):
    """Bytes of the vectors a Lanczos run on `parameters` numbers holds at most: (min(basis, parameters) + WORK) x
    parameters x bytes per number of `dtype`, e.g. (64 + 2) x 23.7M (ResNet-50) x 4 B = 6.3 GB in float32, and
    (64 + 2) x 5.4M (ViT-Ti) x 4 B = 1.4 GB. The graph of the gradient that every product differentiates comes on
    top (a few times the model's activations for the batch); so does the model."""
    return (min(basis, parameters) + WORK) * parameters * torch.empty(0, dtype=dtype).element_size()


def ritz_pairs(run):
    """(Ritz values ascending, T's eigenvectors as columns, residual bounds, whether each is in the current block).

    Part by part: the rows before `run.block` span an invariant subspace (bound 0); in the current block the bound
    of theta_i is |beta s_{m,i}|, the norm of H y_i - theta_i y_i for its Ritz vector y_i.
    """
    invariant, current = run.projection[:run.block, :run.block], run.projection[run.block:, run.block:]
    (old_values, old_vectors), (values, vectors) = torch.linalg.eigh(invariant), torch.linalg.eigh(current)
    values, vectors = torch.cat([old_values, values]), torch.block_diag(old_vectors, vectors)
    bounds, in_current = (run.beta * vectors[-1]).abs(), torch.arange(len(values)) >= run.block
    order = values.argsort(stable=True)
    return values[order], vectors[:, order], bounds[order], in_current[order]


def ritz(run, shift=0.0):
    """(Ritz values ascending, residual bounds) of a `Krylov` run, for the operator + `shift` I."""
    values, _, bounds, _ = ritz_pairs(run)
    return values + shift, bounds


def quadrature(run, shift=0.0):
    """SLQ nodes (ascending) and weights of the run's start vector, for the operator + `shift` I: the eigenvalues of
    the tridiagonal of the steps before the first thick restart (which drops the start vector from the basis), and
    the squared first components of their eigenvectors; with m nodes, exact for polynomials of degree up to 2m - 1."""
    alphas, betas = (torch.tensor(values, dtype=torch.float64) for values in (run.alphas, run.betas))
    tridiagonal = torch.diag(alphas) + torch.diag(betas[:-1], 1) + torch.diag(betas[:-1], -1)
    nodes, vectors = torch.linalg.eigh(tridiagonal)
    return nodes + shift, vectors[0] ** 2


def by_magnitude(values, k):
    """Indices of the k `values` of largest magnitude, largest first: what power iteration with deflation finds."""
    return values.abs().argsort(descending=True, stable=True)[:k]


def certified(run, *, shift=0.0, k=K, tol=TOL):
    """Whether the k Ritz values of largest magnitude of the operator + `shift` I are certified: each one's bound is
    at most `tol` times its magnitude, and at neither end of the current Krylov block (the part after the last
    exhausted space) is the `frontier`, the outermost Ritz value not wanted, an uncertified one whose interval
    theta +- bound reaches the k-th magnitude, as one still moving outwards to an eigenvalue of larger magnitude
    would. A thick restart keeps everything up to the frontier (`kept`), so by Cauchy interlacing the frontier
    moves outwards across restarts as within a run.

    Like every single-vector Krylov method this cannot see an eigenvalue whose eigenvector is orthogonal to the
    Krylov space, nor the second copy of a multiple one before that space is exhausted.
    """
    values, _, bounds, current = ritz_pairs(run)
    values = values + shift
    wanted = by_magnitude(values, k)
    if len(wanted) < k or (bounds[wanted] > tol * values[wanted].abs()).any():
        return False
    front = frontier(current, wanted)
    reaching = (bounds[front] > tol * values[front].abs()) & (
        values[front].abs() + bounds[front] >= values[wanted].abs().min())
    return not reaching.any()


def frontier(current, wanted):
    """Indices of the outermost Ritz values (ascending) of the current block at each end that are not `wanted`: the
    next candidates of that end. The wanted, the k of largest magnitude, lie outside them at both ends."""
    candidates = current.clone()
    candidates[wanted] = False
    return candidates.nonzero().flatten()[[0, -1]] if candidates.any() else wanted[:0]
