"""distillery: label ad logs with a big teacher on Ray Data, distill a small student with Ray Train,
compress it to ONNX, and serve it on Ray Serve inside a bidding deadline."""

__version__ = "0.1.0"
