"""Built-in tracer plugins, loaded through the `tracer` entry-point group like any third-party plugin."""
