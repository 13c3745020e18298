"""Calling the kernel prefill (cuda/mk_prefill.cu, `luce_mk_prefill`) on a megakernel backend's buffers.

The prefill runs a whole prompt through all 24 layers in a fixed sequence of kernels (tensor-core GEMMs, chunked gated
delta rule, causal attention) and leaves the KV cache, the GDN states and conv histories and the first generated token
where the decode kernel reads them. A prompt at position pos > 0 (a depth test's, or a turn after earlier ones)
continues the cached positions: attention reads their K/V rows, the GDN layers start from their states and conv
histories. `LUCE_BENCH_PREFILL` picks the path a backend uses for prompts: `kernel` (default) or `tokens` (the prompt
goes token by token through the decode kernel). A library without the prefill (ABI < 6), one whose prefill starts only
at 0 (ABI 6) for a prompt at pos > 0, or weights beyond fp16 take the token path; the backend records which path ran
and why.

The prefill's GEMMs read an fp16 copy of the layer weights (made on first use, as large as the bf16 blob: ~1 GB for
the 0.8B model): fp16 activations keep the prefill within 0.5 % of the f32 reference where bf16 ones drift by 3-7 %
(cuda/NOTES.md). A checkpoint with a weight beyond the fp16 range (|w| > 65504) cannot take this path.
"""

from __future__ import annotations

import os
from typing import Any

from luce_bench.errors import UserError

PREFILL_ENV = "LUCE_BENCH_PREFILL"
MODES = ("tokens", "kernel")


def mode_from_env() -> str:
    """The prefill path named by $LUCE_BENCH_PREFILL (default `kernel`)."""
    mode = os.environ.get(PREFILL_ENV, "kernel").strip() or "kernel"
    if mode not in MODES:
        raise UserError(f"{PREFILL_ENV}={mode!r}: expected one of {', '.join(MODES)}")
    return mode


