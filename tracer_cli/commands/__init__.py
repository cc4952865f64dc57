"""The commands' libraries: what each ``tracer`` command does, callable without Typer.

:mod:`~tracer_cli.commands.evaluate` (``tracer eval``), :mod:`~tracer_cli.commands.model_export`
(``tracer export``), :mod:`~tracer_cli.commands.teacher_diagnostics` (``tracer distill-check``)
and :mod:`~tracer_cli.commands.finished_run` (reading a finished run's recipe, checkpoint and
models, for the three). ``tracer finetune`` is :func:`tracer_cli.engine.run.finetune` and
``tracer compare`` is :mod:`tracer_cli.analysis`; ``tracer_cli.cli`` adapts all of them to the
command line. Nothing here imports typer or the command line.
"""
