"""qdnn: Quantizable DNNs toolkit."""
__version__ = "0.1.0"
