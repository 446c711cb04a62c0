"""The torch loop's training step at static shapes, for CUDA graphs and torch.compile.

The eager loop pads each micro-batch to its own longest sample, so shapes change from batch to batch: free
for eager kernels, but a CUDA graph replays fixed buffers, and torch.compile compiles once per shape. Here
every micro-batch is padded to (micro-batch size rows) x (its length rounded up to a multiple of 32, at most
--max-length), so a handful of shapes serves a whole run (at the seed's length 128 on IMDB, two: 128 with and
without a mask).

Exactness is kept by weighting rows instead of micro-batches:
- padding columns are masked (model.encoder_mask), so no real token's numbers change;
- padding rows (a group's short last micro-batch) have loss weight 0, and a real row of a micro-batch of
  n samples has weight/n, so sum_i w_i CE_i is the eager loop's weight x mean CE (accumulation.py): the
  ragged last group's gradient is still the group's mean-loss gradient.

With CUDA graphs, `StepGraphs` captures each shape's forward and backward once, and the optimizer step
(clip, fused Adam, zeroing .grad in place) once its state exists, and replays them: one launch each instead of
~800 kernel launches per micro-batch of BERT-base. What a graph cannot hold stays on the host: the lr is read
from a device tensor filled before each step's replay, and a change of optimizer settings (an EBS schedule)
captures the step again. The host-side recording here (`EagerGraphs`) runs the same functions without a GPU,
which is how the CPU tests check everything but the capture itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from accumbench.errors import UserError

LENGTH_STEP = 32  # static lengths are multiples of this (and --max-length itself)


def static_length(width: int, max_length: int) -> int:
    """The static length a micro-batch whose longest sample has `width` tokens is padded to."""
    return min(max(max_length, width), -(-width // LENGTH_STEP) * LENGTH_STEP)


def resolve_cuda_graphs(setting: str, precision: str, backend: str, processes: int) -> str:
    """--cuda-graphs auto|on|off -> "on" or "off": on where graphs can run (a CUDA GPU, bf16, the torch loop, one
    process); UserError for `on` where they cannot. fp16 needs the GradScaler's host-side decisions, fp32 is
    left eager (the switch is about the bf16 path the study runs), Accelerate owns its own loop, and DDP's
    all-reduce hooks are not recorded here."""
    why_not = ("needs a CUDA GPU" if not torch.cuda.is_available() else
               f"runs in bf16 only (this run's precision is {precision}); add --precision bf16" if precision != "bf16" else
               "runs in the torch loop only; add --backend torch" if backend != "torch" else
               "runs in one process only" if processes > 1 else None)
    if setting == "on" and why_not is not None:
        raise UserError(f"--cuda-graphs on {why_not}; or pass --cuda-graphs auto (on only where graphs can run)")
    return "on" if setting != "off" and why_not is None else "off"


def compiled(module: torch.nn.Module, setup: Any) -> Any:
    """torch.compile of the module at static shapes, in the run's --compile-mode: each (rows, length, mask) shape
    compiles once, and the recompile limit covers every length up to --max-length, with and without a mask."""
    import torch._dynamo

    lengths = -(-(setup.max_length or 512) // LENGTH_STEP)
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 2 * lengths + 2)
    return torch.compile(module, mode=None if setup.compile_mode == "default" else setup.compile_mode, dynamic=False)


def pad_batch(batch: dict[str, Any], rows: int, length: int, weight: float, real_rows: int) -> dict[str, Any]:
    """A collated micro-batch padded to [rows, length] on the host, with each row's loss weight: weight / n for
    its n real rows (`real_rows`; 0 for an empty rank's stand-in), 0 for padding rows. The mask is None when
    no column is padding (the encoder then takes its maskless kernels); padding rows are all token 0 and, under
    a mask, attend to their first position, so that no softmax row is empty."""
    ids = batch["input_ids"]
    n, width = ids.shape
    padded_columns = width < length or batch["attention_mask"] is not None
    out: dict[str, Any] = {"input_ids": torch.zeros(rows, length, dtype=torch.long)}
    out["input_ids"][:n, :width] = ids
    if padded_columns:
        mask = torch.zeros(rows, length, dtype=torch.long)
        mask[:n, :width] = 1 if batch["attention_mask"] is None else batch["attention_mask"]
        mask[n:, 0] = 1
        out["attention_mask"] = mask
    else:
        out["attention_mask"] = None
    out["labels"] = torch.zeros(rows, dtype=torch.long)
    out["labels"][:n] = batch["labels"]
    out["row_weights"] = torch.zeros(rows, dtype=torch.float64)  # weight/n exactly; the loss casts it to its dtype
    out["real"] = torch.zeros(rows, dtype=torch.float32)
    if real_rows:
        out["row_weights"][:real_rows] = weight / real_rows
        out["real"][:real_rows] = 1.0
    out["weight"] = torch.tensor([weight if real_rows else 1.0], dtype=torch.float64)  # for the micro-batch norm
    if batch.get("token_type_ids") is not None:
        out["token_type_ids"] = torch.zeros(rows, length, dtype=torch.long)
        out["token_type_ids"][:n, :width] = batch["token_type_ids"]
    return out


def shape_of(batch: dict[str, Any]) -> tuple[int, int, bool]:
    """What a graph is captured for: rows, length, and whether a mask is passed."""
    rows, length = batch["input_ids"].shape
    return rows, length, batch["attention_mask"] is not None


@dataclass
class Recorded:
    """One recorded function: replay() runs it again on the same buffers; outputs are its results."""

    replay: Callable[[], None]
    outputs: list[Any] = field(default_factory=list)


class EagerGraphs:
    """Records a function and replays it by calling it again, on the same static buffers: a CUDA graph's
    contract without a GPU, for the CPU tests of everything around the capture."""

    captures = 0

    def record(self, fn: Callable[[], Sequence[Any]], warm_up: Callable[[], None] | None = None) -> Recorded:
        self.captures += 1
        recorded = Recorded(replay=lambda: None)

        def replay() -> None:
            recorded.outputs[:] = list(fn())

        recorded.replay = replay
        return recorded


class CudaGraphs(EagerGraphs):
    """torch.cuda.graph capture, all graphs in one memory pool (they are replayed one at a time, on one stream,
    and every output a later replay reads is held). Each capture is preceded by warm-up runs on a side stream:
    lazy initialisations (cuBLAS workspaces, autograd's streams) must not happen inside a capture."""

    def __init__(self) -> None:
        self.pool = torch.cuda.graph_pool_handle()

    def record(self, fn: Callable[[], Sequence[Any]], warm_up: Callable[[], None] | None = None) -> Recorded:
        self.captures += 1
        if warm_up is not None:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    warm_up()
            torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            outputs = list(fn())
        return Recorded(replay=graph.replay, outputs=outputs)


class StepGraphs:
    """The recorded micro-batch steps (one per static shape) and the recorded optimizer step of one backend."""

    def __init__(self, graphs: EagerGraphs, params: list[torch.nn.Parameter]) -> None:
        self.graphs = graphs
        self.params = params
        self.micro_steps: dict[tuple[int, int, bool], tuple[dict[str, Any], Recorded]] = {}
        self.step: Recorded | None = None
        self.lrs: list[torch.Tensor] = []
        self._grads: list[torch.Tensor] = []

    def static_grads(self) -> None:
        """.grad must stay the same tensors across replays: made (zeros) before the first capture, and put back
        (zeroed) if anything set them to None since (zero_grad(set_to_none=True) means zero)."""
        if not self._grads:
            for p in self.params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            self._grads = [p.grad for p in self.params]
        for p, grad in zip(self.params, self._grads):
            if p.grad is not grad:
                p.grad = grad.zero_() if p.grad is None else grad.copy_(p.grad)

    def micro_step(self, batch: dict[str, Any], device: torch.device,
                   run: Callable[[dict[str, Any]], Sequence[Any]]) -> list[Any]:
        """Copy the host batch into its shape's static buffers and replay that shape's recorded forward and
        backward (recording it the first time); its outputs, valid until the next replay of that shape."""
        self.static_grads()
        key = shape_of(batch)
        if key not in self.micro_steps:
            static = {k: None if v is None else v.to(device) for k, v in batch.items()}
            # Warm-up runs add a weight-0 gradient: nothing, so .grad keeps what the group has accumulated.
            idle = dict(static, row_weights=torch.zeros_like(static["row_weights"]))
            self.micro_steps[key] = (static, self.graphs.record(lambda: run(static), warm_up=lambda: run(idle)))
        static, recorded = self.micro_steps[key]
        for name, value in batch.items():
            if value is not None:
                static[name].copy_(value.pin_memory() if device.type == "cuda" else value, non_blocking=True)
        recorded.replay()
        return recorded.outputs

    def optimizer_step(self, optimizer: torch.optim.Optimizer, step: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Replay the recorded optimizer step (recording it the first time) at the param groups' current lrs.
        The lr lives in a device tensor the step reads; the groups keep their float lr for the schedule."""
        if self.step is None:
            # In the parameters' dtype: fp32 on a GPU, as fused Adam reads it; fp64 for the fp64 exactness tests.
            like = self.params[0]
            self.lrs = [torch.tensor(float(g["lr"]), device=like.device, dtype=like.dtype) for g in optimizer.param_groups]
            for group in optimizer.param_groups if like.is_cuda else ():
                group["capturable"] = True  # Adam's check for a capture; fused Adam keeps its step count on the GPU

            def at_device_lrs() -> list[torch.Tensor]:
                floats = [g["lr"] for g in optimizer.param_groups]
                for group, lr in zip(optimizer.param_groups, self.lrs):
                    group["lr"] = lr  # the step reads the rate from this tensor, replay after replay
                try:
                    return [step()]
                finally:
                    for group, lr in zip(optimizer.param_groups, floats):
                        group["lr"] = lr

            self.step = self.graphs.record(at_device_lrs)
        for group, lr in zip(optimizer.param_groups, self.lrs):
            lr.fill_(group["lr"])
        self.static_grads()
        self.step.replay()
        return self.step.outputs[0].clone()  # the next replay overwrites it; the loop reads it a step late

    def settings_changed(self) -> None:
        """Betas, eps and weight decay are recorded into the step as numbers: record it again."""
        self.step = None
