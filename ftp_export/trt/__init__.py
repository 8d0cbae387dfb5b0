"""TensorRT target: custom ftp nodes, their reference implementations, plugin build and engine."""
