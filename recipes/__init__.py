"""The recipes shipped with tracer, installed as package data (`tracer_cli.recipes`) so that the
embedded tiny CLIP can be rebuilt from `tiny_pretrain.toml` wherever tracer is installed."""

from importlib import resources


def shipped_recipe_text(name: str) -> str:
    """The text of the recipe file ``name`` (e.g. ``"tiny_pretrain.toml"``) shipped with tracer,
    read from the installed package, wherever tracer is installed (plugins reach it through
    :mod:`tracer_cli.sdk`)."""
    return resources.files(__name__).joinpath(name).read_text("utf-8")
