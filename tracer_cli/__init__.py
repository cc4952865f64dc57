"""tracer: robust finetuning of CLIP-style models with a persistent (WMA) self-distillation teacher.

Plugin authors import the two markers from here and never import pluggy themselves::

    from tracer_cli import hookimpl

    @hookimpl
    def tracer_register_datasets(registry):
        registry.add("my-dataset", make_my_dataset)
"""

import pluggy

__version__ = "0.1.0"

PROJECT_NAME = "tracer"
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

__all__ = ["__version__", "hookimpl", "hookspec", "PROJECT_NAME"]
