"""Each micro-batch's own gradient norm, read in the backward pass: what the gradient noise scale
(noise_scale.py) needs from an accumulation group, at the cost of a hook per parameter."""

from __future__ import annotations

from typing import Any


class MicroBatchGradNorms:
    """Squared norms of each micro-batch's own gradient, summed over the group.

    A hook on every parameter sees that backward pass's gradient before autograd adds it to .grad,
    so no copy of the accumulated gradient is kept (differencing .grad before and after each
    backward would cost a gradient-sized buffer for the whole run). What the hook does with it
    depends on what is expensive where (`batched`, by default on CUDA only):

    - on a CPU, memory traffic and allocation: the hook takes the norm at once, while the gradient
      is fresh, and lets autograd free or reuse it as usual. Keeping references instead stops
      autograd from stealing the first micro-batch's gradient as .grad and makes every backward
      allocate its gradients anew: +10% time on SST-2 micro-batches here.
    - on a GPU, kernel launches: a norm per parameter would add ~200 launches per micro-batch to
      BERT-base, whose loop is host-bound at micro-batch 64. So the hook only keeps a reference,
      and after the backward one multi-tensor norm (clip_grad_norm_'s kernel) measures them all;
      the references cost at most one gradient's worth of memory at the end of each backward.

    The hooks see d(scale · weight · loss_j)/dθ: the backend passes the weight here and the fp16
    loss scale at the step, and both are divided out (squared) in float64. Norms are taken in fp32
    (fp64 for an fp64 model) on the device, with no host sync per micro-batch: the backend reads
    the sums once per optimizer step with its other numbers."""

    def __init__(self, parameters: Any, device: Any, batched: bool | None = None,
                 token_embedding: Any = None) -> None:
        import torch

        params = [p for p in parameters if p.requires_grad]
        self._dtype = torch.promote_types(params[0].dtype, torch.float32)
        self.batched = torch.device(device).type == "cuda" if batched is None else batched
        self._grads: list[Any] = []  # batched: this backward's gradients, one per parameter that got one
        self._squares: list[Any] = []  # not batched: this backward's per-parameter |.|² (0-d tensors)
        self.sum_sq = torch.zeros((), device=device, dtype=torch.float64)  # the group's, weights divided out
        self.inverse_size_sum = 0.0
        self.micro_batches = 0
        # The token embedding's gradient is dense but zero outside the rows of the micro-batch's tokens
        # (MiniLM: half of all parameters, ~300 of its 30,522 rows used by 16 short sentences), so on
        # the CPU only those rows are read: the norm is the same, at half the memory traffic. Only for
        # an embedding matrix used nowhere else (a tied one would have other rows' gradient too).
        self._embedding = token_embedding if token_embedding is not None and not self.batched else None
        self._rows: Any = None
        self._handles = []
        for p in params:
            hook = self._grads.append if self.batched else self._add_rows_norm if p is self._embedding else self._add_norm
            self._handles.append(p.register_hook(hook))

    def rows_used(self, input_ids: Any) -> None:
        """Before a micro-batch's backward: the token ids it feeds, for the embedding's rows (CPU only:
        torch.unique would wait for a GPU)."""
        import torch

        if self._embedding is not None:
            self._rows = torch.unique(input_ids)

    def _add_norm(self, grad: Any) -> None:
        import torch

        # One op per parameter, summed once per micro-batch. torch.dot is BLAS's dot product,
        # 2.5x faster on this CPU than vector_norm over MiniLM's gradients; it accumulates in the
        # gradient's own dtype, so a half-precision gradient takes the fp32 norm instead.
        grad = grad.detach()
        if grad.dtype == self._dtype:
            flat = grad.reshape(-1)
            self._squares.append(torch.dot(flat, flat))
        else:
            self._squares.append(torch.linalg.vector_norm(grad, dtype=self._dtype).square())

    def _add_rows_norm(self, grad: Any) -> None:
        self._add_norm(grad if self._rows is None else grad.index_select(0, self._rows))

    def micro_batch_done(self, size: int, weight: float) -> None:
        """After a micro-batch's backward: its |weight · g|² becomes |g|². A stand-in (weight 0, an
        empty micro-batch that only joins the all-reduce) counts for nothing."""

        if size and weight:
            self.sum_sq += self._current() / weight**2
            self.count(size)
        self._done()

    def add_weighted(self, weight: Any) -> None:
        """micro_batch_done's device half, for a step recorded as a CUDA graph: the weight is a device tensor (of a
        real micro-batch, or 1 for a stand-in whose gradient is zero), and the host counts with count()."""
        self.sum_sq += self._current() / weight.double().reshape(()).square()
        self._done()

    def count(self, size: int) -> None:
        """A real micro-batch of `size` samples joins the group's counts (micro_batch_done's host half)."""
        if size:
            self.inverse_size_sum += 1.0 / size
            self.micro_batches += 1

    def _current(self) -> Any:
        """|this backward's gradient|² (still weighted), on the device."""
        import torch

        if self.batched:
            grads = [g.detach() if g.dtype == self._dtype else g.detach().to(self._dtype) for g in self._grads]
            return torch.nn.utils.get_total_norm(grads, foreach=True).double().square() if grads else 0.0
        return torch.stack(self._squares).double().sum() if self._squares else 0.0

    def _done(self) -> None:
        self._grads.clear()
        self._squares.clear()
        self._rows = None

    def take(self) -> tuple[Any, float, int]:
        """(sum of |g_j|² as a device tensor, sum of 1/b_j, k) of the group just backpropagated; reset."""
        taken = (self.sum_sq.clone(), self.inverse_size_sum, self.micro_batches)
        self.sum_sq.zero_()
        self.inverse_size_sum, self.micro_batches = 0.0, 0
        return taken

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._grads.clear()
