"""Comparing finished runs: the statistics, tables, figures and reports behind ``tracer compare``.

:mod:`~tracer_cli.analysis.stats` holds the statistics (mean ± SE with the binomial term, paired
differences, the WiSE-FT frontier gap, the logit fit of effective robustness);
:mod:`~tracer_cli.analysis.tables` turns per-run numbers into per-pretrained-model panels;
:mod:`~tracer_cli.analysis.groups` reads run directories into those numbers;
:mod:`~tracer_cli.analysis.plots` and :mod:`~tracer_cli.analysis.report` draw and write them.
``benchmarks/robustness.py`` plans and runs its benchmark and takes its statistics and tables
from here (its report block and its sweep and KL figures are benchmark code, in ``benchmarks/``).
Nothing in this package imports typer or rich.
"""
