"""The teacher specification with its kernels: what a recipe's ``[teacher]`` table means.

:mod:`~tracer_cli.teacher.spec` holds the kinds of teacher (``TeacherKind``: none, static, EMA,
WMA), their defaults and the validated :class:`~tracer_cli.teacher.spec.TeacherSpec`;
:mod:`~tracer_cli.teacher.kernels` turns a specification into numbers (the WMA kernel weights,
the EMA momentum warm-up, which steps update the teacher, a specification's curve). The
dependency runs one way: the kernels import the specification, never the reverse, and neither
imports the engine, which reads both.
"""
