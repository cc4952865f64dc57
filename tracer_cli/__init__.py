"""tracer: robust finetuning of CLIP-style models with a persistent (WMA) self-distillation teacher.

The project's two pluggy markers are defined here. Plugin authors import ``hookimpl`` (and
everything else they need) from :mod:`tracer_cli.sdk`, and never import pluggy themselves::

    from tracer_cli.sdk import hookimpl

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
