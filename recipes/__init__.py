"""The recipes shipped with tracer, installed as package data (`tracer_cli.recipes`) so that the embedded tiny CLIP can be rebuilt from `tiny_pretrain.toml` wherever tracer is installed."""
