"""A multimodal processor built around the tokenizer it is given, without loading another.

vLLM builds Qwen2-VL's HF processor in each of its processes (the replica twice, the engine
core, the worker) with ``AutoProcessor.from_pretrained(path, tokenizer=<its tokenizer>)``.
transformers (5.19) then still loads a tokenizer from the checkpoint's files for the processor,
and throws it away when it instantiates the processor with the one it was given; on the way it
deep-copies its keyword arguments, the given tokenizer with its whole vocabulary among them,
several times (the processor's config, the tokenizer's config). Those copies and the spare
tokenizer are most of the processor's build time, and the processor is built on the path of
every engine start.

While a processor is built from its pretrained files, ``after_import`` has transformers take
the given tokenizers as they are: they are held aside from the keyword arguments that are
copied and passed down (so nothing copies them), used where transformers would load one, and
put back into the arguments the processor is instantiated with, where transformers puts a given
tokenizer in place of the loaded one anyway. The processor that results is the same: the given
tokenizer, and the image and video processors loaded from the files as before. A call without
a tokenizer is untouched. Installed in every process by ``engine.process_hooks``.
"""

from __future__ import annotations

import contextvars
import logging

TARGET = "transformers.processing_utils"
log = logging.getLogger(__name__)
# Tokenizers given to the processor being built in this thread or task: attribute -> object.
_given: contextvars.ContextVar[dict] = contextvars.ContextVar("qwen_vl_given_tokenizers",
                                                              default={})


def _tokenizer_attributes(cls, kwargs: dict) -> list[str]:
    return [a for a in cls.get_attributes() if "tokenizer" in a and kwargs.get(a) is not None]


def after_import(module) -> None:
    try:
        _install(module.ProcessorMixin)
    except Exception:  # never break transformers' import: it then builds processors as before
        log.exception("could not install the processor build without a spare tokenizer")


def _install(mixin) -> None:
    if getattr(mixin, "_qwen_vl_given_tokenizers", False):
        return
    get_processor_dict = mixin.get_processor_dict.__func__
    get_arguments = mixin._get_arguments_from_pretrained.__func__
    load_tokenizer = mixin._load_tokenizer_from_pretrained.__func__

    def held(cls, kwargs: dict, call):
        names = _tokenizer_attributes(cls, kwargs)
        if not names:
            return call(kwargs), {}
        given = {n: kwargs[n] for n in names}
        rest = {k: v for k, v in kwargs.items() if k not in given}
        token = _given.set({**_given.get(), **given})
        try:
            return call(rest), given
        finally:
            _given.reset(token)

    @classmethod
    def patched_get_processor_dict(cls, path, **kwargs):
        (processor_dict, unused), given = held(
            cls, kwargs, lambda rest: get_processor_dict(cls, path, **rest))
        return processor_dict, {**unused, **given}  # the processor is made with them

    @classmethod
    def patched_get_arguments(cls, path, processor_dict=None, **kwargs):
        return held(cls, kwargs,
                    lambda rest: get_arguments(cls, path, processor_dict, **rest))[0]

    @classmethod
    def patched_load_tokenizer(cls, sub_processor_type, path, subfolder="", **kwargs):
        given = _given.get().get(sub_processor_type)
        if given is not None:
            return given
        return load_tokenizer(cls, sub_processor_type, path, subfolder=subfolder, **kwargs)

    mixin._qwen_vl_originals = {"get_processor_dict": get_processor_dict,
                                "_get_arguments_from_pretrained": get_arguments,
                                "_load_tokenizer_from_pretrained": load_tokenizer}
    mixin.get_processor_dict = patched_get_processor_dict
    mixin._get_arguments_from_pretrained = patched_get_arguments
    mixin._load_tokenizer_from_pretrained = patched_load_tokenizer
    mixin._qwen_vl_given_tokenizers = True
