"""Where the stack reaches into Ray's private modules. Each use says why, and which public API
would replace it."""

from __future__ import annotations

from ray.llm._internal.common.callbacks.base import CallbackBase


class SkipNodeInit(CallbackBase):
    """Ray Serve LLM, before each engine starts, runs a task on every node of the replica's
    placement group that fetches the model from a cloud mirror (``mirror_config``, or an s3://
    or gs:// source). The stack's sources are a Hugging Face id, a local checkpoint directory or
    an embedded model, which that task returns unchanged; it costs a fresh Ray worker process
    that imports torch and transformers on every replica start, so it is skipped.

    Named in ``LLMConfig.callback_config`` by its import path. Public replacement: a
    ``run_init_node`` switch on ``ray.serve.llm``'s callback configuration (``CallbackCtx``
    holds it; its base class is not exported)."""

    async def on_before_node_init(self) -> None:
        self.ctx.run_init_node = False
