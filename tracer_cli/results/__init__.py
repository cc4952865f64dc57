"""Results, below the commands: what an evaluation measures and how it is shown.

:mod:`~tracer_cli.results.metrics` computes the metric functions (accuracy, ECE, reliability bins,
retrieval and VQA scores); :mod:`~tracer_cli.results.figures` draws evaluation plots as PNG files
(and owns the one figure writer, ``save_figure``, that ``tracer_cli.analysis.plots`` uses too);
:mod:`~tracer_cli.results.display` lays results out as tables for people. Nothing here imports
the engine, the commands or the command line.
"""