class KernelPrefill:
    """The workspace, the fp16 weights and the call; one per backend (the workspace grows to the longest prompt seen).

    With `graph` (the default), a prompt length's launch sequence is captured once as a CUDA graph (one per length,
    the newest GRAPHS kept) and replayed: ~230 launches become one. `graph_error` holds why capture failed, if it did
    (the prefill then launches kernel by kernel).
    """

    GRAPHS = 8

    def __init__(self, lib: Any, device: Any, graph: bool = True) -> None:
        self.lib = lib
        self.device = device
        self.graph = graph
        self.graph_error: str | None = None
        self._ws: Any = None
        self._w16: Any = None
        # (n, max_seq, pos) -> (graph, tokens, logits): the position is a kernel argument, fixed in the graph
        self._graphs: dict[tuple[int, int, int], tuple[Any, Any, Any]] = {}

    def weights16(self, wblob: Any) -> Any:
        """The fp16 copy of the bf16 layer weights (made once); UserError when a weight does not fit fp16."""
        import torch

        if self._w16 is None:
            w16 = wblob.to(torch.float16)
            if bool(torch.isinf(w16).any()):
                raise UserError("a layer weight exceeds the fp16 range (|w| > 65504): the kernel prefill cannot run")
            self._w16 = w16
        return self._w16

    def launches(self, n_tokens: int) -> int:
        """Kernel launches of one prefill of n_tokens (one graph launch when replayed from a graph)."""
        return int(self.lib.luce_mk_prefill_launches(n_tokens))

    def run(
        self,
        bufs: dict[str, Any],
        tokens: Any,
        max_seq: int,
        logits: Any = None,
        n_layers: int = 0,
        hidden: Any = None,
        pos: int = 0,
    ) -> None:
        """Run the prefill of `tokens` (an int32 device tensor) at position `pos` on the current stream (not synced).

        logits: None or an f32 device tensor [vocab] for the last position's logits. n_layers: 0, or stop after
        that many layers (a layer-by-layer check; no LM head then). hidden: None or an f32 device tensor [n][1024]
        that receives the residual stream after the layers run. pos > 0 continues the cached positions 0 .. pos - 1
        (ABI 7). Whole prefills replay a CUDA graph when `graph`.
        """
        n = int(tokens.numel())
        if n < 1 or pos < 0 or pos + n > max_seq:
            raise UserError(f"prefill of {n} tokens at position {pos}: the KV cache holds positions 0..{max_seq - 1}")
        if self.graph and self.graph_error is None and not n_layers and hidden is None:
            entry = self._graphs.get((n, max_seq, pos)) or self._capture(bufs, n, max_seq, pos)
            if entry is not None:
                g, t_static, lg_static = entry
                t_static.copy_(tokens)
                g.replay()
                if logits is not None:
                    logits.copy_(lg_static)
                return
        self._launch(bufs, tokens, max_seq, logits, n_layers, hidden, pos)

    def _workspace(self, n: int) -> Any:
        import torch

        need = int(self.lib.luce_mk_prefill_workspace(n))
        if self._ws is None or self._ws.numel() < need:
            self._graphs.clear()  # captured graphs point into the old workspace
            self._ws = None
            self._ws = torch.empty(need, dtype=torch.uint8, device=self.device)
        return self._ws

    def _capture(self, bufs: dict[str, Any], n: int, max_seq: int, pos: int) -> tuple[Any, Any, Any] | None:
        """Capture the prefill of n tokens at `pos` as a graph, after one warm-up run on zero tokens.

        The warm-up sets the device up (workspace, fp16 weights). The run that follows overwrites what it wrote,
        except what a prompt at pos > 0 reads before writing: the GDN states and conv histories, kept aside around it.
        """
        import torch

        t_static = torch.zeros(n, dtype=torch.int32, device=self.device)
        lg_static = torch.empty(self._vocab(), device=self.device)
        kept = {k: bufs[k].clone() for k in ("gdn_state", "conv_hist")} if pos > 0 else {}
        self._launch(bufs, t_static, max_seq, lg_static, 0, None, pos)  # warm-up
        torch.cuda.synchronize(self.device)
        for k, v in kept.items():
            bufs[k].copy_(v)
        del kept
        g = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(g, capture_error_mode="thread_local"):
                self._launch(bufs, t_static, max_seq, lg_static, 0, None, pos)
        except RuntimeError as exc:
            self.graph_error = str(exc).splitlines()[0][:200]
            torch.cuda.synchronize(self.device)
            return None
        while len(self._graphs) >= self.GRAPHS:
            self._graphs.pop(next(iter(self._graphs)))
        self._graphs[(n, max_seq, pos)] = (g, t_static, lg_static)
        return self._graphs[(n, max_seq, pos)]

    def _vocab(self) -> int:
        from luce_bench.kernels.lib import layout

        return int(layout(self.lib).vocab)

    def _launch(
        self, bufs: dict[str, Any], tokens: Any, max_seq: int, logits: Any, n_layers: int, hidden: Any, pos: int = 0
    ) -> None:
        import torch

        from luce_bench.kernels.lib import LuceMkPrefillParams, check

        n = int(tokens.numel())
        ws = self._workspace(n)
        p = LuceMkPrefillParams()
        for k in ("sblob", "embed", "kcache", "vcache", "gdn_state", "conv_hist", "last_token"):
            setattr(p, k, bufs[k].data_ptr())
        p.wblob16 = self.weights16(bufs["wblob"]).data_ptr()
        p.tokens = tokens.data_ptr()
        p.n_tokens, p.max_seq = n, max_seq
        p.workspace = ws.data_ptr()
        p.logits = logits.data_ptr() if logits is not None else None
        p.n_layers = n_layers
        p.hidden = hidden.data_ptr() if hidden is not None else None
        p.pos = pos
        stream = torch.cuda.current_stream(self.device).cuda_stream
        check(self.lib, self.lib.luce_mk_prefill(p, stream), "megakernel prefill")
