"""Built-in loggers: metrics.jsonl, TensorBoard, Weights & Biases and MLflow."""
